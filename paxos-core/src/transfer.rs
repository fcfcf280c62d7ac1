//! Leadership transfer: the leader hands leadership to a member it names, with no election
//! timeout on the way (etcd's `move-leader`; the design this project comes from has
//! `setPrimary`).
//!
//! The leader stops giving slots to new proposals (they queue) and waits until every slot it
//! proposed is chosen and applied. If the target is more than a window of slots behind, the
//! leader brings it up to date first (heartbeats out of turn, so it catches up). Then it sends
//! the target `TimeoutNow` with the commit point: the target applies what it accepted, and
//! starts phase 1 at once, with a ballot above every ballot it has seen. The old leader steps
//! down when that Prepare reaches it and answers what it queued with `NotLeader` naming the
//! target. A transfer that has not handed over within two election timeouts is abandoned, and
//! the leader proposes again.
//!
//! # Correctness
//! A transfer changes who campaigns and when, never what a ballot may do: `TimeoutNow` only
//! makes its receiver run the ordinary phase 1, which any member may start at any time. Safety
//! rests on phase 1 and 2 alone, as for an election after a timeout. What the rules here keep is
//! liveness: a `TimeoutNow` is obeyed only from the leader of a ballot at least as high as the
//! receiver's promise (a late one, from a leadership since superseded, would only disrupt the
//! leader in place), and the old leader proposes nothing while the target takes over (a slot
//! it proposed meanwhile would be in flight when the target's Prepare arrives, and the target's
//! phase 1 would have to recover it).

use crate::membership::MemberRole;
use crate::message::Message;
use crate::replica::Replica;
use crate::role::{Role, Transfer};
use crate::types::{NodeId, Slot};
use serde::{Deserialize, Serialize};

/// Why a leader refused to start a transfer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum TransferError {
    #[error("not the leader{}", crate::types::leader_hint_text(*leader_hint))]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("node {0} is not a member of the configuration")]
    NotMember(NodeId),
    #[error("node {target} is {}: only a voter or a proposer can lead", role.with_article())]
    CannotLead { target: NodeId, role: MemberRole },
    /// The leader has not heard the target answer within an election timeout.
    #[error("node {target} has not answered the leader for {}: it is down or cut off", silent(*.silent_ticks))]
    Unreachable { target: NodeId, silent_ticks: Option<u64> },
    #[error("a leadership transfer to node {target} is already in progress")]
    InProgress { target: NodeId },
    #[error("a configuration change is in progress; transfer once it is applied")]
    ChangeInProgress,
}

fn silent(ticks: Option<u64>) -> String {
    match ticks {
        Some(ticks) => format!("{ticks} ticks"),
        None => "as long as this node has led".to_owned(),
    }
}

impl TransferError {
    /// Whether asking again later (or at another node) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TransferError::NotLeader { .. }
                | TransferError::Unreachable { .. }
                | TransferError::InProgress { .. }
                | TransferError::ChangeInProgress
        )
    }
}

/// What `Replica::transfer_leadership` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferStart {
    /// The target is this leader: nothing to do.
    AlreadyLeader,
    /// The leader stopped proposing and hands over once the target is up to date.
    Started,
}

impl Replica {
    /// Asks this leader to hand leadership to `target` (see the module's documentation). The
    /// transfer completes when the target leads; `transfer_target` says whether one is still
    /// in progress here.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<TransferStart, TransferError> {
        let now = self.tick_now;
        let silence_max = self.config.election_timeout_ticks;
        let deadline_tick = now + 2 * self.config.election_timeout_ticks;
        let membership = self.learner.membership();
        let busy = !membership.is_bound();
        let member = membership.get(target).cloned();
        let Role::Leader(leader) = &mut self.proposer.role else {
            return Err(TransferError::NotLeader { leader_hint: self.proposer.leader_hint });
        };
        if target == self.config.id {
            return Ok(TransferStart::AlreadyLeader);
        }
        let Some(member) = member else {
            return Err(TransferError::NotMember(target));
        };
        if !member.role.may_lead() {
            return Err(TransferError::CannotLead { target, role: member.role });
        }
        if let Some(transfer) = &leader.transfer {
            return Err(TransferError::InProgress { target: transfer.target });
        }
        if busy || leader.config_slot.is_some() || leader.pending_change.is_some() {
            return Err(TransferError::ChangeInProgress);
        }
        let heard = leader.answered_tick.get(&target).copied();
        let silent_ticks = heard.map(|tick| now.saturating_sub(tick));
        if silent_ticks.is_none_or(|ticks| ticks > silence_max) {
            return Err(TransferError::Unreachable { target, silent_ticks });
        }
        leader.transfer =
            Some(Transfer { target, deadline_tick, timeout_now_sent_tick: None, nudged_tick: None });
        self.advance_transfer();
        Ok(TransferStart::Started)
    }

    /// The member this leader is handing over to, while a transfer is in progress.
    pub fn transfer_target(&self) -> Option<NodeId> {
        match &self.proposer.role {
            Role::Leader(leader) => leader.transfer.map(|transfer| transfer.target),
            _ => None,
        }
    }

    /// Moves a transfer on: abandons it past its deadline; once every proposed slot is applied,
    /// brings the target up to date, then tells it to campaign. Called on each tick and when
    /// the target reports progress.
    pub(crate) fn advance_transfer(&mut self) {
        let now = self.tick_now;
        let applied_upto = self.learner.applied_upto();
        let history_start = self.learner.history_start();
        let resend_ticks = self.config.heartbeat_interval_ticks.max(1);
        let Role::Leader(leader) = &mut self.proposer.role else {
            return;
        };
        let Some(transfer) = &mut leader.transfer else {
            return;
        };
        if now >= transfer.deadline_tick {
            leader.transfer = None;
            self.counters.transfers_abandoned += 1;
            // What queued meanwhile gets its slots now.
            self.fill_window();
            return;
        }
        let drained = leader.in_flight.is_empty() && leader.next_slot <= applied_upto;
        if !drained {
            return;
        }
        let target = transfer.target;
        let ballot = leader.ballot;
        let target_applied = self.learner.member_applied_upto().get(&target).copied().unwrap_or(0);
        // Within a window the target's phase 1 is one page of promises, and what it accepted
        // it applies from the commit point the TimeoutNow carries.
        let window = self.config.slots_in_flight_max;
        let message = if target_applied.saturating_add(window) < applied_upto {
            if transfer.nudged_tick == Some(now) {
                return;
            }
            transfer.nudged_tick = Some(now);
            Message::Heartbeat { ballot, commit_upto: applied_upto, history_start, round: self.reads.round() }
        } else {
            if transfer.timeout_now_sent_tick.is_some_and(|tick| now.saturating_sub(tick) < resend_ticks) {
                return;
            }
            transfer.timeout_now_sent_tick = Some(now);
            Message::TimeoutNow { ballot, commit_upto: applied_upto }
        };
        self.send(target, message);
    }

    /// The leader of `ballot` asks this member to campaign now.
    pub(crate) fn on_timeout_now(&mut self, from: NodeId, ballot: crate::types::Ballot, commit_upto: Slot) {
        // Only from a leadership at least as recent as anything promised here: a late one
        // from a superseded leader would depose the leader in place for nothing.
        if ballot < self.acceptor.promised()
            || !self.can_lead()
            || matches!(self.proposer.role, Role::Leader(_))
        {
            return;
        }
        // Only from the leader this member hears at work now: a TimeoutNow delivered late to a
        // member that was cut off while its sender led would start a `transfer` candidacy that
        // every member promises despite stickiness, deposing a leader they all hear (found by
        // a review's hand-routed schedule).
        if self.live_leader().map(|(leader, _)| leader) != Some(from) {
            return;
        }
        // As a heartbeat would: what this member accepted in `ballot` below the commit point
        // is chosen, and applying it first shortens the phase 1 to come.
        self.follow(from, ballot);
        self.learn_commit(from, ballot, commit_upto);
        // What was just applied may have made this member one that cannot lead. Not expected
        // (no configuration entry is accepted in a ballot that transfers: changes and transfers
        // exclude each other), but a campaign must never start on the strength of a check
        // made before the state changed.
        if !self.can_lead() {
            return;
        }
        self.counters.transfers_taken += 1;
        self.become_candidate(crate::event::CampaignReason::Transfer { from });
    }
}

#[cfg(test)]
mod tests {
    use super::{TransferError, TransferStart};
    use crate::test_support::{proposal, replica, sent, Cluster};
    use crate::{Ballot, Envelope, MemberRole, Message, ProposalError};

    /// A message to node 2 from `from`, a voter presenting incarnation `from` (as `replica` binds).
    fn envelope(from: u64, message: Message) -> Envelope {
        Envelope { from, to: 2, incarnation: from, role: MemberRole::Voter, message }
    }

    /// Ticks the cluster until `target` leads; returns how many ticks that took.
    fn ticks_until_leader(cluster: &mut Cluster, target: u64, ticks_max: u64) -> u64 {
        for tick in 1..=ticks_max {
            cluster.run_ticks(1);
            if cluster.node(target).is_leader() {
                return tick;
            }
        }
        panic!("node {target} does not lead after {ticks_max} ticks");
    }

    #[test]
    fn a_transfer_hands_leadership_to_the_target_well_within_an_election_timeout() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let target = if leader == 1 { 2 } else { 1 };
        let client = cluster.session(leader);
        for seq in 1..=5 {
            cluster.node(leader).propose(proposal(client, seq, &format!("v{seq}")));
        }
        cluster.settle();
        let election_timeout = cluster.node(leader).config().election_timeout_ticks;
        assert_eq!(cluster.node(leader).transfer_leadership(target), Ok(TransferStart::Started));
        assert_eq!(cluster.node(leader).transfer_target(), Some(target));
        cluster.settle();
        let ticks = ticks_until_leader(&mut cluster, target, election_timeout);
        assert!(ticks < election_timeout, "took {ticks} ticks");
        cluster.run_ticks(2);
        assert!(!cluster.node(leader).is_leader());
        assert_eq!(cluster.node(leader).status().leader, Some(target));
        assert_eq!(cluster.node(target).status().transfers_taken, 1);
        // Everything proposed before is chosen, identically everywhere.
        let chosen: Vec<_> = cluster.replies.iter().filter(|(_, reply)| reply.outcome.is_ok()).collect();
        assert_eq!(chosen.len(), 5);
        let histories: Vec<_> = cluster.storage.values().map(|s| s.history.clone()).collect();
        assert!(histories.windows(2).all(|pair| pair[0] == pair[1]));
    }

    #[test]
    fn proposals_during_a_transfer_get_no_slot_and_are_sent_to_the_target() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let target = if leader == 1 { 2 } else { 1 };
        let client = cluster.session(leader);
        cluster.run_ticks(1);
        let applied = cluster.node(leader).applied_upto();
        assert_eq!(cluster.node(leader).transfer_leadership(target), Ok(TransferStart::Started));
        // Proposed during the transfer: queued, no Accept for it.
        cluster.node(leader).propose(proposal(client, 1, "during"));
        let ready = cluster.take_ready_written(leader);
        let accepts = sent(&ready, |m| matches!(m, Message::Accept { entries, .. } if !entries.is_empty()));
        assert!(accepts.is_empty(), "a slot was proposed during the transfer: {accepts:?}");
        assert_eq!(cluster.node(leader).applied_upto(), applied);
        ticks_until_leader(&mut cluster, target, 10);
        let answer = cluster.replies.iter().find(|(_, reply)| reply.request_id.client_id == client);
        let answer = answer.map(|(_, reply)| reply.outcome.clone());
        assert_eq!(answer, Some(Err(ProposalError::NotLeader { leader_hint: Some(target) })));
    }

    #[test]
    fn no_timeout_now_while_a_slot_the_leader_proposed_is_in_flight() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let target = if leader == 1 { 2 } else { 1 };
        let client = cluster.session(leader);
        cluster.run_ticks(1);
        cluster.node(leader).propose(proposal(client, 1, "in flight"));
        assert_eq!(cluster.node(leader).transfer_leadership(target), Ok(TransferStart::Started));
        // The Accepts of that slot are lost with this Ready: the slot stays in flight.
        let mut readies = vec![cluster.take_ready_written(leader)];
        for _ in 0..3 {
            cluster.node(leader).tick();
            readies.push(cluster.take_ready_written(leader));
        }
        for ready in &readies {
            let handed = sent(ready, |m| matches!(m, Message::TimeoutNow { .. }));
            assert!(handed.is_empty(), "TimeoutNow with a slot in flight: {handed:?}");
        }
        // Retransmitted, chosen, applied: then the target is told, and leads.
        ticks_until_leader(&mut cluster, target, 20);
        let answer = cluster.replies.iter().find(|(_, reply)| reply.request_id.client_id == client);
        assert!(answer.is_some_and(|(_, reply)| reply.outcome.is_ok()), "the slot in flight is chosen");
    }

    #[test]
    fn a_transfer_the_target_never_takes_is_abandoned_and_the_leader_proposes_again() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let target = if leader == 1 { 2 } else { 1 };
        let client = cluster.session(leader);
        cluster.run_ticks(1);
        assert_eq!(cluster.node(leader).transfer_leadership(target), Ok(TransferStart::Started));
        cluster.down.push(target);
        cluster.node(leader).propose(proposal(client, 1, "waits"));
        let election_timeout = cluster.node(leader).config().election_timeout_ticks;
        cluster.run_ticks(2 * election_timeout);
        assert!(cluster.node(leader).is_leader(), "the leader still hears a majority");
        assert_eq!(cluster.node(leader).transfer_target(), None);
        assert_eq!(cluster.node(leader).status().transfers_abandoned, 1);
        let answer = cluster.replies.iter().find(|(_, reply)| reply.request_id.client_id == client);
        assert!(answer.is_some_and(|(_, reply)| reply.outcome.is_ok()), "the queued proposal is chosen");
    }

    #[test]
    fn a_transfer_is_refused_with_the_reason() {
        let mut cluster = Cluster::with_roles(&[
            (1, MemberRole::Voter),
            (2, MemberRole::Voter),
            (3, MemberRole::Voter),
            (4, MemberRole::Acceptor),
            (5, MemberRole::Learner),
            (6, MemberRole::Proposer),
        ]);
        let mut leader = cluster.elect();
        let election_timeout = cluster.node(leader).config().election_timeout_ticks;
        cluster.run_ticks(3);
        if leader == 6 {
            // The proposer won the election: hand over to a voter first (the transfer asked
            // of the proposer below then goes the other way).
            assert_eq!(cluster.node(6).transfer_leadership(1), Ok(TransferStart::Started));
            ticks_until_leader(&mut cluster, 1, election_timeout);
            cluster.run_ticks(3);
            leader = 1;
        }
        let follower = [1, 2, 3].into_iter().find(|id| *id != leader).expect("a voter follows");
        let refused = cluster.node(follower).transfer_leadership(leader);
        assert!(matches!(refused, Err(TransferError::NotLeader { leader_hint: Some(l) }) if l == leader));
        assert_eq!(cluster.node(leader).transfer_leadership(leader), Ok(TransferStart::AlreadyLeader));
        assert_eq!(cluster.node(leader).transfer_leadership(9), Err(TransferError::NotMember(9)));
        for (id, role) in [(4, MemberRole::Acceptor), (5, MemberRole::Learner)] {
            assert_eq!(
                cluster.node(leader).transfer_leadership(id),
                Err(TransferError::CannotLead { target: id, role })
            );
        }
        // A member silent for longer than an election timeout is refused.
        let other = [1, 2, 3].into_iter().find(|id| *id != leader && *id != follower).expect("third voter");
        cluster.down.push(other);
        cluster.run_ticks(election_timeout + 1);
        assert!(matches!(
            cluster.node(leader).transfer_leadership(other),
            Err(TransferError::Unreachable { target, silent_ticks: Some(_) }) if target == other
        ));
        // A proposer may lead; one transfer at a time.
        assert_eq!(cluster.node(leader).transfer_leadership(6), Ok(TransferStart::Started));
        assert_eq!(
            cluster.node(leader).transfer_leadership(follower),
            Err(TransferError::InProgress { target: 6 })
        );
        ticks_until_leader(&mut cluster, 6, election_timeout);
    }

    #[test]
    fn changes_and_transfers_wait_for_each_other() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let target = if leader == 1 { 2 } else { 1 };
        cluster.run_ticks(1);
        assert_eq!(cluster.node(leader).transfer_leadership(target), Ok(TransferStart::Started));
        let change = crate::RequestId { client_id: u64::MAX - 1, seq: 1 };
        cluster.node(leader).change_membership(change, crate::MembershipChange::Remove { id: 3 });
        let ready = cluster.take_ready_written(leader);
        let answer = ready.replies.iter().find(|reply| reply.request_id == change).map(|r| r.outcome.clone());
        assert_eq!(answer, Some(Err(ProposalError::ChangeInProgress)), "a change during a transfer");

        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let target = if leader == 1 { 2 } else { 1 };
        let client = cluster.session(leader);
        cluster.run_ticks(1);
        // A slot in flight: the change waits for the window to drain.
        cluster.node(leader).propose(proposal(client, 1, "in flight"));
        cluster.node(leader).change_membership(change, crate::MembershipChange::Remove { id: 3 });
        assert_eq!(cluster.node(leader).transfer_leadership(target), Err(TransferError::ChangeInProgress));
    }

    #[test]
    fn a_target_more_than_a_window_behind_is_brought_up_to_date_before_it_is_told_to_campaign() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let target = if leader == 1 { 2 } else { 1 };
        let client = cluster.session(leader);
        cluster.run_ticks(1);
        for replica in cluster.replicas.values_mut() {
            replica.config.slots_in_flight_max = 4;
        }
        // The target learns none of 20 values (its links are down); then it answers a heartbeat.
        cluster.down.push(target);
        for seq in 1..=20 {
            cluster.node(leader).propose(proposal(client, seq, "while the target lags"));
            cluster.settle();
        }
        cluster.down.clear();
        assert!(cluster.node(leader).applied_upto() >= cluster.node(target).applied_upto() + 20);
        let applied = cluster.node(target).applied_upto();
        let ack = Envelope {
            from: target,
            to: leader,
            incarnation: target,
            role: MemberRole::Voter,
            message: Message::HeartbeatAck {
                ballot: cluster.node(leader).status().own_ballot.expect("leads"),
                applied_upto: applied,
                round: 0,
            },
        };
        cluster.node(leader).step(ack);
        cluster.take_ready_written(leader);
        assert_eq!(cluster.node(leader).transfer_leadership(target), Ok(TransferStart::Started));
        let ready = cluster.take_ready_written(leader);
        let to_target: Vec<&Envelope> =
            sent(&ready, |_| true).into_iter().filter(|e| e.to == target).collect();
        assert!(
            to_target.iter().all(|e| !matches!(e.message, Message::TimeoutNow { .. })),
            "told to campaign while 20 slots behind: {to_target:?}"
        );
        assert!(
            to_target.iter().any(|e| matches!(e.message, Message::Heartbeat { .. })),
            "brought up to date"
        );
        cluster.settle();
        ticks_until_leader(&mut cluster, target, 10);
    }

    #[test]
    fn leader_heard_names_a_leader_at_work_never_a_candidate() {
        let mut follower = replica(2, &[1, 2, 3]);
        assert_eq!(follower.leader_heard(), None);
        follower.step(envelope(
            3,
            Message::Heartbeat { ballot: Ballot::new(5, 3), commit_upto: 0, history_start: 0, round: 0 },
        ));
        assert_eq!(follower.leader_heard(), Some(3));
        // A candidate's Prepare: promised, not yet leading (one that a transfer started: a
        // member that hears its leader promises no other candidate, see `election.rs`).
        let prepare = Message::Prepare { ballot: Ballot::new(6, 1), from_slot: 0, transfer: true };
        follower.step(envelope(1, prepare));
        assert_eq!(follower.leader_heard(), None, "a candidate is not a leader at work");
        follower.step(envelope(
            1,
            Message::Heartbeat { ballot: Ballot::new(6, 1), commit_upto: 0, history_start: 0, round: 0 },
        ));
        assert_eq!(follower.leader_heard(), Some(1));
        // A stale leader's heartbeat changes nothing.
        follower.step(envelope(
            3,
            Message::Heartbeat { ballot: Ballot::new(5, 3), commit_upto: 0, history_start: 0, round: 0 },
        ));
        assert_eq!(follower.leader_heard(), Some(1));

        // A leader told by a Nack that a higher ballot was promised steps down with a hint
        // naming its owner, which may only be campaigning.
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let other = if leader == 1 { 2 } else { 1 };
        let own = cluster.node(leader).status().own_ballot.expect("leads");
        let higher = Ballot::new(own.round + 1, other);
        let nack = Envelope {
            from: other,
            to: leader,
            incarnation: other,
            role: MemberRole::Voter,
            message: Message::Nack { ballot: own, promised: higher },
        };
        cluster.node(leader).step(nack);
        assert_eq!(cluster.node(leader).status().leader, Some(other), "the hint");
        assert_eq!(cluster.node(leader).leader_heard(), None, "not heard leading yet");
    }

    #[test]
    fn a_late_timeout_now_from_a_superseded_leadership_starts_no_campaign() {
        let mut follower = replica(2, &[1, 2, 3]);
        // Node 3 leads ballot 5.3; node 1's leadership of 4.1 is over.
        follower.step(envelope(
            3,
            Message::Heartbeat { ballot: Ballot::new(5, 3), commit_upto: 0, history_start: 0, round: 0 },
        ));
        follower.take_ready_persisted();
        follower.step(envelope(1, Message::TimeoutNow { ballot: Ballot::new(4, 1), commit_upto: 0 }));
        // Nor from a member naming another's ballot.
        follower.step(envelope(1, Message::TimeoutNow { ballot: Ballot::new(5, 3), commit_upto: 0 }));
        let ready = follower.take_ready_persisted();
        assert!(sent(&ready, |m| matches!(m, Message::Prepare { .. })).is_empty());
        assert_eq!(follower.status().transfers_taken, 0);
        // The leader in place may hand over.
        follower.step(envelope(3, Message::TimeoutNow { ballot: Ballot::new(5, 3), commit_upto: 0 }));
        let ready = follower.take_ready_persisted();
        let prepares =
            sent(&ready, |m| matches!(m, Message::Prepare { ballot, .. } if *ballot > Ballot::new(5, 3)));
        assert_eq!(prepares.len(), 2, "a campaign at once, above the ballot in place");
    }
}
