//! Wiring: storage, replica, driver thread, listener and peer links, and graceful shutdown.

use crate::config::NodeConfig;
use crate::driver::{Driver, DriverError};
use crate::input::Input;
use crate::metrics::Metrics;
use crate::peer_link::{LinkIdentity, PeerLinks};
use crate::server::{self, ServerContext};
use crate::storage::Storage;
use paxos_core::Replica;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_util::task::TaskTracker;

/// How long shutdown waits for connections to close (a closing client connection takes up to
/// a second to write the answers already queued).
const TASKS_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Inputs queued for the driver; beyond this, peers' messages are dropped and clients are told
/// the node is overloaded.
const INPUT_QUEUE_MAX: usize = 65_536;
/// Messages queued per peer link.
const PEER_QUEUE_MAX: usize = 16_384;

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    pub local_addr: SocketAddr,
    /// Where metrics are served (`--metrics-listen`), with the port chosen if it was 0.
    pub metrics_addr: Option<SocketAddr>,
    /// Taken by `shutdown`: the driver also stops when every sender is gone.
    inputs: Option<SyncSender<Input>>,
    shutdown: watch::Sender<bool>,
    driver_done: oneshot::Receiver<Result<(), DriverError>>,
    /// The server (which waits for its connection tasks) and the peer links.
    tasks: TaskTracker,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("cannot listen on {addr}: {error}")]
    Listen { addr: SocketAddr, error: std::io::Error },
    #[error("cannot serve metrics on {addr} (--metrics-listen): {error}")]
    MetricsListen { addr: SocketAddr, error: std::io::Error },
}

impl NodeHandle {
    /// Opens storage, recovers the replica and starts serving. Must run inside a tokio runtime.
    pub async fn start(config: NodeConfig) -> Result<NodeHandle, StartError> {
        config.validate().map_err(StartError::Config)?;
        crate::storage::create_dir_durably(&config.data_dir).map_err(|error| StartError::Io {
            what: format!("cannot create data directory {}", config.data_dir.display()),
            error,
        })?;
        let mut storage = Storage::open(&config.data_dir, &config.cluster, config.id)?;
        let mut durable = storage.load()?;
        let incarnation = storage.incarnation();
        let first_role = storage.first_role(config.role)?;
        if first_role != config.role && durable.membership.is_none() {
            tracing::warn!(
                "started with --role {}, but this data directory was first started with --role {first_role}: \
                 it goes on announcing {first_role} until the cluster's first configuration is chosen (a role \
                 changed during the bootstrap could let two nodes disagree on who must vote); change roles \
                 afterwards with `paxos-cli member role {} ROLE`",
                config.role,
                config.id
            );
        }
        durable.role = Some(first_role);
        tracing::info!(
            node = config.id,
            incarnation = format_args!("{incarnation:016x}"),
            promised = %durable.promised,
            applied_upto = durable.applied_upto,
            history_start = durable.truncation.history_start,
            accepted_records = durable.accepted.len(),
            configuration = ?durable.membership.as_ref().and_then(|m| m.chosen_at),
            "recovered from {}",
            config.data_dir.display()
        );
        if let Some(membership) = &durable.membership {
            let role = membership.get(config.id).map(|member| member.role);
            if role.is_some_and(|role| role != config.role) {
                tracing::warn!(
                    "started with --role {}, but the configuration chosen at slot {:?} makes this node {}: \
                     following the configuration (--role only counts in a new cluster's bootstrap; change \
                     roles with `paxos-cli member role {} ROLE`)",
                    config.role,
                    membership.chosen_at,
                    role.map_or_else(String::new, |role| role.with_article()),
                    config.id
                );
            }
            let chosen: BTreeMap<u64, String> =
                membership.members.iter().map(|(id, m)| (*id, m.address.clone())).collect();
            if chosen != config.members {
                tracing::warn!(
                    flags = ?config.members,
                    configuration = ?chosen,
                    "the --peer flags differ from the configuration chosen at slot {:?}: following the configuration (--peer only bootstraps a new cluster)",
                    membership.chosen_at
                );
            }
        }
        // Election jitter only needs to differ between nodes and runs.
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
            ^ u64::from(std::process::id()) << 32
            ^ config.id;
        let replica = Replica::recover(config.core(incarnation), durable, seed);
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|error| StartError::Listen { addr: config.listen, error })?;
        let local_addr =
            listener.local_addr().map_err(|error| StartError::Listen { addr: config.listen, error })?;
        let metrics = Arc::new(Metrics::new());
        let metrics_listener = match config.metrics_listen {
            None => None,
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|error| StartError::MetricsListen { addr, error })?;
                let bound =
                    listener.local_addr().map_err(|error| StartError::MetricsListen { addr, error })?;
                Some((listener, bound))
            }
        };

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let tasks = TaskTracker::new();
        let template = LinkIdentity {
            node_id: config.id,
            incarnation,
            role: config.role,
            peer_id: 0,
            peer_addr: String::new(),
            cluster: config.cluster.clone(),
            security: config.security.clone(),
            flush_timeout: config.timeouts.frame,
        };
        let links = PeerLinks::new(
            template,
            tokio::runtime::Handle::current(),
            tasks.clone(),
            shutdown_rx.clone(),
            PEER_QUEUE_MAX,
        );

        let (inputs_tx, inputs_rx) = sync_channel(INPUT_QUEUE_MAX);
        let (done_tx, done_rx) = oneshot::channel();
        let allowed_peers = links.allowed_peers();
        let driver = Driver::new(config.clone(), replica, storage, links, metrics.clone(), inputs_tx.clone())
            .map_err(|error| StartError::Io {
                what: "cannot start the history reader thread".into(),
                error,
            })?;
        std::thread::Builder::new()
            .name(format!("paxos-driver-{}", config.id))
            .spawn(move || {
                let result = driver.run(inputs_rx);
                let _ = done_tx.send(result);
            })
            .map_err(|error| StartError::Io { what: "cannot start the driver thread".into(), error })?;

        let context = ServerContext {
            node_id: config.id,
            cluster: config.cluster.clone(),
            inputs: inputs_tx.clone(),
            security: config.security.clone(),
            timeouts: config.timeouts,
            // Not the node's own value limit: a larger value must reach the core to be refused
            // as too large, not close the connection as a malformed frame.
            client_frame_bytes_max: crate::wire::VALUE_BYTES_LIMIT + (64 << 10),
            metrics: metrics.clone(),
            allowed_peers,
            client_connections_max: config.client_connections_max,
            handshakes_max: config.handshakes_max,
            connection_request_bytes_max: (2 * config.value_bytes_max).max(64 << 10),
        };
        let metrics_addr = metrics_listener.as_ref().map(|(_, bound)| *bound);
        if let Some((listener, bound)) = metrics_listener {
            tasks.spawn(crate::metrics_server::serve(listener, metrics, tasks.clone(), shutdown_rx.clone()));
            tracing::info!(node = config.id, "metrics at http://{bound}/metrics");
        }
        tasks.spawn(server::serve(listener, context, shutdown_rx));
        tasks.close();
        tracing::info!(node = config.id, %local_addr, members = ?config.members, "serving");
        Ok(NodeHandle {
            local_addr,
            metrics_addr,
            inputs: Some(inputs_tx),
            shutdown: shutdown_tx,
            driver_done: done_rx,
            tasks,
        })
    }

    /// Waits until the driver stops: after `shutdown`, or on a fatal storage error.
    pub async fn wait(&mut self) -> Result<(), DriverError> {
        // The driver thread reports how it stopped; a thread that panicked never does.
        let result = (&mut self.driver_done).await.unwrap_or(Err(DriverError::Panicked));
        let _ = self.shutdown.send(true);
        result
    }

    /// Stops accepting work, lets the driver finish its current batch, closes connections and
    /// waits (a bounded time) for every connection task and peer link to end.
    pub async fn shutdown(mut self) -> Result<(), DriverError> {
        let _ = self.shutdown.send(true);
        // The queue may be full; the driver also stops when every sender is gone, and the
        // connection tasks drop theirs as they stop on the signal above: drop ours too.
        if let Some(inputs) = self.inputs.take() {
            let _ = inputs.try_send(Input::Shutdown);
        }
        let result = self.wait().await;
        if tokio::time::timeout(TASKS_STOP_TIMEOUT, self.tasks.wait()).await.is_err() {
            tracing::warn!(tasks = self.tasks.len(), "connection tasks still running at shutdown");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::Connection;
    use crate::tls::Security;
    use crate::wire::{Caller, Frame, Hello, Request, PROTOCOL_VERSION};
    use futures::SinkExt;
    use std::time::Duration;

    /// When `shutdown` returns, the connection tasks are gone, even one whose client stopped
    /// reading: its socket is closed by then, so everything the client can still read is
    /// already there, followed by the end of the stream.
    #[tokio::test]
    async fn shutdown_waits_for_connection_tasks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = NodeConfig {
            id: 1,
            listen: "127.0.0.1:0".parse().expect("addr"),
            members: BTreeMap::from([(1, "127.0.0.1:0".to_owned())]),
            data_dir: dir.path().to_owned(),
            cluster: "c".into(),
            tick: Duration::from_millis(10),
            heartbeat_interval_ticks: 2,
            election_timeout_ticks: 10,
            value_bytes_max: 1 << 20,
            security: Security::InsecurePlaintext,
            timeouts: crate::config::DEFAULT_TIMEOUTS,
            initial_cluster_state: crate::config::ClusterState::New,
            role: paxos_core::MemberRole::Voter,
            metrics_listen: None,
            client_connections_max: 16,
            handshakes_max: 8,
        };
        let node = NodeHandle::start(config).await.expect("start");
        let mut options =
            crate::client::ClientOptions::new(vec![node.local_addr.to_string()], Security::InsecurePlaintext);
        options.cluster = "c".into();
        let client = crate::client::Client::new(options).expect("client");
        let slot = client.propose(vec![7; 1 << 20]).await.expect("proposed");
        let hello =
            Hello { protocol_version: PROTOCOL_VERSION, cluster_id: "c".into(), caller: Caller::Client };
        let timeout = Duration::from_secs(2);
        let (connection, _) = Connection::connect(
            &node.local_addr.to_string(),
            hello,
            &Security::InsecurePlaintext,
            "node.c",
            timeout,
            timeout,
        )
        .await
        .expect("connect");
        let (mut sink, mut stream) = connection.split();
        // 64 MiB of answers that this client never reads: the node's writer blocks.
        for id in 0..64 {
            sink.send(Frame::Request {
                id,
                request: Request::History { from_slot: slot, limit: 1, consistency: Default::default() },
            })
            .await
            .expect("send");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        tokio::time::timeout(Duration::from_secs(10), node.shutdown())
            .await
            .expect("shutdown finishes")
            .expect("clean shutdown");
        // Reads see what is buffered, then the end at once; a connection task still draining
        // would hold the socket open for up to its drain timeout (1 s).
        let mut answers = 0;
        loop {
            match tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
                Ok(Some(Ok(_))) => answers += 1,
                Ok(None) | Ok(Some(Err(_))) => break,
                Err(_) => panic!("the connection is still open after shutdown ({answers} answers read)"),
            }
        }
        assert!(answers < 64, "the client never read, so not every answer can have been written");
    }
}
