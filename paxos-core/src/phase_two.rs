//! Phase 2, the stable leader's: proposals take slots in a window bounded in slots and bytes,
//! Accepts go out in batches and are resent on their own timer, votes are counted into chosen
//! slots, and whoever waits for a value is answered once it is applied.

use crate::membership::Incarnation;
use crate::message::{Message, Proposal, ProposalError};
use crate::replica::Replica;
use crate::requests::Lookup;
use crate::role::{InFlight, Origin, Role};
use crate::types::{Ballot, NodeId, RequestId, Slot};
use crate::value::Value;
use std::collections::BTreeMap;

impl Replica {
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
        let Role::Leader(leader) = &mut self.proposer.role else {
            unreachable!("leader_propose on a non-leader")
        };
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
        if self.membership_notes.changed() {
            // A configuration entry was applied during this input (maybe one another leader
            // got chosen, learned by catch-up): nothing more is proposed under this phase 1;
            // `settle_membership` starts a new candidacy once the input ends.
            return false;
        }
        let Role::Leader(leader) = &mut self.proposer.role else {
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
                .insert(slot, InFlight { value: value.clone(), votes: Default::default(), sent_tick: now });
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
    ///
    /// # Correctness
    /// The vote counts only once the Ready that writes it is persisted (`count_own_votes`):
    /// the Accepts to the followers leave before that write, and their answers may come back
    /// first. A vote counted earlier could be lost in a crash after the slot was declared
    /// chosen, and a later leader could then choose another value there. A lone voter waits
    /// for its own write in the same way.
    pub(crate) fn accept_own(&mut self, slot: Slot, ballot: Ballot, value: Value) {
        if !self.can_vote() {
            return;
        }
        self.accept_locally(slot, ballot, value);
        let written_by = self.written_by();
        if let Role::Leader(leader) = &mut self.proposer.role {
            leader.own_votes_waiting.push_back((written_by, slot));
        }
    }

    /// Counts the leader's own votes whose Readies are persisted now, and chooses what they
    /// complete.
    pub(crate) fn count_own_votes(&mut self) {
        let id = self.config.id;
        let quorum = self.learner.membership().quorum();
        let persisted_upto = self.persisted_number();
        let votes = self.can_vote();
        let Role::Leader(leader) = &mut self.proposer.role else {
            return;
        };
        if !votes {
            // The configuration took this member's vote away: its leadership is ending.
            leader.own_votes_waiting.clear();
            return;
        }
        let mut slots = Vec::new();
        while let Some((_, slot)) =
            leader.own_votes_waiting.front().filter(|(number, _)| *number <= persisted_upto)
        {
            slots.push(*slot);
            leader.own_votes_waiting.pop_front();
        }
        if slots.is_empty() {
            return;
        }
        for (slot, value) in leader.in_flight.count_votes(id, slots, quorum) {
            self.learner.learn_chosen(slot, value);
        }
        self.apply_chosen();
        self.fill_window();
        self.advance_transfer();
    }

    /// Sends every slot proposed since the last Ready, batched into Accepts per peer.
    pub(crate) fn flush_accepts(&mut self) {
        let applied_upto = self.learner.applied_upto();
        let Role::Leader(leader) = &mut self.proposer.role else {
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
    pub(crate) fn retransmit_accepts(&mut self) {
        let now = self.tick_now;
        let interval = self.config.heartbeat_interval_ticks;
        let limit = self.config.entries_per_message_max;
        let voters: Vec<NodeId> = self.voter_peers().collect();
        let Role::Leader(leader) = &mut self.proposer.role else {
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
        let Role::Leader(leader) = &mut self.proposer.role else {
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
        for (slot, value) in leader.in_flight.count_votes(from, slots, quorum) {
            self.learner.learn_chosen(slot, value);
        }
        self.apply_chosen();
        self.fill_window();
        self.advance_transfer();
    }

    /// Moves every in-flight slot with a quorum of votes to chosen, then applies.
    pub(crate) fn check_quorums(&mut self) {
        let quorum = self.learner.membership().quorum();
        let Role::Leader(leader) = &mut self.proposer.role else {
            return;
        };
        for (slot, value) in leader.in_flight.take_chosen(quorum) {
            self.learner.learn_chosen(slot, value);
        }
        self.apply_chosen();
    }

    pub(crate) fn on_heartbeat_ack(&mut self, from: NodeId, ballot: Ballot, applied_upto: Slot, round: u64) {
        self.learner.note_member_progress(from, applied_upto);
        let now = self.tick_now;
        if let Role::Leader(leader) = &mut self.proposer.role {
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
        let Role::Leader(leader) = &mut self.proposer.role else {
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
        let Role::Leader(leader) = &mut self.proposer.role else {
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

#[cfg(test)]
mod tests {
    use crate::test_support::{proposal, sent, Cluster};
    use crate::{Message, ProposalError};

    #[test]
    fn stable_leader_skips_phase_one() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let client = cluster.session(leader);
        cluster.node(leader).propose(proposal(client, 1, "a"));
        let ready = cluster.take_ready_written(leader);
        assert!(sent(&ready, |m| matches!(m, Message::Prepare { .. })).is_empty());
        assert_eq!(sent(&ready, |m| matches!(m, Message::Accept { .. })).len(), 2);
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
        let ready = cluster.take_ready_written(leader);
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

    /// The leader's Accepts leave before its own write of them (a driver writes beside
    /// replication), so a follower's answer may come back first. The leader's own vote counts
    /// only once that write is reported: until then one follower's vote is not a quorum of
    /// three, and nothing may be chosen, applied or answered on it (a crash would lose the
    /// vote, and a later leader could choose another value there).
    #[test]
    fn the_leaders_own_vote_counts_only_once_its_write_is_done() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let client = cluster.session(leader);
        let applied = cluster.node(leader).applied_upto();
        cluster.node(leader).propose(proposal(client, 1, "a"));
        // Taken, not written: its Accepts go out first.
        let ready = cluster.node(leader).take_ready();
        let accept = sent(&ready, |m| matches!(m, Message::Accept { .. }))[0].clone();
        let follower = accept.to;
        cluster.node(follower).step(accept);
        for envelope in crate::test_support::all_messages(cluster.take_ready_written(follower)) {
            if envelope.to == leader {
                cluster.node(leader).step(envelope);
            }
        }
        let unwritten = cluster.node(leader).take_ready();
        assert!(
            unwritten.chosen.is_empty() && unwritten.replies.iter().all(|r| r.outcome.is_err()),
            "chosen on one follower's vote and an unwritten own vote: {unwritten:?}"
        );
        assert_eq!(cluster.node(leader).applied_upto(), applied);
        // The write is done: now the two votes are a quorum.
        let storage = cluster.storage.get_mut(&leader).expect("member");
        storage.apply(&ready.persist);
        storage.apply(&unwritten.persist);
        cluster.node(leader).on_persisted(ready.number.max(unwritten.number));
        let written = cluster.node(leader).take_ready();
        assert_eq!(written.chosen.len(), 1, "chosen once written: {written:?}");
        assert!(written.replies.iter().any(|r| r.outcome == Ok(applied)), "{written:?}");
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
        let ready = cluster.take_ready_written(leader);
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
        let crate::role::Role::Leader(state) = &cluster.node(leader).proposer.role else { panic!("leads") };
        assert!(state.waiters.is_empty(), "{:?}", state.waiters);
    }
}
