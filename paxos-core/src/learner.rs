//! Learner rules: learning chosen values, applying them in slot order with deduplication,
//! catch-up from peers, garbage collection and truncation.

use crate::message::{Message, ProposalError, TruncationSnapshot};
use crate::ready::{HistoryRead, PersistOp};
use crate::replica::{Replica, Role};
use crate::requests::{Lookup, TableChange};
use crate::types::{Ballot, NodeId, Slot, Value};

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
    pub chosen_upto: Slot,
}

/// Why a compaction was refused. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompactionError {
    #[error("truncation goes through the leader (leader hint: {leader_hint:?})")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("cannot truncate below slot {requested}: only slots below {chosen_upto} are chosen here")]
    BeyondChosen { requested: Slot, chosen_upto: Slot },
    #[error(
        "member {node} has applied only up to {chosen_upto:?}, below the cut at {requested} (use force)"
    )]
    MemberBehind { node: NodeId, chosen_upto: Option<Slot>, requested: Slot },
}

impl Replica {
    pub(crate) fn tick_learner(&mut self) {
        if let Some(catch_up) = self.catch_up {
            if self.tick_now.saturating_sub(catch_up.sent_tick) >= self.config.catch_up_timeout_ticks {
                self.catch_up = None;
            }
        }
        // Progress reports of members arrive with many messages (Accepted, HeartbeatAck); a
        // leader hears of being behind only that way, so look every tick, not only on replies.
        self.maybe_catch_up();
    }

    /// Records that `slot` is chosen with `value`.
    ///
    /// # Correctness
    /// Below `truncation.table_upto` (after installing a snapshot) values must come verbatim
    /// from a peer's history, because the duplicate table is ahead of those slots; values
    /// learned from votes or commit marks there are dropped and fetched by catch-up instead.
    pub(crate) fn learn_chosen(&mut self, slot: Slot, value: Value) {
        if slot < self.chosen_upto || slot < self.truncation.table_upto {
            return;
        }
        self.chosen_pending.entry(slot).or_insert(value);
    }

    /// Applies every chosen slot that extends the applied prefix, deduplicating requests.
    pub(crate) fn apply_chosen(&mut self) {
        let start = self.chosen_upto;
        while let Some(value) = self.chosen_pending.remove(&self.chosen_upto) {
            let slot = self.chosen_upto;
            let applied = if slot < self.truncation.table_upto {
                // Copied verbatim from a peer that already deduplicated it.
                if let Some(request_id) = value.request_id() {
                    self.answer_waiters(request_id, Ok(slot));
                }
                value
            } else {
                self.deduplicate(slot, value)
            };
            self.persist(PersistOp::Apply { slot, value: applied.clone() });
            self.ready.chosen.push((slot, applied));
            self.chosen_upto += 1;
        }
        if self.chosen_upto > start {
            self.persist(PersistOp::ChosenUpto(self.chosen_upto));
            self.commit_known = self.commit_known.max(self.chosen_upto);
            self.forget_applied_in_flight();
            self.release_replies_after_apply();
        }
    }

    fn release_replies_after_apply(&mut self) {
        while let Some(entry) = self.replies_after_apply.first_entry() {
            if *entry.key() >= self.chosen_upto {
                break;
            }
            let (slot, request_ids) = entry.remove_entry();
            for request_id in request_ids {
                self.reply(crate::replica::Origin::Local, request_id, Ok(slot));
            }
        }
    }

    /// The value the history holds for a chosen `value` at `slot`: a request already applied at
    /// an earlier slot becomes a no-op, so each request id appears once in the history.
    fn deduplicate(&mut self, slot: Slot, value: Value) -> Value {
        let Some(request_id) = value.request_id() else {
            return value;
        };
        match self.requests.lookup(request_id, self.config.request_table) {
            Lookup::New => {
                for change in self.requests.insert(request_id, slot, self.config.request_table) {
                    self.persist(match change {
                        TableChange::Insert { request_id, slot } => {
                            PersistOp::RequestInsert { request_id, slot }
                        }
                        TableChange::Remove { request_id } => PersistOp::RequestRemove { request_id },
                    });
                }
                self.answer_waiters(request_id, Ok(slot));
                value
            }
            Lookup::AppliedAt(original) => {
                assert!(original < slot, "the table only holds slots applied before this one");
                self.answer_waiters(request_id, Ok(original));
                Value::Noop
            }
            Lookup::Expired => {
                self.answer_waiters(request_id, Err(ProposalError::RequestExpired(request_id)));
                Value::Noop
            }
        }
    }

    /// A leader of `ballot` says every slot below `commit_upto` is chosen. Our accepted values
    /// carrying that same ballot are those chosen values; other slots need catch-up.
    pub(crate) fn learn_commit(&mut self, from: NodeId, ballot: Ballot, commit_upto: Slot) {
        self.note_member_progress(from, commit_upto);
        if ballot != self.commit_ballot {
            assert!(ballot > self.commit_ballot, "followed ballots only go up");
            self.commit_ballot = ballot;
            self.commit_marked_upto = self.chosen_upto;
        }
        self.commit_known = self.commit_known.max(commit_upto);
        let from_slot = self.commit_marked_upto.max(self.chosen_upto);
        if commit_upto > from_slot {
            let marked: Vec<(Slot, Value)> = self
                .accepted
                .range(from_slot..commit_upto)
                .filter(|(_, (accepted_ballot, _))| *accepted_ballot == ballot)
                .map(|(slot, (_, value))| (*slot, value.clone()))
                .collect();
            for (slot, value) in marked {
                self.learn_chosen(slot, value);
            }
            self.commit_marked_upto = commit_upto;
        }
        self.apply_chosen();
        self.maybe_catch_up();
    }

    /// `slot` was just accepted in `commit_ballot` and lies below `commit_known`: it is chosen.
    pub(crate) fn mark_chosen_by_commit(&mut self, slot: Slot) {
        if let Some((_, value)) = self.accepted.get(&slot) {
            let value = value.clone();
            self.learn_chosen(slot, value);
        }
    }

    pub(crate) fn note_member_progress(&mut self, node: NodeId, chosen_upto: Slot) {
        if node == self.config.id {
            return;
        }
        let entry = self.member_chosen_upto.entry(node).or_insert(0);
        *entry = (*entry).max(chosen_upto);
    }

    /// Asks a peer that is ahead for the next chosen entries, unless a request is outstanding.
    pub(crate) fn maybe_catch_up(&mut self) {
        let ahead: Vec<NodeId> = self
            .member_chosen_upto
            .iter()
            .filter(|(node, upto)| **upto > self.chosen_upto && **node != self.config.id)
            .map(|(node, _)| *node)
            .collect();
        if ahead.is_empty() {
            self.catch_up = None;
            return;
        }
        if self.catch_up.is_some() {
            return;
        }
        // The leader first; otherwise a random member that is ahead, so one dead or partitioned
        // peer cannot stall catch-up.
        let peer = match self.leader_hint {
            Some(leader) if ahead.contains(&leader) && self.rng.chance(1, 2) => leader,
            _ => ahead[self.rng.range(0, ahead.len() as u64) as usize],
        };
        self.catch_up = Some(crate::replica::CatchUpState { peer, sent_tick: self.tick_now });
        self.send(peer, Message::CatchUp { from_slot: self.chosen_upto });
    }

    pub(crate) fn on_catch_up(&mut self, from: NodeId, from_slot: Slot) {
        if from_slot < self.truncation.history_start {
            let snapshot = self.truncation.clone();
            self.send(from, Message::CatchUpTruncated { snapshot });
        } else if from_slot < self.chosen_upto {
            self.ready.history_reads.push(HistoryRead {
                to: from,
                from_slot,
                upto_slot: self.chosen_upto,
                entries_max: self.config.entries_per_message_max,
                bytes_max: self.config.message_bytes_max,
            });
        } else {
            self.send(from, Message::CatchUpEntries { entries: Vec::new(), chosen_upto: self.chosen_upto });
        }
    }

    /// Answers a catch-up request with history the driver read for a [`HistoryRead`].
    pub fn serve_catch_up(&mut self, to: NodeId, entries: Vec<(Slot, Value)>) {
        if to == self.config.id || !self.config.members.contains(&to) {
            return;
        }
        self.send(to, Message::CatchUpEntries { entries, chosen_upto: self.chosen_upto });
    }

    pub(crate) fn on_catch_up_entries(
        &mut self,
        from: NodeId,
        entries: Vec<(Slot, Value)>,
        chosen_upto: Slot,
    ) {
        self.note_member_progress(from, chosen_upto);
        if matches!(self.catch_up, Some(c) if c.peer == from) {
            self.catch_up = None;
        }
        for (slot, value) in entries {
            // Entries a peer applied are final, and below its `chosen_upto` by construction.
            if slot >= self.chosen_upto && slot < chosen_upto {
                self.chosen_pending.entry(slot).or_insert(value);
            }
        }
        self.apply_chosen();
        self.fill_window();
        self.maybe_catch_up();
    }

    pub(crate) fn on_catch_up_truncated(&mut self, from: NodeId, snapshot: TruncationSnapshot) {
        if matches!(self.catch_up, Some(c) if c.peer == from) {
            self.catch_up = None;
        }
        if snapshot.history_start <= self.chosen_upto || snapshot.table_upto < snapshot.history_start {
            return;
        }
        self.note_member_progress(from, snapshot.history_start);
        self.persist(PersistOp::InstallSnapshot(snapshot.clone()));
        self.chosen_upto = snapshot.history_start;
        self.requests = snapshot.requests.clone();
        self.accepted = self.accepted.split_off(&snapshot.history_start);
        // Pending values below `table_upto` may be raw: only verbatim copies may fill those.
        self.chosen_pending = self.chosen_pending.split_off(&snapshot.table_upto);
        self.commit_marked_upto = self.commit_marked_upto.max(snapshot.history_start);
        self.commit_known = self.commit_known.max(snapshot.history_start);
        self.truncation = snapshot;
        self.forget_applied_in_flight();
        self.release_replies_after_apply();
        self.maybe_catch_up();
    }

    /// A follower truncates where its leader did, once it has applied that far.
    pub(crate) fn follow_truncation(&mut self, history_start: Slot) {
        if history_start > self.truncation.history_start && self.chosen_upto >= history_start {
            self.truncate_to(history_start);
        }
    }

    fn truncate_to(&mut self, history_start: Slot) -> u64 {
        assert!(history_start <= self.chosen_upto, "truncating history that is not applied");
        let removed = history_start.saturating_sub(self.truncation.history_start);
        let snapshot = TruncationSnapshot {
            history_start,
            table_upto: self.chosen_upto.max(self.truncation.table_upto),
            requests: self.requests.clone(),
        };
        self.accepted = self.accepted.split_off(&history_start);
        self.persist(PersistOp::Truncate(snapshot.clone()));
        self.truncation = snapshot;
        removed
    }

    /// Garbage collection: drops accepted records of applied slots (always redundant: a Promise
    /// reports them through `chosen_upto`) and, if asked, truncates the history.
    pub fn compact(&mut self, compaction: Compaction) -> Result<CompactionReport, CompactionError> {
        let truncate = compaction.truncate_below.filter(|slot| *slot > self.truncation.history_start);
        if let Some(requested) = truncate {
            if requested > self.chosen_upto {
                return Err(CompactionError::BeyondChosen { requested, chosen_upto: self.chosen_upto });
            }
            if !matches!(self.role, Role::Leader(_)) {
                return Err(CompactionError::NotLeader { leader_hint: self.leader_hint });
            }
            if !compaction.force {
                for node in self.peers().collect::<Vec<_>>() {
                    let upto = self.member_chosen_upto.get(&node).copied();
                    if upto.is_none_or(|upto| upto < requested) {
                        return Err(CompactionError::MemberBehind { node, chosen_upto: upto, requested });
                    }
                }
            }
        }
        let keep = self.accepted.split_off(&self.chosen_upto);
        let accepted_records_removed = self.accepted.len() as u64;
        self.accepted = keep;
        if accepted_records_removed > 0 {
            self.persist(PersistOp::DeleteAcceptedBelow(self.chosen_upto));
        }
        let history_entries_removed = truncate.map_or(0, |slot| self.truncate_to(slot));
        Ok(CompactionReport {
            accepted_records_removed,
            history_entries_removed,
            history_start: self.truncation.history_start,
            chosen_upto: self.chosen_upto,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Compaction, CompactionError};
    use crate::test_support::{proposal, Cluster};
    use crate::Value;

    #[test]
    fn a_retried_request_is_chosen_once_and_answered_with_its_slot() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        cluster.node(leader).propose(proposal(5, 1, "once"));
        cluster.settle();
        cluster.node(leader).propose(proposal(5, 2, "other"));
        cluster.node(leader).propose(proposal(5, 1, "once"));
        cluster.settle();
        let outcomes: Vec<_> =
            cluster.replies.iter().map(|(_, r)| (r.request_id.seq, r.outcome.clone())).collect();
        let mut outcomes = outcomes;
        outcomes.sort_by_key(|(seq, outcome)| (*seq, outcome.clone().ok()));
        assert_eq!(outcomes, vec![(1, Ok(0)), (1, Ok(0)), (2, Ok(1))]);
        let history = &cluster.storage[&leader].history;
        assert_eq!(history.len(), 2);
    }

    #[test]
    fn a_duplicate_that_reaches_the_log_is_applied_as_a_noop() {
        let mut cluster = Cluster::new(1);
        cluster.elect();
        let value = Value::Command { request_id: proposal(5, 1, "").request_id, payload: b"x".to_vec() };
        cluster.node(1).learn_chosen(0, value.clone());
        cluster.node(1).learn_chosen(1, value.clone());
        cluster.node(1).apply_chosen();
        let ready = cluster.node(1).take_ready();
        assert_eq!(ready.chosen, vec![(0, value), (1, Value::Noop)]);
    }

    #[test]
    fn truncation_waits_for_every_member_unless_forced() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let lagging = if leader == 3 { 2 } else { 3 };
        cluster.down.push(lagging);
        for seq in 1..=5 {
            cluster.node(leader).propose(proposal(1, seq, "v"));
        }
        cluster.settle();
        // Heartbeat acks tell the leader how far the live follower has applied.
        cluster.run_ticks(5);
        let refused = cluster.node(leader).compact(Compaction { truncate_below: Some(4), force: false });
        assert!(
            matches!(refused, Err(CompactionError::MemberBehind { node, .. }) if node == lagging),
            "{refused:?}"
        );
        let report = cluster
            .node(leader)
            .compact(Compaction { truncate_below: Some(4), force: true })
            .expect("forced");
        assert_eq!(report.history_entries_removed, 4);
        assert_eq!(report.history_start, 4);
        // The member that was down catches up from behind the cut by installing the snapshot.
        cluster.down.clear();
        cluster.run_ticks(30);
        let node = &cluster.replicas[&lagging];
        assert_eq!(node.history_start(), 4);
        assert_eq!(node.chosen_upto(), 5);
        assert_eq!(cluster.storage[&lagging].history.keys().copied().collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn compaction_collects_accepted_records_of_applied_slots() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        for seq in 1..=3 {
            cluster.node(leader).propose(proposal(1, seq, "v"));
        }
        cluster.settle();
        let report = cluster.node(leader).compact(Compaction::default()).expect("gc");
        assert_eq!(report.accepted_records_removed, 3);
        assert!(cluster.storage[&leader].accepted.len() <= 3);
        cluster.settle();
        assert!(cluster.storage[&leader].accepted.is_empty());
    }
}
