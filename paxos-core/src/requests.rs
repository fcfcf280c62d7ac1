//! The table of recent request ids per client: what makes a retried request land in the log once.

use crate::seq_window::SeqWindow;
use crate::types::{Digest, RequestId, Slot};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

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
    /// A registration whose key opened no session in the table, but a session opened at or
    /// above its floor was evicted: its first attempt may have opened one that is gone, so it
    /// cannot be told new.
    RegistrationForgotten,
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
/// A session is also found by its registration's key and nonce: a retried registration (the
/// same key and nonce, which only the holder of the secret can send) is a duplicate of the one
/// that opened the session. Found by a scan, bounded by `clients_max`, once per registration:
/// an index would have to be rebuilt wherever a table is decoded.
///
/// Eviction keeps a watermark, `evicted_upto`: the highest `last_slot` of any session evicted.
/// The victim is always the session with the lowest `last_slot`, so every session still held
/// has a `last_slot` above the watermark, and every session ever opened at a slot above it is
/// still held. A registration with a floor above the watermark whose key is not in the table
/// therefore never opened a session before: it is new (see `lookup_registration`).
///
/// Persisted as `(request id, slot, digest)` records; a session's registration is the record
/// with seq 0, its nonce in place of a slot and the session's key (clients number their
/// requests from 1), and the watermark
/// is the record of the reserved client id [`RequestId::REGISTER_CLIENT_ID`], seq 0, at its
/// slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RequestTable {
    clients: HashMap<u64, ClientRecord>,
    /// The highest `last_slot` of an evicted session (`None`: none evicted yet).
    evicted_upto: Option<Slot>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
struct ClientRecord {
    /// The digest of the session's secret: every request of the session carries it.
    key: Digest,
    /// The nonce of the registration that opened the session.
    nonce: u64,
    /// seq -> slot at which it was applied and the payload's digest (seq >= 1).
    seqs: SeqWindow,
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

/// The record that holds the eviction watermark (at its slot): no session has this id.
const EVICTED_UPTO_RECORD: RequestId = RequestId { client_id: RequestId::REGISTER_CLIENT_ID, seq: 0 };

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
        if let Some((slot, applied)) = record.seqs.get(request_id.seq) {
            return if applied == digest { Lookup::AppliedAt(slot) } else { Lookup::Reused(slot) };
        }
        let full = record.seqs.len() >= limits.seqs_per_client_max;
        match record.seqs.lowest() {
            Some(lowest) if full && request_id.seq < lowest => Lookup::Expired,
            _ => Lookup::New,
        }
    }

    /// What the table says of a registration (see [`crate::Value::Register`]) carrying session
    /// key `key`, a first value whose digest is `digest`, and `floor_slot`: `New` if it opens a
    /// session, `AppliedAt` the slot of the registration that already did (or `Reused` if that
    /// one carried another value, `Expired` if the session has left its first request behind),
    /// and `RegistrationForgotten` if a session it may have opened could have been evicted.
    pub fn lookup_registration(
        &self,
        nonce: u64,
        key: Digest,
        digest: Digest,
        floor_slot: Slot,
        limits: TableLimits,
    ) -> Lookup {
        if let Some(session) = self.session_registered_as(nonce, key) {
            let first = RequestId { client_id: session, seq: RequestId::FIRST_SEQ };
            return match self.lookup(first, key, digest, limits) {
                found @ (Lookup::AppliedAt(_) | Lookup::Reused(_)) => found,
                // The first request is no longer held (it left the window): nothing can be
                // told of it.
                _ => Lookup::Expired,
            };
        }
        match self.evicted_upto {
            Some(evicted_upto) if evicted_upto >= floor_slot => Lookup::RegistrationForgotten,
            _ => Lookup::New,
        }
    }

    /// The session registration (`nonce`, `key`) opened, if it is in the table.
    pub fn session_registered_as(&self, nonce: u64, key: Digest) -> Option<u64> {
        self.clients
            .iter()
            .find(|(_, record)| record.key == key && record.nonce == nonce)
            .map(|(client_id, _)| *client_id)
    }

    /// The highest `last_slot` of an evicted session (see the type's documentation).
    pub fn evicted_upto(&self) -> Option<Slot> {
        self.evicted_upto
    }

    /// Whether `client_id` names an open session.
    pub fn has_session(&self, client_id: u64) -> bool {
        self.clients.contains_key(&client_id)
    }

    /// The key session `client_id` was opened with, if it is open.
    pub fn session_key(&self, client_id: u64) -> Option<Digest> {
        self.clients.get(&client_id).map(|record| record.key)
    }

    /// Opens the session registered at `slot` (its client id is `slot`) by registration
    /// `nonce` with session key `key`, evicting the least recently active session if the table
    /// is full; returns the changes to persist.
    pub fn open_session(
        &mut self,
        slot: Slot,
        nonce: u64,
        key: Digest,
        limits: TableLimits,
    ) -> Vec<TableChange> {
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
                    assert!(
                        self.evicted_upto.is_none_or(|upto| upto < record.last_slot),
                        "the victim's last slot is above every earlier victim's"
                    );
                    self.evicted_upto = Some(record.last_slot);
                    changes.push(TableChange::Insert {
                        request_id: EVICTED_UPTO_RECORD,
                        slot: record.last_slot,
                        digest: [0; 16],
                    });
                    changes.push(TableChange::Remove {
                        request_id: RequestId { client_id: victim, seq: REGISTRATION_SEQ },
                    });
                    changes.extend(record.seqs.iter().map(|(seq, _, _)| TableChange::Remove {
                        request_id: RequestId { client_id: victim, seq },
                    }));
                }
            }
        }
        self.clients.insert(slot, ClientRecord { key, nonce, seqs: SeqWindow::default(), last_slot: slot });
        changes.push(TableChange::Insert {
            request_id: RequestId { client_id: slot, seq: REGISTRATION_SEQ },
            slot: nonce,
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
        record.seqs.insert(request_id.seq, slot, digest);
        record.last_slot = record.last_slot.max(slot);
        changes.push(TableChange::Insert { request_id, slot, digest });
        while record.seqs.len() > limits.seqs_per_client_max {
            if let Some(seq) = record.seqs.pop_lowest() {
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
            if request_id == EVICTED_UPTO_RECORD {
                table.evicted_upto = Some(slot);
                continue;
            }
            let record = table.clients.entry(request_id.client_id).or_default();
            if request_id.seq == REGISTRATION_SEQ {
                record.key = digest;
                record.nonce = slot;
                record.last_slot = record.last_slot.max(request_id.client_id);
            } else {
                record.seqs.insert(request_id.seq, slot, digest);
                record.last_slot = record.last_slot.max(slot);
            }
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
                    (RequestId { client_id: *client_id, seq: REGISTRATION_SEQ }, record.nonce, record.key);
                std::iter::once(registration).chain(
                    record
                        .seqs
                        .iter()
                        .map(|(seq, slot, digest)| (RequestId { client_id: *client_id, seq }, slot, digest)),
                )
            })
            .chain(self.evicted_upto.map(|upto| (EVICTED_UPTO_RECORD, upto, [0; 16])))
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
    const NONCE: u64 = 0x5eed;
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
        table.open_session(1, 0, KEY, LIMITS);
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
        table.open_session(1, 0, KEY, LIMITS);
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
        table.open_session(1, 0, KEY, LIMITS);
        table.insert(rid(1, 1), 2, D, LIMITS);
        table.open_session(3, 0, KEY, LIMITS);
        let changes = table.open_session(4, 0, KEY, LIMITS);
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
        table.open_session(1, 0, KEY, LIMITS);
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
        table.open_session(1, 0, KEY, LIMITS);
        table.insert(rid(1, 1), 1, D, LIMITS);
        table.open_session(2, 0, [9; 16], LIMITS);
        table.insert(rid(2, 7), 3, D, LIMITS);
        table.open_session(4, 0, [10; 16], LIMITS);
        assert_eq!(table.evicted_upto(), Some(1));
        assert_eq!(RequestTable::from_records(table.records()), table);
    }

    /// Opens the session a registration at `slot` opens: the session, and its first value.
    fn register(table: &mut RequestTable, slot: Slot, key: Digest) -> Vec<TableChange> {
        let mut changes = table.open_session(slot, NONCE, key, LIMITS);
        changes.extend(table.insert(rid(slot, RequestId::FIRST_SEQ), slot, D, LIMITS));
        changes
    }

    /// A retried registration is a duplicate of the one that opened its session (found by its
    /// key), and a registration is new only while no session it may have opened was evicted.
    #[test]
    fn a_retried_registration_is_found_by_key_until_its_session_may_be_gone() {
        let mut table = RequestTable::default();
        assert_eq!(table.lookup_registration(NONCE, KEY, D, 0, LIMITS), Lookup::New);
        register(&mut table, 5, KEY);
        assert_eq!(table.lookup_registration(NONCE, KEY, D, 0, LIMITS), Lookup::AppliedAt(5));
        assert_eq!(table.lookup_registration(NONCE, KEY, [2; 16], 0, LIMITS), Lookup::Reused(5));
        // Two more sessions (the table holds two) evict session 5, with the watermark at 5.
        register(&mut table, 8, [8; 16]);
        let changes = register(&mut table, 9, [9; 16]);
        assert!(changes.contains(&TableChange::Insert {
            request_id: EVICTED_UPTO_RECORD,
            slot: 5,
            digest: [0; 16]
        }));
        assert_eq!(table.evicted_upto(), Some(5));
        // The retry whose first attempt may sit at slot 5 or above cannot be told new...
        assert_eq!(table.lookup_registration(NONCE, KEY, D, 3, LIMITS), Lookup::RegistrationForgotten);
        assert_eq!(table.lookup_registration(NONCE, KEY, D, 5, LIMITS), Lookup::RegistrationForgotten);
        // ...but one whose first attempt cannot sit at or below the watermark is new.
        assert_eq!(table.lookup_registration(NONCE, KEY, D, 6, LIMITS), Lookup::New);
        // A session held is found whatever the floor, by its key and nonce both.
        assert_eq!(table.lookup_registration(NONCE, [9; 16], D, 0, LIMITS), Lookup::AppliedAt(9));
        assert_eq!(table.lookup_registration(NONCE + 1, [9; 16], D, 6, LIMITS), Lookup::New);
    }

    /// The watermark bounds every evicted session: the victim is the least recently active, so
    /// a session that stays active outlives newer idle ones, and the watermark passes it only
    /// once it is evicted itself.
    #[test]
    fn the_watermark_is_above_every_evicted_session_and_below_every_held_one() {
        let mut table = RequestTable::default();
        register(&mut table, 1, [1; 16]);
        register(&mut table, 2, [2; 16]);
        table.insert(rid(1, 2), 3, D, LIMITS);
        register(&mut table, 4, [4; 16]);
        assert!(!table.has_session(2) && table.has_session(1));
        assert_eq!(table.evicted_upto(), Some(2));
        assert_eq!(table.lookup_registration(NONCE, [1; 16], D, 0, LIMITS), Lookup::AppliedAt(1));
        register(&mut table, 5, [5; 16]);
        assert!(!table.has_session(1));
        assert_eq!(table.evicted_upto(), Some(3));
    }
}
