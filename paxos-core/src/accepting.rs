//! The acceptor's handlers: promise on Prepare, accept on Accept, and the follower side of
//! heartbeats. They decide when; the state they change is the [`Acceptor`](crate::acceptor::Acceptor)'s
//! (acceptor.rs), through its methods only.

use crate::message::{AcceptedEntry, Message};
use crate::ready::{HistoryRead, ReadPurpose};
use crate::replica::Replica;
use crate::role::{PromiseData, Role};
use crate::types::{Ballot, NodeId, Slot};
use crate::value::Value;

/// The entries of `entries` (in slot order) that form one unbroken run starting at `from`.
pub(crate) fn unbroken_run(
    from: Slot,
    entries: impl IntoIterator<Item = (Slot, Value)>,
) -> Vec<(Slot, Value)> {
    let mut next = from;
    let mut run = Vec::new();
    for (slot, value) in entries {
        if slot < next {
            continue;
        }
        if slot > next {
            break;
        }
        run.push((slot, value));
        next += 1;
    }
    run
}

impl Replica {
    /// Phase 1b. Promises `ballot` if it is at least the current promise.
    ///
    /// When the candidate lacks slots this acceptor has applied, the Promise carries their
    /// chosen values, read from the history first (see [`ReadPurpose::Promise`]).
    ///
    /// # Correctness
    /// The raised promise is persisted in the same Ready that carries the Promise message (or
    /// the history read that leads to it), so the driver makes it durable before the candidate
    /// can count on it.
    pub(crate) fn on_prepare(&mut self, from: NodeId, ballot: Ballot, from_slot: Slot, transfer: bool) {
        let promises_or_defers = self.can_vote() || self.can_lead();
        if promises_or_defers && self.ignores_prepare(from, ballot, transfer) {
            // Leader stickiness (see `election.rs`): no promise and no timer reset while a
            // live leader is heard, so a member cut off from it cannot depose it.
            return;
        }
        if !self.can_vote() {
            if self.can_lead() && !self.learner.membership().votes(self.config.id) {
                // A proposer has no promise to give, but a campaign is under way: like an
                // acceptor that promises, it gives the candidate time to win (phase 1 can take
                // many pages) instead of pre-empting it with a ballot of its own.
                if ballot.round >= self.proposer.round_seen {
                    self.step_down_below(ballot);
                    if !self.is_leader() {
                        self.reset_election_timer();
                        self.proposer.leader_hint = None;
                        // And its own pre-vote goes: grants it collected before would make it
                        // campaign against the candidate it just deferred to (found by a
                        // review's hand-routed schedule, as for voters below).
                        self.proposer.pre_vote = None;
                    }
                }
                // How far this proposer has applied: a candidate whose configuration is older
                // (it still counts this node as a voter) learns that it is behind.
                let applied_upto = self.learner.applied_upto();
                self.send(from, Message::HeartbeatAck { ballot, applied_upto, round: 0 });
                return;
            }
            // A learner, a removed member or a node whose disk the configuration does not
            // know: no promise.
            self.answer_prepare_without_promise(from, ballot);
            return;
        }
        if ballot < self.acceptor.promised() {
            self.send(from, Message::Nack { ballot, promised: self.acceptor.promised() });
            return;
        }
        self.raise_promise(ballot);
        self.step_down_below(ballot);
        // Granting a promise is a vote for `from`: give it time to win before competing, or
        // promising anyone else (see `election.rs`).
        self.reset_election_timer();
        self.proposer.promise_granted = Some((from, self.tick_now));
        // And give up its own pre-vote: its yes to itself no longer holds (found by the
        // simulation: a member that promised one candidate went on to win its own pre-vote and
        // deposed the winner a round trip later).
        self.proposer.pre_vote = None;
        self.proposer.leader_hint = None;
        if from_slot < self.learner.applied_upto() && from_slot >= self.learner.history_start() {
            self.ready.history_reads.push(HistoryRead {
                purpose: ReadPurpose::Promise { ballot },
                to: from,
                from_slot,
                upto_slot: self.learner.applied_upto(),
                entries_max: self.config.entries_per_message_max,
                bytes_max: self.config.message_bytes_max,
            });
            return;
        }
        self.send_promise(from, ballot, from_slot, Vec::new());
    }

    /// A Prepare this replica will not promise because the two disagree on who votes (the
    /// candidate counts this replica as a voter, or this replica does not count the candidate
    /// as one): one of them has not applied the latest configuration. Says how far this one
    /// has applied (the candidate catches up if behind) and asks for what the candidate has
    /// (this one catches up if behind, maybe to find the candidate or itself promoted).
    pub(crate) fn answer_prepare_without_promise(&mut self, from: NodeId, ballot: Ballot) {
        let applied_upto = self.learner.applied_upto();
        self.send(from, Message::HeartbeatAck { ballot, applied_upto, round: 0 });
        // A probe outside the chain of catch-up requests (request 0): its answer starts none.
        self.send(from, Message::CatchUp { from_slot: applied_upto, request: 0 });
    }

    /// Sends the Promise of `ballot`, with `history` (applied entries from `from_slot` on).
    pub(crate) fn send_promise(
        &mut self,
        to: NodeId,
        ballot: Ballot,
        from_slot: Slot,
        history: Vec<(Slot, Value)>,
    ) {
        if self.acceptor.promised() != ballot {
            // Promised higher since the Prepare arrived: the candidate has lost already.
            self.send(to, Message::Nack { ballot, promised: self.acceptor.promised() });
            return;
        }
        let data = self.promise_data(from_slot, history);
        self.send(
            to,
            Message::Promise {
                ballot,
                from_slot,
                accepted: data.accepted,
                history: data.history,
                chosen: data.chosen,
                applied_upto: data.applied_upto,
                covered_upto: data.covered_upto,
                log_id: self.learner.membership().log_id,
            },
        );
    }

    /// What this acceptor knows about every slot from `from_slot` on.
    ///
    /// Slots below `applied_upto` are applied (their accepted records may be collected): their
    /// values come from `history`, which may stop short of `applied_upto`. Every accepted record
    /// at or above `max(from_slot, applied_upto)` is reported, a page at a time (see
    /// `promise_page`), which is what makes the candidate's choice of value safe.
    pub(crate) fn promise_data(&self, from_slot: Slot, history: Vec<(Slot, Value)>) -> PromiseData {
        let start = from_slot.max(self.learner.applied_upto());
        let (accepted, chosen, covered_upto) = self.promise_page(start);
        // Only an unbroken run from `from_slot`: a read that raced a truncation may start later,
        // and verbatim entries above a gap must never pass for raw chosen values.
        let history = unbroken_run(
            from_slot,
            history.into_iter().filter(|(slot, _)| *slot < self.learner.applied_upto()),
        );
        PromiseData { accepted, history, chosen, applied_upto: self.learner.applied_upto(), covered_upto }
    }

    /// The accepted records and pending chosen values from `start` on, within the message
    /// limits: every one below the returned `covered_upto` (`None`: every one). A slot's
    /// records go into a page together, and a page holds at least one slot.
    #[allow(clippy::type_complexity)]
    fn promise_page(&self, start: Slot) -> (Vec<AcceptedEntry>, Vec<(Slot, Value)>, Option<Slot>) {
        let mut accepted_records = self.acceptor.accepted().range(start..).peekable();
        let mut chosen_values = self.learner.chosen_pending().range(start..).peekable();
        let (mut accepted, mut chosen) = (Vec::new(), Vec::new());
        let (mut slots, mut bytes) = (0, 0);
        loop {
            let slot = match (accepted_records.peek(), chosen_values.peek()) {
                (None, None) => return (accepted, chosen, None),
                (Some((a, _)), Some((c, _))) => **a.min(c),
                (Some((a, _)), None) => **a,
                (None, Some((c, _))) => **c,
            };
            let record = accepted_records.next_if(|(s, _)| **s == slot);
            let value = chosen_values.next_if(|(s, _)| **s == slot);
            let size =
                record.map_or(0, |(_, (_, v))| v.size_bytes()) + value.map_or(0, |(_, v)| v.size_bytes());
            if !crate::page_has_room(
                slots,
                bytes,
                size,
                self.config.entries_per_message_max,
                self.config.message_bytes_max,
            ) {
                return (accepted, chosen, Some(slot));
            }
            if let Some((slot, (ballot, value))) = record {
                accepted.push(AcceptedEntry { slot: *slot, ballot: *ballot, value: value.clone() });
            }
            if let Some((slot, value)) = value {
                chosen.push((*slot, value.clone()));
            }
            slots += 1;
            bytes += size;
        }
    }

    /// Phase 2b. Accepts every entry if `ballot` is at least the promise.
    pub(crate) fn on_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        entries: Vec<(Slot, Value)>,
        commit_upto: Slot,
    ) {
        if ballot < self.acceptor.promised() {
            self.send(from, Message::Nack { ballot, promised: self.acceptor.promised() });
            return;
        }
        self.follow(from, ballot);
        if !self.can_vote() {
            // Not a voter (or not the incarnation the configuration knows): no vote, but the
            // commit point still lets it learn.
            self.learn_commit(from, ballot, commit_upto);
            return;
        }
        let mut slots = Vec::with_capacity(entries.len());
        for (slot, value) in entries {
            if slot < self.learner.applied_upto() {
                // Applied already, and the history is not in memory to compare with: a vote
                // here would vouch for a value this acceptor cannot check (a stale leader's
                // value differs from the chosen one). No vote; `applied_upto` in the reply
                // tells the leader to fetch the chosen value, and a leader whose proposal
                // differs from it learns it was superseded.
                self.counters.stale_accepts_refused += 1;
                continue;
            }
            if self
                .acceptor
                .accepted()
                .get(&slot)
                .is_some_and(|(existing, existing_value)| *existing == ballot && *existing_value != value)
            {
                // One ballot proposes one value per slot: a second one is a confused or hostile
                // peer's. No vote for it (and no crash: `Acceptor::accept` asserts this for
                // our own proposals).
                self.counters.rejected_messages += 1;
                continue;
            }
            slots.push(slot);
            self.accept_locally(slot, ballot, value);
        }
        self.send(from, Message::Accepted { ballot, slots, applied_upto: self.learner.applied_upto() });
        self.learn_commit(from, ballot, commit_upto);
    }

    /// Records an accepted value (the leader uses this for its own vote too).
    pub(crate) fn accept_locally(&mut self, slot: Slot, ballot: Ballot, value: Value) {
        assert!(self.can_vote(), "only a voting member keeps acceptor state");
        let Some(record) = self.acceptor.accept(slot, ballot, value) else {
            return;
        };
        self.persist(record);
        // A value accepted in the ballot whose leader already declared the slot committed is
        // chosen (that leader's announcements cover only slots where its value is the chosen one).
        if self.learner.committed_in_ballot(ballot, slot) {
            self.mark_chosen_by_commit(slot);
        }
    }

    pub(crate) fn on_heartbeat(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        commit_upto: Slot,
        history_start: Slot,
        round: u64,
    ) {
        if ballot < self.acceptor.promised() {
            self.send(from, Message::Nack { ballot, promised: self.acceptor.promised() });
            return;
        }
        self.follow(from, ballot);
        self.learn_commit(from, ballot, commit_upto);
        let applied_upto = self.learner.applied_upto();
        self.send(from, Message::HeartbeatAck { ballot, applied_upto, round });
        self.follow_truncation(history_start);
    }

    /// `from` leads `ballot >= promised`: accept it as leader.
    pub(crate) fn follow(&mut self, from: NodeId, ballot: Ballot) {
        // Accepting in a ballot implies promising it: a later Prepare below it must be refused.
        self.raise_promise(ballot);
        self.step_down_below(ballot);
        self.proposer.heard_leading = self.proposer.heard_leading.max(ballot);
        if !matches!(self.proposer.role, Role::Leader(_)) {
            // A leader at work: stickiness counts from here, and a pre-vote is moot.
            self.proposer.leader_heard_tick = Some(self.tick_now);
            self.proposer.pre_vote = None;
            if self.proposer.leader_hint != Some(from) {
                // Proposals forwarded to the previous leader may be lost with it: answer them
                // now (retryable) instead of after the forward timeout.
                self.fail_forwarded(Some(from));
                self.fail_forwarded_reads(Some(from));
            }
            self.proposer.leader_hint = Some(from);
            self.reset_election_timer();
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::{replica, sent};
    use crate::{Ballot, Envelope, Message, PersistOp, Value};

    fn prepare(ballot: Ballot) -> Envelope {
        Envelope {
            from: ballot.node,
            to: 1,
            incarnation: ballot.node,
            role: Default::default(),
            message: Message::Prepare { ballot, from_slot: 0, transfer: false },
        }
    }

    #[test]
    fn promise_is_persisted_in_the_same_ready_as_the_reply() {
        let mut acceptor = replica(1, &[1, 2, 3]);
        acceptor.step(prepare(Ballot::new(5, 2)));
        let ready = acceptor.take_ready_persisted();
        assert_eq!(ready.persist, vec![PersistOp::Promise(Ballot::new(5, 2))]);
        assert_eq!(sent(&ready, |m| matches!(m, Message::Promise { .. })).len(), 1);
    }

    /// A long run of accepted records goes out a page at a time: the Promise says where its
    /// page stopped, and the next Prepare (from there) gets the rest.
    #[test]
    fn a_promise_reports_accepted_records_a_page_at_a_time() {
        let mut acceptor = replica(1, &[1, 2, 3]);
        acceptor.config.entries_per_message_max = 8;
        let entries: Vec<(u64, Value)> = (0..20).map(|slot| (slot, Value::Noop)).collect();
        let accept = Message::Accept { ballot: Ballot::new(1, 2), entries, commit_upto: 0 };
        acceptor.step(Envelope { from: 2, to: 1, incarnation: 2, role: Default::default(), message: accept });
        acceptor.take_ready_persisted();
        let mut reported = Vec::new();
        let mut from_slot = 0;
        // The leader of ballot 1.2 campaigns again (a member that hears a live leader promises
        // only that leader, see `election.rs`).
        for _ in 0..3 {
            let prepare = Message::Prepare { ballot: Ballot::new(2, 2), from_slot, transfer: false };
            acceptor.step(Envelope {
                from: 2,
                to: 1,
                incarnation: 2,
                role: Default::default(),
                message: prepare,
            });
            let ready = acceptor.take_ready_persisted();
            let Message::Promise { accepted, covered_upto, .. } = &ready.persisted_messages[0].message else {
                panic!("no promise: {ready:?}");
            };
            assert!(accepted.len() <= 8);
            reported.extend(accepted.iter().map(|entry| entry.slot));
            match covered_upto {
                Some(covered) => {
                    assert!(accepted.iter().all(|entry| entry.slot < *covered));
                    from_slot = *covered;
                }
                None => break,
            }
        }
        assert_eq!(reported, (0..20).collect::<Vec<_>>(), "every record once, in order");
    }

    /// A ballot at the top of the range (a hostile peer's) is dropped and counted: believing it
    /// would leave no higher ballot for anyone, and the next election would overflow.
    #[test]
    fn a_ballot_above_the_round_limit_is_rejected_and_elections_go_on() {
        let mut acceptor = replica(1, &[1, 2, 3]);
        acceptor.step(prepare(Ballot::new(u64::MAX, 2)));
        let nack =
            Message::Nack { ballot: Ballot::new(1, 1), promised: Ballot::new(Ballot::ROUND_MAX + 1, 3) };
        acceptor.step(Envelope { from: 3, to: 1, incarnation: 3, role: Default::default(), message: nack });
        let ready = acceptor.take_ready_persisted();
        assert!(ready.persist.is_empty() && ready.persisted_messages.is_empty(), "{ready:?}");
        assert_eq!(acceptor.status().rejected_messages, 2);
        assert_eq!(acceptor.promised(), Ballot::ZERO);
        // Its pre-votes go on, with ordinary ballots.
        let mut asked = Vec::new();
        for _ in 0..50 {
            acceptor.tick();
            let ready = acceptor.take_ready_persisted();
            asked.extend(sent(&ready, |m| matches!(m, Message::PreVote { .. })).iter().map(|e| {
                let Message::PreVote { ballot, .. } = e.message else { unreachable!() };
                ballot
            }));
        }
        assert!(!asked.is_empty());
        assert!(asked.iter().all(|ballot| ballot.round >= 1 && ballot.round <= 5), "{asked:?}");
    }

    /// A promise written at the very top of the range (before the limit existed) leaves no
    /// higher ballot: the replica stops campaigning instead of overflowing.
    #[test]
    fn a_promise_at_the_top_of_the_range_does_not_overflow() {
        let storage = crate::MemStorage { promised: Ballot::new(u64::MAX, 2), ..Default::default() };
        let mut acceptor =
            crate::Replica::recover(crate::Config::new(1, vec![1, 2, 3]), storage.durable_state(), 1);
        for _ in 0..100 {
            acceptor.tick();
            acceptor.take_ready_persisted();
        }
        assert_eq!(acceptor.promised(), Ballot::new(u64::MAX, 2));
    }

    /// A member that holds no vote answers a Prepare at once with how far it has applied and
    /// a request for what the candidate has (before, in silence: a candidate whose
    /// configuration still counted it a voter never learned one of them was behind, swarm seed
    /// 60; the progress exchange now covers that within an election timeout, this answer at
    /// once).
    #[test]
    fn a_member_without_a_vote_answers_a_prepare_with_its_progress() {
        use crate::MemberRole::{Learner, Voter};
        let mut cluster = crate::test_support::Cluster::with_roles(&[(1, Voter), (2, Voter), (3, Learner)]);
        let prepare = Message::Prepare { ballot: Ballot::new(4, 1), from_slot: 0, transfer: false };
        cluster.node(3).step(Envelope { from: 1, to: 3, incarnation: 1, role: Voter, message: prepare });
        let ready = cluster.take_ready_written(3);
        assert!(sent(&ready, |m| matches!(m, Message::Promise { .. })).is_empty(), "a learner promised");
        assert_eq!(sent(&ready, |m| matches!(m, Message::HeartbeatAck { .. })).len(), 1, "{ready:?}");
        assert_eq!(sent(&ready, |m| matches!(m, Message::CatchUp { request: 0, .. })).len(), 1, "{ready:?}");
    }

    #[test]
    fn lower_ballots_are_refused_with_the_promise() {
        let mut acceptor = replica(1, &[1, 2, 3]);
        acceptor.step(prepare(Ballot::new(5, 2)));
        acceptor.take_ready_persisted();
        acceptor.step(prepare(Ballot::new(4, 3)));
        let accept =
            Message::Accept { ballot: Ballot::new(4, 3), entries: vec![(0, Value::Noop)], commit_upto: 0 };
        acceptor.step(Envelope { from: 3, to: 1, incarnation: 3, role: Default::default(), message: accept });
        let ready = acceptor.take_ready_persisted();
        assert!(ready.persist.is_empty(), "nothing may be stored for a refused ballot");
        let nacks =
            sent(&ready, |m| matches!(m, Message::Nack { promised, .. } if *promised == Ballot::new(5, 2)));
        assert_eq!(nacks.len(), 2);
    }

    #[test]
    fn promise_reports_accepted_values_and_chosen_prefix() {
        let mut acceptor = replica(1, &[1, 2, 3]);
        let accept =
            Message::Accept { ballot: Ballot::new(1, 2), entries: vec![(0, Value::Noop)], commit_upto: 0 };
        acceptor.step(Envelope { from: 2, to: 1, incarnation: 2, role: Default::default(), message: accept });
        acceptor.take_ready_persisted();
        // From the leader it follows (it would ignore another's, see `election.rs`).
        acceptor.step(prepare(Ballot::new(2, 2)));
        let ready = acceptor.take_ready_persisted();
        match &ready.persisted_messages[0].message {
            Message::Promise { accepted, applied_upto, .. } => {
                assert_eq!(accepted.len(), 1);
                assert_eq!(accepted[0].ballot, Ballot::new(1, 2));
                assert_eq!(*applied_upto, 0);
            }
            other => panic!("expected a promise, got {other:?}"),
        }
    }

    /// A commit point announced in one ballot says nothing about values accepted in another:
    /// leader a's word that slots below 2 are chosen must not make ballot b's proposals there
    /// chosen (b may be a stale leader whose values lost).
    #[test]
    fn a_commit_point_of_one_ballot_does_not_mark_entries_of_another() {
        let mut acceptor = replica(1, &[1, 2, 3]);
        let (a, b) = (Ballot::new(1, 2), Ballot::new(2, 3));
        let heartbeat = Message::Heartbeat { ballot: a, commit_upto: 2, history_start: 0, round: 0 };
        acceptor.step(Envelope {
            from: 2,
            to: 1,
            incarnation: 2,
            role: Default::default(),
            message: heartbeat,
        });
        for slot in 0..2 {
            let accept = Message::Accept { ballot: b, entries: vec![(slot, Value::Noop)], commit_upto: 0 };
            acceptor.step(Envelope {
                from: 3,
                to: 1,
                incarnation: 3,
                role: Default::default(),
                message: accept,
            });
        }
        acceptor.take_ready_persisted();
        assert!(
            acceptor.learner.chosen_pending().is_empty(),
            "marked chosen: {:?}",
            acceptor.learner.chosen_pending()
        );
        assert_eq!(acceptor.applied_upto(), 0);
        // Ballot b's own announcement does mark them.
        let heartbeat = Message::Heartbeat { ballot: b, commit_upto: 2, history_start: 0, round: 0 };
        acceptor.step(Envelope {
            from: 3,
            to: 1,
            incarnation: 3,
            role: Default::default(),
            message: heartbeat,
        });
        assert_eq!(acceptor.applied_upto(), 2);
    }

    #[test]
    fn a_recovered_acceptor_keeps_its_promise() {
        let mut acceptor = replica(1, &[1, 2, 3]);
        acceptor.step(prepare(Ballot::new(5, 2)));
        let mut storage = crate::MemStorage::bootstrapped(&[1, 2, 3]);
        storage.apply(&acceptor.take_ready_persisted().persist);
        let mut recovered = crate::Replica::recover(acceptor.config().clone(), storage.durable_state(), 1);
        recovered.step(prepare(Ballot::new(4, 3)));
        let ready = recovered.take_ready_persisted();
        assert!(matches!(ready.messages[0].message, Message::Nack { .. }));
    }
}
