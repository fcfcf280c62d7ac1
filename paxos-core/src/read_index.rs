//! Linearizable reads: the read index (the Raft dissertation's §6.4, for a Multi-Paxos log).
//!
//! A read must see every value acknowledged before it was asked. A replica's own applied prefix
//! may lag (a follower hears the commit point a heartbeat later), and a leader's may be stale (a
//! leader cut off from the others may not know it was deposed). So a read asks the leader for a
//! *read index*: the leader takes its next free slot when the read arrives (every slot below it
//! is chosen, in flight, or recovered by its phase 1), then confirms it still leads with a
//! heartbeat round sent after the read arrived, acknowledged in its ballot by a quorum of
//! voters. The replica that asked serves the read once its applied prefix reaches the index.
//!
//! # Correctness
//! A value acknowledged before the read arrived at the leader was chosen at a slot below that
//! leader's next slot, unless a higher ballot chose it; a higher ballot needs promises from a
//! quorum, given before the acknowledgement (promises are durable and never go back), and that
//! quorum meets the quorum whose acknowledgements of the round confirm the read, each sent
//! after the read arrived, in the leader's ballot: an acceptor that promised a higher ballot
//! answers with a Nack instead. So a confirmed leader's index covers every acknowledged value.
//! Acknowledgements of an earlier round do not count: they may have left before the read
//! arrived, from an acceptor that has promised a new leader since (mutant
//! `read-confirmed-by-an-earlier-round`).
//!
//! Two more conditions, both found by a review (`tests/reads_review.rs`): the index is taken
//! only by a leadership with no configuration entry of its own in flight (a phase 1 stops at the
//! first configuration entry it recovers, so `next_slot` may lie below slots the next
//! configuration chose), and only acknowledgements in the ballot that took the index confirm
//! it: a read does not outlive its leadership (mutants `read-during-a-configuration-change`,
//! `confirming-reads-outlive-their-leadership`).

use crate::message::{Message, ProposalError};
use crate::reads::{ReadOrigin, READS_PENDING_MAX};
use crate::ready::ReadReply;
use crate::replica::Replica;
use crate::role::Role;
use crate::types::{Ballot, NodeId, Slot};

impl Replica {
    /// Asks for a linearizable read, numbered `request` by the caller (numbers must be unique
    /// among the reads in progress). Answered in a later [`crate::Ready::reads`] once this
    /// replica has applied far enough to serve it, or with a retryable error.
    pub fn read(&mut self, request: u64) {
        if self.reads.pending() >= READS_PENDING_MAX {
            self.answer_read(ReadOrigin::Local(request), Err(ProposalError::Overloaded));
            return;
        }
        if self.is_leader() {
            self.leader_read(ReadOrigin::Local(request));
            return;
        }
        match self.proposer.leader_hint {
            Some(leader) if leader != self.config.id => {
                let deadline_tick = self.tick_now + self.config.forward_timeout_ticks;
                let number = self.reads.forward(request, leader, deadline_tick, &mut self.rng);
                self.send(leader, Message::ReadIndex { request: number });
            }
            _ => self
                .answer_read(ReadOrigin::Local(request), Err(ProposalError::NotLeader { leader_hint: None })),
        }
    }

    pub(crate) fn on_read_index(&mut self, from: NodeId, request: u64) {
        let origin = ReadOrigin::Remote(from, request);
        if !self.is_leader() {
            let leader_hint = self.proposer.leader_hint.filter(|leader| *leader != from);
            self.answer_read(origin, Err(ProposalError::NotLeader { leader_hint }));
        } else if self.reads.pending() >= READS_PENDING_MAX {
            self.answer_read(origin, Err(ProposalError::Overloaded));
        } else {
            self.leader_read(origin);
        }
    }

    pub(crate) fn on_read_index_reply(
        &mut self,
        from: NodeId,
        number: u64,
        outcome: Result<Slot, ProposalError>,
    ) {
        let Some(request) = self.reads.take_forwarded(number, from) else {
            return;
        };
        match outcome {
            Ok(read_upto) => {
                let deadline_tick = self.tick_now + self.config.forward_timeout_ticks;
                self.reads.wait_for_apply(request, read_upto, deadline_tick);
            }
            Err(error) => self.answer_read(ReadOrigin::Local(request), Err(error)),
        }
    }

    /// A read reached the leader: its index is the next free slot, confirmed by the next round.
    ///
    /// # Correctness
    /// Not while a configuration entry of this leadership is in flight: a phase 1 stops at the
    /// first configuration entry it recovers (the leadership ends once it is applied, see
    /// `propose_membership`), so `next_slot` may lie below slots the next configuration has
    /// chosen already (found by a review). The read is refused as `ChangeInProgress`
    /// (retryable); the next leadership answers it.
    fn leader_read(&mut self, origin: ReadOrigin) {
        let Role::Leader(leader) = &self.proposer.role else { unreachable!("leader_read on a non-leader") };
        if leader.config_slot.is_some() {
            self.answer_read(origin, Err(ProposalError::ChangeInProgress));
            return;
        }
        let (read_upto, ballot) = (leader.next_slot, leader.ballot);
        let deadline_tick = self.tick_now + self.config.forward_timeout_ticks;
        if self.reads.confirm_later(ballot, read_upto, origin, deadline_tick) {
            self.broadcast_heartbeat();
        }
        self.confirm_reads();
    }

    /// A heartbeat of the leader's ballot to every member, carrying the current round.
    pub(crate) fn broadcast_heartbeat(&mut self) {
        let applied_upto = self.learner.applied_upto();
        let Role::Leader(leader) = &mut self.proposer.role else {
            return;
        };
        leader.announced_commit = applied_upto;
        leader.last_heartbeat_tick = self.tick_now;
        let heartbeat = Message::Heartbeat {
            ballot: leader.ballot,
            commit_upto: applied_upto,
            history_start: self.learner.history_start(),
            round: self.reads.round(),
        };
        self.broadcast(heartbeat);
    }

    /// `from` acknowledged a heartbeat of `round` in `ballot`.
    pub(crate) fn read_round_acked(&mut self, from: NodeId, ballot: Ballot, round: u64) {
        if matches!(&self.proposer.role, Role::Leader(leader) if leader.ballot == ballot) {
            self.reads.note_ack(ballot, from, round);
            self.confirm_reads();
        }
    }

    /// Answers the reads whose round a quorum of voters acknowledged, and starts the next
    /// round if reads wait for it.
    fn confirm_reads(&mut self) {
        let Role::Leader(leader) = &self.proposer.role else {
            return;
        };
        if !self.reads.confirming_any() {
            return;
        }
        let membership = self.learner.membership();
        let mut rounds: Vec<u64> = (self.reads.acked_in(leader.ballot))
            .filter(|(node, _)| *node != self.config.id && membership.votes(*node))
            .map(|(_, round)| round)
            .collect();
        if self.can_vote() {
            // The leader holds its own promise of its ballot for every round.
            rounds.push(u64::MAX);
        }
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        let quorum = membership.quorum();
        let Some(&confirmed) = rounds.get(quorum.saturating_sub(1)) else {
            return;
        };
        let ballot = leader.ballot;
        for read in self.reads.take_confirmed(ballot, confirmed) {
            self.answer_read_index(read.origin, read.read_upto);
        }
        if self.reads.start_due_round_if_idle() {
            self.broadcast_heartbeat();
        }
    }

    /// A confirmed read index: a local read waits for this replica's applied prefix, a
    /// remote one goes back to the replica that asked.
    fn answer_read_index(&mut self, origin: ReadOrigin, read_upto: Slot) {
        match origin {
            ReadOrigin::Local(request) => {
                let deadline_tick = self.tick_now + self.config.forward_timeout_ticks;
                self.reads.wait_for_apply(request, read_upto, deadline_tick);
            }
            ReadOrigin::Remote(..) => self.answer_read(origin, Ok(read_upto)),
        }
    }

    fn answer_read(&mut self, origin: ReadOrigin, outcome: Result<Slot, ProposalError>) {
        match origin {
            ReadOrigin::Local(request) => self.ready.reads.push(ReadReply { request, outcome }),
            ReadOrigin::Remote(node, request) => {
                self.send(node, Message::ReadIndexReply { request, outcome })
            }
        }
    }

    /// Answers the reads the applied prefix now covers, and those past their deadline.
    pub(crate) fn release_reads(&mut self) {
        let applied_upto = self.learner.applied_upto();
        for (origin, outcome) in self.reads.release(applied_upto, self.tick_now) {
            self.answer_read(origin, outcome);
        }
    }

    /// This leadership ended: its reads cannot be confirmed any more (retryable).
    pub(crate) fn fail_confirming_reads(&mut self, leader_hint: Option<NodeId>) {
        for read in self.reads.take_confirming() {
            self.answer_read(read.origin, Err(ProposalError::NotLeader { leader_hint }));
        }
    }

    /// This replica follows another leader: the reads it forwarded to the previous one may be
    /// lost with it (retryable; an answer that still comes is ignored).
    pub(crate) fn fail_forwarded_reads(&mut self, leader_hint: Option<NodeId>) {
        for request in self.reads.take_all_forwarded() {
            self.answer_read(ReadOrigin::Local(request), Err(ProposalError::NotLeader { leader_hint }));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::Cluster;
    use crate::{MemberRole, MembershipChange, ProposalError, ReadReply};

    /// A read is answered once a round sent after it arrived is acknowledged by a quorum, with
    /// the leader's next slot as its index; reads that arrive while a round is in flight share
    /// the next one.
    #[test]
    fn reads_at_the_leader_share_rounds_and_wait_for_a_quorum() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let next_slot = cluster.node(leader).applied_upto();
        let round = cluster.node(leader).reads.round();
        cluster.node(leader).read(1);
        cluster.node(leader).read(2);
        cluster.node(leader).read(3);
        assert_eq!(cluster.node(leader).reads.round(), round + 1, "one round in flight, the rest wait");
        cluster.settle();
        let answers: Vec<&ReadReply> = cluster.reads.iter().map(|(_, read)| read).collect();
        assert_eq!(answers.len(), 3, "{answers:?}");
        assert!(answers.iter().all(|read| read.outcome == Ok(next_slot)), "{answers:?}");
        assert_eq!(cluster.node(leader).reads.round(), round + 2, "the waiting reads took one more round");
    }

    /// A read whose index one leadership took is never confirmed by another's acknowledgements:
    /// between the two, another leader may have chosen values the index does not cover. Here the
    /// leader takes a read, its round is lost, then it applies a configuration change and
    /// campaigns again: the read is refused (retryable), not served in the new ballot.
    #[test]
    fn a_read_does_not_outlive_the_leadership_that_took_its_index() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let ballot = cluster.node(leader).status().own_ballot;
        cluster.node(leader).read(1);
        // The round's heartbeats are lost.
        let _ = cluster.take_ready_written(leader);
        // Node 4 never runs: what is sent to it is lost.
        cluster.down = vec![4];
        let add = MembershipChange::Add { id: 4, address: "n4:1".into(), role: MemberRole::Learner };
        cluster.node(leader).change_membership(crate::test_support::proposal(9, 1, "").request_id, add);
        cluster.settle();
        assert!(cluster.node(leader).is_leader(), "the leader leads again");
        assert_ne!(cluster.node(leader).status().own_ballot, ballot, "in a new ballot");
        let answers: Vec<&ReadReply> = cluster.reads.iter().map(|(_, read)| read).collect();
        assert!(
            matches!(answers[..], [ReadReply { request: 1, outcome: Err(ProposalError::NotLeader { .. }) }]),
            "{answers:?}"
        );
    }
}
