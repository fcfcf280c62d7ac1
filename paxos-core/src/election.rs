//! Who may start an election, and when: the pre-vote and leader stickiness (etcd's PreVote and
//! CheckQuorum, in Paxos terms). Phase 1 itself lives in `phase_one.rs`.
//!
//! - **Stickiness.** A member that heard a leader at work (a Heartbeat or an Accept of a ballot
//!   it follows) within the minimum election timeout, or that leads itself, does not promise a
//!   higher ballot to anyone else and does not let such a Prepare reset its timers. Nor does a
//!   member that promised a candidate within that time (see `live_candidate`). The one
//!   exception is a Prepare that follows that leader's own `TimeoutNow` (`transfer`): the
//!   leader asked for it. A leader's own new ballot (after a configuration change) is promised
//!   too: the leader it hears is the one preparing.
//! - **Pre-vote.** A member that may lead and whose election timer fires does not prepare at
//!   once. It asks the voting members `PreVote`: would you promise now? Each answers from the
//!   rule above, changing nothing. Only with a majority's yes (its own included, when it votes)
//!   does it start phase 1, with a ballot above every promise the answers reported. A member
//!   that cannot hear anyone, or whose link to the leader flaps, asks in vain and never raises
//!   a ballot, so it never deposes a leader that a majority still hears.
//! - **Check quorum** (in `proposer.rs`) stays: a leader that has not heard a majority for two
//!   election timeouts steps down, so the members it left behind are free to elect another.
//!
//! Who plays which part: any member that may lead (voter or proposer) may ask; only voting
//! members' answers count (a proposer or learner has no promise to give); a learner is never
//! asked. A member forgets the leader it knew when it starts a pre-vote (etcd PR 8334: a
//! pre-candidate that kept its leader counted itself inside that leader's lease and refused
//! the others' pre-votes, so no one could win). Here the lease is the time since the leader was
//! last heard, not the election timer, so that trap cannot close; forgetting the leader still
//! matters to clients, who are told at once that no leader is known instead of waiting on a
//! forward to a leader this member no longer hears. A Heartbeat or Accept from a leader ends
//! the pre-vote. A leader that lost its quorum steps down and from then on hears no leader, so
//! it says yes to the others' pre-votes (the trap raft-rs PR 84 fixed: a deposed leader that
//! kept refusing).
//!
//! # Correctness
//! None of this can affect safety: a pre-vote changes no durable state and no ballot, and
//! stickiness only withholds promises, which any acceptor may do at any time (a message
//! lost). Safety rests on phase 1 and phase 2 alone. What these rules can affect is liveness,
//! and the simulation's partial-fault topologies measure it.

use crate::event::{CampaignReason, Event};
use crate::membership::Incarnation;
use crate::message::{Message, PreVoteRefusal};
use crate::replica::Replica;
use crate::role::{PreVote, Role};
use crate::types::{Ballot, NodeId};
use std::collections::{BTreeMap, BTreeSet};

impl Replica {
    /// The leader at work this member heard within the minimum election timeout, and how many
    /// ticks ago (itself, 0 ticks ago, when it leads).
    pub(crate) fn live_leader(&self) -> Option<(NodeId, u64)> {
        match &self.proposer.role {
            Role::Leader(_) => Some((self.config.id, 0)),
            Role::Candidate(_) => None,
            Role::Follower => {
                let leader = self.leader_heard()?;
                let ticks_ago = self.tick_now.saturating_sub(self.proposer.leader_heard_tick?);
                (ticks_ago < self.config.election_timeout_ticks).then_some((leader, ticks_ago))
            }
        }
    }

    /// The candidate this member promised within the minimum election timeout, and how many
    /// ticks ago: it gives that candidate time to win before promising anyone else.
    ///
    /// Raft gets this from its terms (one vote per term, and candidates that start together
    /// share a term); Paxos ballots carry the node id, so a candidate that won its pre-vote a
    /// moment after another would otherwise take every promise again with a higher ballot,
    /// before the winner's first heartbeat arrives (found by the simulation: a leader nobody
    /// hears, in 7 members, and three leaders in a row after it).
    pub(crate) fn live_candidate(&self) -> Option<(NodeId, u64)> {
        if !matches!(self.proposer.role, Role::Follower) {
            return None;
        }
        let (candidate, granted_tick) = self.proposer.promise_granted?;
        let ticks_ago = self.tick_now.saturating_sub(granted_tick);
        // Only while that candidate's ballot is the promise: a higher one promised since (a
        // leader followed, or this member's own candidacy) ends it.
        let current = self.acceptor.promised().node == candidate;
        (current && ticks_ago < self.config.election_timeout_ticks).then_some((candidate, ticks_ago))
    }

    /// Stickiness: whether a Prepare of `ballot` from `from` goes unanswered because this
    /// member hears another live leader, or promised another candidate a moment ago (see the
    /// module's documentation).
    pub(crate) fn ignores_prepare(&mut self, from: NodeId, ballot: Ballot, transfer: bool) -> bool {
        if transfer || ballot <= self.acceptor.promised() || !self.config.pre_vote {
            // A transfer's Prepare is the leader's wish; one at or below the promise raises
            // nothing (it is answered again, or refused with the promise).
            return false;
        }
        let Some((leader, _)) = self.live_leader().or_else(|| self.live_candidate()) else {
            return false;
        };
        if leader == from {
            return false;
        }
        self.counters.prepares_ignored += 1;
        self.ready.events.push(Event::PrepareIgnored { ballot, from, leader });
        true
    }

    /// The election timer fired: ask the voting members whether they would promise, before
    /// raising any ballot. A stalled candidacy asks again too.
    pub(crate) fn start_pre_vote(&mut self) {
        debug_assert!(self.can_lead(), "only a member that may lead asks for a pre-vote");
        if !self.config.pre_vote {
            self.become_candidate(CampaignReason::Timeout);
            return;
        }
        if let Role::Candidate(candidate) = &self.proposer.role {
            let ballot = candidate.ballot;
            self.proposer.role = Role::Follower;
            self.ready.events.push(Event::SteppedDown {
                ballot,
                was_leader: false,
                reason: crate::event::StepDownReason::Stalled,
            });
        }
        self.reset_election_timer();
        // Not heard for an election timeout: forget it (see the module's documentation), and
        // answer what was forwarded to it (retryable) now rather than at the forward timeout.
        self.proposer.leader_hint = None;
        self.fail_forwarded(None);
        let Some(round) = self.proposer.round_seen.max(self.acceptor.promised().round).checked_add(1) else {
            // No ballot above the promise exists (see `become_candidate`).
            return;
        };
        let ballot = Ballot::new(round, self.config.id);
        self.proposer.pre_vote_attempts += 1;
        let attempt = self.proposer.pre_vote_attempts;
        // Its own timer fired, so it heard no leader for an election timeout: its own yes.
        let grants = if self.can_vote() { BTreeSet::from([self.config.id]) } else { BTreeSet::new() };
        self.proposer.pre_vote = Some(PreVote { ballot, attempt, grants, refusals: BTreeMap::new() });
        let voters: Vec<NodeId> = self.voter_peers().collect();
        for voter in voters {
            self.send(voter, Message::PreVote { ballot, attempt });
        }
        self.maybe_win_pre_vote();
    }

    /// A member asks whether this one would promise `ballot` now. Answers from the stickiness
    /// rule, changing nothing: no promise, no timer.
    pub(crate) fn on_pre_vote(&mut self, from: NodeId, ballot: Ballot, attempt: u64) {
        let refusal = if !self.can_vote() {
            Some(PreVoteRefusal::NotVoter)
        } else {
            match (self.live_leader(), self.live_candidate()) {
                (Some((leader, ticks_ago)), _) if leader != from => {
                    Some(PreVoteRefusal::HeardLeader { leader, ticks_ago })
                }
                (None, Some((candidate, ticks_ago))) if candidate != from => {
                    Some(PreVoteRefusal::PromisedCandidate { candidate, ticks_ago })
                }
                _ => None,
            }
        };
        let promised = self.acceptor.promised();
        self.send(from, Message::PreVoteReply { ballot, attempt, promised, refusal });
    }

    pub(crate) fn on_pre_vote_reply(
        &mut self,
        from: NodeId,
        incarnation: Incarnation,
        ballot: Ballot,
        attempt: u64,
        promised: Ballot,
        refusal: Option<PreVoteRefusal>,
    ) {
        if !self.learner.membership().counts_vote(from, incarnation) {
            return;
        }
        let Some(pre_vote) = &mut self.proposer.pre_vote else {
            return;
        };
        if pre_vote.ballot != ballot || pre_vote.attempt != attempt {
            return;
        }
        // The Prepare that follows goes above every promise the answers report.
        self.proposer.round_seen = self.proposer.round_seen.max(promised.round);
        match refusal {
            None => {
                pre_vote.grants.insert(from);
            }
            Some(refusal) => {
                if pre_vote.refusals.insert(from, refusal).is_none() {
                    self.counters.pre_votes_refused += 1;
                    self.ready.events.push(Event::PreVoteRefused { ballot, by: from, refusal });
                }
            }
        }
        self.maybe_win_pre_vote();
    }

    fn maybe_win_pre_vote(&mut self) {
        let majority = self.learner.membership().majority();
        let Some(pre_vote) = &self.proposer.pre_vote else {
            return;
        };
        if pre_vote.grants.len() < majority || !self.can_lead() {
            return;
        }
        self.proposer.pre_vote = None;
        self.become_candidate(CampaignReason::Timeout);
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::{sent, Cluster};
    use crate::{Ballot, Envelope, Event, MemberRole, Message};

    fn envelope(from: u64, to: u64, message: Message) -> Envelope {
        Envelope { from, to, incarnation: from, role: MemberRole::Voter, message }
    }

    /// A follower that hears its leader neither promises another member's higher ballot nor
    /// lets that Prepare reset its election timer; the leader itself ignores it too.
    #[test]
    fn a_member_that_hears_a_live_leader_promises_no_one_else() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
        let (follower, rogue) = (others[0], others[1]);
        cluster.run_ticks(2);
        let promised = cluster.node(follower).promised();
        let high = Ballot::new(promised.round + 5, rogue);
        let prepare = Message::Prepare { ballot: high, from_slot: 0, transfer: false };
        cluster.node(follower).step(envelope(rogue, follower, prepare.clone()));
        let ready = cluster.take_ready_written(follower);
        assert!(sent(&ready, |m| matches!(m, Message::Promise { .. })).is_empty(), "{ready:?}");
        assert_eq!(cluster.node(follower).promised(), promised, "no promise raised");
        assert!(ready.events.iter().any(|e| matches!(e, Event::PrepareIgnored { .. })));
        cluster.node(leader).step(envelope(rogue, leader, prepare));
        let ready = cluster.take_ready_written(leader);
        assert!(cluster.node(leader).is_leader(), "the leader stays: {ready:?}");
        // With the transfer flag, the same Prepare is promised: the leader asked for it.
        let transfer = Message::Prepare { ballot: high, from_slot: 0, transfer: true };
        cluster.node(follower).step(envelope(rogue, follower, transfer));
        let ready = cluster.take_ready_written(follower);
        assert_eq!(sent(&ready, |m| matches!(m, Message::Promise { .. })).len(), 1, "{ready:?}");
    }

    /// A member whose Prepare cannot reach a majority (everyone else hears the leader) asks
    /// first and never raises a ballot: the leader keeps its ballot however often it asks.
    #[test]
    fn a_member_that_hears_nobody_asks_in_vain_and_deposes_no_one() {
        let mut cluster = Cluster::new(5);
        let leader = cluster.elect();
        let ballot = cluster.node(leader).status().own_ballot.expect("leads");
        let deaf = if leader == 5 { 4 } else { 5 };
        // The deaf member hears nobody; its own messages still arrive.
        cluster.deaf = vec![deaf];
        cluster.run_ticks(300);
        assert!(cluster.node(leader).is_leader());
        assert_eq!(cluster.node(leader).status().own_ballot, Some(ballot), "the leader was never deposed");
        assert!(cluster.node(deaf).promised() <= ballot, "the deaf member raised no ballot");
        assert!(cluster.node(deaf).proposer.pre_vote_attempts >= 5, "it kept asking");
    }

    /// Refusals are not votes: a member that misses the leader's heartbeats (a one-way cut)
    /// but hears every refusal does not campaign, however many answers it gets.
    #[test]
    fn a_pre_vote_refused_by_a_majority_starts_no_campaign() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        cluster.run_ticks(2);
        let rogue = if leader == 3 { 2 } else { 3 };
        let promised = cluster.node(rogue).promised();
        cluster.node(rogue).start_pre_vote();
        let asks = out(&mut cluster, rogue);
        assert_eq!(asks.iter().filter(|e| matches!(e.message, Message::PreVote { .. })).count(), 2);
        let answers = deliver(&mut cluster, &asks, |e| matches!(e.message, Message::PreVote { .. }));
        let refusals = answers
            .iter()
            .filter(|e| matches!(e.message, Message::PreVoteReply { refusal: Some(_), .. }))
            .count();
        assert_eq!(refusals, 2, "the leader and the follower who hears it refuse: {answers:?}");
        let after = deliver(&mut cluster, &answers, |e| e.to == rogue);
        assert!(
            !after.iter().any(|e| matches!(e.message, Message::Prepare { .. })),
            "two refusals and its own yes are no majority of yeses: {after:?}"
        );
        assert_eq!(cluster.node(rogue).promised(), promised, "no ballot raised");
        assert!(cluster.node(leader).is_leader());
    }

    /// With no leader heard, a majority's yes starts phase 1 with a ballot above every promise
    /// the answers reported.
    #[test]
    fn a_pre_vote_won_prepares_above_the_promises_reported() {
        let mut cluster = Cluster::new(3);
        cluster.node(2).step(envelope(
            3,
            2,
            Message::Prepare { ballot: Ballot::new(7, 3), from_slot: 0, transfer: false },
        ));
        cluster.take_ready_written(2);
        // Node 2 gives that candidate an election timeout before it says yes to anyone else.
        let timeout = cluster.node(2).config().election_timeout_ticks;
        for _ in 0..timeout {
            cluster.node(2).tick();
            cluster.take_ready_written(2);
        }
        cluster.node(1).start_pre_vote();
        let ready = cluster.take_ready_written(1);
        assert_eq!(sent(&ready, |m| matches!(m, Message::PreVote { .. })).len(), 2);
        assert!(ready.persist.is_empty(), "a pre-vote persists nothing");
        let Message::PreVote { ballot, attempt } = ready.messages[0].message else { unreachable!() };
        cluster.node(2).step(envelope(1, 2, Message::PreVote { ballot, attempt }));
        let answer = cluster.take_ready_written(2);
        assert!(answer.persist.is_empty(), "answering a pre-vote persists nothing");
        let reply = answer.messages[0].message.clone();
        assert!(matches!(reply, Message::PreVoteReply { refusal: None, .. }), "{reply:?}");
        cluster.node(1).step(envelope(2, 1, reply));
        let ready = cluster.take_ready_written(1);
        let prepares = sent(&ready, |m| matches!(m, Message::Prepare { .. }));
        let Message::Prepare { ballot, .. } = prepares[0].message else { unreachable!() };
        assert!(ballot > Ballot::new(7, 3), "{ballot}");
    }

    fn out(cluster: &mut Cluster, id: u64) -> Vec<Envelope> {
        crate::test_support::all_messages(cluster.take_ready_written(id))
    }

    /// Hands each envelope of `envelopes` that `pick` chooses to its receiver; returns what
    /// the receivers sent.
    fn deliver(
        cluster: &mut Cluster,
        envelopes: &[Envelope],
        pick: impl Fn(&Envelope) -> bool,
    ) -> Vec<Envelope> {
        let mut sent = Vec::new();
        for envelope in envelopes.iter().filter(|e| pick(e)) {
            cluster.node(envelope.to).step(envelope.clone());
            sent.extend(out(cluster, envelope.to));
        }
        sent
    }

    /// A proposer (no vote) that defers to a candidate's Prepare gives up its own pre-vote:
    /// grants it collected before would make it campaign against the candidate it deferred to,
    /// and no one would lead that round. (From a review's hand-routed schedule: before the fix
    /// node 2 campaigned, node 1 stepped down for its higher ballot, and the acceptors stayed
    /// sticky to node 1.)
    #[test]
    fn a_proposer_that_defers_to_a_candidate_gives_up_its_own_pre_vote() {
        use MemberRole::{Acceptor, Proposer};
        let mut c =
            Cluster::with_roles(&[(1, Proposer), (2, Proposer), (3, Acceptor), (4, Acceptor), (5, Acceptor)]);
        c.node(2).start_pre_vote();
        let pre_votes_2 = out(&mut c, 2);
        c.node(1).start_pre_vote();
        let pre_votes_1 = out(&mut c, 1);
        // 3 and 4 answer node 2 first (their yes held in flight); node 1 wins and prepares.
        let grants_2 = deliver(&mut c, &pre_votes_2, |e| e.to == 3 || e.to == 4);
        let grants_1 = deliver(&mut c, &pre_votes_1, |e| e.to == 3 || e.to == 4);
        let prepares_1 = deliver(&mut c, &grants_1, |e| e.to == 1);
        assert!(matches!(c.node(1).proposer.role, crate::role::Role::Candidate(_)));
        deliver(&mut c, &prepares_1, |e| e.to == 2);
        assert!(c.node(2).proposer.pre_vote.is_none(), "the deferring proposer kept its pre-vote");
        let promises = deliver(&mut c, &prepares_1, |e| e.to == 3 || e.to == 4);
        let from_2 = deliver(&mut c, &grants_2, |e| e.to == 2);
        assert!(
            !matches!(c.node(2).proposer.role, crate::role::Role::Candidate(_)),
            "2 campaigned after deferring"
        );
        assert!(from_2.iter().all(|e| !matches!(e.message, Message::Prepare { .. })), "{from_2:?}");
        deliver(&mut c, &promises, |e| e.to == 1);
        assert!(c.node(1).is_leader(), "the candidate the others deferred to leads");
    }

    /// A TimeoutNow from a leader gone for many election timeouts, delivered late to a member
    /// that was cut off meanwhile, does not start a `transfer` candidacy (which every member
    /// would promise despite stickiness): only the leader heard at work now is obeyed.
    #[test]
    fn a_stale_timeout_now_does_not_depose_a_leader_everyone_hears() {
        let mut c = Cluster::new(5);
        let first = c.elect();
        c.run_ticks(3);
        let ballot = c.node(first).status().own_ballot.expect("leads");
        let target = (1..=5).rev().find(|id| *id != first).expect("a member");
        let commit_upto = c.node(first).applied_upto();
        let stale = Envelope {
            from: first,
            to: target,
            incarnation: first,
            role: MemberRole::Voter,
            message: Message::TimeoutNow { ballot, commit_upto },
        };
        c.down = vec![first, target];
        let second = c.elect();
        c.run_ticks(100);
        c.down = vec![first];
        c.deaf = vec![target];
        c.run_ticks(30);
        assert!(c.node(second).is_leader());
        c.deaf = vec![];
        c.node(target).step(stale);
        c.settle();
        c.run_ticks(5);
        assert!(c.node(second).is_leader(), "leader {second} deposed by a stale TimeoutNow");
    }

    /// A member that granted a promise and then ran a candidacy of its own (lost at once) is
    /// not sticky to itself: it answers the others' pre-votes again.
    #[test]
    fn a_member_whose_own_candidacy_failed_is_not_sticky_to_itself() {
        let mut c = Cluster::new(3);
        let to_3 = |from: u64, message: Message| Envelope {
            from,
            to: 3,
            incarnation: from,
            role: MemberRole::Voter,
            message,
        };
        c.node(3)
            .step(to_3(1, Message::Prepare { ballot: Ballot::new(5, 1), from_slot: 0, transfer: false }));
        out(&mut c, 3);
        assert_eq!(c.node(3).live_candidate().map(|(id, _)| id), Some(1));
        c.node(3).become_candidate(crate::CampaignReason::Timeout);
        out(&mut c, 3);
        let own = c.node(3).promised();
        c.node(3).step(to_3(2, Message::Nack { ballot: own, promised: Ballot::new(9, 2) }));
        out(&mut c, 3);
        assert!(!c.node(3).is_leader());
        assert_eq!(c.node(3).live_candidate(), None, "sticky to a candidacy that ended");
        c.node(3).step(to_3(2, Message::PreVote { ballot: Ballot::new(10, 2), attempt: 1 }));
        let reply = out(&mut c, 3);
        assert!(matches!(reply[0].message, Message::PreVoteReply { refusal: None, .. }), "{reply:?}");
    }
}
