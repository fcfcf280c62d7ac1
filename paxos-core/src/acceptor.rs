//! The acceptor's state: the highest ballot it promised and the values it accepted. Every
//! change of either is a method here, and each returns the record the caller must persist
//! before anything that depends on it is sent (the Ready contract). The handlers that decide
//! when to promise and accept (Prepare, Accept, Heartbeat) are in accepting.rs.

use crate::ready::PersistOp;
use crate::types::{Ballot, Slot};
use crate::value::Value;
use std::collections::BTreeMap;

/// What one acceptor has promised and accepted.
///
/// # Correctness
/// - `promised` never goes down, and nothing is accepted below it.
/// - A slot holds at most one value per ballot: accepting it again in the same ballot is a
///   retransmission (the same value, asserted), and records nothing.
/// - Every change returns its [`PersistOp`]; the caller pushes it into the same Ready as the
///   messages that speak of it, so the driver makes it durable first.
#[derive(Debug)]
pub(crate) struct Acceptor {
    promised: Ballot,
    accepted: BTreeMap<Slot, (Ballot, Value)>,
}

impl Acceptor {
    /// The acceptor as recovered from its durable state.
    pub(crate) fn new(promised: Ballot, accepted: BTreeMap<Slot, (Ballot, Value)>) -> Acceptor {
        Acceptor { promised, accepted }
    }

    /// The highest ballot promised.
    pub(crate) fn promised(&self) -> Ballot {
        self.promised
    }

    /// The value accepted at each slot, with the ballot it was accepted in.
    pub(crate) fn accepted(&self) -> &BTreeMap<Slot, (Ballot, Value)> {
        &self.accepted
    }

    /// Raises the promise to `ballot` (at least the current one); the record to persist when
    /// it went up.
    #[must_use]
    pub(crate) fn raise_promise(&mut self, ballot: Ballot) -> Option<PersistOp> {
        assert!(ballot >= self.promised, "promises only go up");
        if ballot == self.promised {
            return None;
        }
        self.promised = ballot;
        Some(PersistOp::Promise(ballot))
    }

    /// Accepts `value` at `slot` in `ballot` (at least the promise); the record to persist, or
    /// `None` for a retransmission of what this ballot already put there.
    #[must_use]
    pub(crate) fn accept(&mut self, slot: Slot, ballot: Ballot, value: Value) -> Option<PersistOp> {
        assert!(ballot >= self.promised, "accepting below the promise");
        if let Some((existing, existing_value)) = self.accepted.get(&slot) {
            if *existing == ballot {
                // One ballot proposes one value per slot: a retransmission.
                assert_eq!(existing_value, &value, "two values for slot {slot} in ballot {ballot}");
                return None;
            }
        }
        self.accepted.insert(slot, (ballot, value.clone()));
        Some(PersistOp::Accept { slot, ballot, value })
    }

    /// Forgets the records of every slot below `slot` (chosen and applied, or under a
    /// snapshot); how many there were. The caller persists the deletion its way (a
    /// `DeleteAcceptedBelow`, or a snapshot or truncation that implies it).
    pub(crate) fn forget_below(&mut self, slot: Slot) -> u64 {
        let keep = self.accepted.split_off(&slot);
        let forgotten = self.accepted.len() as u64;
        self.accepted = keep;
        forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promises_only_rise_and_a_retransmission_records_nothing() {
        let mut acceptor = Acceptor::new(Ballot::ZERO, BTreeMap::new());
        let ballot = Ballot { round: 2, node: 1 };
        assert_eq!(acceptor.raise_promise(ballot), Some(PersistOp::Promise(ballot)));
        assert_eq!(acceptor.raise_promise(ballot), None, "the same promise again records nothing");
        assert!(acceptor.accept(5, ballot, Value::Noop).is_some());
        assert_eq!(acceptor.accept(5, ballot, Value::Noop), None, "a retransmission");
        let higher = Ballot { round: 3, node: 2 };
        assert!(acceptor.accept(5, higher, Value::Noop).is_some(), "a higher ballot replaces it");
        assert_eq!(acceptor.accepted()[&5].0, higher);
        assert_eq!(acceptor.forget_below(5), 0);
        assert_eq!(acceptor.forget_below(6), 1);
        assert!(acceptor.accepted().is_empty());
    }

    #[test]
    #[should_panic(expected = "promises only go up")]
    fn a_promise_never_goes_down() {
        let mut acceptor = Acceptor::new(Ballot { round: 3, node: 1 }, BTreeMap::new());
        let _ = acceptor.raise_promise(Ballot { round: 2, node: 1 });
    }
}
