//! The node's configuration, as given on the command line.

use crate::connection::ReadTimeouts;
use crate::tls::Security;
use paxos_core::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Bytes of values the leader has in flight (its window), at most (one value always fits).
pub const WINDOW_BYTES_MAX: usize = 8 << 20;
/// Bytes of proposals the leader queues behind its window, at most.
pub const QUEUED_BYTES_MAX: usize = 8 << 20;

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Where to accept peers and clients.
    pub listen: SocketAddr,
    /// Every member (this node included) and the address others reach it at.
    pub members: BTreeMap<NodeId, String>,
    pub data_dir: PathBuf,
    pub cluster: String,
    /// Length of one logical tick of the protocol.
    pub tick: Duration,
    pub heartbeat_interval_ticks: u64,
    pub election_timeout_ticks: u64,
    pub value_bytes_max: usize,
    /// TLS (the default) or `--insecure-plaintext`.
    pub security: Security,
    /// A connection must begin a frame within `idle` of the last one and finish it within
    /// `frame`, and read what it is sent within `frame`.
    pub timeouts: ReadTimeouts,
    /// Whether an empty data directory takes part in a brand-new cluster's bootstrap (`New`)
    /// or joins a cluster that exists (`Existing`: it only learns until the configuration it
    /// learns admits it). Ignored once the directory holds state.
    pub initial_cluster_state: ClusterState,
    /// `--role`: what this node does in a brand-new cluster's bootstrap configuration (the
    /// binding entry records it). Ignored once the cluster is bound: the configuration says.
    pub role: paxos_core::MemberRole,
    /// `--metrics-listen`: where to serve Prometheus metrics over HTTP (none: not served).
    pub metrics_listen: Option<SocketAddr>,
    /// Client connections established at once, and TCP/TLS handshakes in progress at once:
    /// what the file-descriptor budget leaves for them (see `limits.rs`).
    pub client_connections_max: usize,
    pub handshakes_max: usize,
}

/// `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

impl NodeConfig {
    /// The protocol configuration for this node.
    /// `incarnation` is the data directory's (see [`crate::storage::Storage::incarnation`]).
    pub fn core(&self, incarnation: paxos_core::Incarnation) -> paxos_core::Config {
        let mut config = paxos_core::Config::new(self.id, self.members.keys().copied().collect());
        config.incarnation = incarnation;
        config.addresses = self.members.clone();
        config.join_existing = self.initial_cluster_state == ClusterState::Existing;
        config.role = self.role;
        config.heartbeat_interval_ticks = self.heartbeat_interval_ticks;
        config.election_timeout_ticks = self.election_timeout_ticks;
        // A forwarded proposal waits at most ~5 s for the leader.
        config.forward_timeout_ticks = (5_000 / self.tick.as_millis().max(1) as u64).max(1);
        config.catch_up_timeout_ticks = 2 * self.election_timeout_ticks;
        config.value_bytes_max = self.value_bytes_max;
        // The node's memory budget (docs/operations.md, "Budgets"): the window and the queue in bytes.
        config.window_bytes_max = WINDOW_BYTES_MAX;
        config.proposals_queued_bytes_max = QUEUED_BYTES_MAX;
        config
    }

    /// Checks what the protocol would otherwise assert on.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("node id 0 is reserved; ids start at 1".into());
        }
        if !self.members.contains_key(&self.id) && self.initial_cluster_state == ClusterState::New {
            return Err(format!(
                "node {} is not among the members given with --peer (a node joining a running cluster \
                 starts with --initial-cluster-state existing)",
                self.id
            ));
        }
        if self.members.contains_key(&0) {
            return Err("node id 0 is reserved; ids start at 1".into());
        }
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks {
            return Err("the election timeout must be longer than the heartbeat interval".into());
        }
        if self.value_bytes_max > crate::wire::VALUE_BYTES_LIMIT {
            return Err(format!(
                "values are limited to {} MiB (frames are {} MiB)",
                crate::wire::VALUE_BYTES_LIMIT >> 20,
                crate::wire::FRAME_BYTES_MAX >> 20
            ));
        }
        if let Security::Tls(tls) = &self.security {
            if tls.cluster() != self.cluster {
                return Err(format!(
                    "the TLS set-up is for cluster {:?}, not {:?}",
                    tls.cluster(),
                    self.cluster
                ));
            }
        }
        if self.timeouts.idle.is_zero() || self.timeouts.frame.is_zero() {
            return Err("the idle and frame timeouts must be positive".into());
        }
        Ok(())
    }
}

// The defaults the client library shares with the daemon, where the daemon's callers look.
pub use paxos_client::connection::DEFAULT_TIMEOUTS;
pub use paxos_client::DEFAULT_CLUSTER;
