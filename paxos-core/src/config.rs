//! Static configuration of a replica: who the members are and every limit, in ticks and bytes.

use crate::membership::{Incarnation, MemberRole};
use crate::requests::TableLimits;
use crate::types::NodeId;
use std::collections::BTreeMap;

/// Configuration of one replica. All durations are in ticks of the driver's logical clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This replica's id; must be in `members` unless `join_existing`.
    pub id: NodeId,
    /// This replica's data directory's incarnation (see [`crate::Incarnation`]); never 0.
    pub incarnation: Incarnation,
    /// The role this replica was started with (`--role`): announced while the configuration is
    /// the bootstrap one, and kept by the binding entry. Afterwards the log's configuration wins.
    ///
    /// # Correctness
    /// While unbound, every replica derives who must vote unanimously from the roles it has
    /// heard announced; a member that announced a role that holds no vote (a proposer) and
    /// later announces one that does would let two views choose two binding entries. So a
    /// directory announces the role it was *first* started with: the driver keeps that role
    /// beside the incarnation and hands it back in `DurableState::role`, which wins over this
    /// field.
    pub role: MemberRole,
    /// The bootstrap configuration's members (the `--peer` flags). Only a replica whose storage
    /// holds no chosen configuration uses it; the log's configuration wins afterwards.
    pub members: Vec<NodeId>,
    /// The bootstrap configuration's addresses, by member (opaque to the core).
    pub addresses: BTreeMap<NodeId, String>,
    /// This replica joins a cluster that exists already (`--initial-cluster-state existing`):
    /// until it has learned a chosen configuration from its peers it neither votes nor leads.
    pub join_existing: bool,
    /// The leader sends a heartbeat when it has sent nothing for this many ticks.
    pub heartbeat_interval_ticks: u64,
    /// A follower that hears from no leader for a random time in
    /// `[election_timeout_ticks, 2 * election_timeout_ticks)` starts an election.
    pub election_timeout_ticks: u64,
    /// A forwarded proposal with no answer after this many ticks is answered `Timeout`.
    pub forward_timeout_ticks: u64,
    /// An unanswered catch-up request is sent again (to another member ahead, if there is one)
    /// after this many ticks, doubled for each request in a row that went unanswered (up to 16
    /// times; see `Learner::catch_up_from`).
    pub catch_up_timeout_ticks: u64,
    /// Slots the leader may have proposed but not yet applied (the pipeline window).
    pub slots_in_flight_max: u64,
    /// Bytes of the values in the window (`Value::size_bytes`); a window always takes one
    /// value, however large. With 1 MiB values the slot bound alone let 4 GiB pile up.
    pub window_bytes_max: usize,
    /// Entries in one Accept or CatchUpEntries message; in a Promise, history entries, and
    /// slots of accepted records and pending chosen values (phase 1 pages through the rest).
    pub entries_per_message_max: usize,
    /// Bytes of values in one Accept or CatchUpEntries message, or in each of a Promise's two
    /// pages (at least one entry is always sent; see [`crate::page_has_room`]).
    pub message_bytes_max: usize,
    /// Proposals the leader queues while the window is full; beyond this they are refused.
    pub proposals_queued_max: usize,
    /// Payload bytes the leader queues while the window is full (one proposal always fits);
    /// beyond this, proposals are refused as overloaded (retryable).
    pub proposals_queued_bytes_max: usize,
    /// Holes a new leader fills with no-ops after phase 1: open slots below the highest vote
    /// reported for which no promise reports a vote or a chosen value. Honest clusters have few
    /// (slots whose every voter is down); a promise claiming a vote far beyond the rest would
    /// make the candidate invent a no-op for every slot up to it, so above this it does not
    /// lead (never a safety risk: it only gives up this candidacy).
    pub phase_one_holes_max: u64,
    /// Largest client value, in bytes.
    pub value_bytes_max: usize,
    /// Limits of the duplicate-request table.
    pub request_table: TableLimits,
    /// The pre-vote and leader stickiness (see `election.rs`). Always on in the node; off only
    /// in hand-routed test schedules that depose a leader its followers still heard (they model
    /// followers whose timers ran out without ticking them).
    pub pre_vote: bool,
}

impl Config {
    /// The default largest client value, in bytes.
    pub const VALUE_BYTES_MAX_DEFAULT: usize = 1 << 20;
    /// The default `entries_per_message_max`.
    pub const ENTRIES_PER_MESSAGE_MAX_DEFAULT: usize = 1024;
    /// The default `message_bytes_max`.
    pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 4 << 20;

    /// A configuration with the default limits for the given members.
    pub fn new(id: NodeId, members: Vec<NodeId>) -> Self {
        Config {
            id,
            incarnation: id,
            role: MemberRole::Voter,
            members,
            addresses: BTreeMap::new(),
            join_existing: false,
            heartbeat_interval_ticks: 2,
            election_timeout_ticks: 10,
            forward_timeout_ticks: 50,
            catch_up_timeout_ticks: 5,
            slots_in_flight_max: 4096,
            window_bytes_max: 32 << 20,
            entries_per_message_max: Self::ENTRIES_PER_MESSAGE_MAX_DEFAULT,
            message_bytes_max: Self::MESSAGE_BYTES_MAX_DEFAULT,
            proposals_queued_max: 65_536,
            proposals_queued_bytes_max: 64 << 20,
            phase_one_holes_max: 1 << 20,
            value_bytes_max: Self::VALUE_BYTES_MAX_DEFAULT,
            request_table: TableLimits { clients_max: 4096, seqs_per_client_max: 1024 },
            pre_vote: true,
        }
    }

    /// Panics on a configuration no cluster can run with: these are programming errors.
    pub fn validate(&self) {
        assert!(!self.members.is_empty(), "a cluster needs members");
        assert!(self.join_existing || self.members.contains(&self.id), "replica {} is not a member", self.id);
        assert_ne!(self.incarnation, 0, "incarnation 0 means unbound");
        let mut sorted = self.members.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), self.members.len(), "duplicate member ids");
        assert!(!self.members.contains(&0), "node id 0 is reserved");
        assert!(self.heartbeat_interval_ticks >= 1);
        assert!(
            self.election_timeout_ticks > self.heartbeat_interval_ticks,
            "election timeout must exceed the heartbeat interval"
        );
        assert!(self.slots_in_flight_max >= 1);
        assert!(self.entries_per_message_max >= 1);
        assert!(self.request_table.clients_max >= 1 && self.request_table.seqs_per_client_max >= 1);
    }
}
