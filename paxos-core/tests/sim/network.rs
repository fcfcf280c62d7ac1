//! The simulated network: delays (and so reorders), loses, duplicates and cuts messages.
//!
//! Cuts are per directed link, so a fault can be one-way (a hears b, b does not hear a), a clean
//! split, or non-transitive (a bridge node hears both sides of a split that cannot hear each
//! other). Links can also be slow for a while.

use super::Faults;
use paxos_core::{Envelope, NodeId, Rng};
use std::collections::BTreeMap;

pub struct Network {
    faults: Faults,
    /// (deliver at tick, sequence number for a stable order, message)
    in_flight: Vec<(u64, u64, Envelope)>,
    sequence: u64,
    /// Directed links that lose everything until the given tick.
    cut_until: BTreeMap<(NodeId, NodeId), u64>,
    /// Directed links that add `extra` ticks of delay until the given tick: (extra, until).
    slow_until: BTreeMap<(NodeId, NodeId), (u64, u64)>,
    /// Directed links cut until further notice (a partial fault held still, see
    /// `liveness.rs`); healing does not lift them.
    static_cuts: std::collections::BTreeSet<(NodeId, NodeId)>,
    healed: bool,
}

impl Network {
    pub fn new(faults: Faults) -> Self {
        Network {
            faults,
            in_flight: Vec::new(),
            sequence: 0,
            cut_until: BTreeMap::new(),
            slow_until: BTreeMap::new(),
            static_cuts: Default::default(),
            healed: false,
        }
    }

    /// Messages sent and not yet delivered or dropped.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn send(&mut self, envelope: Envelope, now: u64, rng: &mut Rng) {
        if !self.healed && rng.chance(self.faults.loss_per_mille, 1000) {
            return;
        }
        let copies = if !self.healed && rng.chance(self.faults.duplicate_per_mille, 1000) { 2 } else { 1 };
        let slow = match self.slow_until.get(&(envelope.from, envelope.to)) {
            Some((extra, until)) if *until > now => *extra,
            _ => 0,
        };
        for copy in 0..copies {
            let mut delay = rng.range(1, self.faults.delay_ticks_max + 1) + slow;
            if copy > 0 && self.faults.late_duplicates {
                // A duplicate that surfaces long after the original (a retransmission stuck in
                // some queue): old ballots, old catch-up answers, old forwards.
                delay += rng.range(0, 300);
            }
            self.sequence += 1;
            self.in_flight.push((now + delay, self.sequence, envelope.clone()));
        }
    }

    /// Messages due at `now`, shuffled; messages on a cut link are dropped.
    pub fn deliver_due(&mut self, now: u64, rng: &mut Rng) -> Vec<Envelope> {
        self.cut_until.retain(|_, until| *until > now);
        self.slow_until.retain(|_, (_, until)| *until > now);
        let mut due = Vec::new();
        let mut index = 0;
        while index < self.in_flight.len() {
            if self.in_flight[index].0 <= now {
                due.push(self.in_flight.swap_remove(index));
            } else {
                index += 1;
            }
        }
        due.sort_by_key(|(at, sequence, _)| (*at, *sequence));
        let mut envelopes: Vec<Envelope> = due
            .into_iter()
            .map(|(_, _, envelope)| envelope)
            .filter(|envelope| {
                let link = (envelope.from, envelope.to);
                !self.cut_until.contains_key(&link) && !self.static_cuts.contains(&link)
            })
            .collect();
        // Fisher-Yates with the seeded generator: reordering within a tick.
        for i in (1..envelopes.len()).rev() {
            let j = rng.range(0, i as u64 + 1) as usize;
            envelopes.swap(i, j);
        }
        envelopes
    }

    /// Puts a message back to be delivered at `at` (its receiver is paused).
    pub fn requeue(&mut self, envelope: Envelope, at: u64) {
        self.sequence += 1;
        self.in_flight.push((at, self.sequence, envelope));
    }

    /// Cuts the directed link `from -> to` until `until`.
    pub fn cut(&mut self, from: NodeId, to: NodeId, until: u64) {
        let entry = self.cut_until.entry((from, to)).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// A clean split: nobody in `side` hears anybody outside it, and the other way round.
    pub fn partition(&mut self, members: &[NodeId], side: &[NodeId], until: u64) {
        for a in members.iter().filter(|id| side.contains(id)) {
            for b in members.iter().filter(|id| !side.contains(id)) {
                self.cut(*a, *b, until);
                self.cut(*b, *a, until);
            }
        }
    }

    /// A non-transitive split: `left` and `right` cannot hear each other, `bridge` hears and
    /// is heard by both (so it may keep two leaders' views alive at once).
    pub fn bridge(&mut self, left: &[NodeId], right: &[NodeId], until: u64) {
        for a in left {
            for b in right {
                self.cut(*a, *b, until);
                self.cut(*b, *a, until);
            }
        }
    }

    /// Replaces the set of directed links cut until further notice.
    pub fn set_static_cuts(&mut self, links: std::collections::BTreeSet<(NodeId, NodeId)>) {
        self.static_cuts = links;
    }

    pub fn slow(&mut self, from: NodeId, to: NodeId, extra_ticks: u64, until: u64) {
        self.slow_until.insert((from, to), (extra_ticks, until));
    }

    /// No more loss, duplication, cuts or slow links; delays stay (bounded).
    pub fn heal(&mut self) {
        self.healed = true;
        self.cut_until.clear();
        self.slow_until.clear();
    }
}
