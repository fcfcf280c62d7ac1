//! What the replica asks its driver to do: the `Ready` contract.

#[allow(unused_imports)] // for doc links
use crate::message::Message;
use crate::message::{Envelope, ProposalError, TruncationSnapshot};
use crate::requests::RequestTable;
use crate::types::{Ballot, NodeId, RequestId, Slot};
use crate::value::Value;
use std::collections::BTreeMap;

/// One storage operation. A `Ready`'s operations form one atomic batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersistOp {
    /// The acceptor promised not to accept below this ballot.
    Promise(Ballot),
    /// The acceptor accepted `value` at `slot` in `ballot` (replaces any earlier record).
    Accept {
        slot: Slot,
        ballot: Ballot,
        value: Value,
    },
    /// `slot` is chosen with `value` (after deduplication) and applied: write it to the history.
    Apply {
        slot: Slot,
        value: Value,
    },
    /// `slot` is chosen and applied, and its history entry is exactly the value this acceptor
    /// holds accepted there (its latest `Accept` of the slot, in this batch or an earlier one):
    /// that record becomes the entry, and nothing is written twice. A store keeps the value
    /// once; the applied prefix is what tells an entry from an accepted value.
    ///
    /// # Correctness
    /// Only when the values are equal: a value accepted in a lower ballot than the chosen one,
    /// or a duplicate request that applies as a no-op, is an `Apply` with the entry.
    ApplyAccepted {
        slot: Slot,
    },
    /// Every slot below this is applied (written with `Apply` in this or an earlier batch).
    AppliedUpto(Slot),
    /// Duplicate-table changes that go with the applied slots.
    RequestInsert {
        request_id: RequestId,
        slot: Slot,
        /// The session's key for a registration record (seq 0), else the payload's digest.
        digest: crate::Digest,
    },
    RequestRemove {
        request_id: RequestId,
    },
    /// Garbage collection: delete accepted records of slots below this (they are applied).
    DeleteAcceptedBelow(Slot),
    /// Truncation: delete history below `snapshot.history_start` and keep the snapshot.
    Truncate(TruncationSnapshot),
    /// Installing a peer's truncation snapshot: the history restarts at `snapshot.history_start`,
    /// every older history entry, accepted record and request record is dropped, and the request
    /// table becomes `snapshot.requests`.
    InstallSnapshot(TruncationSnapshot),
    /// A configuration entry was applied (with its `Apply`): the configuration in force.
    Membership(crate::membership::Membership),
}

impl PersistOp {
    /// Whether messages may depend on this operation being on disk: an acceptor's promise and
    /// its accepted values. Everything else can be lost in a crash without breaking anything
    /// said: a chosen value is chosen on a majority whatever this node's history holds, and
    /// catch-up refetches it.
    pub fn needs_sync(&self) -> bool {
        matches!(self, PersistOp::Promise(_) | PersistOp::Accept { .. })
    }
}

/// Why the replica asked for a [`HistoryRead`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPurpose {
    /// A peer's `CatchUp` numbered `request`: the entries go back as `CatchUpEntries`.
    CatchUp { request: u64 },
    /// A candidate's `Prepare` of `ballot` from `from_slot`: the entries go into the Promise, so
    /// the candidate learns every chosen value it lacks from whichever majority answers.
    Promise { ballot: Ballot },
}

/// A read of already-written history that the driver performs, then hands back with
/// [`crate::Replica::serve_history_read`]. The replica keeps no history in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRead {
    pub purpose: ReadPurpose,
    pub to: NodeId,
    pub from_slot: Slot,
    /// Read no slot at or above this (the replica's applied prefix when it asked).
    pub upto_slot: Slot,
    pub entries_max: usize,
    pub bytes_max: usize,
}

/// The one rule for pages of history (catch-up, Promise history, a client's `history`):
/// whether a value of `value_bytes` still fits a page that holds `entries` entries of `bytes`
/// bytes. A page never passes `entries_max`, and never passes `bytes_max` unless it holds a
/// single entry (one value is always sent, however large: values have their own limit).
pub fn page_has_room(
    entries: usize,
    bytes: usize,
    value_bytes: usize,
    entries_max: usize,
    bytes_max: usize,
) -> bool {
    entries < entries_max && (entries == 0 || bytes + value_bytes <= bytes_max)
}

/// The answer to a local proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub request_id: RequestId,
    /// The fingerprint of the proposal answered (see [`crate::Proposal::fingerprint`]; zero for
    /// a configuration change): a driver gives the answer only to requests with the same one.
    pub fingerprint: crate::Digest,
    pub outcome: Result<Slot, ProposalError>,
}

/// Work the driver must do, in this order.
///
/// # Correctness
/// 0. `messages` may be sent first, before the write: nothing in them depends on this batch
///    being on disk (the replica sorted them, see [`Message::speaks_for_disk`]): a leader's
///    Accepts, a candidate's Prepares, heartbeats, acknowledgements. So may the replies
///    [`Ready::take_replies_before_write`] hands out.
/// 1. Write `persist` as ONE atomic batch, and if [`Ready::persist_needs_sync`] make it durable
///    (fsync) before anything else of this Ready. A Promise or Accepted in `persisted_messages`
///    is a statement about what is on disk; sending it first lets a crash break a promise.
///    Batches are written in the order taken; several may be merged into one atomic batch. A
///    batch that needs no sync may be written without one, provided the store is ordered: a
///    later synced batch makes every earlier batch durable, and a crash loses at most a suffix
///    of unsynced batches (a write-ahead log gives both). If the write fails the driver must
///    stop: after a failed fsync the data may be lost, and retrying could acknowledge what is
///    not stored.
/// 2. Report the write done with [`crate::Replica::on_persisted`]`(ready.number)` (one report
///    may cover every Ready up to that number), then send `persisted_messages` (any order; the
///    network may reorder anyway).
/// 3. Perform `history_reads` against the history as written by this Ready (or a later one:
///    the entries below `upto_slot` change only by truncation, which the replica checks for)
///    and pass the results to `serve_history_read`. What they build (a Promise, catch-up
///    entries) goes out with a later Ready.
/// 4. Apply `chosen` (already in storage through `persist`) and answer the rest of `replies`.
/// 5. Serve `reads` from the history as written by this Ready.
///
/// The driver may keep stepping input and take further Readies while a write is under way:
/// several Readies may be in flight, and steps 2 to 5 happen for each, in order, once it is
/// written. The replica relies on the order, not on the driver waiting: a leader's vote for the
/// slots it accepted in a Ready counts once that Ready is reported written (until then the
/// followers' answers, which may arrive first, are counted without it), and a candidate leads
/// only once the Ready holding its promise is reported written (no Accept leaves under a
/// ballot a crash can take back). So every "chosen" rests
/// on durable votes alone, a lone voter waits for its own write, and nothing a crash can take
/// back is ever counted.
#[derive(Debug, Default)]
pub struct Ready {
    /// Counts the non-empty Readies a replica handed out (from 1). An empty Ready has number 0
    /// and needs no report (reporting it is allowed).
    pub number: u64,
    pub persist: Vec<PersistOp>,
    /// May leave before the write.
    pub messages: Vec<Envelope>,
    /// Must wait until `persist` is written (and synced, if it needs it).
    pub persisted_messages: Vec<Envelope>,
    pub history_reads: Vec<HistoryRead>,
    /// Newly applied slots, in slot order, as written to the history.
    pub chosen: Vec<(Slot, Value)>,
    pub replies: Vec<Reply>,
    /// Answers to local reads ([`crate::Replica::read`]): served from the history as written
    /// in step 1 (an `Ok` may rest on slots applied in this very batch).
    pub reads: Vec<ReadReply>,
    /// Elections, for the log and metrics (any time; see [`crate::Event`]).
    pub events: Vec<crate::event::Event>,
}

impl Ready {
    /// Whether `persist` must be synced before the messages go out (see the contract above).
    pub fn persist_needs_sync(&self) -> bool {
        self.persist.iter().any(PersistOp::needs_sync)
    }

    /// The slots this Ready's `persist` accepts a value at (this node's votes in it).
    pub fn accepted_slots(&self) -> impl Iterator<Item = Slot> + '_ {
        self.persist.iter().filter_map(|op| match op {
            PersistOp::Accept { slot, .. } => Some(*slot),
            _ => None,
        })
    }

    /// Removes and returns the replies that may be answered before the write (step 0 of the
    /// contract): refusals, and slots chosen without a vote of this batch.
    ///
    /// # Correctness
    /// "Chosen at slot s" rests on a majority of durable votes: a leader counts its own vote
    /// only once written (see the contract above), the others' only from their Accepted. An
    /// answer resting on an `Accept` of this very batch waits for the write all the same: a
    /// second line of defence that costs nothing, since such a slot is not chosen before it.
    /// Answering the others early takes the leader's next fsync (of new proposals that arrived
    /// meanwhile) off every acknowledged value's latency. The history entries and duplicate
    /// records of this batch need not be durable first: a crash loses at most this batch, and
    /// the value stays chosen on a majority and is applied again.
    pub fn take_replies_before_write(&mut self) -> Vec<Reply> {
        if self.replies.is_empty() {
            // Most batches (a follower's, a leader's between answers): no set to build.
            return Vec::new();
        }
        let accepted_here: std::collections::BTreeSet<Slot> = self.accepted_slots().collect();
        let (early, late) =
            std::mem::take(&mut self.replies).into_iter().partition(|reply| match &reply.outcome {
                Ok(slot) => !accepted_here.contains(slot),
                // Whatever the disk says: retry elsewhere, too large, overloaded, an outcome
                // unknown (an expired session), or a change refused as done already ("already
                // a member": the entry that did it is applied, so chosen on written votes).
                Err(_) => true,
            });
        self.replies = late;
        early
    }

    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.messages.is_empty()
            && self.persisted_messages.is_empty()
            && self.history_reads.is_empty()
            && self.chosen.is_empty()
            && self.replies.is_empty()
            && self.reads.is_empty()
            && self.events.is_empty()
    }
}

/// Everything a replica needs from storage to recover: the result of replaying every batch of
/// `PersistOp`s that was made durable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableState {
    pub promised: Ballot,
    /// slot -> (ballot, value) for every accepted record not yet garbage-collected.
    pub accepted: BTreeMap<Slot, (Ballot, Value)>,
    /// Every slot below this is applied and in the history.
    pub applied_upto: Slot,
    /// The latest truncation (default: history starts at 0).
    pub truncation: TruncationSnapshot,
    /// The duplicate table as of `applied_upto`.
    pub requests: RequestTable,
    /// The configuration as of `applied_upto` (`None`: the bootstrap one, from the flags).
    pub membership: Option<crate::membership::Membership>,
    /// The role this data directory was first started with, kept by the driver beside the
    /// incarnation (see `Config::role`); `None` for a directory that never kept one.
    pub role: Option<crate::membership::MemberRole>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(seq: u64, outcome: Result<Slot, ProposalError>) -> Reply {
        Reply { request_id: RequestId { client_id: 9, seq }, fingerprint: [0; 16], outcome }
    }

    #[test]
    fn replies_resting_on_an_accept_of_this_batch_wait_for_the_write() {
        let value = Value::Command {
            request_id: RequestId { client_id: 9, seq: 1 },
            key: [0; 16],
            payload: b"v".to_vec(),
        };
        let mut ready = Ready {
            persist: vec![PersistOp::Accept { slot: 5, ballot: Ballot::new(1, 1), value }],
            replies: vec![
                reply(1, Ok(5)),
                reply(2, Ok(3)),
                reply(3, Err(ProposalError::NotLeader { leader_hint: None })),
            ],
            ..Ready::default()
        };
        let early = ready.take_replies_before_write();
        assert_eq!(
            early,
            vec![reply(2, Ok(3)), reply(3, Err(ProposalError::NotLeader { leader_hint: None }))]
        );
        assert_eq!(ready.replies, vec![reply(1, Ok(5))], "slot 5's vote is in this batch");
        assert!(ready.take_replies_before_write().is_empty(), "what waits keeps waiting");
    }
}

/// The answer to a local read, in [`Ready::reads`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadReply {
    /// The number the caller gave the read (see [`crate::Replica::read`]).
    pub request: u64,
    /// `Ok(read_upto)`: this replica has applied every slot below `read_upto`, which covers
    /// every value acknowledged before the read was asked; serve the read from the history as
    /// written. `Err`: retryable (no leader known, timed out, overloaded).
    pub outcome: Result<Slot, ProposalError>,
}
