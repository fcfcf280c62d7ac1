//! The proposer's timers and the end of a leadership: what a leader checks each tick (a quorum
//! heard, heartbeats, retransmission, a transfer), when a follower's election timer fires,
//! and stepping down (on a Nack, a higher ballot, a lost quorum). The phases have files of
//! their own: phase_one.rs (a candidate's Prepare and Promises), phase_two.rs (the leader's
//! window of Accepts) and forwarding.rs (proposals that reach a follower); who may start an
//! election is election.rs, and the state each role holds is role.rs.

use crate::event::{Event, StepDownReason};
use crate::message::ProposalError;
use crate::replica::Replica;
use crate::role::{Origin, Role};
use crate::types::{Ballot, NodeId, RequestId};

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
        if let Role::Leader(leader) = &mut self.proposer.role {
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
        if let Role::Candidate(candidate) = &self.proposer.role {
            if candidate.waiting_for_gap && self.learner.applied_upto() > candidate.from_slot {
                // Catch-up filled some of the gap: ask the quorum again from there.
                self.prepare_again();
            }
        }
        if self.proposer.election_timer.tick() {
            if self.can_lead() {
                // Ask first (see `election.rs`): a member that hears no one, or whose link to
                // a leader the others hear flaps, must not depose that leader.
                self.start_pre_vote();
            } else {
                // A learner, a removed member or a node whose incarnation the configuration
                // does not admit never campaigns: its own vote would count for nothing, or for
                // promises it no longer remembers.
                if matches!(self.proposer.role, Role::Candidate(_)) {
                    self.step_down(None, StepDownReason::ConfigurationChange);
                }
                self.reset_election_timer();
                self.maybe_catch_up();
            }
        }
    }

    pub(crate) fn on_nack(&mut self, from: NodeId, ballot: Ballot, promised: Ballot) {
        let own = match &self.proposer.role {
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
        self.proposer.election_timer.restart(&mut self.rng, timeout, 3 * timeout);
    }

    /// Leaves the candidate or leader role if `ballot` outranks ours.
    pub(crate) fn step_down_below(&mut self, ballot: Ballot) {
        let (own, transfer_target) = match &self.proposer.role {
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
        self.counters.superseded_leaderships += 1;
        self.step_down(None, StepDownReason::Superseded);
    }

    pub(crate) fn step_down(&mut self, leader_hint: Option<NodeId>, reason: StepDownReason) {
        match &self.proposer.role {
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
        self.proposer.role = Role::Follower;
        self.proposer.leader_hint = leader_hint;
        self.reset_election_timer();
    }

    /// Answers everything a leader was waiting on: the outcome is unknown, so the answer is a
    /// retryable NotLeader (a retry with the same request id cannot be chosen twice).
    pub(crate) fn fail_leader_work(&mut self, leader_hint: Option<NodeId>) {
        let Role::Leader(leader) = &mut self.proposer.role else {
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
}

#[cfg(test)]
mod tests {
    use crate::test_support::Cluster;
    use crate::{Ballot, Envelope, Message};

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
}
