//! The table of recent request ids per client: what makes a retried request land in the log once.

use crate::types::{RequestId, Slot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Outcome of looking a request id up in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Never applied (as far as the table can tell): the request may be chosen.
    New,
    /// Already applied at this slot.
    AppliedAt(Slot),
    /// Older than the window the table keeps for this client: it cannot tell.
    Expired,
}

/// A change to the table, for the storage layer to mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableChange {
    Insert { request_id: RequestId, slot: Slot },
    Remove { request_id: RequestId },
}

/// Recent request ids per client, derived from the history in slot order.
///
/// Every replica that applies the same history from the same table gets the same table, so
/// deduplication decisions (which become part of the history) agree everywhere.
///
/// Bounded: per client it keeps the `seqs_per_client_max` highest sequence numbers; a request
/// below that window is `Expired`. At most `clients_max` clients are kept; when a new client
/// arrives past that, the client whose last request is oldest (lowest slot) is forgotten.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RequestTable {
    clients: HashMap<u64, ClientRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
struct ClientRecord {
    /// seq -> slot at which it was applied.
    seqs: BTreeMap<u64, Slot>,
    /// Highest slot of any request of this client: orders clients for eviction.
    last_slot: Slot,
}

/// Limits of the request table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableLimits {
    pub clients_max: usize,
    pub seqs_per_client_max: usize,
}

impl RequestTable {
    pub fn lookup(&self, request_id: RequestId, limits: TableLimits) -> Lookup {
        let Some(record) = self.clients.get(&request_id.client_id) else {
            return Lookup::New;
        };
        if let Some(slot) = record.seqs.get(&request_id.seq) {
            return Lookup::AppliedAt(*slot);
        }
        let full = record.seqs.len() >= limits.seqs_per_client_max;
        match record.seqs.keys().next() {
            Some(&lowest) if full && request_id.seq < lowest => Lookup::Expired,
            _ => Lookup::New,
        }
    }

    /// Records `request_id` as applied at `slot`; returns the changes to persist.
    ///
    /// # Correctness
    /// Callers apply slots in increasing order and only after `lookup` returned `New`.
    pub fn insert(&mut self, request_id: RequestId, slot: Slot, limits: TableLimits) -> Vec<TableChange> {
        let mut changes = Vec::new();
        if !self.clients.contains_key(&request_id.client_id) && self.clients.len() >= limits.clients_max {
            // Deterministic choice: lowest last_slot, ties broken by client id.
            let victim = self
                .clients
                .iter()
                .min_by_key(|(client_id, record)| (record.last_slot, **client_id))
                .map(|(client_id, _)| *client_id);
            if let Some(victim) = victim {
                if let Some(record) = self.clients.remove(&victim) {
                    changes.extend(record.seqs.keys().map(|seq| TableChange::Remove {
                        request_id: RequestId { client_id: victim, seq: *seq },
                    }));
                }
            }
        }
        let record = self.clients.entry(request_id.client_id).or_default();
        record.seqs.insert(request_id.seq, slot);
        record.last_slot = record.last_slot.max(slot);
        changes.push(TableChange::Insert { request_id, slot });
        while record.seqs.len() > limits.seqs_per_client_max {
            if let Some((seq, _)) = record.seqs.pop_first() {
                changes.push(TableChange::Remove {
                    request_id: RequestId { client_id: request_id.client_id, seq },
                });
            }
        }
        changes
    }

    /// Rebuilds the table from persisted `(request id, slot)` records.
    pub fn from_records(records: impl IntoIterator<Item = (RequestId, Slot)>) -> Self {
        let mut table = RequestTable::default();
        for (request_id, slot) in records {
            let record = table.clients.entry(request_id.client_id).or_default();
            record.seqs.insert(request_id.seq, slot);
            record.last_slot = record.last_slot.max(slot);
        }
        table
    }

    /// Every `(request id, slot)` record, for persisting a whole table.
    pub fn records(&self) -> Vec<(RequestId, Slot)> {
        let mut records: Vec<_> = self
            .clients
            .iter()
            .flat_map(|(client_id, record)| {
                record.seqs.iter().map(|(seq, slot)| (RequestId { client_id: *client_id, seq: *seq }, *slot))
            })
            .collect();
        records.sort();
        records
    }

    pub fn len(&self) -> usize {
        self.clients.values().map(|record| record.seqs.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: TableLimits = TableLimits { clients_max: 2, seqs_per_client_max: 3 };

    fn rid(client_id: u64, seq: u64) -> RequestId {
        RequestId { client_id, seq }
    }

    #[test]
    fn remembers_applied_requests_and_their_slot() {
        let mut table = RequestTable::default();
        assert_eq!(table.lookup(rid(1, 1), LIMITS), Lookup::New);
        table.insert(rid(1, 1), 10, LIMITS);
        assert_eq!(table.lookup(rid(1, 1), LIMITS), Lookup::AppliedAt(10));
        assert_eq!(table.lookup(rid(1, 2), LIMITS), Lookup::New);
    }

    #[test]
    fn requests_below_the_window_are_expired_not_new() {
        let mut table = RequestTable::default();
        for seq in 5..=8 {
            table.insert(rid(1, seq), seq, LIMITS);
        }
        assert_eq!(table.lookup(rid(1, 5), LIMITS), Lookup::Expired);
        assert_eq!(table.lookup(rid(1, 4), LIMITS), Lookup::Expired);
        assert_eq!(table.lookup(rid(1, 6), LIMITS), Lookup::AppliedAt(6));
        // Out-of-order arrivals above the lowest kept seq are still new.
        assert_eq!(table.lookup(rid(1, 9), LIMITS), Lookup::New);
    }

    #[test]
    fn evicts_the_least_recent_client_and_reports_changes() {
        let mut table = RequestTable::default();
        table.insert(rid(1, 1), 1, LIMITS);
        table.insert(rid(2, 1), 2, LIMITS);
        let changes = table.insert(rid(3, 1), 3, LIMITS);
        assert!(changes.contains(&TableChange::Remove { request_id: rid(1, 1) }));
        assert_eq!(table.lookup(rid(1, 1), LIMITS), Lookup::New);
        assert_eq!(table.lookup(rid(2, 1), LIMITS), Lookup::AppliedAt(2));
    }

    #[test]
    fn round_trips_through_records() {
        let mut table = RequestTable::default();
        table.insert(rid(1, 1), 1, LIMITS);
        table.insert(rid(2, 7), 2, LIMITS);
        assert_eq!(RequestTable::from_records(table.records()), table);
    }
}
