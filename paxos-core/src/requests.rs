//! The table of recent request ids per client: what makes a retried request land in the log once.

use crate::types::{Digest, RequestId, Slot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Outcome of looking a request id up in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The session is open and this request was never applied: it may be chosen.
    New,
    /// Already applied at this slot, with the same payload.
    AppliedAt(Slot),
    /// Already applied at this slot with a different payload: the request id was reused.
    Reused(Slot),
    /// The request does not carry the key its session was opened with.
    WrongKey,
    /// Older than the window the table keeps for this session: it cannot tell.
    Expired,
    /// The session is not in the table: never opened, or evicted. Nothing can be told about
    /// its requests, so none is applied.
    SessionUnknown,
}

/// A change to the table, for the storage layer to mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableChange {
    /// `digest`: the session's key for a registration record (seq 0), else the payload's.
    Insert {
        request_id: RequestId,
        slot: Slot,
        digest: Digest,
    },
    Remove {
        request_id: RequestId,
    },
}

/// The client sessions and their recent request ids, derived from the history in slot order:
/// what makes a retried request land in the log at most once.
///
/// A session is opened by a `Register` entry; its client id is that entry's slot. Every replica
/// that applies the same history from the same table gets the same table, so deduplication
/// decisions (which become part of the history) agree everywhere.
///
/// # Correctness
/// A request is applied only if its session is in the table and its seq is neither recorded
/// nor below the session's window. A session that was evicted is gone for good (its id, a
/// slot, is never opened again), so a late retry from it is refused, never mistaken for new.
///
/// Bounded: per session it keeps the `seqs_per_client_max` highest sequence numbers; a request
/// below that window is `Expired`. At most `clients_max` sessions are kept; opening one past
/// that evicts the session whose last activity (slot) is oldest.
///
/// A request is applied only if it carries its session's key (the digest of the secret the
/// registering client chose), and a request id found in the table is a duplicate only if its
/// payload has the digest kept for it: the answer for one value is never given to another.
///
/// Persisted as `(request id, slot, digest)` records; a session's registration is the record
/// with seq 0 and the session's key (clients number their requests from 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RequestTable {
    clients: HashMap<u64, ClientRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
struct ClientRecord {
    /// The digest of the session's secret: every request of the session carries it.
    key: Digest,
    /// seq -> slot at which it was applied and the payload's digest (seq >= 1).
    seqs: BTreeMap<u64, (Slot, Digest)>,
    /// Highest slot of the registration or any request of this session: orders eviction.
    last_slot: Slot,
}

/// Limits of the request table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableLimits {
    pub clients_max: usize,
    pub seqs_per_client_max: usize,
}

/// The seq of the record that stands for a session's registration.
const REGISTRATION_SEQ: u64 = 0;

impl RequestTable {
    /// What the table says of `request_id` carrying session key `key` and a payload whose
    /// digest is `digest`. The key is checked first: a request that does not carry it learns
    /// nothing of the session's requests.
    pub fn lookup(&self, request_id: RequestId, key: Digest, digest: Digest, limits: TableLimits) -> Lookup {
        let Some(record) = self.clients.get(&request_id.client_id) else {
            return Lookup::SessionUnknown;
        };
        if record.key != key {
            return Lookup::WrongKey;
        }
        if request_id.seq == REGISTRATION_SEQ {
            return Lookup::Expired;
        }
        if let Some((slot, applied)) = record.seqs.get(&request_id.seq) {
            return if *applied == digest { Lookup::AppliedAt(*slot) } else { Lookup::Reused(*slot) };
        }
        let full = record.seqs.len() >= limits.seqs_per_client_max;
        match record.seqs.keys().next() {
            Some(&lowest) if full && request_id.seq < lowest => Lookup::Expired,
            _ => Lookup::New,
        }
    }

    /// Whether `client_id` names an open session.
    pub fn has_session(&self, client_id: u64) -> bool {
        self.clients.contains_key(&client_id)
    }

    /// The key session `client_id` was opened with, if it is open.
    pub fn session_key(&self, client_id: u64) -> Option<Digest> {
        self.clients.get(&client_id).map(|record| record.key)
    }

    /// Opens the session registered at `slot` (its client id is `slot`) with session key `key`,
    /// evicting the least recently active session if the table is full; returns the changes to
    /// persist.
    pub fn open_session(&mut self, slot: Slot, key: Digest, limits: TableLimits) -> Vec<TableChange> {
        let mut changes = Vec::new();
        assert!(!self.clients.contains_key(&slot), "session {slot} opened twice");
        if self.clients.len() >= limits.clients_max {
            // Deterministic choice: lowest last_slot, ties broken by client id.
            let victim = self
                .clients
                .iter()
                .min_by_key(|(client_id, record)| (record.last_slot, **client_id))
                .map(|(client_id, _)| *client_id);
            if let Some(victim) = victim {
                if let Some(record) = self.clients.remove(&victim) {
                    changes.push(TableChange::Remove {
                        request_id: RequestId { client_id: victim, seq: REGISTRATION_SEQ },
                    });
                    changes.extend(record.seqs.keys().map(|seq| TableChange::Remove {
                        request_id: RequestId { client_id: victim, seq: *seq },
                    }));
                }
            }
        }
        self.clients.insert(slot, ClientRecord { key, seqs: BTreeMap::new(), last_slot: slot });
        changes.push(TableChange::Insert {
            request_id: RequestId { client_id: slot, seq: REGISTRATION_SEQ },
            slot,
            digest: key,
        });
        changes
    }

    /// Records `request_id` as applied at `slot` with a payload of digest `digest`; returns the
    /// changes to persist.
    ///
    /// # Correctness
    /// Callers apply slots in increasing order and only after `lookup` returned `New`.
    pub fn insert(
        &mut self,
        request_id: RequestId,
        slot: Slot,
        digest: Digest,
        limits: TableLimits,
    ) -> Vec<TableChange> {
        let mut changes = Vec::new();
        let Some(record) = self.clients.get_mut(&request_id.client_id) else {
            panic!("insert for {request_id} without a session: lookup said New");
        };
        assert_ne!(request_id.seq, REGISTRATION_SEQ, "seq 0 is the registration record");
        record.seqs.insert(request_id.seq, (slot, digest));
        record.last_slot = record.last_slot.max(slot);
        changes.push(TableChange::Insert { request_id, slot, digest });
        while record.seqs.len() > limits.seqs_per_client_max {
            if let Some((seq, _)) = record.seqs.pop_first() {
                changes.push(TableChange::Remove {
                    request_id: RequestId { client_id: request_id.client_id, seq },
                });
            }
        }
        changes
    }

    /// Rebuilds the table from persisted `(request id, slot, digest)` records.
    pub fn from_records(records: impl IntoIterator<Item = (RequestId, Slot, Digest)>) -> Self {
        let mut table = RequestTable::default();
        for (request_id, slot, digest) in records {
            let record = table.clients.entry(request_id.client_id).or_default();
            if request_id.seq == REGISTRATION_SEQ {
                record.key = digest;
            } else {
                record.seqs.insert(request_id.seq, (slot, digest));
            }
            record.last_slot = record.last_slot.max(slot);
        }
        table
    }

    /// Every `(request id, slot, digest)` record, for persisting a whole table.
    pub fn records(&self) -> Vec<(RequestId, Slot, Digest)> {
        let mut records: Vec<_> = self
            .clients
            .iter()
            .flat_map(|(client_id, record)| {
                let registration =
                    (RequestId { client_id: *client_id, seq: REGISTRATION_SEQ }, *client_id, record.key);
                std::iter::once(registration).chain(record.seqs.iter().map(|(seq, (slot, digest))| {
                    (RequestId { client_id: *client_id, seq: *seq }, *slot, *digest)
                }))
            })
            .collect();
        records.sort();
        records
    }

    /// Request records held (registrations not counted).
    pub fn len(&self) -> usize {
        self.clients.values().map(|record| record.seqs.len()).sum()
    }

    /// Open sessions.
    pub fn sessions(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: TableLimits = TableLimits { clients_max: 2, seqs_per_client_max: 3 };

    const KEY: Digest = [7; 16];
    const D: Digest = [1; 16];

    fn rid(client_id: u64, seq: u64) -> RequestId {
        RequestId { client_id, seq }
    }

    fn look(table: &RequestTable, request_id: RequestId) -> Lookup {
        table.lookup(request_id, KEY, D, LIMITS)
    }

    #[test]
    fn remembers_applied_requests_and_their_slot() {
        let mut table = RequestTable::default();
        table.open_session(1, KEY, LIMITS);
        assert_eq!(look(&table, rid(1, 1)), Lookup::New);
        table.insert(rid(1, 1), 10, D, LIMITS);
        assert_eq!(look(&table, rid(1, 1)), Lookup::AppliedAt(10));
        assert_eq!(look(&table, rid(1, 2)), Lookup::New);
    }

    #[test]
    fn requests_of_unregistered_sessions_are_refused() {
        let table = RequestTable::default();
        assert_eq!(look(&table, rid(7, 1)), Lookup::SessionUnknown);
    }

    #[test]
    fn requests_below_the_window_are_expired_not_new() {
        let mut table = RequestTable::default();
        table.open_session(1, KEY, LIMITS);
        for seq in 5..=8 {
            table.insert(rid(1, seq), seq + 1, D, LIMITS);
        }
        assert_eq!(look(&table, rid(1, 5)), Lookup::Expired);
        assert_eq!(look(&table, rid(1, 4)), Lookup::Expired);
        assert_eq!(look(&table, rid(1, 6)), Lookup::AppliedAt(7));
        // Out-of-order arrivals above the lowest kept seq are still new.
        assert_eq!(look(&table, rid(1, 9)), Lookup::New);
    }

    #[test]
    fn an_evicted_session_is_refused_not_new() {
        let mut table = RequestTable::default();
        table.open_session(1, KEY, LIMITS);
        table.insert(rid(1, 1), 2, D, LIMITS);
        table.open_session(3, KEY, LIMITS);
        let changes = table.open_session(4, KEY, LIMITS);
        assert!(changes.contains(&TableChange::Remove { request_id: rid(1, 0) }));
        assert!(changes.contains(&TableChange::Remove { request_id: rid(1, 1) }));
        // The late retry of an evicted session must not look new: it may have been applied.
        assert_eq!(look(&table, rid(1, 1)), Lookup::SessionUnknown);
        assert_eq!(look(&table, rid(3, 1)), Lookup::New);
    }

    /// A request without its session's key learns nothing, and a request id applied with one
    /// payload is never a duplicate of another payload.
    #[test]
    fn a_wrong_key_or_another_payload_is_never_a_duplicate() {
        let mut table = RequestTable::default();
        table.open_session(1, KEY, LIMITS);
        table.insert(rid(1, 1), 5, D, LIMITS);
        assert_eq!(table.lookup(rid(1, 1), [8; 16], D, LIMITS), Lookup::WrongKey);
        assert_eq!(table.lookup(rid(1, 2), [8; 16], D, LIMITS), Lookup::WrongKey);
        assert_eq!(table.lookup(rid(1, 1), KEY, [2; 16], LIMITS), Lookup::Reused(5));
        assert_eq!(table.lookup(rid(1, 1), KEY, D, LIMITS), Lookup::AppliedAt(5));
        assert_eq!(table.session_key(1), Some(KEY));
    }

    #[test]
    fn round_trips_through_records() {
        let mut table = RequestTable::default();
        table.open_session(1, KEY, LIMITS);
        table.insert(rid(1, 1), 1, D, LIMITS);
        table.open_session(2, KEY, LIMITS);
        table.insert(rid(2, 7), 3, D, LIMITS);
        assert_eq!(RequestTable::from_records(table.records()), table);
    }
}
