//! What a node counts and measures, in Prometheus' data model (served by [`crate::metrics_server`]
//! when `--metrics-listen` is given).
//!
//! Counters and histograms are updated where things happen (the driver's Ready loop, the
//! server); gauges that mirror the replica's state are refreshed by the driver once per tick, so
//! a scrape sees the state of at most one tick ago and costs the driver nothing. Every metric is
//! an atomic (or a map of atomics behind a lock): updating one never waits on a scrape for long.
//!
//! Names carry their unit last (`_seconds`, `_slots`, `_records`), as the house style and
//! Prometheus' conventions both want; counters end in `_total`.

use paxos_core::{ProposalError, RoleName, Value};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// A gauge of a non-negative quantity (slots, ids, counts).
pub type GaugeU64 = Gauge<u64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: &'static str,
}

/// Every metric a node exports, and the registry that names them. Cheap to share: each metric
/// is a handle to atomics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// From a client's proposal reaching this node to its answer, for proposals chosen.
    pub proposal_duration: Histogram,
    /// From this node's write of an accepted record for a slot to its learning that the slot is
    /// chosen (on the leader: one accept round and its quorum; on a follower: until the leader's
    /// word that it is chosen).
    pub commit_duration: Histogram,
    /// One synced write batch (RocksDB's write with its WAL fsync).
    pub fsync_duration: Histogram,
    /// Records in one synced write batch (promises, accepted values, history entries...).
    pub fsync_batch_records: Histogram,
    pub fsyncs: Counter,
    pub storage_written: Counter,
    pub values_chosen: Family<KindLabels, Counter>,
    pub proposals_received: Counter,
    pub proposals_refused: Family<ReasonLabels, Counter>,
    pub leader_changes: Counter,
    /// Leaderships and candidacies this node gave up, by reason (see `paxos_core::StepDownReason`).
    pub step_downs: Family<ReasonLabels, Counter>,
    /// Elections this node started (phase 1), by reason.
    pub campaigns: Family<ReasonLabels, Counter>,
    /// Refusals of this node's pre-votes.
    pub pre_votes_refused: Counter,
    /// Prepares above the promise this node left unanswered for a live leader (stickiness).
    pub prepares_ignored: Counter,
    /// 1 while this node leads or knows of a leader at work.
    pub has_leader: GaugeU64,
    pub ballot_round: GaugeU64,
    pub ballot_node: GaugeU64,
    pub promised_round: GaugeU64,
    pub role: Family<RoleLabels, GaugeU64>,
    pub leader_id: GaugeU64,
    pub applied_upto: GaugeU64,
    pub history_start: GaugeU64,
    pub accepted_records: GaugeU64,
    pub peer_connected: Family<PeerLabels, GaugeU64>,
    pub peer_applied_upto: Family<PeerLabels, GaugeU64>,
    pub peer_lag: Family<PeerLabels, GaugeU64>,
    pub requests_in_flight: GaugeU64,
    pub client_connections: GaugeU64,
    /// What needs an operator, by kind, as `StatusReport::problems` words it: `not_admitted`
    /// (a peer says the configuration does not admit this node's data directory),
    /// `refused_incarnation` (a member came back with another directory), `foreign_log` (a peer
    /// holds another cluster's log). Each is the number of peers reporting it; an alert fires on
    /// `sum(paxos_problems) > 0`.
    pub problems: Family<KindLabels, GaugeU64>,
}

/// The kinds of [`Metrics::problems`], all exported (at 0 when absent) so an alert's series exist.
pub const PROBLEM_KINDS: [&str; 3] = ["not_admitted", "refused_incarnation", "foreign_log"];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Latencies from 100 µs to ~6.5 s, doubling: a synced write on a fast SSD to an election.
fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_1, 2.0, 17)
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("paxos");
        let proposal_duration = Histogram::new(duration_buckets());
        registry.register_with_unit(
            "proposal_duration",
            "From a client's proposal reaching this node to its answer, for proposals chosen",
            Unit::Seconds,
            proposal_duration.clone(),
        );
        let commit_duration = Histogram::new(duration_buckets());
        registry.register_with_unit(
            "commit_duration",
            "From this node's durable accept of a slot to its learning that the slot is chosen",
            Unit::Seconds,
            commit_duration.clone(),
        );
        let fsync_duration = Histogram::new(duration_buckets());
        registry.register_with_unit(
            "fsync_duration",
            "One synced write batch to RocksDB, its WAL fsync included",
            Unit::Seconds,
            fsync_duration.clone(),
        );
        let fsync_batch_records = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            "fsync_batch_records",
            "Records (promises, accepted values, history entries, ...) in one synced write batch",
            fsync_batch_records.clone(),
        );
        let fsyncs = Counter::default();
        registry.register("fsyncs", "Synced write batches since the node started", fsyncs.clone());
        let storage_written = Counter::default();
        registry.register_with_unit(
            "storage_written",
            "Bytes of the write batches this node wrote to RocksDB, which its write-ahead log records",
            Unit::Bytes,
            storage_written.clone(),
        );
        let values_chosen = Family::<KindLabels, Counter>::default();
        registry.register(
            "values_chosen",
            "Slots this node learned chosen and applied, by kind of value",
            values_chosen.clone(),
        );
        let proposals_received = Counter::default();
        registry.register(
            "proposals_received",
            "Proposals clients sent to this node (forwarded to the leader when it is not the leader)",
            proposals_received.clone(),
        );
        let proposals_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "proposals_refused",
            "Proposals to this node answered with an error, by reason",
            proposals_refused.clone(),
        );
        let leader_changes = Counter::default();
        registry.register(
            "leader_changes",
            "Times the leader this node knows of changed to another node (checked once per tick)",
            leader_changes.clone(),
        );
        let step_downs = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "step_downs",
            "Leaderships (and candidacies) this node gave up, by reason",
            step_downs.clone(),
        );
        let campaigns = Family::<ReasonLabels, Counter>::default();
        registry.register("campaigns", "Elections (phase 1) this node started, by reason", campaigns.clone());
        let pre_votes_refused = Counter::default();
        registry.register(
            "pre_votes_refused",
            "Refusals of this node's pre-votes (a member that hears a leader, or promised another)",
            pre_votes_refused.clone(),
        );
        let prepares_ignored = Counter::default();
        registry.register(
            "prepares_ignored",
            "Prepares above its promise this node left unanswered because it hears a live leader",
            prepares_ignored.clone(),
        );
        let has_leader = GaugeU64::default();
        registry.register(
            "has_leader",
            "1 while this node leads or knows of a leader at work",
            has_leader.clone(),
        );
        let ballot_round = GaugeU64::default();
        registry.register(
            "ballot_round",
            "Round of this node's ballot: the one it leads or campaigns with, else the one it promised",
            ballot_round.clone(),
        );
        let ballot_node = GaugeU64::default();
        registry.register("ballot_node", "Node id of the ballot in paxos_ballot_round", ballot_node.clone());
        let promised_round = GaugeU64::default();
        registry.register(
            "promised_round",
            "Round of the ballot this node's acceptor promised (on disk)",
            promised_round.clone(),
        );
        let role = Family::<RoleLabels, GaugeU64>::default();
        registry.register("role", "1 for what this node is doing now, 0 for the rest", role.clone());
        let leader_id = GaugeU64::default();
        registry.register("leader_id", "The leader this node knows of (0: none)", leader_id.clone());
        let applied_upto = GaugeU64::default();
        registry.register_with_unit(
            "applied_upto",
            "Every slot below this one is chosen and applied here",
            Unit::Other("slot".into()),
            applied_upto.clone(),
        );
        let history_start = GaugeU64::default();
        registry.register_with_unit(
            "history_start",
            "First slot still in this node's history (history below was truncated)",
            Unit::Other("slot".into()),
            history_start.clone(),
        );
        let accepted_records = GaugeU64::default();
        registry.register(
            "accepted_records",
            "Accepted records held (those of applied slots are collected periodically)",
            accepted_records.clone(),
        );
        let peer_connected = Family::<PeerLabels, GaugeU64>::default();
        registry.register(
            "peer_connected",
            "1 while this node's outbound link to the member is up",
            peer_connected.clone(),
        );
        let peer_applied_upto = Family::<PeerLabels, GaugeU64>::default();
        registry.register_with_unit(
            "peer_applied_upto",
            "How far the member has applied, as this node last heard (the leader hears from everyone)",
            Unit::Other("slot".into()),
            peer_applied_upto.clone(),
        );
        let peer_lag = Family::<PeerLabels, GaugeU64>::default();
        registry.register_with_unit(
            "peer_lag",
            "This node's applied prefix minus the member's, as this node last heard",
            Unit::Other("slots".into()),
            peer_lag.clone(),
        );
        let requests_in_flight = GaugeU64::default();
        registry.register(
            "requests_in_flight",
            "Proposals and configuration changes this node is waiting on for its clients",
            requests_in_flight.clone(),
        );
        let client_connections = GaugeU64::default();
        registry.register("client_connections", "Client connections open", client_connections.clone());
        let problems = Family::<KindLabels, GaugeU64>::default();
        registry.register(
            "problems",
            "Peers reporting a problem that needs an operator, by kind (see paxos-cli status)",
            problems.clone(),
        );
        for kind in PROBLEM_KINDS {
            problems.get_or_create(&KindLabels { kind }).set(0);
        }
        // Constant labels an alert or a dashboard joins on: which build answers here.
        let build = Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
            ("protocol", paxos_client::wire::PROTOCOL_VERSION.to_string()),
            ("storage_format", crate::storage::STORAGE_FORMAT.to_string()),
        ]);
        registry.register("build", "The paxos-node build answering", build);
        Metrics {
            registry,
            proposal_duration,
            commit_duration,
            fsync_duration,
            fsync_batch_records,
            fsyncs,
            storage_written,
            values_chosen,
            proposals_received,
            proposals_refused,
            leader_changes,
            step_downs,
            campaigns,
            pre_votes_refused,
            prepares_ignored,
            has_leader,
            ballot_round,
            ballot_node,
            promised_round,
            role,
            leader_id,
            applied_upto,
            history_start,
            accepted_records,
            peer_connected,
            peer_applied_upto,
            peer_lag,
            requests_in_flight,
            client_connections,
            problems,
        }
    }

    /// The Prometheus text exposition (OpenMetrics) of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    pub fn observe_duration(histogram: &Histogram, duration: Duration) {
        histogram.observe(duration.as_secs_f64());
    }

    pub fn refused(&self, reason: &'static str) {
        self.proposals_refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn chosen(&self, value: &Value) {
        self.values_chosen.get_or_create(&KindLabels { kind: value_kind(value) }).inc();
    }

    pub fn set_role(&self, current: RoleName) {
        for role in [RoleName::Follower, RoleName::Candidate, RoleName::Leader] {
            let labels = RoleLabels { role: role_name(role) };
            self.role.get_or_create(&labels).set(u64::from(role == current));
        }
    }
}

/// The `reason` label of a proposal refused by the protocol.
pub fn refusal_reason(error: &ProposalError) -> &'static str {
    match error {
        ProposalError::NotLeader { .. } => "not_leader",
        ProposalError::Timeout => "timeout",
        ProposalError::Overloaded => "overloaded",
        ProposalError::RequestExpired(_) => "request_expired",
        ProposalError::SessionExpired(_) => "session_expired",
        ProposalError::RegistrationExpired { .. } => "registration_expired",
        ProposalError::WrongSessionKey(_) => "wrong_session_key",
        ProposalError::RequestIdReused(_) => "request_id_reused",
        ProposalError::RequestIdBusy(_) => "request_id_busy",
        ProposalError::TooLarge { .. } => "too_large",
        ProposalError::ChangeInProgress => "change_in_progress",
        ProposalError::ChangeRefused(_) => "change_refused",
    }
}

fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::Noop => "noop",
        Value::Command { .. } => "command",
        Value::Register { .. } => "register",
        Value::Config(_) => "config",
    }
}

fn role_name(role: RoleName) -> &'static str {
    match role {
        RoleName::Follower => "follower",
        RoleName::Candidate => "candidate",
        RoleName::Leader => "leader",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric_with_its_unit_and_type() {
        let metrics = Metrics::new();
        metrics.chosen(&Value::Noop);
        metrics.refused("overloaded");
        metrics.set_role(RoleName::Leader);
        metrics.peer_lag.get_or_create(&PeerLabels { peer: 2 }).set(7);
        Metrics::observe_duration(&metrics.fsync_duration, Duration::from_millis(3));
        let text = metrics.encode();
        let build = format!(
            "paxos_build_info{{version=\"{}\",protocol=\"{}\",storage_format=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            paxos_client::wire::PROTOCOL_VERSION,
            crate::storage::STORAGE_FORMAT
        );
        assert!(text.lines().any(|l| l == build), "no line {build:?} in:\n{text}");
        for line in [
            "# TYPE paxos_proposal_duration_seconds histogram",
            "# TYPE paxos_fsync_duration_seconds histogram",
            "paxos_fsync_duration_seconds_count 1",
            "paxos_values_chosen_total{kind=\"noop\"} 1",
            "paxos_proposals_refused_total{reason=\"overloaded\"} 1",
            "paxos_role{role=\"leader\"} 1",
            "paxos_role{role=\"follower\"} 0",
            "paxos_peer_lag_slots{peer=\"2\"} 7",
            "paxos_problems{kind=\"not_admitted\"} 0",
            "paxos_problems{kind=\"foreign_log\"} 0",
            "# TYPE paxos_applied_upto_slot gauge",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
    }

    #[test]
    fn every_refusal_has_a_reason_label() {
        let errors = [
            ProposalError::NotLeader { leader_hint: None },
            ProposalError::Timeout,
            ProposalError::Overloaded,
            ProposalError::RequestExpired(paxos_core::RequestId { client_id: 1, seq: 1 }),
            ProposalError::SessionExpired(1),
            ProposalError::TooLarge { size_bytes: 2, limit_bytes: 1 },
            ProposalError::ChangeInProgress,
        ];
        let reasons: std::collections::BTreeSet<_> = errors.iter().map(refusal_reason).collect();
        assert_eq!(reasons.len(), errors.len());
    }
}
