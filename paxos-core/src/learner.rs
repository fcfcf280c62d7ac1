//! The learner: what this member knows of the chosen history.
//!
//! [`Learner`] owns the applied prefix, the chosen values waiting for a gap to fill, the
//! truncation watermark, the duplicate table, the commit bookkeeping and the catch-up request,
//! and the rules over them. It knows nothing of the acceptor or the proposer: the replica
//! (`learning.rs`) hands it what they know and carries out what it decides.

use crate::membership::{ChangeError, Membership};
use crate::message::{ProposalError, TruncationSnapshot};
use crate::ready::PersistOp;
use crate::requests::{Lookup, RequestTable, TableChange, TableLimits};
use crate::rng::Rng;
use crate::types::{Ballot, NodeId, RequestId, Slot};
use crate::value::Value;
use std::collections::BTreeMap;

/// A garbage-collection request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compaction {
    /// Also drop history below this slot (cluster-wide: followers follow the leader's cut).
    pub truncate_below: Option<Slot>,
    /// Truncate even if some member has not applied that far (it will install a snapshot).
    pub force: bool,
}

/// What a compaction removed, and the watermarks after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionReport {
    pub accepted_records_removed: u64,
    pub history_entries_removed: u64,
    pub history_start: Slot,
    pub applied_upto: Slot,
}

/// Why a compaction was refused. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompactionError {
    #[error("truncation goes through the leader{}", crate::types::leader_hint_text(*leader_hint))]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("cannot truncate below slot {requested}: only slots below {applied_upto} are chosen here")]
    BeyondChosen { requested: Slot, applied_upto: Slot },
    #[error(
        "member {node} has applied only up to {applied_upto:?}, below the cut at {requested} (use force)"
    )]
    MemberBehind { node: NodeId, applied_upto: Option<Slot>, requested: Slot },
}

/// The answer owed for a request: its slot, or why it has none.
pub(crate) type Answer = (RequestId, Result<Slot, ProposalError>);

/// One slot applied by [`Learner::apply_next`]: what to write, and whom to answer.
#[derive(Debug)]
pub(crate) struct Applied {
    pub(crate) slot: Slot,
    /// The chosen value, as the ballot that chose it proposed it.
    pub(crate) chosen: Value,
    /// The history holds a no-op instead (a duplicate or unverifiable request).
    pub(crate) as_noop: bool,
    /// The answer owed to whoever waits for the request the slot carried.
    pub(crate) answer: Option<Answer>,
    /// A configuration entry: `Ok` if it is now in force, `Err` if it could not follow the
    /// configuration in force (applied as a no-op).
    pub(crate) config: Option<Result<(), ChangeError>>,
}

impl Applied {
    /// What the history holds for the slot.
    pub(crate) fn into_entry(self) -> Value {
        if self.as_noop {
            Value::Noop
        } else {
            self.chosen
        }
    }
}

/// The one outstanding catch-up request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CatchUpState {
    pub(crate) peer: NodeId,
    /// Its number: only the answer that carries it back ends it.
    pub(crate) request: u64,
    pub(crate) sent_tick: u64,
    /// Unanswered after this many ticks, it is given up and another is sent.
    pub(crate) timeout_ticks: u64,
}

/// A catch-up request's timeout doubles with each request in a row that went unanswered (a
/// slow link, or a page of several MiB), up to this many times the base.
const CATCH_UP_TIMEOUT_DOUBLINGS_MAX: u32 = 4;

/// What this member knows of the chosen history.
///
/// # Correctness
/// - Every slot below `applied_upto` is applied, in slot order, and in storage (through the
///   `PersistOp`s this struct hands out); `applied_upto >= truncation.history_start`.
/// - `chosen_pending` holds only raw chosen values above `applied_upto`, never a peer's
///   verbatim history entry (see [`Learner::stage_verbatim`]).
/// - `requests` is the duplicate table as of `applied_upto`.
#[derive(Debug)]
pub(crate) struct Learner {
    id: NodeId,
    /// Durable: every slot below this is applied.
    applied_upto: Slot,
    /// Values known chosen above `applied_upto`, waiting for the gap below them to fill.
    chosen_pending: BTreeMap<Slot, Value>,
    /// Durable: where the history starts, and the duplicate table kept with the cut.
    truncation: TruncationSnapshot,
    /// Durable: the duplicate table as of `applied_upto`.
    requests: RequestTable,
    /// Durable: the configuration as of `applied_upto` (it governs every slot from there on
    /// until the next configuration entry is applied).
    membership: Membership,
    /// The ballot of the leader followed last, and the highest commit point it announced
    /// (announcements of other ballots do not count, see `learn_commit`).
    commit_ballot: Ballot,
    commit_upto_in_ballot: Slot,
    /// Slots below this were already checked against `commit_ballot` for commit marking.
    commit_marked_upto: Slot,
    /// At most one request outstanding, whatever is duplicated, delayed or lost: a second
    /// chain of requests would live as long as this member is behind, and chains add up.
    catch_up: Option<CatchUpState>,
    /// The number of the last catch-up request sent (requests count from 1).
    catch_up_requests: u64,
    /// Catch-up requests in a row that timed out (see `CATCH_UP_TIMEOUT_DOUBLINGS_MAX`).
    catch_up_timeouts_in_row: u32,
    /// The peer whose request timed out last: the next request goes to another one that is
    /// ahead, if there is one (a peer cut off must not hold catch-up for a doubled timeout
    /// after another).
    catch_up_timed_out_peer: Option<NodeId>,
    /// How far each peer has applied, as last heard.
    member_applied_upto: BTreeMap<NodeId, Slot>,
    /// The tick this member last told its peers how far it has applied (`Progress`).
    progress_sent_tick: Option<u64>,
}

impl Learner {
    pub(crate) fn recover(
        id: NodeId,
        applied_upto: Slot,
        truncation: TruncationSnapshot,
        requests: RequestTable,
        membership: Membership,
    ) -> Learner {
        assert!(applied_upto >= truncation.history_start, "applied prefix below the history start");
        Learner {
            id,
            applied_upto,
            chosen_pending: BTreeMap::new(),
            truncation,
            requests,
            membership,
            commit_ballot: Ballot::ZERO,
            commit_upto_in_ballot: 0,
            commit_marked_upto: applied_upto,
            catch_up: None,
            catch_up_requests: 0,
            catch_up_timeouts_in_row: 0,
            catch_up_timed_out_peer: None,
            member_applied_upto: BTreeMap::new(),
            progress_sent_tick: None,
        }
    }

    /// Whether to tell the peers how far this member has applied now: at most once per
    /// `interval_ticks` (and at its first tick); the telling counts as done at `now_tick`.
    pub(crate) fn progress_due(&mut self, now_tick: u64, interval_ticks: u64) -> bool {
        if self.progress_sent_tick.is_some_and(|tick| now_tick.saturating_sub(tick) < interval_ticks) {
            return false;
        }
        self.progress_sent_tick = Some(now_tick);
        true
    }

    pub(crate) fn applied_upto(&self) -> Slot {
        self.applied_upto
    }

    pub(crate) fn history_start(&self) -> Slot {
        self.truncation.history_start
    }

    pub(crate) fn truncation(&self) -> &TruncationSnapshot {
        &self.truncation
    }

    pub(crate) fn requests(&self) -> &RequestTable {
        &self.requests
    }

    pub(crate) fn membership(&self) -> &Membership {
        &self.membership
    }

    /// See [`Membership::announce_role`]: only the bootstrap configuration (never persisted)
    /// changes. Returns whether anything changed.
    pub(crate) fn announce_role(&mut self, id: NodeId, role: crate::membership::MemberRole) -> bool {
        self.membership.announce_role(id, role)
    }

    /// Raw values known chosen above the applied prefix.
    pub(crate) fn chosen_pending(&self) -> &BTreeMap<Slot, Value> {
        &self.chosen_pending
    }

    pub(crate) fn member_applied_upto(&self) -> &BTreeMap<NodeId, Slot> {
        &self.member_applied_upto
    }

    pub(crate) fn catch_up(&self) -> Option<CatchUpState> {
        self.catch_up
    }

    pub(crate) fn commit_ballot(&self) -> Ballot {
        self.commit_ballot
    }

    pub(crate) fn commit_upto_in_ballot(&self) -> Slot {
        self.commit_upto_in_ballot
    }

    /// Whether a vote of `ballot` at `slot` is for a chosen value: that ballot's leader
    /// announced a commit point above the slot, vouching for every value it proposed below.
    pub(crate) fn committed_in_ballot(&self, ballot: Ballot, slot: Slot) -> bool {
        ballot == self.commit_ballot && slot < self.commit_upto_in_ballot
    }

    /// Records that `slot` is chosen with `value` (a raw chosen value, or a peer's history entry:
    /// deduplicating either gives the same history, see `apply_next`).
    pub(crate) fn learn_chosen(&mut self, slot: Slot, value: Value) {
        if slot < self.applied_upto {
            return;
        }
        self.chosen_pending.entry(slot).or_insert(value);
    }

    /// Stages a peer's history entries (verbatim: as deduplicated when the peer applied them)
    /// that extend the applied prefix without a gap, for the next `apply_next` calls; drops the
    /// rest.
    ///
    /// # Correctness
    /// A verbatim entry stands for the chosen value but may differ from it (a duplicate request
    /// becomes a no-op), so it must never wait in `chosen_pending`: from there a Promise would
    /// report it as a raw chosen value and a new leader could propose the no-op in a new
    /// ballot, choosing a second value for the slot. Staged entries are contiguous from
    /// `applied_upto`, so the caller's `apply_next` loop applies all of them at once.
    pub(crate) fn stage_verbatim(&mut self, mut entries: BTreeMap<Slot, Value>) {
        let mut next = self.applied_upto;
        loop {
            if let Some(value) = entries.remove(&next) {
                // A raw value already known for the slot is just as good (deduplicating it
                // gives the same entry).
                self.chosen_pending.entry(next).or_insert(value);
            } else if !self.chosen_pending.contains_key(&next) {
                break;
            }
            next += 1;
        }
    }

    /// Applies the next slot if its chosen value is known: appends its duplicate-table changes
    /// and history entry to `persist`, and returns what was applied with the answer owed. The
    /// caller writes the applied prefix (`PersistOp::AppliedUpto`) once it has applied what it
    /// can. `limits` bound the duplicate table. `accepted` is this node's acceptor's records:
    /// an entry equal to the value accepted at its slot is written as that record
    /// (`PersistOp::ApplyAccepted`), not again.
    pub(crate) fn apply_next(
        &mut self,
        limits: TableLimits,
        accepted: &BTreeMap<Slot, (Ballot, Value)>,
        persist: &mut Vec<PersistOp>,
    ) -> Option<Applied> {
        let slot = self.applied_upto;
        let chosen = self.chosen_pending.remove(&slot)?;
        let (mut as_noop, answer) = self.deduplicate(slot, &chosen, limits, persist);
        let mut config = None;
        if let Value::Config(next) = &chosen {
            // The same check on every replica, against the configuration in force at `slot`:
            // an entry that fails it (a forged one) is a no-op everywhere.
            let checked = self.membership.check_successor(next);
            if checked.is_ok() {
                self.membership = Membership { chosen_at: Some(slot), ..next.clone() };
                persist.push(PersistOp::Membership(self.membership.clone()));
            }
            as_noop = checked.is_err();
            config = Some(checked);
        }
        let entry = if as_noop { Value::Noop } else { chosen.clone() };
        if accepted.get(&slot).is_some_and(|(_, value)| *value == entry) {
            persist.push(PersistOp::ApplyAccepted { slot });
        } else {
            persist.push(PersistOp::Apply { slot, value: entry });
        }
        self.applied_upto += 1;
        Some(Applied { slot, chosen, as_noop, answer, config })
    }

    /// Whether the history holds a no-op for a chosen `value` at `slot` (true for a request
    /// already applied at an earlier slot, or one that cannot be checked: expired, unknown
    /// session), so each request id appears at most once in the history; and the answer owed.
    ///
    /// Deterministic in the table and the value, and idempotent: a peer's history entry (already
    /// deduplicated) gives the same entry and the same table change as the raw chosen value.
    fn deduplicate(
        &mut self,
        slot: Slot,
        value: &Value,
        limits: TableLimits,
        persist: &mut Vec<PersistOp>,
    ) -> (bool, Option<Answer>) {
        let Some(request_id) = value.request_id() else {
            return (false, None);
        };
        let (lookup, digest) = match value {
            Value::Register { nonce, key, floor_slot, payload } => {
                let digest = crate::payload_digest(payload);
                let lookup = self.requests.lookup_registration(*nonce, *key, digest, *floor_slot, limits);
                if lookup == Lookup::New {
                    // The session opens here, with this value as its first request.
                    let mut changes = self.requests.open_session(slot, *nonce, *key, limits);
                    let first = RequestId { client_id: slot, seq: RequestId::FIRST_SEQ };
                    changes.extend(self.requests.insert(first, slot, digest, limits));
                    persist.extend(changes.into_iter().map(table_op));
                    return (false, Some((request_id, Ok(slot))));
                }
                (lookup, digest)
            }
            Value::Command { key, payload, .. } => {
                let digest = crate::payload_digest(payload);
                (self.requests.lookup(request_id, *key, digest, limits), digest)
            }
            Value::Noop | Value::Config(_) => unreachable!("no request id"),
        };
        match lookup {
            Lookup::New => {
                let changes = self.requests.insert(request_id, slot, digest, limits);
                persist.extend(changes.into_iter().map(table_op));
                (false, Some((request_id, Ok(slot))))
            }
            Lookup::AppliedAt(original) => {
                assert!(original < slot, "the table only holds slots applied before this one");
                (true, Some((request_id, Ok(original))))
            }
            // Another value under an applied request id, or a request without its session's
            // key: a no-op, refused. The answer names no slot, so it cannot name one that holds
            // another value.
            Lookup::Reused(_) => (true, Some((request_id, Err(ProposalError::RequestIdReused(request_id))))),
            Lookup::WrongKey => (true, Some((request_id, Err(ProposalError::WrongSessionKey(request_id))))),
            Lookup::Expired => (true, Some((request_id, Err(ProposalError::RequestExpired(request_id))))),
            Lookup::SessionUnknown => {
                (true, Some((request_id, Err(ProposalError::SessionExpired(request_id.client_id)))))
            }
            Lookup::RegistrationForgotten => {
                (true, Some((request_id, Err(ProposalError::RegistrationExpired { nonce: request_id.seq }))))
            }
        }
    }

    /// A leader of `ballot` says every slot below `commit_upto` is chosen, and that where it
    /// proposed a value in `ballot`, that value is the chosen one. So the accepted entries
    /// (the acceptor's, passed in) carrying that same ballot are chosen; other slots need
    /// catch-up.
    ///
    /// # Correctness
    /// The marking rule holds for one ballot's announcements only: a commit point heard from
    /// an older ballot says nothing about values accepted in a newer one (that leader may be
    /// stale), so the bound is reset whenever the ballot changes.
    pub(crate) fn learn_commit(
        &mut self,
        ballot: Ballot,
        commit_upto: Slot,
        accepted: &BTreeMap<Slot, (Ballot, Value)>,
    ) {
        if ballot != self.commit_ballot {
            assert!(ballot > self.commit_ballot, "followed ballots only go up");
            self.commit_ballot = ballot;
            self.commit_upto_in_ballot = 0;
            self.commit_marked_upto = self.applied_upto;
        }
        self.commit_upto_in_ballot = self.commit_upto_in_ballot.max(commit_upto);
        let from_slot = self.commit_marked_upto.max(self.applied_upto);
        if commit_upto > from_slot {
            let marked: Vec<(Slot, Value)> = accepted
                .range(from_slot..commit_upto)
                .filter(|(_, (accepted_ballot, _))| *accepted_ballot == ballot)
                .map(|(slot, (_, value))| (*slot, value.clone()))
                .collect();
            for (slot, value) in marked {
                self.learn_chosen(slot, value);
            }
            self.commit_marked_upto = commit_upto;
        }
    }

    pub(crate) fn note_member_progress(&mut self, node: NodeId, applied_upto: Slot) {
        if node == self.id {
            return;
        }
        let entry = self.member_applied_upto.entry(node).or_insert(0);
        *entry = (*entry).max(applied_upto);
    }

    pub(crate) fn forget_member_progress(&mut self, node: NodeId) {
        self.member_applied_upto.remove(&node);
    }

    /// Gives up the outstanding catch-up request if it went unanswered for its timeout; the
    /// next one waits twice as long (see `CATCH_UP_TIMEOUT_DOUBLINGS_MAX`).
    pub(crate) fn expire_catch_up(&mut self, now_tick: u64) {
        if let Some(catch_up) = self.catch_up {
            if now_tick.saturating_sub(catch_up.sent_tick) >= catch_up.timeout_ticks {
                self.catch_up = None;
                self.catch_up_timeouts_in_row =
                    (self.catch_up_timeouts_in_row + 1).min(CATCH_UP_TIMEOUT_DOUBLINGS_MAX);
                self.catch_up_timed_out_peer = Some(catch_up.peer);
            }
        }
    }

    /// `from` answered catch-up request `request`. Returns whether that was the request
    /// outstanding (which then ends): a duplicated answer, a late one to a request given up,
    /// or one to a probe (request 0) leaves the outstanding request alone, so it never starts
    /// a second chain.
    pub(crate) fn catch_up_answered(&mut self, from: NodeId, request: u64) -> bool {
        let matches =
            matches!(self.catch_up, Some(c) if c.peer == from && c.request == request && request != 0);
        if matches {
            self.catch_up = None;
            self.catch_up_timeouts_in_row = 0;
            self.catch_up_timed_out_peer = None;
        }
        matches
    }

    /// The peer to ask for the next chosen entries and the request's number, if some peer is
    /// ahead and no request is outstanding; the request counts as sent at `now_tick`, with a
    /// timeout of `base_timeout_ticks` doubled for each request in a row that timed out.
    pub(crate) fn catch_up_from(
        &mut self,
        now_tick: u64,
        leader_hint: Option<NodeId>,
        rng: &mut Rng,
        base_timeout_ticks: u64,
    ) -> Option<(NodeId, u64)> {
        let ahead: Vec<NodeId> = self
            .member_applied_upto
            .iter()
            .filter(|(node, upto)| **upto > self.applied_upto && **node != self.id)
            .map(|(node, _)| *node)
            .collect();
        if ahead.is_empty() {
            self.catch_up = None;
            return None;
        }
        // Members of this node's configuration before strangers: a node that joins knows only
        // the members its flags name, and only those it dials; a stranger's answers may have no
        // way back (seen: a joining node asking the leader, which its flags did not name, and
        // waiting out 1, 2 and 4 s timeouts). A request outstanding to a stranger gives way as
        // soon as a member is known to be ahead (still one request outstanding: a late answer
        // from the stranger is applied and starts nothing).
        let members: Vec<NodeId> =
            ahead.iter().copied().filter(|node| self.membership.contains(*node)).collect();
        if let Some(outstanding) = self.catch_up {
            if members.is_empty() || self.membership.contains(outstanding.peer) {
                return None;
            }
        }
        let ahead = if members.is_empty() { ahead } else { members };
        // Not the peer that just let a request time out, while another is ahead (found by the
        // swarm's liveness holds: a candidate behind kept asking, at random, a member it could
        // not reach, waiting out timeouts doubled up to 16 times, and never led).
        let others: Vec<NodeId> =
            ahead.iter().copied().filter(|node| Some(*node) != self.catch_up_timed_out_peer).collect();
        let ahead = if others.is_empty() { ahead } else { others };
        // The leader first; otherwise a random member that is ahead, so one dead or partitioned
        // peer cannot stall catch-up.
        let peer = match leader_hint {
            Some(leader) if ahead.contains(&leader) && rng.chance(1, 2) => leader,
            _ => ahead[rng.range(0, ahead.len() as u64) as usize],
        };
        self.catch_up_requests += 1;
        let request = self.catch_up_requests;
        let timeout_ticks = base_timeout_ticks << self.catch_up_timeouts_in_row;
        self.catch_up = Some(CatchUpState { peer, request, sent_tick: now_tick, timeout_ticks });
        Some((peer, request))
    }

    /// Installs a peer's truncation snapshot, if it is ahead of the applied prefix: the history
    /// restarts where the snapshot's duplicate table stands. Returns the snapshot as installed
    /// (the caller writes `PersistOp::InstallSnapshot` and drops accepted records below it).
    ///
    /// # Correctness
    /// The table is as of `table_upto`, so the history restarts at `table_upto`, not at the
    /// peer's `history_start`: every later slot is then deduplicated against the table exactly
    /// as the peer did, and no slot needs a verbatim copy that only some peer (maybe a dead
    /// one) holds.
    pub(crate) fn install_snapshot(
        &mut self,
        from: NodeId,
        snapshot: TruncationSnapshot,
    ) -> Option<TruncationSnapshot> {
        if snapshot.table_upto <= self.applied_upto || snapshot.table_upto < snapshot.history_start {
            return None;
        }
        let start = snapshot.table_upto;
        let snapshot = TruncationSnapshot {
            history_start: start,
            table_upto: start,
            requests: snapshot.requests,
            membership: snapshot.membership,
        };
        self.note_member_progress(from, start);
        if let Some(membership) = &snapshot.membership {
            self.membership = membership.clone();
        }
        self.applied_upto = start;
        self.requests = snapshot.requests.clone();
        self.chosen_pending = self.chosen_pending.split_off(&start);
        self.commit_marked_upto = self.commit_marked_upto.max(start);
        self.truncation = snapshot.clone();
        Some(snapshot)
    }

    /// Cuts the history below `history_start` (applied already); returns the snapshot to
    /// write and how many history entries it removes.
    pub(crate) fn truncate_to(&mut self, history_start: Slot) -> (TruncationSnapshot, u64) {
        assert!(history_start <= self.applied_upto, "truncating history that is not applied");
        let removed = history_start.saturating_sub(self.truncation.history_start);
        let snapshot = TruncationSnapshot {
            history_start,
            table_upto: self.applied_upto,
            requests: self.requests.clone(),
            membership: self.membership.is_bound().then(|| self.membership.clone()),
        };
        self.truncation = snapshot.clone();
        (snapshot, removed)
    }

    /// Whether a truncation below `requested` may go ahead: applied here, and (unless forced)
    /// applied on every one of `peers` as last heard, so none of them needs a snapshot.
    pub(crate) fn check_truncation(
        &self,
        requested: Slot,
        force: bool,
        peers: impl IntoIterator<Item = NodeId>,
    ) -> Result<(), CompactionError> {
        if requested > self.applied_upto {
            return Err(CompactionError::BeyondChosen { requested, applied_upto: self.applied_upto });
        }
        if !force {
            for node in peers {
                let upto = self.member_applied_upto.get(&node).copied();
                if upto.is_none_or(|upto| upto < requested) {
                    return Err(CompactionError::MemberBehind { node, applied_upto: upto, requested });
                }
            }
        }
        Ok(())
    }
}

fn table_op(change: TableChange) -> PersistOp {
    match change {
        TableChange::Insert { request_id, slot, digest } => {
            PersistOp::RequestInsert { request_id, slot, digest }
        }
        TableChange::Remove { request_id } => PersistOp::RequestRemove { request_id },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learner() -> Learner {
        Learner::recover(
            1,
            0,
            TruncationSnapshot::default(),
            RequestTable::default(),
            Membership::bound(&[1], |id| id),
        )
    }

    fn limits() -> TableLimits {
        crate::Config::new(1, vec![1, 2, 3]).request_table
    }

    fn command(client_id: u64, seq: u64) -> Value {
        Value::Command { request_id: RequestId { client_id, seq }, key: [0; 16], payload: b"v".to_vec() }
    }

    fn apply_all(learner: &mut Learner) -> (Vec<Applied>, Vec<PersistOp>) {
        let mut persist = Vec::new();
        let applied =
            std::iter::from_fn(|| learner.apply_next(limits(), &BTreeMap::new(), &mut persist)).collect();
        (applied, persist)
    }

    #[test]
    fn verbatim_entries_above_a_gap_are_dropped_not_kept_pending() {
        let mut learner = learner();
        learner.stage_verbatim(BTreeMap::from([(0, Value::Noop), (1, Value::Noop), (3, Value::Noop)]));
        assert_eq!(apply_all(&mut learner).0.len(), 2);
        assert_eq!(learner.applied_upto(), 2);
        assert!(learner.chosen_pending().is_empty(), "{:?}", learner.chosen_pending());
    }

    #[test]
    fn a_request_chosen_twice_is_applied_once_and_answered_with_its_first_slot() {
        let mut learner = learner();
        learner
            .learn_chosen(0, Value::Register { nonce: 7, key: [0; 16], floor_slot: 0, payload: Vec::new() });
        learner.learn_chosen(1, command(0, 2));
        learner.learn_chosen(2, command(0, 2));
        let (applied, persist) = apply_all(&mut learner);
        assert_eq!(applied.len(), 3);
        assert!(!applied[1].as_noop);
        assert!(applied[2].as_noop);
        assert_eq!(applied[2].chosen, command(0, 2), "the chosen value is kept for the leader's check");
        assert_eq!(applied[2].answer, Some((RequestId { client_id: 0, seq: 2 }, Ok(1))));
        assert!(persist.iter().all(|op| !matches!(op, PersistOp::RequestInsert { slot: 2, .. })));
        assert!(persist.contains(&PersistOp::Apply { slot: 2, value: Value::Noop }));
        let applied: Vec<Value> = applied.into_iter().map(Applied::into_entry).collect();
        assert_eq!(applied[1..], [command(0, 2), Value::Noop]);
    }

    /// An entry is written as the accepted record only when it is that record's value: a
    /// duplicate applied as a no-op, and a value accepted in a lower ballot than the chosen
    /// one, are written out; the rest are not written twice.
    #[test]
    fn only_an_entry_equal_to_the_accepted_value_is_applied_as_that_record() {
        let mut learner = learner();
        let ballot = Ballot::new(1, 1);
        let register = Value::Register { nonce: 7, key: [0; 16], floor_slot: 0, payload: Vec::new() };
        let accepted = BTreeMap::from([
            (0, (ballot, register.clone())),
            (1, (ballot, command(0, 2))),
            // The duplicate: chosen as accepted, applied as a no-op.
            (2, (ballot, command(0, 2))),
            // A lower ballot's value; another was chosen.
            (3, (ballot, command(0, 9))),
        ]);
        learner.learn_chosen(0, register);
        learner.learn_chosen(1, command(0, 2));
        learner.learn_chosen(2, command(0, 2));
        learner.learn_chosen(3, command(0, 3));
        learner.learn_chosen(4, command(0, 4));
        let mut persist = Vec::new();
        while learner.apply_next(limits(), &accepted, &mut persist).is_some() {}
        let writes: Vec<&PersistOp> = persist
            .iter()
            .filter(|op| matches!(op, PersistOp::Apply { .. } | PersistOp::ApplyAccepted { .. }))
            .collect();
        assert_eq!(
            writes,
            [
                &PersistOp::ApplyAccepted { slot: 0 },
                &PersistOp::ApplyAccepted { slot: 1 },
                &PersistOp::Apply { slot: 2, value: Value::Noop },
                &PersistOp::Apply { slot: 3, value: command(0, 3) },
                &PersistOp::Apply { slot: 4, value: command(0, 4) },
            ]
        );
    }

    #[test]
    fn a_commit_point_marks_only_votes_of_its_own_ballot_and_resets_with_the_ballot() {
        let (old, new) = (Ballot::new(1, 2), Ballot::new(2, 3));
        let accepted = BTreeMap::from([(0, (old, command(0, 1))), (1, (new, command(0, 2)))]);
        let mut learner = learner();
        learner.learn_commit(new, 2, &accepted);
        assert_eq!(learner.chosen_pending().keys().copied().collect::<Vec<_>>(), vec![1]);
        assert!(learner.committed_in_ballot(new, 1));
        assert!(!learner.committed_in_ballot(old, 1));
        let newer = Ballot::new(3, 2);
        learner.learn_commit(newer, 0, &accepted);
        assert!(!learner.committed_in_ballot(newer, 1), "a new ballot starts without a commit point");
    }
}
