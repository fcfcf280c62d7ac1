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
            self.send(
                from,
                Message::Nack {
                    ballot,
                    promised: self.promised,
                },
            );
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
        let chosen = self
            .chosen_pending
            .range(start..)
            .map(|(slot, value)| (*slot, value.clone()))
            .collect();
        PromiseData {
            accepted,
            chosen,
            chosen_upto: self.chosen_upto,
        }
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
            self.send(
                from,
                Message::Nack {
                    ballot,
                    promised: self.promised,
                },
            );
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
        self.send(
            from,
            Message::Accepted {
                ballot,
                slots,
                chosen_upto: self.chosen_upto,
            },
        );
        self.learn_commit(from, ballot, commit_upto);
    }

    /// Records an accepted value (the leader uses this for its own vote too).
    pub(crate) fn accept_locally(&mut self, slot: Slot, ballot: Ballot, value: Value) {
        assert!(ballot >= self.promised, "accepting below the promise");
        if let Some((existing, existing_value)) = self.accepted.get(&slot) {
            if *existing == ballot {
                // One ballot proposes one value per slot: a retransmission.
                assert_eq!(
                    existing_value, &value,
                    "two values for slot {slot} in ballot {ballot}"
                );
                return;
            }
        }
        self.persist(PersistOp::Accept {
            slot,
            ballot,
            value: value.clone(),
        });
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
            self.send(
                from,
                Message::Nack {
                    ballot,
                    promised: self.promised,
                },
            );
            return;
        }
        self.follow(from, ballot);
        self.learn_commit(from, ballot, commit_upto);
        self.send(
            from,
            Message::HeartbeatAck {
                ballot,
                chosen_upto: self.chosen_upto,
            },
        );
        self.follow_truncation(history_start);
    }

    /// `from` leads `ballot >= promised`: accept it as leader.
    fn follow(&mut self, from: NodeId, ballot: Ballot) {
        // Accepting in a ballot implies promising it: a later Prepare below it must be refused.
        self.raise_promise(ballot);
        self.step_down_below(ballot);
        if !matches!(self.role, Role::Leader(_)) {
            self.leader_hint = Some(from);
            self.reset_election_timer();
        }
    }
}
