//! The safety checker: every property of DESIGN.md, checked as the run goes.

use paxos_core::{Ballot, Envelope, MemStorage, Message, NodeId, RequestId, Slot, Value};
use std::collections::BTreeMap;

#[derive(Default)]
pub struct Checker {
    /// What was proposed under each request id (validity).
    proposed: BTreeMap<RequestId, Vec<u8>>,
    /// The one value of every slot any node applied (agreement).
    history: BTreeMap<Slot, Value>,
    /// Where each request id sits in the history (exactly-once).
    request_slots: BTreeMap<RequestId, Slot>,
    /// Every acknowledgement given (durability).
    acknowledged: BTreeMap<RequestId, Slot>,
    /// Highest ballot each node answered in a Promise or Accepted, across crashes.
    answered: BTreeMap<NodeId, Ballot>,
}

impl Checker {
    pub fn on_propose(&mut self, request_id: RequestId, payload: &[u8]) {
        self.proposed.insert(request_id, payload.to_vec());
    }

    /// Promise monotonicity: an acceptor's answers never go below a ballot it answered before,
    /// crash or no crash.
    pub fn on_send(&mut self, envelope: &Envelope) -> Result<(), String> {
        let ballot = match &envelope.message {
            Message::Promise { ballot, .. } | Message::Accepted { ballot, .. } => *ballot,
            _ => return Ok(()),
        };
        let highest = self.answered.entry(envelope.from).or_default();
        if ballot < *highest {
            return Err(format!(
                "promise broken: node {} answered ballot {ballot} after answering {highest}: {:?}",
                envelope.from, envelope.message
            ));
        }
        *highest = ballot;
        Ok(())
    }

    pub fn on_apply(&mut self, node: NodeId, slot: Slot, value: &Value) -> Result<(), String> {
        if let Value::Command { request_id, payload } = value {
            match self.proposed.get(request_id) {
                Some(proposed) if proposed == payload => {}
                _ => {
                    return Err(format!("validity: node {node} applied {value:?} at {slot}, never proposed"))
                }
            }
        }
        match self.history.get(&slot) {
            Some(existing) if existing != value => {
                return Err(format!(
                    "agreement: node {node} applied {value:?} at slot {slot}, others {existing:?}"
                ));
            }
            Some(_) => {}
            None => {
                if let Some(request_id) = value.request_id() {
                    if let Some(other) = self.request_slots.insert(request_id, slot) {
                        return Err(format!("exactly-once: {request_id} chosen at slots {other} and {slot}"));
                    }
                }
                self.history.insert(slot, value.clone());
            }
        }
        if let Some(request_id) = value.request_id() {
            if let Some(acked) = self.acknowledged.get(&request_id) {
                if *acked != slot {
                    return Err(format!(
                        "durability: {request_id} acknowledged at {acked}, applied at {slot}"
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn on_acknowledged(&mut self, request_id: RequestId, slot: Slot) -> Result<(), String> {
        if let Some(previous) = self.acknowledged.insert(request_id, slot) {
            if previous != slot {
                return Err(format!("exactly-once: {request_id} acknowledged at {previous} and at {slot}"));
            }
        }
        match self.history.get(&slot) {
            Some(Value::Command { request_id: at_slot, .. }) if *at_slot == request_id => Ok(()),
            Some(other) => {
                Err(format!("durability: {request_id} acknowledged at {slot}, which holds {other:?}"))
            }
            // The answering node applied it; no node may have reported it to the checker yet
            // only if the reply raced the apply, which the driver order rules out.
            None => Err(format!("acknowledged {request_id} at {slot} before any node applied it")),
        }
    }

    pub fn on_restart(&mut self, _node: NodeId) {}

    /// After healing: every node's stored history equals the agreed one over the range it
    /// holds, and every acknowledged request is in it at its slot.
    pub fn check_final(&self, nodes: &[(NodeId, &MemStorage)]) -> Result<(), String> {
        for (request_id, slot) in &self.acknowledged {
            match self.history.get(slot) {
                Some(value) if value.request_id() == Some(*request_id) => {}
                other => {
                    return Err(format!(
                        "durability: {request_id} acknowledged at {slot}, history has {other:?}"
                    ))
                }
            }
        }
        for (node, storage) in nodes {
            for slot in storage.truncation.history_start..storage.chosen_upto {
                match (storage.history.get(&slot), self.history.get(&slot)) {
                    (Some(mine), Some(agreed)) if mine == agreed => {}
                    (mine, agreed) => {
                        return Err(format!(
                            "histories differ: node {node} slot {slot}: {mine:?} vs {agreed:?}"
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    pub fn acknowledged(&self) -> usize {
        self.acknowledged.len()
    }

    pub fn chosen_slots(&self) -> usize {
        self.history.len()
    }

    pub fn max_acknowledged_slot(&self) -> Option<Slot> {
        self.acknowledged.values().copied().max()
    }
}
