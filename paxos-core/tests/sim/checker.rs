//! The safety checker: every property of DESIGN.md, checked as the run goes.
//!
//! Besides what nodes apply and answer, it watches every durable vote (each `PersistOp::Accept`
//! a node writes) and so knows, independently of any node's bookkeeping, when a value is chosen:
//! a majority voted for it in one ballot. Two ballots choosing different values at one slot is
//! an agreement violation even if no node ever applies either.

use paxos_core::{
    Ballot, Envelope, Incarnation, MemStorage, Membership, Message, NodeId, RequestId, Slot, Value,
};
use std::collections::{BTreeMap, BTreeSet};

/// Who voted, each with the incarnation it voted as.
type Voters = BTreeSet<(NodeId, Incarnation)>;

pub struct Checker {
    /// The configuration the cluster started with (bootstrap or bound).
    initial: Membership,
    /// Every configuration entry applied: slot -> the configuration for the slots above it.
    configs: BTreeMap<Slot, Membership>,
    /// Every slot below this is in `history`, so the configuration of any slot up to it is known.
    contiguous_upto: Slot,
    /// What was proposed under each request id (validity).
    proposed: BTreeMap<RequestId, Vec<u8>>,
    /// Values hostile or buggy clients sent under another's session or an answered id: none
    /// may ever be applied.
    hostile: BTreeSet<(RequestId, Vec<u8>)>,
    /// Registrations clients sent, nonce -> the first value it carries (validity of
    /// `Register` entries).
    registrations: BTreeMap<u64, Vec<u8>>,
    /// The one value of every slot any node applied (agreement).
    history: BTreeMap<Slot, Value>,
    /// Where each request id sits in the history (exactly-once).
    request_slots: BTreeMap<RequestId, Slot>,
    /// Every acknowledgement given (durability).
    acknowledged: BTreeMap<RequestId, Slot>,
    /// The highest slot a registration was acknowledged at.
    registration_acknowledged_max: Option<Slot>,
    /// Highest ballot each incarnation of a node answered in a Promise or Accepted, across
    /// crashes (a wiped node's new incarnation starts from nothing, rightly).
    answered: BTreeMap<(NodeId, Incarnation), Ballot>,
    /// Durable votes: (slot, ballot) -> (value, voters with their incarnations).
    votes: BTreeMap<(Slot, Ballot), (Value, Voters)>,
    /// The value chosen at each slot by a majority of votes in one ballot, with that ballot.
    chosen_by_votes: BTreeMap<Slot, (Ballot, Value)>,
    /// `PAXOS_SIM_WATCH_SLOT=N`: print every apply and acknowledgement of slot N.
    watched_slot: Option<Slot>,
}

impl Checker {
    pub fn new(initial: Membership) -> Self {
        Checker {
            initial,
            configs: BTreeMap::new(),
            contiguous_upto: 0,
            proposed: BTreeMap::new(),
            hostile: BTreeSet::new(),
            registrations: BTreeMap::new(),
            history: BTreeMap::new(),
            request_slots: BTreeMap::new(),
            acknowledged: BTreeMap::new(),
            registration_acknowledged_max: None,
            answered: BTreeMap::new(),
            votes: BTreeMap::new(),
            chosen_by_votes: BTreeMap::new(),
            watched_slot: std::env::var("PAXOS_SIM_WATCH_SLOT").ok().and_then(|v| v.parse().ok()),
        }
    }

    pub fn on_propose(&mut self, request_id: RequestId, payload: &[u8]) {
        self.proposed.insert(request_id, payload.to_vec());
    }

    pub fn on_propose_hostile(&mut self, request_id: RequestId, payload: &[u8]) {
        self.hostile.insert((request_id, payload.to_vec()));
    }

    pub fn on_register(&mut self, nonce: u64, payload: &[u8]) {
        self.registrations.insert(nonce, payload.to_vec());
    }

    /// Promise monotonicity: an acceptor's answers never go below a ballot it answered before,
    /// crash or no crash.
    pub fn on_send(&mut self, envelope: &Envelope) -> Result<(), String> {
        let ballot = match &envelope.message {
            Message::Promise { ballot, .. } | Message::Accepted { ballot, .. } => *ballot,
            _ => return Ok(()),
        };
        let highest = self.answered.entry((envelope.from, envelope.incarnation)).or_default();
        if ballot < *highest {
            return Err(format!(
                "promise broken: node {} answered ballot {ballot} after answering {highest}: {:?}",
                envelope.from, envelope.message
            ));
        }
        *highest = ballot;
        Ok(())
    }

    /// The configuration that governs `slot`, once every slot below it is known.
    pub fn config_at(&self, slot: Slot) -> Option<&Membership> {
        if slot > self.contiguous_upto {
            return None;
        }
        Some(self.configs.range(..slot).next_back().map_or(&self.initial, |(_, m)| m))
    }

    /// The first configuration entry applied (the binding one, in a run that bootstraps).
    pub fn first_config(&self) -> Option<&Membership> {
        self.configs.values().next()
    }

    pub fn initial_config(&self) -> &Membership {
        &self.initial
    }

    pub fn configs_applied(&self) -> usize {
        self.configs.len()
    }

    /// The latest configuration applied anywhere.
    pub fn latest_config(&self) -> &Membership {
        self.configs.values().next_back().unwrap_or(&self.initial)
    }

    /// Whether the votes at `slot` in `ballot` are a quorum of the configuration that governs
    /// the slot (counting only the incarnation it admits). `None`: not known yet.
    fn is_quorum(&self, slot: Slot, voters: &Voters) -> Option<bool> {
        let config = self.config_at(slot)?;
        let counted: BTreeSet<NodeId> = voters
            .iter()
            .filter(|(node, incarnation)| config.counts_vote(*node, *incarnation))
            .map(|(node, _)| *node)
            .collect();
        Some(counted.len() >= config.quorum())
    }

    /// Checks every slot whose votes form a quorum of its configuration (known once the
    /// history below is): one value per slot, and the applied one.
    pub fn check_votes(&mut self) -> Result<(), String> {
        let keys: Vec<(Slot, Ballot)> = self.votes.keys().copied().collect();
        for (slot, ballot) in keys {
            self.check_chosen(slot, ballot)?;
        }
        Ok(())
    }

    fn check_chosen(&mut self, slot: Slot, ballot: Ballot) -> Result<(), String> {
        let Some((value, voters)) = self.votes.get(&(slot, ballot)) else {
            return Ok(());
        };
        if self.is_quorum(slot, voters) != Some(true) {
            return Ok(());
        }
        let value = value.clone();
        match self.chosen_by_votes.get(&slot) {
            Some((other_ballot, other)) if *other != value => Err(format!(
                "agreement (votes): slot {slot} chosen as {other:?} in ballot {other_ballot} and as {value:?} in \
                 ballot {ballot}"
            )),
            Some(_) => Ok(()),
            None => {
                self.chosen_by_votes.insert(slot, (ballot, value));
                self.check_applied_matches_votes(slot)
            }
        }
    }

    /// A node (incarnation) durably accepted `value` at `slot` in `ballot`.
    pub fn on_vote(
        &mut self,
        node: NodeId,
        incarnation: Incarnation,
        slot: Slot,
        ballot: Ballot,
        value: &Value,
    ) -> Result<(), String> {
        let (voted, voters) =
            self.votes.entry((slot, ballot)).or_insert_with(|| (value.clone(), BTreeSet::new()));
        if voted != value {
            return Err(format!(
                "two values in one ballot: slot {slot} ballot {ballot}: {voted:?} and {value:?} (node {node})"
            ));
        }
        voters.insert((node, incarnation));
        self.check_chosen(slot, ballot)
    }

    /// What a node applied at a slot is what a majority voted for there (or its deduplicated
    /// form: a no-op standing for a command).
    fn check_applied_matches_votes(&self, slot: Slot) -> Result<(), String> {
        let (Some((ballot, chosen)), Some(applied)) =
            (self.chosen_by_votes.get(&slot), self.history.get(&slot))
        else {
            return Ok(());
        };
        let matches = applied == chosen
            || (*applied == Value::Noop && matches!(chosen, Value::Command { .. } | Value::Register { .. }));
        if matches {
            Ok(())
        } else {
            Err(format!("agreement (votes): slot {slot} applied as {applied:?}, chosen as {chosen:?} in ballot {ballot}"))
        }
    }

    pub fn on_apply(&mut self, node: NodeId, slot: Slot, value: &Value) -> Result<(), String> {
        if self.watched_slot == Some(slot) {
            eprintln!("slot {slot}: node {node} applies {value:?}");
        }
        match value {
            Value::Command { request_id, key, payload } => {
                if self.hostile.contains(&(*request_id, payload.clone())) {
                    return Err(format!(
                        "takeover: node {node} applied a hostile client's {value:?} at {slot}"
                    ));
                }
                match self.proposed.get(request_id) {
                    Some(proposed) if proposed == payload => {}
                    _ => {
                        return Err(format!(
                            "validity: node {node} applied {value:?} at {slot}, never proposed"
                        ))
                    }
                }
                // A session's commands carry the key it was registered with.
                if let Some(Value::Register { key: registered, .. }) = self.history.get(&request_id.client_id)
                {
                    if registered != key {
                        return Err(format!(
                            "takeover: node {node} applied {value:?} at {slot} without its session's key"
                        ));
                    }
                }
            }
            Value::Register { nonce, payload, .. } if self.registrations.get(nonce) != Some(payload) => {
                return Err(format!("validity: node {node} applied {value:?} at {slot}, never asked for"));
            }
            _ => {}
        }
        match self.history.get(&slot) {
            Some(existing) if existing != value => {
                return Err(format!(
                    "agreement: node {node} applied {value:?} at slot {slot}, others {existing:?}"
                ));
            }
            Some(_) => {}
            None => {
                // A registration's request id is its nonce's: its value, too, is in the log
                // at most once.
                if let Some(request_id) = value.request_id() {
                    if let Some(other) = self.request_slots.insert(request_id, slot) {
                        return Err(format!("exactly-once: {request_id} chosen at slots {other} and {slot}"));
                    }
                }
                self.history.insert(slot, value.clone());
                if let Value::Config(next) = value {
                    self.configs.insert(slot, Membership { chosen_at: Some(slot), ..next.clone() });
                }
                while self.history.contains_key(&self.contiguous_upto) {
                    self.contiguous_upto += 1;
                }
                self.check_applied_matches_votes(slot)?;
            }
        }
        if let Value::Command { request_id, .. } = value {
            if let Some(acked) = self.acknowledged.get(request_id) {
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
        if self.watched_slot == Some(slot) {
            eprintln!("slot {slot}: {request_id} acknowledged");
        }
        if let Some(previous) = self.acknowledged.insert(request_id, slot) {
            if previous != slot {
                return Err(format!("exactly-once: {request_id} acknowledged at {previous} and at {slot}"));
            }
        }
        match self.history.get(&slot) {
            Some(Value::Command { request_id: at_slot, payload, .. })
                if *at_slot == request_id && self.proposed.get(&request_id) == Some(payload) =>
            {
                Ok(())
            }
            Some(other) => {
                Err(format!("durability: {request_id} acknowledged at {slot}, which holds {other:?}"))
            }
            // The answering node applied it; no node may have reported it to the checker yet
            // only if the reply raced the apply, which the driver order rules out.
            None => Err(format!("acknowledged {request_id} at {slot} before any node applied it")),
        }
    }

    /// A registration was answered: its slot must hold it.
    pub fn on_registered(&mut self, nonce: u64, slot: Slot) -> Result<(), String> {
        self.registration_acknowledged_max = self.registration_acknowledged_max.max(Some(slot));
        match self.history.get(&slot) {
            Some(Value::Register { nonce: at_slot, .. }) if *at_slot == nonce => Ok(()),
            other => Err(format!("registration {nonce:x} answered with slot {slot}, which holds {other:?}")),
        }
    }

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
            for slot in storage.truncation.history_start..storage.applied_upto {
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

    /// The highest slot acknowledged to any client so far (commands and registrations).
    pub fn max_acknowledged_slot(&self) -> Option<Slot> {
        self.acknowledged.values().copied().max().max(self.registration_acknowledged_max)
    }
}
