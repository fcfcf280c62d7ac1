//! Proposals that reach a follower: forwarded to the leader, answered when the leader's answer
//! comes back (and only for the value that was sent), or with a retryable error when the
//! leader changes or the forward times out.

use crate::message::{Proposal, ProposalError};
use crate::replica::Replica;
use crate::role::Origin;
use crate::types::{NodeId, RequestId, Slot};

impl Replica {
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
            let hint = self.proposer.leader_hint.filter(|leader| *leader != from);
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
        for (request_id, (_, fingerprint)) in std::mem::take(&mut self.proposer.forwarded) {
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
        if self.proposer.forwarded.get(&request_id).is_none_or(|(_, forwarded)| *forwarded != fingerprint) {
            return;
        }
        self.proposer.forwarded.remove(&request_id);
        match outcome {
            Ok(slot) if slot >= self.learner.applied_upto() => {
                self.proposer.replies_after_apply.entry(slot).or_default().push((request_id, fingerprint));
            }
            outcome => self.reply(Origin::Local, (request_id, fingerprint), outcome),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::{proposal, Cluster};
    use crate::{Message, ProposalError};

    #[test]
    fn a_late_answer_to_another_value_forwarded_under_the_same_id_answers_nothing() {
        let mut cluster = Cluster::new(3);
        let leader = cluster.elect();
        let follower = if leader == 1 { 2 } else { 1 };
        let client = cluster.session(follower);
        // A (buggy) client's first value under id 1 goes to the leader, slowly.
        let first = proposal(client, 1, "first");
        cluster.node(follower).propose(first.clone());
        let forwarded_first = cluster.take_ready_written(follower).messages;
        assert!(matches!(forwarded_first[0].message, Message::Forward { .. }), "{forwarded_first:?}");
        // It times out at the follower; then another value is forwarded under the same id.
        let timeout = cluster.node(follower).config().forward_timeout_ticks;
        cluster.run_ticks(timeout + 1);
        cluster.replies.clear();
        let second = proposal(client, 1, "second");
        cluster.node(follower).propose(second.clone());
        let forwarded_second = cluster.take_ready_written(follower).messages;
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
