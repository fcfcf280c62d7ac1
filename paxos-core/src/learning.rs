//! How the replica feeds its [`Learner`](crate::learner::Learner) and carries out what it
//! decides: applying chosen values (with their answers, and a leader stepping down when another
//! ballot chose at a slot it had in flight), catch-up messages, garbage collection and
//! truncation. The learner's state and rules live in `learner.rs`; this file is the glue
//! between them and the acceptor's and proposer's state.

use crate::accepting::unbroken_run;
use crate::learner::{Compaction, CompactionError, CompactionReport};
use crate::message::{Message, TruncationSnapshot};
use crate::ready::{HistoryRead, PersistOp, ReadPurpose};
use crate::replica::Replica;
use crate::role::{Origin, Role};
use crate::types::{Ballot, NodeId, Slot};
use crate::value::Value;
use std::collections::BTreeMap;

impl Replica {
    pub(crate) fn tick_learner(&mut self) {
        self.learner.expire_catch_up(self.tick_now);
        // Progress reports of members arrive with many messages (Accepted, HeartbeatAck); a
        // leader hears of being behind only that way, so look every tick, not only on replies.
        self.maybe_catch_up();
    }

    /// Applies every chosen slot that extends the applied prefix, deduplicating requests.
    ///
    /// # Correctness
    /// A leader's commit announcements vouch that, below them, every value it proposed in its
    /// ballot is the chosen one (followers mark their accepted entries of that ballot chosen on
    /// that word). So when a leader applies, at a slot it has in flight, a chosen value other
    /// than its proposal (learned by catch-up or a snapshot: a higher ballot chose it), its
    /// ballot is superseded and it steps down before it can announce that slot.
    pub(crate) fn apply_chosen(&mut self) {
        let start = self.learner.applied_upto();
        let mut superseded = false;
        while let Some(mut applied) = self.learner.apply_next(
            self.config.request_table,
            self.acceptor.accepted(),
            &mut self.ready.persist,
        ) {
            if let Role::Leader(leader) = &mut self.proposer.role {
                if let Some(in_flight) = leader.in_flight.remove(&applied.slot) {
                    superseded |= in_flight.value != applied.chosen;
                }
            }
            if let Some((request_id, outcome)) = applied.answer.take() {
                self.answer_waiters(request_id, &applied.chosen, outcome);
            }
            if let Some(checked) = applied.config.take() {
                self.membership_notes.mark_changed();
                self.answer_change(applied.slot, checked);
            }
            self.ready.chosen.push((applied.slot, applied.into_entry()));
        }
        if self.learner.applied_upto() > start {
            self.persist(PersistOp::AppliedUpto(self.learner.applied_upto()));
            self.forget_applied_in_flight();
            self.release_replies_after_apply();
            self.drop_acceptor_state_unless_voting();
        }
        if superseded {
            self.step_down_superseded();
        }
    }

    fn release_replies_after_apply(&mut self) {
        while let Some(entry) = self.proposer.replies_after_apply.first_entry() {
            if *entry.key() >= self.learner.applied_upto() {
                break;
            }
            let (slot, requests) = entry.remove_entry();
            for request in requests {
                self.reply(Origin::Local, request, Ok(slot));
            }
        }
    }

    /// Applies a peer's history entries that extend the applied prefix without a gap (see
    /// `Learner::stage_verbatim`), with whatever raw chosen values were already pending.
    pub(crate) fn apply_verbatim(&mut self, entries: BTreeMap<Slot, Value>) {
        self.learner.stage_verbatim(entries);
        self.apply_chosen();
    }

    /// A leader's commit point of `ballot` (see `Learner::learn_commit`), then apply.
    pub(crate) fn learn_commit(&mut self, from: NodeId, ballot: Ballot, commit_upto: Slot) {
        self.learner.note_member_progress(from, commit_upto);
        self.learner.learn_commit(ballot, commit_upto, self.acceptor.accepted());
        self.apply_chosen();
        self.maybe_catch_up();
    }

    /// `slot` was just accepted in `commit_ballot` below that ballot's commit point: it is chosen.
    pub(crate) fn mark_chosen_by_commit(&mut self, slot: Slot) {
        if let Some((_, value)) = self.acceptor.accepted().get(&slot) {
            let value = value.clone();
            self.learner.learn_chosen(slot, value);
        }
    }

    /// Asks a peer that is ahead for the next chosen entries, unless a request is outstanding.
    pub(crate) fn maybe_catch_up(&mut self) {
        let base_timeout_ticks = self.config.catch_up_timeout_ticks;
        if let Some((peer, request)) = self.learner.catch_up_from(
            self.tick_now,
            self.proposer.leader_hint,
            &mut self.rng,
            base_timeout_ticks,
        ) {
            self.send(peer, Message::CatchUp { from_slot: self.learner.applied_upto(), request });
        }
    }

    /// Tells every member this replica knows how far it has applied, once per election timeout
    /// (and at its first tick): a member behind learns who is ahead and fetches from it,
    /// whether or not a leader is there to announce a commit point.
    pub(crate) fn tick_progress(&mut self) {
        if !self.learner.progress_due(self.tick_now, self.config.election_timeout_ticks) {
            return;
        }
        let applied_upto = self.learner.applied_upto();
        let log_id = self.learner.membership().log_id;
        self.broadcast(Message::Progress { applied_upto, log_id });
    }

    /// A member says how far it has applied: catch up from it if it is ahead, and tell it at
    /// once if it is behind (so a node just started learns within a round trip).
    pub(crate) fn on_progress(&mut self, from: NodeId, applied_upto: Slot) {
        self.learner.note_member_progress(from, applied_upto);
        let ours = self.learner.applied_upto();
        if applied_upto < ours {
            let log_id = self.learner.membership().log_id;
            self.send(from, Message::Progress { applied_upto: ours, log_id });
        }
        self.maybe_catch_up();
    }

    pub(crate) fn on_catch_up(&mut self, from: NodeId, from_slot: Slot, request: u64) {
        let applied_upto = self.learner.applied_upto();
        if from_slot < self.learner.history_start() {
            let snapshot = self.learner.truncation().clone();
            self.send(from, Message::CatchUpTruncated { snapshot, request });
        } else if from_slot < applied_upto {
            self.ready.history_reads.push(HistoryRead {
                purpose: ReadPurpose::CatchUp { request },
                to: from,
                from_slot,
                upto_slot: applied_upto,
                entries_max: self.config.entries_per_message_max,
                bytes_max: self.config.message_bytes_max,
            });
        } else {
            let log_id = self.learner.membership().log_id;
            self.send(from, Message::CatchUpEntries { entries: Vec::new(), applied_upto, log_id, request });
        }
    }

    /// Hands back the history the driver read for a [`HistoryRead`]: answers the catch-up
    /// request or the Prepare it was made for.
    ///
    /// # Correctness
    /// The read ran after the Ready's batch was written, which may have truncated the history
    /// since the request came in: an answer is only ever an unbroken run from the slot asked
    /// for, and a request now below the history's start gets the truncation snapshot.
    pub fn serve_history_read(&mut self, read: &HistoryRead, entries: Vec<(Slot, Value)>) {
        // Anyone the transport let in is a node of this cluster, and the history is one: a
        // node this configuration does not list yet (or any more) may read it.
        if read.to == self.config.id {
            return;
        }
        match read.purpose {
            ReadPurpose::CatchUp { request } if read.from_slot < self.learner.history_start() => {
                let snapshot = self.learner.truncation().clone();
                self.send(read.to, Message::CatchUpTruncated { snapshot, request });
            }
            ReadPurpose::CatchUp { request } => {
                let entries = unbroken_run(read.from_slot, entries);
                let applied_upto = self.learner.applied_upto();
                let log_id = self.learner.membership().log_id;
                self.send(read.to, Message::CatchUpEntries { entries, applied_upto, log_id, request })
            }
            ReadPurpose::Promise { ballot } => self.send_promise(read.to, ballot, read.from_slot, entries),
        }
    }

    pub(crate) fn on_catch_up_entries(
        &mut self,
        from: NodeId,
        entries: Vec<(Slot, Value)>,
        applied_upto: Slot,
        request: u64,
    ) {
        self.learner.note_member_progress(from, applied_upto);
        self.learner.catch_up_answered(from, request);
        // Entries a peer applied are final, and below its `applied_upto` by construction.
        self.apply_verbatim(entries.into_iter().filter(|(slot, _)| *slot < applied_upto).collect());
        self.fill_window();
        self.maybe_catch_up();
    }

    /// Installs a peer's truncation snapshot (see `Learner::install_snapshot`).
    ///
    /// # Correctness
    /// A leader that jumps over slots it has in flight cannot tell whether its proposals there
    /// were chosen, so it steps down.
    pub(crate) fn on_catch_up_truncated(&mut self, from: NodeId, snapshot: TruncationSnapshot, request: u64) {
        self.learner.catch_up_answered(from, request);
        let Some(installed) = self.learner.install_snapshot(from, snapshot) else {
            return;
        };
        let start = installed.history_start;
        // A snapshot may jump over configuration entries: whoever leads or campaigns under
        // the old configuration starts over (`settle_membership`).
        if installed.membership.is_some() {
            self.membership_notes.mark_changed();
        }
        self.persist(PersistOp::InstallSnapshot(installed));
        self.acceptor.forget_below(start);
        let jumped_in_flight = match &self.proposer.role {
            Role::Leader(leader) => leader.in_flight.first_key_value().is_some_and(|(slot, _)| *slot < start),
            _ => false,
        };
        if jumped_in_flight {
            self.step_down_superseded();
        }
        self.forget_applied_in_flight();
        self.release_replies_after_apply();
        self.maybe_catch_up();
    }

    /// A follower truncates where its leader did, once it has applied that far.
    pub(crate) fn follow_truncation(&mut self, history_start: Slot) {
        if history_start > self.learner.history_start() && self.learner.applied_upto() >= history_start {
            self.truncate_to(history_start);
        }
    }

    fn truncate_to(&mut self, history_start: Slot) -> u64 {
        let (snapshot, removed) = self.learner.truncate_to(history_start);
        self.acceptor.forget_below(history_start);
        self.persist(PersistOp::Truncate(snapshot));
        removed
    }

    /// Garbage collection: drops accepted records of applied slots (always redundant: a Promise
    /// reports them through `applied_upto`) and, if asked, truncates the history.
    pub fn compact(&mut self, compaction: Compaction) -> Result<CompactionReport, CompactionError> {
        let truncate = compaction.truncate_below.filter(|slot| *slot > self.learner.history_start());
        if let Some(requested) = truncate {
            if requested <= self.learner.applied_upto() && !matches!(self.proposer.role, Role::Leader(_)) {
                return Err(CompactionError::NotLeader { leader_hint: self.proposer.leader_hint });
            }
            let peers: Vec<NodeId> = self.peers().collect();
            self.learner.check_truncation(requested, compaction.force, peers)?;
        }
        let applied_upto = self.learner.applied_upto();
        let accepted_records_removed = self.acceptor.forget_below(applied_upto);
        if accepted_records_removed > 0 {
            self.persist(PersistOp::DeleteAcceptedBelow(applied_upto));
        }
        let history_entries_removed = truncate.map_or(0, |slot| self.truncate_to(slot));
        Ok(CompactionReport {
            accepted_records_removed,
            history_entries_removed,
            history_start: self.learner.history_start(),
            applied_upto,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Compaction, CompactionError};
    use crate::test_support::{proposal, Cluster, TEST_KEY};
    use crate::Value;

    #[test]
    fn a_retried_request_is_chosen_once_and_answered_with_its_slot() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let client = cluster.session(leader);
        cluster.node(leader).propose(proposal(client, 1, "once"));
        cluster.settle();
        cluster.node(leader).propose(proposal(client, 2, "other"));
        cluster.node(leader).propose(proposal(client, 1, "once"));
        cluster.settle();
        let outcomes: Vec<_> =
            cluster.replies.iter().map(|(_, r)| (r.request_id, r.outcome.clone())).collect();
        let mut outcomes = outcomes;
        outcomes.sort_by_key(|(request_id, outcome)| (*request_id, outcome.clone().ok()));
        let (first, second) = (proposal(client, 1, "").request_id, proposal(client, 2, "").request_id);
        assert_eq!(outcomes, vec![(first, Ok(1)), (first, Ok(1)), (second, Ok(2))]);
        let history = &cluster.storage[&leader].history;
        assert_eq!(history.len(), 3, "the registration and two commands");
    }

    #[test]
    fn a_duplicate_that_reaches_the_log_is_applied_as_a_noop() {
        let mut cluster = Cluster::new(1);
        cluster.elect();
        let client = cluster.session(1);
        let value = Value::Command {
            request_id: proposal(client, 1, "").request_id,
            key: TEST_KEY,
            payload: b"x".to_vec(),
        };
        cluster.node(1).learner.learn_chosen(1, value.clone());
        cluster.node(1).learner.learn_chosen(2, value.clone());
        cluster.node(1).apply_chosen();
        let ready = cluster.take_ready_written(1);
        assert_eq!(ready.chosen, vec![(1, value), (2, Value::Noop)]);
    }

    #[test]
    fn a_late_retry_of_an_evicted_session_is_refused_not_applied_again() {
        let mut cluster = Cluster::new(3);
        for replica in cluster.replicas.values_mut() {
            replica.config.request_table.clients_max = 2;
        }
        let leader = cluster.elect();
        let old = cluster.session(leader);
        cluster.node(leader).propose(proposal(old, 1, "once"));
        cluster.settle();
        // Two newer sessions fill the table and evict the old one.
        cluster.session(leader);
        cluster.session(leader);
        cluster.replies.clear();
        cluster.node(leader).propose(proposal(old, 1, "once"));
        cluster.settle();
        let outcome = &cluster.replies[0].1.outcome;
        assert_eq!(outcome, &Err(crate::ProposalError::SessionExpired(old)));
        let copies = cluster.storage[&leader]
            .history
            .values()
            .filter(|value| value.request_id() == Some(proposal(old, 1, "").request_id))
            .count();
        assert_eq!(copies, 1);
    }

    /// A leader that learns by catch-up that another ballot chose a different value at a slot
    /// it has in flight must step down before announcing that slot: its followers would take
    /// their accepted entry of its ballot (its own, superseded value) for the chosen one.
    /// (Reachable through a duplicated CatchUp served after the other ballot chose.)
    #[test]
    fn a_leader_superseded_at_an_in_flight_slot_steps_down_before_announcing_it() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let peer = if leader == 1 { 2 } else { 1 };
        let client = cluster.session(leader);
        let ballot = cluster.node(leader).status().own_ballot.expect("leads");
        cluster.down = (1..=3).filter(|id| *id != leader).collect();
        cluster.node(leader).propose(proposal(client, 1, "mine"));
        cluster.settle();
        let slot = cluster.node(leader).applied_upto();
        assert!(cluster.replies.is_empty(), "the proposal is in flight");
        let theirs = Value::Command {
            request_id: proposal(client, 2, "").request_id,
            key: TEST_KEY,
            payload: b"theirs".to_vec(),
        };
        let entries = crate::Message::CatchUpEntries {
            entries: vec![(slot, theirs)],
            applied_upto: slot + 1,
            log_id: 1,
            request: 0,
        };
        cluster.node(leader).step(crate::Envelope {
            from: peer,
            to: leader,
            incarnation: peer,
            role: Default::default(),
            message: entries,
        });
        let mut announced = Vec::new();
        for _ in 0..5 {
            cluster.node(leader).tick();
            let ready = cluster.take_ready_written(leader);
            for envelope in ready.messages {
                match envelope.message {
                    crate::Message::Heartbeat { ballot: b, commit_upto, .. }
                    | crate::Message::Accept { ballot: b, commit_upto, .. }
                        if b == ballot && commit_upto > slot =>
                    {
                        announced.push(commit_upto)
                    }
                    _ => {}
                }
            }
            cluster.replies.extend(ready.replies.into_iter().map(|r| (leader, r)));
        }
        assert!(!cluster.node(leader).is_leader(), "a superseded leader steps down");
        assert!(
            announced.is_empty(),
            "ballot {ballot} announced commit points {announced:?} over slot {slot}"
        );
        let mine = proposal(client, 1, "").request_id;
        let answered = cluster.replies.iter().any(|(_, r)| r.request_id == mine && r.outcome.is_err());
        assert!(answered, "the superseded proposal is answered (retryable): {:?}", cluster.replies);
        assert_eq!(cluster.node(leader).status().superseded_leaderships, 1);
    }

    /// A catch-up request taken in the same batch as a truncation: the history read runs after
    /// the cut is written, so the answer must be the snapshot (or an unbroken run from the slot
    /// asked for), never entries that start above it.
    #[test]
    fn a_catch_up_read_that_races_a_truncation_is_answered_with_the_snapshot() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let peer = if leader == 1 { 2 } else { 1 };
        let client = cluster.session(leader);
        for seq in 1..=3 {
            cluster.node(leader).propose(proposal(client, seq, "v"));
        }
        cluster.settle();
        let catch_up = crate::Message::CatchUp { from_slot: 0, request: 1 };
        cluster.node(leader).step(crate::Envelope {
            from: peer,
            to: leader,
            incarnation: peer,
            role: Default::default(),
            message: catch_up,
        });
        cluster.node(leader).compact(Compaction { truncate_below: Some(2), force: true }).expect("cut");
        let ready = cluster.take_ready_written(leader);
        let storage = cluster.storage.get_mut(&leader).expect("member");
        storage.apply(&ready.persist);
        let replica = cluster.replicas.get_mut(&leader).expect("member");
        for read in &ready.history_reads {
            let entries =
                storage.read_history(read.from_slot, read.upto_slot, read.entries_max, read.bytes_max);
            replica.serve_history_read(read, entries);
        }
        let answers = crate::test_support::all_messages(replica.take_ready_persisted());
        assert!(
            answers.iter().all(|e| match &e.message {
                crate::Message::CatchUpEntries { entries, .. } =>
                    entries.first().is_none_or(|(slot, _)| *slot == 0),
                _ => true,
            }),
            "an answer with a gap: {answers:?}"
        );
        assert!(
            answers.iter().any(|e| matches!(e.message, crate::Message::CatchUpTruncated { .. })),
            "{answers:?}"
        );
    }

    /// History entries from a peer are verbatim (a duplicate is a no-op there), so they may not
    /// wait above a gap as pending chosen values: a Promise would report them as raw values and
    /// a new leader could choose the no-op as a second value for the slot.
    #[test]
    fn history_entries_above_a_gap_are_dropped_not_kept_as_chosen() {
        let mut follower = crate::test_support::replica(1, &[1, 2, 3]);
        let entries = crate::Message::CatchUpEntries {
            entries: vec![(1, Value::Noop)],
            applied_upto: 2,
            log_id: 1,
            request: 0,
        };
        follower.step(crate::Envelope {
            from: 2,
            to: 1,
            incarnation: 2,
            role: Default::default(),
            message: entries,
        });
        assert!(
            follower.learner.chosen_pending().is_empty(),
            "kept above a gap: {:?}",
            follower.learner.chosen_pending()
        );
        let entries = crate::Message::CatchUpEntries {
            entries: vec![(0, Value::Noop), (1, Value::Noop)],
            applied_upto: 2,
            log_id: 1,
            request: 0,
        };
        follower.step(crate::Envelope {
            from: 2,
            to: 1,
            incarnation: 2,
            role: Default::default(),
            message: entries,
        });
        assert_eq!(follower.applied_upto(), 2);
    }

    /// A follower behind a leader that announced slots 0-4 chosen, with its first catch-up
    /// request (number 1, to node 2) sent; returns the replica and the requests sent.
    fn behind_with_one_request() -> (crate::Replica, Vec<crate::Envelope>) {
        let mut follower = crate::test_support::replica(1, &[1, 2, 3]);
        let heartbeat = crate::Message::Heartbeat {
            ballot: crate::Ballot::new(1, 2),
            commit_upto: 5,
            history_start: 0,
            round: 0,
        };
        follower.step(envelope(2, heartbeat));
        let requests = catch_ups(&mut follower);
        assert_eq!(requests.len(), 1, "{requests:?}");
        (follower, requests)
    }

    fn envelope(from: u64, message: crate::Message) -> crate::Envelope {
        crate::Envelope { from, to: 1, incarnation: from, role: Default::default(), message }
    }

    fn catch_ups(replica: &mut crate::Replica) -> Vec<crate::Envelope> {
        let ready = replica.take_ready_persisted();
        crate::test_support::all_messages(ready)
            .into_iter()
            .filter(|e| matches!(e.message, crate::Message::CatchUp { .. }))
            .collect()
    }

    fn page(slot: u64, request: u64) -> crate::Message {
        crate::Message::CatchUpEntries {
            entries: vec![(slot, Value::Noop)],
            applied_upto: 5,
            log_id: 1,
            request,
        }
    }

    /// A duplicated answer must not start a second chain of requests: it would live as long as
    /// the node is behind, and chains add up until the link is flooded (swarm seeds 7019283,
    /// 9002927 and 9013726 ended with a million catch-up messages in flight).
    #[test]
    fn a_duplicated_catch_up_answer_starts_no_second_chain() {
        let (mut follower, _) = behind_with_one_request();
        follower.step(envelope(2, page(0, 1)));
        let next = catch_ups(&mut follower);
        assert_eq!(next.len(), 1, "the answer starts the next request: {next:?}");
        follower.step(envelope(2, page(0, 1)));
        let more = catch_ups(&mut follower);
        assert!(more.is_empty(), "a duplicated answer sent {more:?}");
        assert_eq!(follower.applied_upto(), 1);
    }

    /// An answer that arrives after its request timed out (a slow link, a page of several
    /// MiB) is applied, but starts nothing: the request sent in its place is still the one
    /// outstanding, and the next timeout is twice as long.
    #[test]
    fn a_late_catch_up_answer_starts_no_second_chain() {
        let (mut follower, _) = behind_with_one_request();
        let timeout = follower.config().catch_up_timeout_ticks;
        let mut resent = Vec::new();
        for _ in 0..timeout {
            follower.tick();
            resent.extend(catch_ups(&mut follower));
        }
        assert_eq!(resent.len(), 1, "one request in place of the one that timed out: {resent:?}");
        let crate::Message::CatchUp { request: second, .. } = resent[0].message else { unreachable!() };
        assert_ne!(second, 1);
        follower.step(envelope(2, page(0, 1)));
        let after_late = catch_ups(&mut follower);
        assert!(after_late.is_empty(), "the late answer started {after_late:?}");
        assert_eq!(follower.applied_upto(), 1, "what it carried is applied");
        // The second request's timeout is twice the first's: no new request before then.
        for _ in 0..(2 * timeout - 1) {
            follower.tick();
            let sent = catch_ups(&mut follower);
            assert!(sent.is_empty(), "sent {sent:?} before the doubled timeout");
        }
        follower.step(envelope(2, page(1, second)));
        assert_eq!(catch_ups(&mut follower).len(), 1, "its own answer starts the next request");
    }

    /// After a request times out, the next goes to another member that is ahead: a member this
    /// one cannot reach must not hold catch-up for one doubled timeout after another.
    #[test]
    fn a_timed_out_catch_up_request_is_sent_again_to_another_member() {
        let (mut follower, first) = behind_with_one_request();
        follower.step(envelope(3, crate::Message::Progress { applied_upto: 5, log_id: 1 }));
        catch_ups(&mut follower);
        let timeout = follower.config().catch_up_timeout_ticks;
        let mut next = Vec::new();
        for _ in 0..timeout {
            follower.tick();
            next.extend(catch_ups(&mut follower));
        }
        assert_eq!(next.len(), 1, "{next:?}");
        assert_ne!(next[0].to, first[0].to, "asked the member that let the request time out again");
    }

    /// A node joining with flags that name node 2 but not the leader (node 1) hears the
    /// leader's heartbeats first and asks it, but its answers may have no way back: once a
    /// member of its own configuration says it is ahead, the request goes there instead.
    #[test]
    fn a_joining_node_asks_a_member_it_knows_rather_than_a_stranger() {
        let config = crate::Config { join_existing: true, ..crate::Config::new(4, vec![2, 4]) };
        let mut joining = crate::Replica::new(config, 7);
        let heartbeat = crate::Message::Heartbeat {
            ballot: crate::Ballot::new(3, 1),
            commit_upto: 10,
            history_start: 0,
            round: 0,
        };
        joining.step(crate::Envelope {
            from: 1,
            to: 4,
            incarnation: 1,
            role: Default::default(),
            message: heartbeat,
        });
        let first = catch_ups(&mut joining);
        assert_eq!(first.iter().map(|e| e.to).collect::<Vec<_>>(), vec![1], "only the leader is known ahead");
        let progress = crate::Message::Progress { applied_upto: 10, log_id: 0 };
        joining.step(crate::Envelope {
            from: 2,
            to: 4,
            incarnation: 2,
            role: Default::default(),
            message: progress,
        });
        let second = catch_ups(&mut joining);
        assert_eq!(second.iter().map(|e| e.to).collect::<Vec<_>>(), vec![2], "{second:?}");
    }

    #[test]
    fn truncation_waits_for_every_member_unless_forced() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let lagging = if leader == 3 { 2 } else { 3 };
        cluster.down.push(lagging);
        let client = cluster.session(leader);
        for seq in 1..=4 {
            cluster.node(leader).propose(proposal(client, seq, "v"));
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
        // The member that was down catches up from behind the cut by installing the snapshot:
        // its history restarts where the snapshot's duplicate table stands (slot 5).
        cluster.down.clear();
        cluster.run_ticks(30);
        let node = &cluster.replicas[&lagging];
        assert_eq!(node.history_start(), 5);
        assert_eq!(node.applied_upto(), 5);
        assert!(cluster.storage[&lagging].history.is_empty());
    }

    #[test]
    fn compaction_collects_accepted_records_of_applied_slots() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let client = cluster.session(leader);
        for seq in 1..=3 {
            cluster.node(leader).propose(proposal(client, seq, "v"));
        }
        cluster.settle();
        let report = cluster.node(leader).compact(Compaction::default()).expect("gc");
        assert_eq!(report.accepted_records_removed, 4);
        assert!(cluster.storage[&leader].accepted.len() <= 4);
        cluster.settle();
        assert!(cluster.storage[&leader].accepted.is_empty());
    }
}
