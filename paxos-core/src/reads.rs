//! The reads a replica holds until it can answer them: as a leader, reads waiting for a quorum
//! to acknowledge a heartbeat round; as the replica a client asked, reads forwarded to the
//! leader and reads waiting for the applied prefix to reach their index. The protocol that
//! moves them (the read index) is in read_index.rs.

use crate::types::{Ballot, NodeId, Slot};
use std::collections::BTreeMap;

/// Reads a replica holds at once (waiting for a round, forwarded, waiting to apply): past it a
/// read is refused as overloaded.
pub const READS_PENDING_MAX: usize = 4096;

/// Who asked a leader for a read index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadOrigin {
    Local(u64),
    Remote(NodeId, u64),
}

/// A read waiting at the leader for a quorum to acknowledge `round` in `ballot`.
#[derive(Clone, Debug)]
pub(crate) struct Confirming {
    /// The leadership that took the index: only its own acknowledgements confirm it.
    pub(crate) ballot: Ballot,
    pub(crate) round: u64,
    pub(crate) read_upto: Slot,
    pub(crate) origin: ReadOrigin,
    pub(crate) deadline_tick: u64,
}

/// The reads a replica holds, as a leader (confirming) and as the replica a client asked
/// (forwarded to the leader, then waiting for the applied prefix).
///
/// Bounded: at most [`READS_PENDING_MAX`] reads in all, each with a deadline.
#[derive(Debug, Default)]
pub(crate) struct Reads {
    /// The round the leader's heartbeats carry; acknowledgements echo it. A read waits for a
    /// round sent after it arrived.
    pub(crate) round: u64,
    /// A read waits for a round not sent yet: one round is in flight at a time, so reads that
    /// arrive meanwhile share the next.
    pub(crate) round_due: bool,
    /// The ballot `acked` counts in.
    pub(crate) acked_ballot: Ballot,
    /// The highest round each member acknowledged in `acked_ballot`.
    pub(crate) acked: BTreeMap<NodeId, u64>,
    pub(crate) confirming: Vec<Confirming>,
    /// Reads forwarded to a leader, by the number the `ReadIndex` carried: (the caller's
    /// request, leader, deadline tick).
    pub(crate) forwarded: BTreeMap<u64, (u64, NodeId, u64)>,
    /// Numbers `ReadIndex` messages: drawn at random once per replica (so per boot), then
    /// counted up. A caller's request numbers may repeat across restarts (a driver counts from
    /// 0 each time), and an answer to a read of an earlier life, still in flight, must not
    /// answer a new read with the same number (found by a review: it answered a read with
    /// an index taken before a value the read must see was acknowledged).
    pub(crate) next_forward: Option<u64>,
    /// Reads whose index is known, waiting for the applied prefix: (request, read_upto,
    /// deadline tick).
    pub(crate) waiting: Vec<(u64, Slot, u64)>,
}

impl Reads {
    /// The round the leader's next heartbeat carries.
    pub(crate) fn round(&self) -> u64 {
        self.round
    }

    pub(crate) fn pending(&self) -> usize {
        self.confirming.len() + self.forwarded.len() + self.waiting.len()
    }

    /// A heartbeat goes out now on its own timer: it carries the round a read waits for, if
    /// one does.
    pub(crate) fn start_due_round(&mut self) {
        if self.round_due {
            self.round_due = false;
            self.round += 1;
        }
    }

    /// `from` acknowledged `round` in `ballot`.
    pub(crate) fn note_ack(&mut self, ballot: Ballot, from: NodeId, round: u64) {
        if ballot != self.acked_ballot {
            self.acked_ballot = ballot;
            self.acked.clear();
        }
        let acked = self.acked.entry(from).or_default();
        *acked = (*acked).max(round);
    }
}
