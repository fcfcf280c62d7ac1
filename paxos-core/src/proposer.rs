//! Proposer rules: elections (phase 1), the stable leader's pipelined phase 2, forwarding.

use crate::event::{CampaignReason, Event, StepDownReason};
use crate::membership::Incarnation;
use crate::message::{AcceptedEntry, Message, Proposal, ProposalError};
use crate::replica::Replica;
use crate::requests::Lookup;
use crate::role::{CandidateState, InFlight, LeaderState, Origin, PromiseData, Role};
use crate::types::{Ballot, NodeId, RequestId, Slot};
use crate::value::Value;
use std::collections::{BTreeMap, VecDeque};

impl Replica {
    pub(crate) fn tick_proposer(&mut self) {
        let now = self.tick_now;
        let interval = self.config.heartbeat_interval_ticks;
        // Hearing a majority is what keeps a leader useful; the bootstrap configuration's
        // unanimity is for choosing, not for staying leader while a member is still down.
        let quorum = self.learner.membership().majority();
        let election_timeout = self.config.election_timeout_ticks;
        let own_votes = self.own_vote().len();
        self.maybe_change_membership_automatically();
        if let Role::Leader(leader) = &mut self.role {
            // Check quorum: a leader cut off from the majority cannot commit anything; stepping
            // down answers its clients (retryable) instead of leaving them waiting forever.
            let heard = own_votes
                + leader
                    .last_heard_tick
                    .values()
                    .filter(|tick| now.saturating_sub(**tick) <= 2 * election_timeout)
                    .count();
            if heard < quorum {
                self.step_down(None, StepDownReason::LostQuorum);
                return;
            }
            // Resending unanswered Accepts runs on its own timer, not the heartbeat's: a steady
            // stream of new Accepts keeps the heartbeat timer from firing, and a lost Accept
            // must not wait for the window to fill before it is sent again.
            let retransmit = now.saturating_sub(leader.last_retransmit_tick) >= interval;
            if retransmit {
                leader.last_retransmit_tick = now;
            }
            if now.saturating_sub(leader.last_heartbeat_tick) >= interval {
                // A read waiting for a round (one whose acknowledgements were lost, or one that
                // arrived while another was in flight) rides on this heartbeat.
                self.reads.start_due_round();
                self.broadcast_heartbeat();
            }
            if retransmit {
                self.retransmit_accepts();
            }
            self.advance_transfer();
            return;
        }
        if let Role::Candidate(candidate) = &self.role {
            if candidate.waiting_for_gap && self.learner.applied_upto() > candidate.from_slot {
                // Catch-up filled some of the gap: ask the quorum again from there.
                self.prepare_again();
            }
        }
        self.election_elapsed_ticks += 1;
        if self.election_elapsed_ticks >= self.election_deadline_ticks {
            if self.can_lead() {
                // Ask first (see `election.rs`): a member that hears no one, or whose link to
                // a leader the others hear flaps, must not depose that leader.
                self.start_pre_vote();
            } else {
                // A learner, a removed member or a node whose incarnation the configuration
                // does not admit never campaigns: its own vote would count for nothing, or for
                // promises it no longer remembers.
                if matches!(self.role, Role::Candidate(_)) {
                    self.step_down(None, StepDownReason::ConfigurationChange);
                }
                self.reset_election_timer();
                self.maybe_catch_up();
            }
        }
    }

    /// Starts phase 1 with a ballot above every ballot seen. Only after a pre-vote won, a
    /// leader's `TimeoutNow`, or a configuration change under a leadership or candidacy (see
    /// `election.rs`).
    pub(crate) fn become_candidate(&mut self, reason: CampaignReason) {
        assert!(self.can_lead(), "only an admitted voter or proposer campaigns");
        self.pre_vote = None;
        // Rounds from the network stop at `Ballot::ROUND_MAX`; only a promise written before
        // that check existed can sit at the very top, and then no higher ballot exists.
        let Some(round) = self.round_seen.max(self.acceptor.promised().round).checked_add(1) else {
            self.reset_election_timer();
            return;
        };
        match &self.role {
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
        self.round_seen = round;
        self.raise_promise(ballot);
        self.leader_hint = None;
        self.reset_election_timer();
        self.role = Role::Candidate(CandidateState {
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
    fn prepare_again(&mut self) {
        self.prepare_from(self.learner.applied_upto());
        // A quorum of one holds its own promise already.
        self.maybe_become_leader();
    }

    /// Asks every member for a promise (again) covering the slots from `from_slot` on: from the
    /// applied prefix, or from where the last page of promises stopped.
    fn prepare_from(&mut self, from_slot: Slot) {
        let own = self.can_vote().then(|| self.promise_data(from_slot, Vec::new()));
        let Role::Candidate(candidate) = &mut self.role else {
            return;
        };
        candidate.from_slot = from_slot;
        candidate.waiting_for_gap = false;
        candidate.promises.clear();
        // A proposer that does not vote has no promise of its own to count.
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
        let Role::Candidate(candidate) = &mut self.role else {
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
            let Role::Candidate(candidate) = &mut self.role else {
                return;
            };
            // A configuration entry applied during this candidacy (from a promise's history)
            // changed who must promise: `settle_membership` starts over once this input ends.
            if self.membership_changed || candidate.configuration != configuration {
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
            if self.membership_changed {
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
                } else if let Role::Candidate(candidate) = &mut self.role {
                    // No promise could give the next slot (truncated there): catch-up will.
                    candidate.waiting_for_gap = true;
                    self.maybe_catch_up();
                }
                return;
            }
            if self.next_promise_page() {
                continue;
            }
            let Role::Candidate(candidate) = std::mem::replace(&mut self.role, Role::Follower) else {
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
        let Role::Candidate(candidate) = &mut self.role else {
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
            self.rejected_messages += 1;
            self.reset_election_timer();
            return;
        };
        let mut leader = self.leader_state(ballot, next_slot, &proposals);
        leader.config_slot = config_slot;
        self.ready.events.push(Event::BecameLeader { ballot, votes_from });
        self.role = Role::Leader(Box::new(leader));
        self.leader_hint = Some(self.config.id);
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

    /// A new leader's state, with `proposals` in flight (counting its own vote) and unsent.
    fn leader_state(&self, ballot: Ballot, next_slot: Slot, proposals: &[(Slot, Value)]) -> LeaderState {
        let now = self.tick_now;
        let own_vote = self.own_vote();
        let mut leader = LeaderState {
            ballot,
            next_slot,
            in_flight: Default::default(),
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
                .insert(*slot, InFlight { value: value.clone(), votes: own_vote.clone(), sent_tick: now });
            leader.unsent.push(*slot);
        }
        leader
    }

    pub(crate) fn on_nack(&mut self, from: NodeId, ballot: Ballot, promised: Ballot) {
        let own = match &self.role {
            Role::Candidate(candidate) => candidate.ballot,
            Role::Leader(leader) => leader.ballot,
            Role::Follower => return,
        };
        if ballot != own || promised <= own {
            return;
        }
        // Only a voting member's Nack says this ballot cannot gather a quorum. A proposer that
        // does not vote "promises" only the highest ballot it used itself; its Nack of a leader
        // below that (a candidacy it ran and lost) deposed working leaders for nothing (found
        // by the simulation's liveness holds: 2 voters, 3 proposers, a bridge, three leaders
        // in a row). Nacks are hints either way: ignoring one cannot affect safety.
        if !self.learner.membership().votes(from) {
            return;
        }
        self.step_down(Some(promised.node), StepDownReason::HigherBallot { ballot: promised });
        // Back off for a random extra while: duelling candidates that keep pre-empting each
        // other settle once one of them waits longer than the other needs to win.
        let timeout = self.config.election_timeout_ticks;
        self.election_elapsed_ticks = 0;
        self.election_deadline_ticks = self.rng.range(timeout, 3 * timeout);
    }

    /// Leaves the candidate or leader role if `ballot` outranks ours.
    pub(crate) fn step_down_below(&mut self, ballot: Ballot) {
        let (own, transfer_target) = match &self.role {
            Role::Candidate(candidate) => (candidate.ballot, None),
            Role::Leader(leader) => (leader.ballot, leader.transfer.map(|transfer| transfer.target)),
            Role::Follower => return,
        };
        if ballot > own {
            let reason = if transfer_target == Some(ballot.node) {
                StepDownReason::Transfer { to: ballot.node }
            } else {
                StepDownReason::HigherBallot { ballot }
            };
            self.step_down(Some(ballot.node), reason);
        }
    }

    /// Gives up a leadership whose ballot another ballot overtook at a slot in flight: its
    /// commit announcements could no longer be trusted to cover only its own chosen values.
    pub(crate) fn step_down_superseded(&mut self) {
        self.superseded_leaderships += 1;
        self.step_down(None, StepDownReason::Superseded);
    }

    pub(crate) fn step_down(&mut self, leader_hint: Option<NodeId>, reason: StepDownReason) {
        match &self.role {
            Role::Leader(leader) => {
                self.ready.events.push(Event::SteppedDown { ballot: leader.ballot, was_leader: true, reason })
            }
            Role::Candidate(candidate) => self.ready.events.push(Event::SteppedDown {
                ballot: candidate.ballot,
                was_leader: false,
                reason,
            }),
            Role::Follower => {}
        }
        self.fail_leader_work(leader_hint);
        self.fail_confirming_reads(leader_hint);
        self.role = Role::Follower;
        self.leader_hint = leader_hint;
        self.reset_election_timer();
    }

    /// Answers everything a leader was waiting on: the outcome is unknown, so the answer is a
    /// retryable NotLeader (a retry with the same request id cannot be chosen twice).
    fn fail_leader_work(&mut self, leader_hint: Option<NodeId>) {
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        // Queued proposals have no slot yet; their waiters are in `waiters` like everyone's.
        leader.queue.clear();
        leader.queued_bytes = 0;
        let waiters = std::mem::take(&mut leader.waiters);
        // A configuration change waiting for the window, or in flight: its operator waits
        // too (an entry in flight may still be chosen: NotLeader says the outcome is unknown,
        // and a retry of a change that was applied is refused as done).
        let changes: Vec<RequestId> = leader
            .pending_change
            .take()
            .and_then(|(_, request_id)| request_id)
            .into_iter()
            .chain(leader.change_waiter.take())
            .collect();
        let error = ProposalError::NotLeader { leader_hint };
        for (request_id, (fingerprint, origins)) in waiters {
            for origin in origins {
                self.reply(origin, (request_id, fingerprint), Err(error.clone()));
            }
        }
        for request_id in changes {
            self.reply(Origin::Local, (request_id, [0; 16]), Err(error.clone()));
        }
    }

    /// A proposal reached the leader, from a local client or forwarded by a peer.
    pub(crate) fn leader_propose(&mut self, proposal: Proposal, origin: Origin) {
        let request_id = proposal.request_id;
        let fingerprint = proposal.fingerprint();
        let answer_to = (request_id, fingerprint);
        let digest = crate::payload_digest(&proposal.payload);
        let requests = self.learner.requests();
        let lookup = if proposal.is_register() {
            // What the log will say when the entry is applied, unless a session opens or
            // leaves meanwhile: applying decides (see `Learner::deduplicate`).
            let (nonce, floor_slot) = (request_id.seq, proposal.floor_slot);
            requests.lookup_registration(nonce, proposal.key, digest, floor_slot, self.config.request_table)
        } else {
            requests.lookup(request_id, proposal.key, digest, self.config.request_table)
        };
        match lookup {
            Lookup::AppliedAt(slot) => {
                self.reply(origin, answer_to, Ok(slot));
                return;
            }
            Lookup::Expired => {
                self.reply(origin, answer_to, Err(ProposalError::RequestExpired(request_id)));
                return;
            }
            Lookup::Reused(_) => {
                self.reply(origin, answer_to, Err(ProposalError::RequestIdReused(request_id)));
                return;
            }
            Lookup::WrongKey => {
                self.reply(origin, answer_to, Err(ProposalError::WrongSessionKey(request_id)));
                return;
            }
            // A session registered at a slot this leader has not applied yet may well exist:
            // only the log can tell, when the request's slot is applied.
            Lookup::SessionUnknown if request_id.client_id < self.learner.applied_upto() => {
                let error = ProposalError::SessionExpired(request_id.client_id);
                self.reply(origin, answer_to, Err(error));
                return;
            }
            Lookup::RegistrationForgotten => {
                self.reply(
                    origin,
                    answer_to,
                    Err(ProposalError::RegistrationExpired { nonce: request_id.seq }),
                );
                return;
            }
            Lookup::SessionUnknown => {}
            Lookup::New => {}
        }
        let queue_limit = self.config.proposals_queued_max;
        let Role::Leader(leader) = &mut self.role else { unreachable!("leader_propose on a non-leader") };
        if let Some((queued, waiters)) = leader.waiters.get_mut(&request_id) {
            if *queued != fingerprint {
                // Another value under this id is queued or in flight (a client that reuses an
                // id, or one that names a session it does not own before this leader applied
                // its registration): it must not share that value's answer.
                self.reply(origin, answer_to, Err(ProposalError::RequestIdBusy(request_id)));
                return;
            }
            // Already queued or in flight: the retry waits for the same outcome.
            if !waiters.contains(&origin) {
                waiters.push(origin);
            }
            return;
        }
        let bytes = proposal.payload.len();
        if leader.queue.len() >= queue_limit
            || (!leader.queue.is_empty()
                && leader.queued_bytes + bytes > self.config.proposals_queued_bytes_max)
        {
            self.reply(origin, answer_to, Err(ProposalError::Overloaded));
            return;
        }
        leader.queued_bytes += bytes;
        leader.waiters.insert(request_id, (fingerprint, vec![origin]));
        leader.queue.push_back(proposal);
        self.fill_window();
    }

    /// Gives queued proposals slots while the pipeline window has room.
    pub(crate) fn fill_window(&mut self) {
        // A single-member cluster chooses on its own vote, which frees the window again.
        while self.fill_window_once() {
            self.check_quorums();
        }
    }

    /// Returns whether any proposal got a slot.
    fn fill_window_once(&mut self) -> bool {
        let window = self.config.slots_in_flight_max;
        let applied_upto = self.learner.applied_upto();
        let now = self.tick_now;
        let bound = self.learner.membership().is_bound();
        let own_vote = self.own_vote();
        if self.membership_changed {
            // A configuration entry was applied during this input (maybe one another leader
            // got chosen, learned by catch-up): nothing more is proposed under this phase 1;
            // `settle_membership` starts a new candidacy once the input ends.
            return false;
        }
        let Role::Leader(leader) = &mut self.role else {
            return false;
        };
        if leader.transfer.is_some() {
            // Handing over: what is proposed now would be in flight when the target's Prepare
            // arrives. Proposals queue, and go to the new leader when this one steps down.
            return false;
        }
        if leader.pending_change.is_some() && leader.config_slot.is_none() && leader.next_slot == applied_upto
        {
            return self.propose_pending_change();
        }
        // Nothing above a configuration entry in flight, nothing while a change waits for the
        // window to drain, and nothing but the binding entry under the bootstrap configuration.
        if leader.config_slot.is_some() || leader.pending_change.is_some() || !bound {
            return false;
        }
        let ballot = leader.ballot;
        let mut accepted = Vec::new();
        while leader.next_slot < applied_upto + window {
            let Some(next) = leader.queue.front() else {
                break;
            };
            // In bytes too: a value enters if it fits, or if the window is empty (a window
            // always takes one value, however large).
            let fits = leader.in_flight.bytes() + next.size_bytes() <= self.config.window_bytes_max;
            if !fits && !leader.in_flight.is_empty() {
                break;
            }
            let Some(proposal) = leader.queue.pop_front() else {
                break;
            };
            leader.queued_bytes -= proposal.payload.len();
            let slot = leader.next_slot;
            leader.next_slot += 1;
            let value = proposal.into_value();
            leader
                .in_flight
                .insert(slot, InFlight { value: value.clone(), votes: own_vote.clone(), sent_tick: now });
            leader.unsent.push(slot);
            accepted.push((slot, value));
        }
        let any = !accepted.is_empty();
        for (slot, value) in accepted {
            self.accept_own(slot, ballot, value);
        }
        any
    }

    /// The leader's own vote for its proposal, if it votes: a proposer keeps no acceptor
    /// state (its `in_flight` holds the value until it is chosen).
    pub(crate) fn accept_own(&mut self, slot: Slot, ballot: Ballot, value: Value) {
        if self.can_vote() {
            self.accept_locally(slot, ballot, value);
        }
    }

    /// Sends every slot proposed since the last Ready, batched into Accepts per peer.
    pub(crate) fn flush_accepts(&mut self) {
        let applied_upto = self.learner.applied_upto();
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        if leader.unsent.is_empty() {
            if leader.announced_commit < applied_upto {
                // Followers apply, and answer the proposals they forwarded, when they hear the
                // commit point: tell them now rather than at the next heartbeat.
                self.broadcast_heartbeat();
            }
            return;
        }
        leader.announced_commit = applied_upto;
        let slots = std::mem::take(&mut leader.unsent);
        let ballot = leader.ballot;
        let entries: Vec<(Slot, Value)> = slots
            .iter()
            .filter_map(|slot| leader.in_flight.get(slot).map(|f| (*slot, f.value.clone())))
            .collect();
        leader.last_heartbeat_tick = self.tick_now;
        let peers: Vec<NodeId> = self.voter_peers().collect();
        self.send_accepts(&peers, ballot, entries);
    }

    fn send_accepts(&mut self, peers: &[NodeId], ballot: Ballot, entries: Vec<(Slot, Value)>) {
        let mut batch: Vec<(Slot, Value)> = Vec::new();
        let mut batch_bytes = 0;
        let mut batches = Vec::new();
        for (slot, value) in entries {
            let size = value.size_bytes();
            if !batch.is_empty()
                && (batch.len() >= self.config.entries_per_message_max
                    || batch_bytes + size > self.config.message_bytes_max)
            {
                batches.push(std::mem::take(&mut batch));
                batch_bytes = 0;
            }
            batch_bytes += size;
            batch.push((slot, value));
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        for entries in batches {
            for peer in peers {
                let message = Message::Accept {
                    ballot,
                    entries: entries.clone(),
                    commit_upto: self.learner.applied_upto(),
                };
                self.send(*peer, message);
            }
        }
    }

    /// Re-sends slots that have waited a heartbeat interval without a quorum, to the peers that
    /// have not accepted them: messages may be lost.
    fn retransmit_accepts(&mut self) {
        let now = self.tick_now;
        let interval = self.config.heartbeat_interval_ticks;
        let limit = self.config.entries_per_message_max;
        let voters: Vec<NodeId> = self.voter_peers().collect();
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let ballot = leader.ballot;

        let mut per_peer: BTreeMap<NodeId, Vec<(Slot, Value)>> = BTreeMap::new();
        for (slot, in_flight) in leader.in_flight.iter_mut() {
            if now.saturating_sub(in_flight.sent_tick) < interval {
                continue;
            }
            in_flight.sent_tick = now;
            for peer in voters.iter().filter(|id| !in_flight.votes.contains(id)) {
                let entries = per_peer.entry(*peer).or_default();
                if entries.len() < limit {
                    entries.push((*slot, in_flight.value.clone()));
                }
            }
        }
        for (peer, entries) in per_peer {
            self.send_accepts(&[peer], ballot, entries);
        }
    }

    pub(crate) fn on_accepted(
        &mut self,
        from: NodeId,
        incarnation: Incarnation,
        ballot: Ballot,
        slots: Vec<Slot>,
        applied_upto: Slot,
    ) {
        self.learner.note_member_progress(from, applied_upto);
        if !self.learner.membership().counts_vote(from, incarnation) {
            return;
        }
        let now = self.tick_now;
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        if leader.ballot != ballot {
            return;
        }
        leader.last_heard_tick.insert(from, now);
        leader.answered_tick.insert(from, now);
        // Only the slots in this message can have reached a quorum: no scan of the window.
        // Every slot in flight lies above the last configuration entry applied and at most at
        // the one in flight, so the configuration in force is the one that governs them.
        let quorum = self.learner.membership().quorum();
        let mut chosen = Vec::new();
        for slot in slots {
            if let Some(in_flight) = leader.in_flight.get_mut(&slot) {
                in_flight.votes.insert(from);
                if in_flight.votes.len() >= quorum {
                    if let Some(in_flight) = leader.in_flight.remove(&slot) {
                        chosen.push((slot, in_flight.value));
                    }
                }
            }
        }
        for (slot, value) in chosen {
            self.learner.learn_chosen(slot, value);
        }
        self.apply_chosen();
        self.fill_window();
        self.advance_transfer();
    }

    /// Moves every in-flight slot with a quorum of votes to chosen, then applies.
    pub(crate) fn check_quorums(&mut self) {
        let quorum = self.learner.membership().quorum();
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let done: Vec<Slot> = leader
            .in_flight
            .iter()
            .filter(|(_, in_flight)| in_flight.votes.len() >= quorum)
            .map(|(slot, _)| *slot)
            .collect();
        let mut chosen = Vec::with_capacity(done.len());
        for slot in done {
            if let Some(in_flight) = leader.in_flight.remove(&slot) {
                chosen.push((slot, in_flight.value));
            }
        }
        for (slot, value) in chosen {
            self.learner.learn_chosen(slot, value);
        }
        self.apply_chosen();
    }

    pub(crate) fn on_heartbeat_ack(&mut self, from: NodeId, ballot: Ballot, applied_upto: Slot, round: u64) {
        self.learner.note_member_progress(from, applied_upto);
        let now = self.tick_now;
        if let Role::Leader(leader) = &mut self.role {
            if leader.ballot == ballot {
                leader.answered_tick.insert(from, now);
                if leader.last_heard_tick.contains_key(&from) {
                    leader.last_heard_tick.insert(from, now);
                }
            }
        }
        self.read_round_acked(from, ballot, round);
        self.advance_transfer();
    }

    pub(crate) fn on_forward(&mut self, from: NodeId, proposal: Proposal) {
        if proposal.payload.len() > self.config.value_bytes_max {
            let error = ProposalError::TooLarge {
                size_bytes: proposal.payload.len(),
                limit_bytes: self.config.value_bytes_max,
            };
            self.reply(Origin::Remote(from), (proposal.request_id, proposal.fingerprint()), Err(error));
            return;
        }
        if self.is_leader() {
            self.leader_propose(proposal, Origin::Remote(from));
        } else {
            // No second hop: the origin retries with the hint, which keeps forwarding loop-free.
            let hint = self.leader_hint.filter(|leader| *leader != from);
            self.reply(
                Origin::Remote(from),
                (proposal.request_id, proposal.fingerprint()),
                Err(ProposalError::NotLeader { leader_hint: hint }),
            );
        }
    }

    /// Answers every proposal forwarded to a leader this replica no longer follows. Retryable:
    /// the outcome is unknown, and a retry with the same request id is chosen at most once.
    pub(crate) fn fail_forwarded(&mut self, leader_hint: Option<NodeId>) {
        self.fail_forwarded_reads(leader_hint);
        for (request_id, (_, fingerprint)) in std::mem::take(&mut self.forwarded) {
            self.reply(
                Origin::Local,
                (request_id, fingerprint),
                Err(ProposalError::NotLeader { leader_hint }),
            );
        }
    }

    /// The leader's answer to a forwarded proposal. Only the answer to the proposal forwarded
    /// now under that id counts: a late answer to an earlier one with another fingerprint
    /// (given up at its timeout) must not answer this one.
    pub(crate) fn on_forward_reply(
        &mut self,
        request_id: RequestId,
        fingerprint: crate::Digest,
        outcome: Result<Slot, ProposalError>,
    ) {
        if self.forwarded.get(&request_id).is_none_or(|(_, forwarded)| *forwarded != fingerprint) {
            return;
        }
        self.forwarded.remove(&request_id);
        match outcome {
            Ok(slot) if slot >= self.learner.applied_upto() => {
                self.replies_after_apply.entry(slot).or_default().push((request_id, fingerprint));
            }
            outcome => self.reply(Origin::Local, (request_id, fingerprint), outcome),
        }
    }

    /// Called by the learner when it applies `value` at a slot: answers whoever waits on its
    /// request with the same fingerprint. Waiters with another fingerprint keep waiting for
    /// their own proposal, still queued or in flight: the answer for one value is never given
    /// to another.
    pub(crate) fn answer_waiters(
        &mut self,
        request_id: RequestId,
        value: &crate::Value,
        outcome: Result<Slot, ProposalError>,
    ) {
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let Some((waiting, _)) = leader.waiters.get(&request_id) else {
            return;
        };
        let fingerprint = *waiting;
        if value.fingerprint() != Some(fingerprint) {
            return;
        }
        let Some((_, origins)) = leader.waiters.remove(&request_id) else {
            return;
        };
        for origin in origins {
            self.reply(origin, (request_id, fingerprint), outcome.clone());
        }
    }

    /// Drops in-flight bookkeeping for slots applied through catch-up rather than votes.
    pub(crate) fn forget_applied_in_flight(&mut self) {
        let applied_upto = self.learner.applied_upto();
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        while let Some((slot, _)) = leader.in_flight.first_key_value() {
            if *slot >= applied_upto {
                break;
            }
            leader.in_flight.pop_first();
        }
        if leader.next_slot < applied_upto {
            leader.next_slot = applied_upto;
        }
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
    use crate::{Ballot, Envelope, Message, ProposalError, Value};

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

    #[test]
    fn stable_leader_skips_phase_one() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let client = cluster.session(leader);
        cluster.node(leader).propose(proposal(client, 1, "a"));
        let ready = cluster.node(leader).take_ready_persisted();
        assert!(sent(&ready, |m| matches!(m, Message::Prepare { .. })).is_empty());
        assert_eq!(sent(&ready, |m| matches!(m, Message::Accept { .. })).len(), 2);
    }

    /// A promise (forged, or from a broken member) claiming one vote far beyond the rest would
    /// make the candidate invent a no-op for every slot up to it: past `phase_one_holes_max`
    /// holes it gives up this candidacy instead, and counts the message as rejected.
    #[test]
    fn a_vote_far_beyond_the_rest_does_not_make_a_leader_fill_a_million_holes() {
        let mut cluster = Cluster::new(3);
        cluster.node(1).become_candidate(crate::CampaignReason::Timeout);
        let ballot = cluster.node(1).promised();
        cluster.node(1).take_ready_persisted();
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
        let ready = cluster.node(1).take_ready_persisted();
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
        cluster.node(1).take_ready_persisted();
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
        cluster.node(candidate).take_ready_persisted();
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
        let ready = cluster.node(candidate).take_ready_persisted();
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

    /// A proposer that does not vote Nacks a leader whose ballot is below the highest it used
    /// itself (a candidacy it ran and lost): that says nothing about a quorum, and must not
    /// depose the leader. A voter's Nack does.
    #[test]
    fn only_a_voting_members_nack_deposes_a_leader() {
        use crate::MemberRole::{Proposer, Voter};
        let mut cluster = Cluster::with_roles(&[(1, Voter), (2, Voter), (3, Voter), (4, Proposer)]);
        let leader = cluster.elect();
        let ballot = cluster.node(leader).status().own_ballot.expect("leads");
        let nack = |from: u64| Envelope {
            from,
            to: leader,
            incarnation: from,
            role: if from == 4 { Proposer } else { Voter },
            message: Message::Nack { ballot, promised: Ballot::new(ballot.round + 5, from) },
        };
        cluster.node(leader).step(nack(4));
        assert!(cluster.node(leader).is_leader(), "deposed by a proposer's Nack");
        let voter = (1..=3).find(|id| *id != leader).expect("a voter");
        cluster.node(leader).step(nack(voter));
        assert!(!cluster.node(leader).is_leader(), "a voter's Nack says a quorum may be gone");
    }

    #[test]
    fn duelling_candidates_settle_on_one_leader() {
        let mut cluster = Cluster::new(3);
        cluster.node(1).become_candidate(crate::CampaignReason::Timeout);
        cluster.node(2).become_candidate(crate::CampaignReason::Timeout);
        cluster.node(3).become_candidate(crate::CampaignReason::Timeout);
        cluster.settle();
        cluster.run_ticks(100);
        let leaders = cluster.replicas.values().filter(|r| r.is_leader()).count();
        assert_eq!(leaders, 1);
    }

    #[test]
    fn a_late_answer_to_another_value_forwarded_under_the_same_id_answers_nothing() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let follower = if leader == 1 { 2 } else { 1 };
        let client = cluster.session(follower);
        // A (buggy) client's first value under id 1 goes to the leader, slowly.
        let first = proposal(client, 1, "first");
        cluster.node(follower).propose(first.clone());
        let forwarded_first = cluster.node(follower).take_ready_persisted().messages;
        assert!(matches!(forwarded_first[0].message, Message::Forward { .. }), "{forwarded_first:?}");
        // It times out at the follower; then another value is forwarded under the same id.
        let timeout = cluster.node(follower).config().forward_timeout_ticks;
        cluster.run_ticks(timeout + 1);
        cluster.replies.clear();
        let second = proposal(client, 1, "second");
        cluster.node(follower).propose(second.clone());
        let forwarded_second = cluster.node(follower).take_ready_persisted().messages;
        // The first value is chosen, and the leader's answer to it reaches the follower.
        cluster.node(leader).step(forwarded_first[0].clone());
        cluster.settle();
        assert!(
            !cluster.replies.iter().any(|(_, r)| r.fingerprint == second.fingerprint() && r.outcome.is_ok()),
            "the second value was acknowledged with the first one's slot: {:?}",
            cluster.replies
        );
        // The second value, when its own forward arrives, is refused: its id holds another value.
        for envelope in forwarded_second {
            cluster.node(envelope.to).step(envelope);
        }
        cluster.settle();
        let answers: Vec<_> =
            cluster.replies.iter().filter(|(_, r)| r.fingerprint == second.fingerprint()).collect();
        assert!(
            matches!(
                answers[..],
                [(_, crate::Reply { outcome: Err(ProposalError::RequestIdReused(_)), .. })]
            ),
            "{answers:?}"
        );
    }

    /// Two values under one request id at the leader at once (a client that reuses an id, or
    /// one that names a session it does not own before its owner's value is applied): the
    /// second is refused as busy, never given the first one's answer.
    #[test]
    fn a_second_value_under_an_id_in_flight_at_the_leader_is_refused_as_busy() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let client = cluster.session(leader);
        let (first, second) = (proposal(client, 1, "first"), proposal(client, 1, "second"));
        cluster.node(leader).propose(first.clone());
        cluster.node(leader).propose(second.clone());
        cluster.settle();
        let answers = |fingerprint| -> Vec<Result<crate::Slot, ProposalError>> {
            cluster
                .replies
                .iter()
                .filter(|(_, r)| r.fingerprint == fingerprint)
                .map(|(_, r)| r.outcome.clone())
                .collect()
        };
        assert!(matches!(answers(first.fingerprint())[..], [Ok(_)]), "{:?}", cluster.replies);
        assert_eq!(answers(second.fingerprint()), vec![Err(ProposalError::RequestIdBusy(second.request_id))]);
    }

    /// The window is bounded in bytes: with room for one large value, the leader has one slot
    /// in flight at a time (never none), and every value is still chosen in turn.
    #[test]
    fn the_window_holds_one_large_value_at_a_time_when_bytes_are_short() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let client = cluster.session(leader);
        cluster.node(leader).config.window_bytes_max = 1000;
        let big = "x".repeat(900);
        for seq in 1..=3 {
            cluster.node(leader).propose(proposal(client, seq, &big));
        }
        let ready = cluster.node(leader).take_ready_persisted();
        let accepted: usize = sent(&ready, |m| matches!(m, Message::Accept { .. }))
            .iter()
            .map(|e| match &e.message {
                Message::Accept { entries, .. } => entries.len(),
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        assert_eq!(accepted, 1, "one 900-byte value fills a 1000-byte window: {ready:?}");
        for envelope in crate::test_support::all_messages(ready) {
            cluster.node(envelope.to).step(envelope);
        }
        cluster.settle();
        let chosen = cluster.replies.iter().filter(|(_, r)| r.outcome.is_ok()).count();
        assert_eq!(chosen, 3, "{:?}", cluster.replies);
    }

    /// The leader's queue is bounded in bytes: past it, proposals are refused as overloaded
    /// (retryable) at once rather than held.
    #[test]
    fn the_queue_refuses_what_exceeds_its_bytes() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let client = cluster.session(leader);
        cluster.node(leader).config.window_bytes_max = 1000;
        cluster.node(leader).config.proposals_queued_bytes_max = 1000;
        let big = "x".repeat(900);
        for seq in 1..=4 {
            cluster.node(leader).propose(proposal(client, seq, &big));
        }
        let ready = cluster.node(leader).take_ready_persisted();
        let overloaded: Vec<crate::RequestId> = ready
            .replies
            .iter()
            .filter(|r| r.outcome == Err(ProposalError::Overloaded))
            .map(|r| r.request_id)
            .collect();
        // 1 in flight, 2 queued (one always fits), 3 and 4 past the queue's bytes.
        let expected = vec![proposal(client, 3, "").request_id, proposal(client, 4, "").request_id];
        assert_eq!(overloaded, expected, "{:?}", ready.replies);
    }

    /// A registration is answered like any other proposal; its waiter and its bytes do not stay
    /// at the leader. (From a review: when registrations carried no value, the proposal's
    /// fingerprint hashed the bytes sent with one, its entry's did not, and the waiter was
    /// never answered.)
    #[test]
    fn a_registration_sent_with_bytes_is_answered() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let registration = crate::Proposal::register(77, crate::test_support::TEST_KEY, 0, b"junk".to_vec());
        let request_id = registration.request_id;
        cluster.node(leader).propose(registration);
        cluster.settle();
        let answers: Vec<_> = cluster.replies.iter().filter(|(_, r)| r.request_id == request_id).collect();
        assert!(matches!(answers[..], [(_, crate::Reply { outcome: Ok(_), .. })]), "{answers:?}");
        let crate::role::Role::Leader(state) = &cluster.node(leader).role else { panic!("leads") };
        assert!(state.waiters.is_empty(), "{:?}", state.waiters);
    }

    #[test]
    fn follower_forwards_to_the_leader_and_answers_once_applied_locally() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let follower = if leader == 1 { 2 } else { 1 };
        let client = cluster.session(follower);
        cluster.node(follower).propose(proposal(client, 1, "hello"));
        cluster.settle();
        // The answer waits until the follower has applied the slot (the leader announces the
        // commit point at once), so the client can read its write from the node it asked.
        assert_eq!(cluster.node(follower).applied_upto(), 2);
        assert_eq!(
            cluster.replies,
            vec![(
                follower,
                crate::Reply {
                    request_id: proposal(client, 1, "").request_id,
                    fingerprint: proposal(client, 1, "hello").fingerprint(),
                    outcome: Ok(1)
                }
            )]
        );
    }
}
