//! What a slot of the log holds: a client's value, a session's opening, a configuration or a
//! no-op. A file of its own because a configuration entry holds a [`Membership`], which itself
//! speaks of node ids and slots (types.rs): types <- membership <- value, no circle.

use crate::membership::Membership;
use crate::types::{request_fingerprint, Digest, RequestId, Slot};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a slot of the log holds.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    /// Fills a hole left by a failed leader, or stands for a duplicate of an earlier request.
    Noop,
    /// A client's value, with the request id that makes retries idempotent. `key` is the
    /// digest of the secret the request carried, which the node it reached computed: it is
    /// applied only if it matches the key its session was registered with, so a client that
    /// knows a session id (every history reader does) cannot write in that session.
    Command {
        request_id: RequestId,
        key: Digest,
        // As bytes, not a sequence of u8: the same bincode (length, then the bytes), written
        // with one copy instead of a call per byte (8% of a follower's driver at 100 B values).
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// A client's first value, which also opens its session: the session's id is this entry's
    /// slot, and the value is the session's request 1 (`RequestId { client_id: slot, seq: 1 }`),
    /// so a one-shot proposal writes one entry. `nonce` (random) routes the answer back to the
    /// client that asked; `key` is the digest of the secret only that client knows (see
    /// `Command`), and it names one session: a retry of the same registration (same key) is a
    /// duplicate, answered with the slot of the first.
    ///
    /// `floor_slot` is a slot the client's first attempt cannot have landed below (the applied
    /// prefix of the node that welcomed it before it sent anything). A retry finds the session
    /// of an earlier attempt by its key as long as that session is in the duplicate table;
    /// sessions leave it only by eviction, so a retry is applied only if no session opened at
    /// or above `floor_slot` was ever evicted (see `RequestTable::lookup_registration`).
    Register {
        nonce: u64,
        key: Digest,
        floor_slot: Slot,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// The configuration for every slot above this one (see [`crate::Membership`]). Applied as
    /// a no-op when it may not follow the configuration in force (the same check everywhere).
    Config(Membership),
}

impl Value {
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            Value::Noop | Value::Config(_) => None,
            Value::Command { request_id, .. } => Some(*request_id),
            Value::Register { nonce, .. } => {
                Some(RequestId { client_id: RequestId::REGISTER_CLIENT_ID, seq: *nonce })
            }
        }
    }

    /// The fingerprint of the request this value carries (see [`request_fingerprint`]).
    pub fn fingerprint(&self) -> Option<Digest> {
        match self {
            Value::Noop | Value::Config(_) => None,
            Value::Command { key, payload, .. } => Some(request_fingerprint(key, payload)),
            Value::Register { key, payload, .. } => Some(request_fingerprint(key, payload)),
        }
    }

    /// The client's value this entry carries, if any (a command's, or a registration's first).
    pub fn payload(&self) -> Option<&[u8]> {
        match self {
            Value::Command { payload, .. } | Value::Register { payload, .. } => Some(payload),
            Value::Noop | Value::Config(_) => None,
        }
    }

    /// Bytes the value occupies in a message or on disk, roughly: used for batch limits.
    pub fn size_bytes(&self) -> usize {
        match self {
            Value::Noop => 1,
            Value::Command { payload, .. } => 33 + payload.len(),
            Value::Register { payload, .. } => 41 + payload.len(),
            Value::Config(membership) => {
                membership.members.values().map(|member| 32 + member.address.len()).sum::<usize>() + 16
            }
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Noop => write!(f, "Noop"),
            Value::Register { nonce, payload, .. } => match std::str::from_utf8(payload) {
                Ok(text) if text.len() <= 32 => write!(f, "Register({nonce:x}, {text:?})"),
                _ => write!(f, "Register({nonce:x}, {} bytes)", payload.len()),
            },
            Value::Config(membership) => {
                let members: Vec<String> = membership
                    .members
                    .iter()
                    .map(|(id, m)| format!("{id}:{}@{:x}", m.role, m.incarnation))
                    .collect();
                write!(f, "Config({})", members.join(","))
            }
            Value::Command { request_id, payload, .. } => match std::str::from_utf8(payload) {
                Ok(text) if text.len() <= 32 => write!(f, "Command({request_id}, {text:?})"),
                _ => write!(f, "Command({request_id}, {} bytes)", payload.len()),
            },
        }
    }
}
