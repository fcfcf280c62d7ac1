//! The reads a replica holds until it can answer them: as a leader, reads waiting for a quorum
//! to acknowledge a heartbeat round; as the replica a client asked, reads forwarded to the
//! leader and reads waiting for the applied prefix to reach their index. The protocol that
//! moves them (the read index) is in read_index.rs.

use crate::message::ProposalError;
use crate::rng::Rng;
use crate::types::{Ballot, NodeId, Slot};
use std::collections::btree_map::Entry;
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
    ballot: Ballot,
    round: u64,
    pub(crate) read_upto: Slot,
    pub(crate) origin: ReadOrigin,
    deadline_tick: u64,
}

/// The reads a replica holds, as a leader (confirming) and as the replica a client asked
/// (forwarded to the leader, then waiting for the applied prefix).
///
/// Bounded: at most [`READS_PENDING_MAX`] reads in all, each with a deadline.
#[derive(Debug, Default)]
pub(crate) struct Reads {
    /// The round the leader's heartbeats carry; acknowledgements echo it. A read waits for a
    /// round sent after it arrived.
    round: u64,
    /// A read waits for a round not sent yet: one round is in flight at a time, so reads that
    /// arrive meanwhile share the next.
    round_due: bool,
    /// The ballot `acked` counts in.
    acked_ballot: Ballot,
    /// The highest round each member acknowledged in `acked_ballot`.
    acked: BTreeMap<NodeId, u64>,
    confirming: Vec<Confirming>,
    /// Reads forwarded to a leader, by the number the `ReadIndex` carried: (the caller's
    /// request, leader, deadline tick).
    forwarded: BTreeMap<u64, (u64, NodeId, u64)>,
    /// Numbers `ReadIndex` messages: drawn at random once per replica (so per boot), then
    /// counted up. A caller's request numbers may repeat across restarts (a driver counts from
    /// 0 each time), and an answer to a read of an earlier life, still in flight, must not
    /// answer a new read with the same number (found by a review: it answered a read with
    /// an index taken before a value the read must see was acknowledged).
    next_forward: Option<u64>,
    /// Reads whose index is known, waiting for the applied prefix: (request, read_upto,
    /// deadline tick).
    waiting: Vec<(u64, Slot, u64)>,
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

    /// The highest round each member acknowledged in `ballot` (none when the acknowledgements
    /// held are of another ballot).
    pub(crate) fn acked_in(&self, ballot: Ballot) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        let held = if self.acked_ballot == ballot { Some(&self.acked) } else { None };
        held.into_iter().flatten().map(|(node, round)| (*node, *round))
    }

    /// A read the leader took an index for, in `ballot`: it waits for a round sent after it
    /// arrived. One round is in flight at a time; a read that arrives meanwhile waits for the
    /// next, which is due. Whether a round must go out now.
    pub(crate) fn confirm_later(
        &mut self,
        ballot: Ballot,
        read_upto: Slot,
        origin: ReadOrigin,
        deadline_tick: u64,
    ) -> bool {
        let in_flight = self.confirming.iter().any(|read| read.round == self.round);
        let send_now = !self.round_due && !in_flight;
        if send_now {
            self.round += 1;
        } else {
            self.round_due = true;
        }
        let round = self.round + u64::from(!send_now);
        self.confirming.push(Confirming { ballot, round, read_upto, origin, deadline_tick });
        send_now
    }

    /// Whether reads wait for a round.
    pub(crate) fn confirming_any(&self) -> bool {
        !self.confirming.is_empty()
    }

    /// Takes the reads of `ballot` whose round is at most `confirmed`: a quorum acknowledged it.
    pub(crate) fn take_confirmed(&mut self, ballot: Ballot, confirmed: u64) -> Vec<Confirming> {
        let (done, waiting): (Vec<Confirming>, Vec<Confirming>) = std::mem::take(&mut self.confirming)
            .into_iter()
            .partition(|read| read.round <= confirmed && read.ballot == ballot);
        self.confirming = waiting;
        done
    }

    /// Starts the due round if every read still waiting waits for a later one than the last
    /// sent (that one is answered); whether it started, and a heartbeat must carry it.
    pub(crate) fn start_due_round_if_idle(&mut self) -> bool {
        if self.round_due && self.confirming.iter().all(|read| read.round > self.round) {
            self.start_due_round();
            return true;
        }
        false
    }

    /// This leadership ended: the reads it was confirming, and no round is due any more.
    pub(crate) fn take_confirming(&mut self) -> Vec<Confirming> {
        self.round_due = false;
        std::mem::take(&mut self.confirming)
    }

    /// A read forwarded to `leader` for the caller's `request`: the number its `ReadIndex`
    /// carries. Numbers start at random once per replica (so per boot), then count up.
    pub(crate) fn forward(&mut self, request: u64, leader: NodeId, deadline_tick: u64, rng: &mut Rng) -> u64 {
        let number = self.next_forward.unwrap_or_else(|| rng.next_u64());
        self.next_forward = Some(number.wrapping_add(1));
        self.forwarded.insert(number, (request, leader, deadline_tick));
        number
    }

    /// The caller's request of the read forwarded as `number`, taken if `from` is the leader it
    /// was forwarded to (only that leader answers it).
    pub(crate) fn take_forwarded(&mut self, number: u64, from: NodeId) -> Option<u64> {
        match self.forwarded.entry(number) {
            Entry::Occupied(entry) if entry.get().1 == from => Some(entry.remove().0),
            _ => None,
        }
    }

    /// Every read forwarded, taken: the caller's requests (the leader they went to may be lost).
    pub(crate) fn take_all_forwarded(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.forwarded).into_values().map(|(request, ..)| request).collect()
    }

    /// A read whose index is known waits until the applied prefix reaches `read_upto`.
    pub(crate) fn wait_for_apply(&mut self, request: u64, read_upto: Slot, deadline_tick: u64) {
        self.waiting.push((request, read_upto, deadline_tick));
    }

    /// The answers now due: reads the applied prefix covers, and reads past their deadline at
    /// tick `now`, each taken from where it waited.
    pub(crate) fn release(
        &mut self,
        applied_upto: Slot,
        now: u64,
    ) -> Vec<(ReadOrigin, Result<Slot, ProposalError>)> {
        let mut answers = Vec::new();
        if self.pending() == 0 {
            return answers;
        }
        self.waiting.retain(|(request, read_upto, deadline_tick)| {
            if *read_upto <= applied_upto {
                answers.push((ReadOrigin::Local(*request), Ok(*read_upto)));
            } else if now > *deadline_tick {
                answers.push((ReadOrigin::Local(*request), Err(ProposalError::Timeout)));
            } else {
                return true;
            }
            false
        });
        self.forwarded.retain(|_, (request, _, deadline_tick)| {
            let late = now > *deadline_tick;
            if late {
                answers.push((ReadOrigin::Local(*request), Err(ProposalError::Timeout)));
            }
            !late
        });
        self.confirming.retain(|read| {
            let late = now > read.deadline_tick;
            if late {
                answers.push((read.origin, Err(ProposalError::Timeout)));
            }
            !late
        });
        answers
    }
}
