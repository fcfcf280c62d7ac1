//! The simulated network: delays (and so reorders), loses, duplicates and partitions messages.

use super::Faults;
use paxos_core::{Envelope, NodeId, Rng};
use std::collections::BTreeSet;

pub struct Network {
    faults: Faults,
    /// (deliver at tick, sequence number for a stable order, message)
    in_flight: Vec<(u64, u64, Envelope)>,
    sequence: u64,
    /// Nodes on one side of the current partition, and when it heals.
    partition: Option<(BTreeSet<NodeId>, u64)>,
    healed: bool,
}

impl Network {
    pub fn new(faults: Faults) -> Self {
        Network { faults, in_flight: Vec::new(), sequence: 0, partition: None, healed: false }
    }

    pub fn send(&mut self, envelope: Envelope, now: u64, rng: &mut Rng) {
        if !self.healed && rng.chance(self.faults.loss_per_mille, 1000) {
            return;
        }
        let copies = if !self.healed && rng.chance(self.faults.duplicate_per_mille, 1000) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = rng.range(1, self.faults.delay_ticks_max + 1);
            self.sequence += 1;
            self.in_flight.push((now + delay, self.sequence, envelope.clone()));
        }
    }

    /// Messages due at `now`, shuffled; messages across a partition are dropped.
    pub fn deliver_due(&mut self, now: u64, rng: &mut Rng) -> Vec<Envelope> {
        if let Some((_, until)) = &self.partition {
            if *until <= now {
                self.partition = None;
            }
        }
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
            .filter(|envelope| !self.cut(envelope.from, envelope.to))
            .collect();
        // Fisher-Yates with the seeded generator: reordering within a tick.
        for i in (1..envelopes.len()).rev() {
            let j = rng.range(0, i as u64 + 1) as usize;
            envelopes.swap(i, j);
        }
        envelopes
    }

    fn cut(&self, a: NodeId, b: NodeId) -> bool {
        match &self.partition {
            Some((side, _)) => side.contains(&a) != side.contains(&b),
            None => false,
        }
    }

    pub fn partition(&mut self, side: Vec<NodeId>, until: u64) {
        self.partition = Some((side.into_iter().collect(), until));
    }

    /// No more loss, duplication or partitions; delays stay (bounded).
    pub fn heal(&mut self) {
        self.healed = true;
        self.partition = None;
    }
}
