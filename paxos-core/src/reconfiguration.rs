//! Configuration changes on the leader: one at a time, proposed into a drained window, and
//! the leader's own automatic ones (binding the bootstrap configuration, promoting learners
//! that caught up).
//!
//! # Correctness
//! Three rules together keep every slot's quorums intersecting (the argument is in the
//! docs/design.md, "Membership and disk loss"):
//! 1. An entry at slot `c` governs the slots above `c` only once it is applied (α = 1).
//! 2. The leader proposes an entry only when every slot below it is applied (so the
//!    configuration in force is the one that governs it), proposes nothing above it until it is
//!    applied, and then campaigns again in the new configuration. A leader that finds an entry
//!    in phase 1 stops its proposals there (`phase_one_values`) and does the same.
//! 3. Consecutive configurations differ by at most one voter ([`crate::Membership::check_successor`]),
//!    so a stale leader's quorum of the old configuration meets every quorum of the new one.

use crate::membership::ChangeError;
use crate::membership::{Incarnation, MembershipChange};
use crate::message::ProposalError;
use crate::replica::Replica;
use crate::role::{InFlight, Origin, Role};
use crate::types::{NodeId, RequestId, Slot};
use crate::value::Value;
use std::collections::BTreeMap;

impl Replica {
    /// The incarnation every member last presented, this replica's own included.
    pub(crate) fn incarnations_seen(&self) -> BTreeMap<NodeId, Incarnation> {
        let mut seen = self.membership_notes.seen_incarnations().clone();
        seen.insert(self.config.id, self.config.incarnation);
        seen
    }

    /// Queues `change` on the leader; it is proposed once every slot below is applied.
    pub(crate) fn propose_membership(&mut self, change: MembershipChange, request_id: Option<RequestId>) {
        let seen = self.incarnations_seen();
        let membership = self.learner.membership();
        let bound = membership.is_bound();
        let checked = membership.after(&change, &seen);
        let refusal = match &self.proposer.role {
            Role::Leader(leader) => {
                let busy = leader.pending_change.is_some()
                    || leader.config_slot.is_some()
                    || leader.transfer.is_some();
                let binding = matches!(change, MembershipChange::Bind { .. });
                if busy || bound == binding {
                    Some(ProposalError::ChangeInProgress)
                } else {
                    checked.err().map(ProposalError::ChangeRefused)
                }
            }
            _ => Some(ProposalError::NotLeader { leader_hint: self.proposer.leader_hint }),
        };
        if let Some(error) = refusal {
            if let Some(request_id) = request_id {
                self.reply(Origin::Local, (request_id, [0; 16]), Err(error));
            }
            return;
        }
        if let Role::Leader(leader) = &mut self.proposer.role {
            leader.pending_change = Some((change, request_id));
        }
        self.fill_window();
    }

    /// Proposes the waiting change at the next slot; the window is drained (every slot below
    /// is applied). Returns whether it was proposed.
    pub(crate) fn propose_pending_change(&mut self) -> bool {
        let seen = self.incarnations_seen();
        let now = self.tick_now;
        let checked_against = self.learner.membership().clone();
        let applied_upto = self.learner.applied_upto();
        let Role::Leader(leader) = &mut self.proposer.role else {
            return false;
        };
        let Some((change, request_id)) = leader.pending_change.take() else {
            return false;
        };
        assert_eq!(leader.next_slot, applied_upto, "a change is proposed into a drained window");
        let next = match checked_against.after(&change, &seen) {
            Ok(next) => next,
            Err(error) => {
                if let Some(request_id) = request_id {
                    self.reply(
                        Origin::Local,
                        (request_id, [0; 16]),
                        Err(ProposalError::ChangeRefused(error)),
                    );
                }
                return false;
            }
        };
        let slot = leader.next_slot;
        leader.next_slot += 1;
        let value = Value::Config(next);
        leader
            .in_flight
            .insert(slot, InFlight { value: value.clone(), votes: Default::default(), sent_tick: now });
        leader.unsent.push(slot);
        leader.config_slot = Some(slot);
        leader.change_waiter = request_id;
        let ballot = leader.ballot;
        self.accept_own(slot, ballot, value);
        true
    }

    /// A configuration entry was applied at `slot`: answers whoever asked for it.
    pub(crate) fn answer_change(&mut self, slot: Slot, checked: Result<(), ChangeError>) {
        let Role::Leader(leader) = &mut self.proposer.role else {
            return;
        };
        if leader.config_slot != Some(slot) {
            return;
        }
        if let Some(request_id) = leader.change_waiter.take() {
            let outcome = checked.map(|()| slot).map_err(ProposalError::ChangeRefused);
            self.reply(Origin::Local, (request_id, [0; 16]), outcome);
        }
    }

    /// The leader's own changes: bind the bootstrap configuration once every voter's
    /// incarnation is known, and promote a learner that has caught up (within one catch-up
    /// page of the leader).
    pub(crate) fn maybe_change_membership_automatically(&mut self) {
        let Role::Leader(leader) = &self.proposer.role else {
            return;
        };
        if leader.pending_change.is_some() || leader.config_slot.is_some() {
            return;
        }
        let seen = self.incarnations_seen();
        let membership = self.learner.membership();
        let change = if !membership.is_bound() {
            if !membership.bound_roles().all(|id| seen.contains_key(&id)) {
                return;
            }
            let incarnations = membership.bound_roles().map(|id| (id, seen[&id])).collect();
            // Every member has announced its role by now (it was heard from): the entry keeps
            // them. The log is named after the disk of the leader that binds it.
            MembershipChange::Bind { incarnations, log_id: self.config.incarnation }
        } else {
            let slack = self.config.entries_per_message_max as Slot;
            let applied_upto = self.learner.applied_upto();
            let progress = self.learner.member_applied_upto();
            let caught_up = membership.promotable().find(|id| {
                seen.get(id).is_some_and(|incarnation| membership.admits(*id, *incarnation))
                    && progress.get(id).is_some_and(|upto| upto + slack >= applied_upto)
            });
            let Some(id) = caught_up else {
                return;
            };
            MembershipChange::Promote { id, incarnation: seen[&id] }
        };
        self.propose_membership(change, None);
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::{proposal, Cluster};
    use crate::{Envelope, MemberRole, MembershipChange, Message, Value};

    /// Whether the leader has proposed (or applied) a configuration that makes node 3 a voter.
    fn promoted(cluster: &mut Cluster, leader: u64) -> bool {
        let history = &cluster.storage[&leader].history;
        let accepted = &cluster.storage[&leader].accepted;
        history.values().chain(accepted.values().map(|(_, value)| value)).any(|value| {
            matches!(value, Value::Config(m) if m.get(3).is_some_and(|member| member.role == MemberRole::Voter))
        })
    }

    /// A learner is promoted only once it is within a page of the leader's applied prefix: a
    /// voter far behind would have every quorum that counts it wait on its catch-up.
    #[test]
    fn a_learner_far_behind_is_not_promoted_until_it_catches_up() {
        let mut cluster = Cluster::new(2);
        for replica in cluster.replicas.values_mut() {
            replica.config.entries_per_message_max = 4;
        }
        let leader = cluster.elect();
        cluster.down = vec![3];
        let add = MembershipChange::Add { id: 3, address: "n3:1".into(), role: MemberRole::Voter };
        cluster.node(leader).change_membership(proposal(9, 1, "").request_id, add);
        cluster.run_ticks(30);
        let client = cluster.session(leader);
        for seq in 1..=20 {
            cluster.node(leader).propose(proposal(client, seq, "v"));
        }
        cluster.settle();
        let ballot = cluster.node(leader).status().own_ballot.expect("leads");
        let ack = |applied_upto| Envelope {
            from: 3,
            to: leader,
            incarnation: 3,
            role: MemberRole::Learner,
            message: Message::HeartbeatAck { ballot, applied_upto, round: 0 },
        };
        cluster.node(leader).step(ack(2));
        cluster.run_ticks(5);
        assert!(!promoted(&mut cluster, leader), "node 3 promoted while 20 slots behind");
        let applied = cluster.node(leader).applied_upto();
        cluster.node(leader).step(ack(applied - 2));
        cluster.run_ticks(5);
        assert!(promoted(&mut cluster, leader), "node 3 not promoted once within a page");
    }
}
