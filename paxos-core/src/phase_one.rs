//! Phase 1: a candidate's Prepare over every open slot, the Promises it gathers (in pages), and
//! the leadership it takes once a quorum promised: the highest-ballot value of every slot
//! reported is proposed again, holes are filled with no-ops.

use crate::event::{CampaignReason, Event, StepDownReason};
use crate::membership::Incarnation;
use crate::message::{AcceptedEntry, Message};
use crate::replica::Replica;
use crate::role::{CandidateState, InFlight, LeaderState, PromiseData, Role};
use crate::types::{Ballot, NodeId, Slot};
use crate::value::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

impl Replica {
    /// Starts phase 1 with a ballot above every ballot seen. Only after a pre-vote won, a
    /// leader's `TimeoutNow`, or a configuration change under a leadership or candidacy (see
    /// `election.rs`).
    pub(crate) fn become_candidate(&mut self, reason: CampaignReason) {
        assert!(self.can_lead(), "only an admitted voter or proposer campaigns");
        self.proposer.pre_vote = None;
        // Rounds from the network stop at `Ballot::ROUND_MAX`; only a promise written before
        // that check existed can sit at the very top, and then no higher ballot exists.
        let Some(round) = self.proposer.round_seen.max(self.acceptor.promised().round).checked_add(1) else {
            self.reset_election_timer();
            return;
        };
        match &self.proposer.role {
            Role::Leader(leader) => self.ready.events.push(Event::SteppedDown {
                ballot: leader.ballot,
                was_leader: true,
                reason: StepDownReason::ConfigurationChange,
            }),
            Role::Candidate(_) | Role::Follower => {}
        }
        self.fail_leader_work(None);
        self.fail_confirming_reads(None);
        self.fail_forwarded(None);
        let ballot = Ballot::new(round, self.config.id);
        self.ready.events.push(Event::BecameCandidate { ballot, reason });
        self.proposer.round_seen = round;
        self.raise_promise(ballot);
        self.proposer.leader_hint = None;
        self.reset_election_timer();
        self.proposer.role = Role::Candidate(CandidateState {
            ballot,
            from_slot: self.learner.applied_upto(),
            promises: BTreeMap::new(),
            waiting_for_gap: false,
            earlier_pages: BTreeMap::new(),
            configuration: self.learner.membership().chosen_at,
            transfer: matches!(reason, CampaignReason::Transfer { .. }),
        });
        self.prepare_again();
    }

    /// (Re)starts phase 1 of the current candidacy from this replica's applied prefix.
    ///
    /// A Prepare at a ballot already promised is answered again, so asking twice in one ballot
    /// is safe; Promises that answered an earlier, lower `from_slot` cover more and still count.
    pub(crate) fn prepare_again(&mut self) {
        self.prepare_from(self.learner.applied_upto());
        // A quorum of one holds its own promise already.
        self.maybe_become_leader();
    }

    /// Asks every member for a promise (again) covering the slots from `from_slot` on: from the
    /// applied prefix, or from where the last page of promises stopped.
    fn prepare_from(&mut self, from_slot: Slot) {
        let own = self.can_vote().then(|| self.promise_data(from_slot, Vec::new()));
        let Role::Candidate(candidate) = &mut self.proposer.role else {
            return;
        };
        candidate.from_slot = from_slot;
        candidate.waiting_for_gap = false;
        candidate.promises.clear();
        // A proposer that does not vote has no promise of its own to count. A voter's counts
        // at once: the candidate leads only once it is written (see `maybe_become_leader`).
        if let Some(own) = own {
            candidate.promises.insert(self.config.id, own);
        }
        let (ballot, transfer) = (candidate.ballot, candidate.transfer);
        // The voting members promise; the proposers that do not vote are told too, so that
        // they hold off their own campaigns while this one pages through phase 1.
        let membership = self.learner.membership();
        let peers: Vec<NodeId> =
            self.peers().filter(|id| membership.votes(*id) || membership.may_lead(*id)).collect();
        for peer in peers {
            self.send(peer, Message::Prepare { ballot, from_slot, transfer });
        }
    }

    /// Lets a candidate that has its quorum lead once the Ready that wrote its own promise (its
    /// ballot) is persisted: it waited for this write (see `maybe_become_leader`).
    ///
    /// # Correctness
    /// Prepares leave before the write of the candidate's promise, and the peers' Promises may
    /// come back first, a quorum without its own. Leading then would send Accepts of a ballot
    /// a crash can take back: restarted with its old promise, the node may campaign in the same
    /// ballot again, and two lives of one ballot could propose two values at a slot.
    pub(crate) fn lead_once_promise_written(&mut self) {
        if !self.promise_is_written() {
            return;
        }
        let promised = self.acceptor.promised();
        match &self.proposer.role {
            Role::Candidate(candidate) if candidate.ballot == promised => self.maybe_become_leader(),
            _ => {}
        }
    }

    pub(crate) fn on_promise(
        &mut self,
        from: NodeId,
        incarnation: Incarnation,
        ballot: Ballot,
        from_slot: Slot,
        data: PromiseData,
    ) {
        self.learner.note_member_progress(from, data.applied_upto);
        if !self.learner.membership().counts_vote(from, incarnation) {
            return;
        }
        let Role::Candidate(candidate) = &mut self.proposer.role else {
            return;
        };
        // A Promise that answered a later `from_slot` (a delayed answer to a Prepare of an
        // earlier life of this ballot, from before a crash) does not cover the slots between;
        // one whose page stopped below `from_slot` (a delayed earlier page) covers nothing new.
        if candidate.ballot != ballot
            || from_slot > candidate.from_slot
            || data.covered_upto.is_some_and(|covered| covered <= candidate.from_slot)
        {
            return;
        }
        candidate.promises.insert(from, data);
        self.maybe_become_leader();
    }

    /// With a quorum of promises: learn every chosen value they carry; lead if no slot below
    /// some promiser's applied prefix is still unknown, otherwise fill that gap first.
    ///
    /// # Correctness
    /// A slot below a promiser's `applied_upto` is chosen, but that promiser may have collected
    /// its accepted record, so the highest-ballot rule over the quorum could pick a value other
    /// than the chosen one: such a slot must be known (from a Promise's history entries or by
    /// catch-up) before this replica leads. Promises carry those values, so any live majority
    /// lets the candidate finish: it never waits on a member that is gone.
    fn maybe_become_leader(&mut self) {
        // A loop, not recursion: with a quorum of one, every page is complete at once.
        loop {
            let majority = self.learner.membership().majority();
            let configuration = self.learner.membership().chosen_at;
            let Role::Candidate(candidate) = &mut self.proposer.role else {
                return;
            };
            // A configuration entry applied during this candidacy (from a promise's history)
            // changed who must promise: `settle_membership` starts over once this input ends.
            if self.membership_notes.changed() || candidate.configuration != configuration {
                return;
            }
            if candidate.promises.len() < majority || candidate.waiting_for_gap {
                return;
            }
            let mut max_applied_upto = 0;
            let mut chosen = Vec::new();
            let mut history = BTreeMap::new();
            for data in candidate.promises.values_mut() {
                max_applied_upto = max_applied_upto.max(data.applied_upto);
                chosen.append(&mut data.chosen);
                history.extend(std::mem::take(&mut data.history));
            }
            let from_slot = candidate.from_slot;
            for (slot, value) in chosen {
                self.learner.learn_chosen(slot, value);
            }
            self.apply_verbatim(history);
            if self.membership_notes.changed() {
                // The promises carried configuration entries, now applied: this phase 1 asked
                // the wrong voters for the slots above them (two changes can leave its quorum
                // disjoint from theirs). `settle_membership` starts over once this input ends.
                return;
            }
            if self.learner.applied_upto() < max_applied_upto {
                // Not `==`: from the applied prefix (again), or back to it from a later page.
                if self.learner.applied_upto() != from_slot {
                    // A quorum answered and this candidate learned history from it: progress,
                    // so the next round gets a full election timeout (as a page of accepted
                    // records does). Otherwise a candidate far behind, learning a small page
                    // per round trip, is cut short by its own timer again and again (found by
                    // the simulation's liveness holds: a lagging proposer taking over).
                    self.reset_election_timer();
                    self.prepare_from(self.learner.applied_upto());
                    continue;
                } else if let Role::Candidate(candidate) = &mut self.proposer.role {
                    // No promise could give the next slot (truncated there): catch-up will.
                    candidate.waiting_for_gap = true;
                    self.maybe_catch_up();
                }
                return;
            }
            if self.next_promise_page() {
                continue;
            }
            if !self.promise_is_written() {
                // No Accept of this ballot may leave before the ballot is on disk, even when the
                // peers' promises alone are a quorum: a crash would bring this node back with
                // its old promise, free to campaign in the same ballot again, and two lives of
                // one ballot could propose two values at a slot (found by a review; two routed
                // schedules in tests/async_writes.rs). `lead_once_promise_written` comes back.
                return;
            }
            let Role::Candidate(candidate) = std::mem::replace(&mut self.proposer.role, Role::Follower)
            else {
                unreachable!("checked above")
            };
            self.become_leader(candidate);
            return;
        }
    }

    /// If some promise of the quorum stopped at a full page, keeps what the quorum's pages say
    /// below the lowest stop and asks for the next page from there. True if it did.
    ///
    /// # Correctness
    /// Below the lowest stop every promise of the quorum is complete, and an acceptor's records
    /// of ballots below this one are frozen by its promise: so the highest-ballot value over
    /// the pages is what one complete answer of the quorum would have given. Taking it over
    /// more acceptors than a quorum (pages answered by different majorities) is safe too:
    /// every accepted value of a ballot at or above the one that chose a slot is the chosen one.
    fn next_promise_page(&mut self) -> bool {
        let Role::Candidate(candidate) = &mut self.proposer.role else {
            return false;
        };
        let Some(covered_upto) = candidate.promises.values().filter_map(|data| data.covered_upto).min()
        else {
            return false;
        };
        assert!(covered_upto > candidate.from_slot, "a page covers at least one slot");
        for data in candidate.promises.values_mut() {
            for entry in std::mem::take(&mut data.accepted) {
                if entry.slot >= covered_upto {
                    continue;
                }
                keep_highest(&mut candidate.earlier_pages, entry);
            }
        }
        // A page answered by a quorum is progress: give the next page a full
        // election timeout, or a long run of records can never be paged through.
        self.reset_election_timer();
        self.prepare_from(covered_upto);
        true
    }

    /// Phase 1 is complete: choose a value for every open slot and start phase 2.
    ///
    /// # Correctness
    /// Every slot below every promiser's `applied_upto` is applied here already (see
    /// `maybe_become_leader`). For the slots above, any value that may have been chosen was
    /// accepted by some promiser that still holds the record, so taking the highest-ballot
    /// accepted value is safe.
    fn become_leader(&mut self, candidate: CandidateState) {
        let ballot = candidate.ballot;
        assert_eq!(self.acceptor.promised(), ballot, "a leader holds its own promise");
        let votes_from: Vec<NodeId> = candidate.promises.keys().copied().collect();
        let Some((next_slot, proposals, config_slot)) =
            self.phase_one_values(candidate.promises, candidate.earlier_pages)
        else {
            // Some promise claims a vote absurdly far ahead (see `phase_one_holes_max`): give
            // up this candidacy (the role is already Follower) and wait for the next election.
            self.counters.rejected_messages += 1;
            self.reset_election_timer();
            return;
        };
        let mut leader = self.leader_state(ballot, next_slot, &proposals);
        leader.config_slot = config_slot;
        self.ready.events.push(Event::BecameLeader { ballot, votes_from });
        self.proposer.role = Role::Leader(Box::new(leader));
        self.proposer.leader_hint = Some(self.config.id);
        for (slot, value) in proposals {
            self.accept_own(slot, ballot, value);
        }
        // Announce leadership at once so followers stop their election timers.
        self.broadcast_heartbeat();
        self.check_quorums();
        self.fill_window();
        self.maybe_catch_up();
        self.maybe_change_membership_automatically();
    }

    /// The value to propose at every open slot after phase 1, and the first slot after them: a
    /// value known chosen, else the highest-ballot accepted value among the promises, else a
    /// no-op (a gap no one voted for). The third element is the slot of a configuration entry,
    /// if one is among them: the proposals stop there.
    ///
    /// # Correctness
    /// A configuration entry at slot `c` governs the slots above it, and this phase 1 asked the
    /// configuration in force below `c`: what its promises say about the slots above `c` is
    /// not what the new configuration's quorums may have chosen there. So the leader proposes
    /// up to `c` only, and once `c` is applied, campaigns again with the new configuration
    /// (`settle_membership`), whose promises report those slots. Whoever proposed the entry
    /// proposed nothing above it before it was applied, so votes above `c` exist only in
    /// ballots that knew the entry chosen, or in lower ballots whose leaders never had it.
    #[allow(clippy::type_complexity)]
    fn phase_one_values(
        &self,
        promises: BTreeMap<NodeId, PromiseData>,
        earlier_pages: BTreeMap<Slot, (Ballot, Value)>,
    ) -> Option<(Slot, Vec<(Slot, Value)>, Option<Slot>)> {
        let mut highest = earlier_pages;
        for (node, data) in promises {
            assert!(
                data.applied_upto <= self.learner.applied_upto(),
                "phase 1 left a gap below {node}'s prefix"
            );
            for entry in data.accepted {
                keep_highest(&mut highest, entry);
            }
        }
        let mut next_slot = self.learner.applied_upto();
        if let Some((slot, _)) = highest.last_key_value() {
            next_slot = next_slot.max(slot + 1);
        }
        if let Some((slot, _)) = self.learner.chosen_pending().last_key_value() {
            next_slot = next_slot.max(slot + 1);
        }
        // What must stay bounded is what a forged far vote would make the candidate invent: a
        // no-op for every hole (an open slot no promise reports a vote or a chosen value for).
        // Open slots with a record are no limit's business: their values are in memory already,
        // and a lagging honest majority can have a million of them (a limit on the span kept
        // such a cluster from ever electing a leader).
        let applied = self.learner.applied_upto();
        let reported = highest.range(applied..).count() as u64
            + self
                .learner
                .chosen_pending()
                .range(applied..)
                .filter(|(slot, _)| !highest.contains_key(slot))
                .count() as u64;
        if (next_slot - applied).saturating_sub(reported) > self.config.phase_one_holes_max {
            return None;
        }
        let mut proposals = Vec::new();
        for slot in self.learner.applied_upto()..next_slot {
            let value = if let Some(value) = self.learner.chosen_pending().get(&slot) {
                value.clone()
            } else if let Some((_, value)) = highest.remove(&slot) {
                value
            } else {
                Value::Noop
            };
            let is_config = matches!(value, Value::Config(_));
            proposals.push((slot, value));
            if is_config {
                return Some((slot + 1, proposals, Some(slot)));
            }
        }
        Some((next_slot, proposals, None))
    }

    /// A new leader's state, with `proposals` in flight and unsent (its own votes count once
    /// written: see `accept_own`).
    fn leader_state(&self, ballot: Ballot, next_slot: Slot, proposals: &[(Slot, Value)]) -> LeaderState {
        let now = self.tick_now;
        let mut leader = LeaderState {
            ballot,
            next_slot,
            in_flight: Default::default(),
            own_votes_waiting: VecDeque::new(),
            unsent: Vec::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            waiters: BTreeMap::new(),
            last_heartbeat_tick: now,
            last_retransmit_tick: now,
            announced_commit: self.learner.applied_upto(),
            last_heard_tick: self.voter_peers().map(|peer| (peer, now)).collect(),
            config_slot: None,
            pending_change: None,
            change_waiter: None,
            answered_tick: BTreeMap::new(),
            transfer: None,
        };
        for (slot, value) in proposals {
            leader
                .in_flight
                .insert(*slot, InFlight { value: value.clone(), votes: BTreeSet::new(), sent_tick: now });
            leader.unsent.push(*slot);
        }
        leader
    }
}

/// Phase 1's rule for one slot: of the votes the promises report, the highest ballot's value
/// is the one that may have been chosen.
fn keep_highest(highest: &mut BTreeMap<Slot, (Ballot, Value)>, entry: AcceptedEntry) {
    let replace = match highest.get(&entry.slot) {
        Some((ballot, _)) => entry.ballot > *ballot,
        None => true,
    };
    if replace {
        highest.insert(entry.slot, (entry.ballot, entry.value));
    }
}

#[cfg(test)]
mod tests {
    use crate::message::AcceptedEntry;
    use crate::test_support::{proposal, sent, Cluster};
    use crate::{Ballot, Envelope, Message, Value};

    #[test]
    fn single_member_cluster_chooses_on_its_own() {
        let mut cluster = Cluster::new(1);
        cluster.elect();
        let client = cluster.session(1);
        cluster.node(1).propose(proposal(client, 1, "a"));
        cluster.settle();
        assert_eq!(cluster.replies.len(), 1);
        assert_eq!(cluster.replies[0].1.outcome, Ok(1));
    }

    /// A candidate's Prepares leave before its own promise is written, and a peer's Promise
    /// may come back first: with its own, a quorum. It leads only once the write is reported:
    /// a ballot that a crash can take back must send no Accept.
    #[test]
    fn a_candidate_leads_only_once_its_own_promise_is_written() {
        // No leader yet: the peers promise whoever asks first.
        let mut cluster = Cluster::new(3);
        let candidate = 1;
        cluster.node(candidate).become_candidate(crate::event::CampaignReason::Timeout);
        let ready = cluster.node(candidate).take_ready();
        assert!(
            ready.persist.iter().any(|op| matches!(op, crate::PersistOp::Promise(_))),
            "schedule: the promise is in this Ready: {ready:?}"
        );
        let prepare = sent(&ready, |m| matches!(m, Message::Prepare { .. }))[0].clone();
        let peer = prepare.to;
        cluster.node(peer).step(prepare);
        for envelope in crate::test_support::all_messages(cluster.take_ready_written(peer)) {
            if envelope.to == candidate {
                cluster.node(candidate).step(envelope);
            }
        }
        assert!(
            !cluster.node(candidate).is_leader(),
            "led on one peer's promise and an unwritten own promise"
        );
        cluster.storage.get_mut(&candidate).expect("member").apply(&ready.persist);
        cluster.node(candidate).on_persisted(ready.number);
        assert!(cluster.node(candidate).is_leader(), "its own promise, written, completes the quorum");
    }

    /// A promise (forged, or from a broken member) claiming one vote far beyond the rest would
    /// make the candidate invent a no-op for every slot up to it: past `phase_one_holes_max`
    /// holes it gives up this candidacy instead, and counts the message as rejected.
    #[test]
    fn a_vote_far_beyond_the_rest_does_not_make_a_leader_fill_a_million_holes() {
        let mut cluster = Cluster::new(3);
        cluster.node(1).become_candidate(crate::CampaignReason::Timeout);
        let ballot = cluster.node(1).promised();
        cluster.take_ready_written(1);
        let far = crate::Config::new(1, vec![1]).phase_one_holes_max + 5;
        let promise = Message::Promise {
            ballot,
            from_slot: 0,
            history: vec![],
            accepted: vec![AcceptedEntry { slot: far, ballot: Ballot::new(0, 2), value: Value::Noop }],
            chosen: vec![],
            applied_upto: 0,
            covered_upto: None,
            log_id: 1,
        };
        cluster.node(1).step(Envelope {
            from: 2,
            to: 1,
            incarnation: 2,
            role: Default::default(),
            message: promise,
        });
        let ready = cluster.take_ready_written(1);
        assert!(sent(&ready, |m| matches!(m, Message::Accept { .. })).is_empty());
        assert_eq!(cluster.node(1).status().rejected_messages, 1);
    }

    /// A Promise that answered a Prepare from a later slot than this candidacy's (a delayed
    /// answer to an earlier life of the same ballot, before a crash lost the write of its
    /// promise and the applied prefix went back) says nothing of the slots between: counting
    /// it would let the candidate lead without the votes its promiser holds there.
    #[test]
    fn a_promise_covering_only_later_slots_does_not_count() {
        let mut cluster = Cluster::new(3);
        cluster.node(1).become_candidate(crate::CampaignReason::Timeout);
        let ballot = cluster.node(1).promised();
        cluster.take_ready_written(1);
        let promise = Message::Promise {
            ballot,
            from_slot: 5,
            accepted: vec![],
            history: vec![],
            chosen: vec![],
            applied_upto: 0,
            covered_upto: None,
            log_id: 1,
        };
        let envelope =
            Envelope { from: 2, to: 1, incarnation: 2, role: Default::default(), message: promise };
        cluster.node(1).step(envelope);
        assert!(!cluster.node(1).is_leader(), "led on a promise that covers slots 5 and up only");
    }

    #[test]
    fn new_leader_reproposes_highest_ballot_value_and_fills_holes_with_noops() {
        let mut cluster = Cluster::new(3);
        let candidate = 1;
        cluster.node(candidate).become_candidate(crate::CampaignReason::Timeout);
        let ballot = cluster.node(candidate).promised();
        cluster.take_ready_written(candidate);
        let command = |text: &str| Value::Command {
            request_id: crate::RequestId { client_id: 1, seq: text.len() as u64 },
            key: [0; 16],
            payload: text.as_bytes().to_vec(),
        };
        // Slot 2 was accepted at two ballots: the higher one must win. Slot 1 is a hole.
        let promise = Message::Promise {
            ballot,
            from_slot: 0,
            history: vec![],
            accepted: vec![
                AcceptedEntry { slot: 0, ballot: Ballot::new(0, 2), value: command("x") },
                AcceptedEntry { slot: 2, ballot: Ballot::new(0, 2), value: command("low") },
            ],
            chosen: vec![],
            applied_upto: 0,
            covered_upto: None,
            log_id: 1,
        };
        cluster.node(candidate).step(Envelope {
            from: 2,
            to: 1,
            incarnation: 2,
            role: Default::default(),
            message: promise,
        });
        let ready = cluster.take_ready_written(candidate);
        // Quorum of 2 reached with the candidate's own empty promise; the accepted values win.
        let accepts = sent(&ready, |m| matches!(m, Message::Accept { .. }));
        let Message::Accept { entries, .. } = &accepts[0].message else { unreachable!() };
        assert_eq!(entries[0], (0, command("x")));
        assert_eq!(entries[1], (1, Value::Noop));
        assert_eq!(entries[2], (2, command("low")));
    }

    /// A proposer leads without a vote of its own: it stores no accepted record, and a slot is
    /// chosen only once a majority of the acceptors voted for it.
    #[test]
    fn a_proposer_leads_on_the_acceptors_votes_alone() {
        use crate::MemberRole::{Acceptor, Proposer};
        let mut cluster = Cluster::with_roles(&[(1, Proposer), (2, Acceptor), (3, Acceptor), (4, Acceptor)]);
        assert_eq!(cluster.elect(), 1, "acceptors never campaign");
        let client = cluster.session(1);
        cluster.down = vec![3, 4];
        cluster.node(1).propose(proposal(client, 1, "a"));
        cluster.settle();
        assert!(cluster.replies.is_empty(), "chosen with one acceptor's vote: {:?}", cluster.replies);
        cluster.down = vec![4];
        cluster.run_ticks(3);
        cluster.settle();
        assert_eq!(cluster.replies.len(), 1, "two of three acceptors choose it");
        assert!(cluster.storage[&1].accepted.is_empty(), "a proposer keeps no acceptor state");
        assert_eq!(cluster.storage[&2].accepted.len(), 2, "the session and the value");
    }
}
