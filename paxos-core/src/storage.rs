//! The reference meaning of [`PersistOp`]s: an in-memory store that the simulation uses as its
//! "disk" and that durable stores (RocksDB in paxos-node) must behave like.

use crate::membership::Membership;
use crate::message::TruncationSnapshot;
use crate::ready::{DurableState, PersistOp};
use crate::requests::RequestTable;
use crate::types::{Ballot, RequestId, Slot};
use crate::value::Value;
use std::collections::BTreeMap;

/// An in-memory store with the exact semantics of every [`PersistOp`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemStorage {
    pub promised: Ballot,
    pub accepted: BTreeMap<Slot, (Ballot, Value)>,
    pub history: BTreeMap<Slot, Value>,
    pub applied_upto: Slot,
    pub truncation: TruncationSnapshot,
    pub requests: BTreeMap<RequestId, (Slot, crate::Digest)>,
    pub membership: Option<Membership>,
    /// The role the directory was first started with (a driver keeps it beside the incarnation).
    pub role: Option<crate::membership::MemberRole>,
}

impl MemStorage {
    /// Applies one batch, as one atomic write.
    pub fn apply(&mut self, batch: &[PersistOp]) {
        for op in batch {
            match op {
                PersistOp::Promise(ballot) => {
                    assert!(*ballot >= self.promised, "promise went down: {} -> {ballot}", self.promised);
                    self.promised = *ballot;
                }
                PersistOp::Accept { slot, ballot, value } => {
                    assert!(
                        *slot >= self.applied_upto,
                        "accepting at slot {slot}, below the applied prefix {}",
                        self.applied_upto
                    );
                    self.accepted.insert(*slot, (*ballot, value.clone()));
                }
                PersistOp::Apply { slot, value } => {
                    self.history.insert(*slot, value.clone());
                }
                PersistOp::ApplyAccepted { slot } => {
                    // What a store that keeps the value once does: the entry is the record.
                    let (_, value) = self.accepted.get(slot).unwrap_or_else(|| {
                        panic!("slot {slot} applied as accepted, but no value is accepted there")
                    });
                    self.history.insert(*slot, value.clone());
                }
                PersistOp::AppliedUpto(slot) => self.applied_upto = *slot,
                PersistOp::RequestInsert { request_id, slot, digest } => {
                    self.requests.insert(*request_id, (*slot, *digest));
                }
                PersistOp::RequestRemove { request_id } => {
                    self.requests.remove(request_id);
                }
                PersistOp::DeleteAcceptedBelow(slot) => {
                    // Only applied slots' records: a store that keeps each value once (RocksDB's
                    // `log`) keeps them as the history entries.
                    assert!(
                        *slot <= self.applied_upto,
                        "forgetting accepted values above the applied prefix"
                    );
                    self.accepted = self.accepted.split_off(slot);
                }
                PersistOp::Truncate(snapshot) => {
                    self.history = self.history.split_off(&snapshot.history_start);
                    self.accepted = self.accepted.split_off(&snapshot.history_start);
                    self.truncation = snapshot.clone();
                }
                PersistOp::InstallSnapshot(snapshot) => {
                    // Above the applied prefix, so every history entry is below its start.
                    assert!(
                        snapshot.history_start > self.applied_upto,
                        "a snapshot below the applied prefix"
                    );
                    self.history.clear();
                    self.accepted = self.accepted.split_off(&snapshot.history_start);
                    self.applied_upto = snapshot.history_start;
                    self.requests =
                        snapshot.requests.records().into_iter().map(|(r, s, d)| (r, (s, d))).collect();
                    if snapshot.membership.is_some() {
                        self.membership = snapshot.membership.clone();
                    }
                    self.truncation = snapshot.clone();
                }
                PersistOp::Membership(membership) => self.membership = Some(membership.clone()),
            }
        }
    }

    /// What a replica recovers from.
    pub fn durable_state(&self) -> DurableState {
        DurableState {
            promised: self.promised,
            // A record below the applied prefix is redundant (the entry is in the history), and
            // a store that keeps each value once holds it as the entry, not as accepted.
            accepted: self.accepted.range(self.applied_upto..).map(|(s, r)| (*s, r.clone())).collect(),
            applied_upto: self.applied_upto,
            truncation: self.truncation.clone(),
            requests: RequestTable::from_records(self.requests.iter().map(|(r, (s, d))| (*r, *s, *d))),
            membership: self.membership.clone(),
            role: self.role,
        }
    }

    /// A store whose cluster was bootstrapped already, binding member `id` to incarnation `id`
    /// (what `Config::new` gives each replica): for tests that start from a bound cluster.
    pub fn bootstrapped(members: &[crate::types::NodeId]) -> Self {
        MemStorage { membership: Some(Membership::bound(members, |id| id)), ..MemStorage::default() }
    }

    /// Reads applied history in `[from_slot, upto_slot)`, bounded by count and bytes (at least
    /// one entry when any is there).
    pub fn read_history(
        &self,
        from_slot: Slot,
        upto_slot: Slot,
        entries_max: usize,
        bytes_max: usize,
    ) -> Vec<(Slot, Value)> {
        let mut entries = Vec::new();
        let mut bytes = 0;
        for (slot, value) in self.history.range(from_slot..upto_slot) {
            if !crate::page_has_room(entries.len(), bytes, value.size_bytes(), entries_max, bytes_max) {
                break;
            }
            bytes += value.size_bytes();
            entries.push((*slot, value.clone()));
        }
        entries
    }
}
