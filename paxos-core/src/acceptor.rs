//! Acceptor rules: promise on Prepare, accept on Accept, and the follower side of heartbeats.

use crate::message::{AcceptedEntry, Message};
use crate::ready::PersistOp;
use crate::replica::{PromiseData, Replica, Role};
use crate::types::{Ballot, NodeId, Slot, Value};

impl Replica {
    /// Phase 1b. Promises `ballot` if it is at least the current promise.
    ///
    /// # Correctness
    /// The raised promise is persisted in the same Ready that carries the Promise message, so
    /// the driver makes it durable before the candidate can count on it.
    pub(crate) fn on_prepare(&mut self, from: NodeId, ballot: Ballot, from_slot: Slot) {
        if ballot < self.promised {
            self.send(from, Message::Nack { ballot, promised: self.promised });
            return;
        }
        self.raise_promise(ballot);
        self.step_down_below(ballot);
        // Granting a promise is a vote for `from`: give it time to win before competing.
        self.reset_election_timer();
        self.leader_hint = None;
        let data = self.promise_data(from_slot);
        self.send(
            from,
            Message::Promise {
                ballot,
                accepted: data.accepted,
                chosen: data.chosen,
                chosen_upto: data.chosen_upto,
            },
        );
    }

    /// What this acceptor knows about every slot from `from_slot` on.
    ///
    /// Slots below `chosen_upto` are applied (their accepted records may be collected); every
    /// other accepted record at or above `from_slot` is reported, which is what makes the
    /// candidate's choice of value safe.
    pub(crate) fn promise_data(&self, from_slot: Slot) -> PromiseData {
        let start = from_slot.max(self.chosen_upto);
        let accepted = self
            .accepted
            .range(start..)
            .map(|(slot, (ballot, value))| AcceptedEntry {
                slot: *slot,
                ballot: *ballot,
                value: value.clone(),
            })
            .collect();
        let chosen = self.chosen_pending.range(start..).map(|(slot, value)| (*slot, value.clone())).collect();
        PromiseData { accepted, chosen, chosen_upto: self.chosen_upto }
    }

    /// Phase 2b. Accepts every entry if `ballot` is at least the promise.
    pub(crate) fn on_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        entries: Vec<(Slot, Value)>,
        commit_upto: Slot,
    ) {
        if ballot < self.promised {
            self.send(from, Message::Nack { ballot, promised: self.promised });
            return;
        }
        self.follow(from, ballot);
        let mut slots = Vec::with_capacity(entries.len());
        for (slot, value) in entries {
            slots.push(slot);
            if slot < self.chosen_upto {
                // Applied already: the value is necessarily the chosen one, and a future Promise
                // reports the slot through `chosen_upto`. Acknowledge without storing.
                continue;
            }
            self.accept_locally(slot, ballot, value);
        }
        self.send(from, Message::Accepted { ballot, slots, chosen_upto: self.chosen_upto });
        self.learn_commit(from, ballot, commit_upto);
    }

    /// Records an accepted value (the leader uses this for its own vote too).
    pub(crate) fn accept_locally(&mut self, slot: Slot, ballot: Ballot, value: Value) {
        assert!(ballot >= self.promised, "accepting below the promise");
        if let Some((existing, existing_value)) = self.accepted.get(&slot) {
            if *existing == ballot {
                // One ballot proposes one value per slot: a retransmission.
                assert_eq!(existing_value, &value, "two values for slot {slot} in ballot {ballot}");
                return;
            }
        }
        self.persist(PersistOp::Accept { slot, ballot, value: value.clone() });
        self.accepted.insert(slot, (ballot, value));
        // A value accepted in the ballot the leader already declared committed is chosen.
        if ballot == self.commit_ballot && slot < self.commit_known {
            self.mark_chosen_by_commit(slot);
        }
    }

    pub(crate) fn on_heartbeat(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        commit_upto: Slot,
        history_start: Slot,
    ) {
        if ballot < self.promised {
            self.send(from, Message::Nack { ballot, promised: self.promised });
            return;
        }
        self.follow(from, ballot);
        self.learn_commit(from, ballot, commit_upto);
        self.send(from, Message::HeartbeatAck { ballot, chosen_upto: self.chosen_upto });
        self.follow_truncation(history_start);
    }

    /// `from` leads `ballot >= promised`: accept it as leader.
    fn follow(&mut self, from: NodeId, ballot: Ballot) {
        // Accepting in a ballot implies promising it: a later Prepare below it must be refused.
        self.raise_promise(ballot);
        self.step_down_below(ballot);
        if !matches!(self.role, Role::Leader(_)) {
            if self.leader_hint != Some(from) {
                // Proposals forwarded to the previous leader may be lost with it: answer them
                // now (retryable) instead of after the forward timeout.
                self.fail_forwarded(Some(from));
            }
            self.leader_hint = Some(from);
            self.reset_election_timer();
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::{replica, sent};
    use crate::{Ballot, Envelope, Message, PersistOp, Value};

    fn prepare(ballot: Ballot) -> Envelope {
        Envelope { from: ballot.node, to: 1, message: Message::Prepare { ballot, from_slot: 0 } }
    }

    #[test]
    fn promise_is_persisted_in_the_same_ready_as_the_reply() {
        let mut acceptor = replica(1, &[1, 2, 3]);
        acceptor.step(prepare(Ballot::new(5, 2)));
        let ready = acceptor.take_ready();
        assert_eq!(ready.persist, vec![PersistOp::Promise(Ballot::new(5, 2))]);
        assert_eq!(sent(&ready, |m| matches!(m, Message::Promise { .. })).len(), 1);
    }

    #[test]
    fn lower_ballots_are_refused_with_the_promise() {
        let mut acceptor = replica(1, &[1, 2, 3]);
        acceptor.step(prepare(Ballot::new(5, 2)));
        acceptor.take_ready();
        acceptor.step(prepare(Ballot::new(4, 3)));
        let accept =
            Message::Accept { ballot: Ballot::new(4, 3), entries: vec![(0, Value::Noop)], commit_upto: 0 };
        acceptor.step(Envelope { from: 3, to: 1, message: accept });
        let ready = acceptor.take_ready();
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
        acceptor.step(Envelope { from: 2, to: 1, message: accept });
        acceptor.take_ready();
        acceptor.step(prepare(Ballot::new(2, 3)));
        let ready = acceptor.take_ready();
        match &ready.messages[0].message {
            Message::Promise { accepted, chosen_upto, .. } => {
                assert_eq!(accepted.len(), 1);
                assert_eq!(accepted[0].ballot, Ballot::new(1, 2));
                assert_eq!(*chosen_upto, 0);
            }
            other => panic!("expected a promise, got {other:?}"),
        }
    }

    #[test]
    fn a_recovered_acceptor_keeps_its_promise() {
        let mut acceptor = replica(1, &[1, 2, 3]);
        acceptor.step(prepare(Ballot::new(5, 2)));
        let mut storage = crate::MemStorage::default();
        storage.apply(&acceptor.take_ready().persist);
        let mut recovered = crate::Replica::recover(acceptor.config().clone(), storage.durable_state(), 1);
        recovered.step(prepare(Ballot::new(4, 3)));
        let ready = recovered.take_ready();
        assert!(matches!(ready.messages[0].message, Message::Nack { .. }));
    }
}
