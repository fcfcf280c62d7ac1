//! The vocabulary of the protocol: node ids, slots, ballots, request ids and their digests.
//! It depends on nothing else in the crate; what a slot holds is [`crate::Value`] (value.rs).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A member of the cluster (see [`crate::Membership`] for what each may do).
pub type NodeId = u64;

/// A position in the replicated log. Slot numbers start at 0 and have no gaps.
pub type Slot = u64;

/// A Paxos ballot (proposal number), totally ordered by `(round, node)`.
///
/// Including the node id makes ballots of different proposers distinct, so two candidates can
/// never both win the same ballot. `Ballot::ZERO` is below every ballot a proposer can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Ballot {
    pub round: u64,
    pub node: NodeId,
}

impl Ballot {
    /// The ballot every acceptor starts promised to; no proposer ever uses it.
    pub const ZERO: Ballot = Ballot { round: 0, node: 0 };

    /// The highest round a replica takes from the network. Honest rounds grow by one per
    /// election and never come near it; a ballot above it is a confused or hostile peer's, and
    /// believing it would leave no room for any later ballot (a candidate must go above every
    /// round it has seen).
    pub const ROUND_MAX: u64 = u64::MAX / 2;

    pub fn new(round: u64, node: NodeId) -> Self {
        Ballot { round, node }
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.round, self.node)
    }
}

/// Identifies one client request: a retried request carries the same id, which is how the log
/// holds each request at most once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub client_id: u64,
    pub seq: u64,
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.client_id, self.seq)
    }
}

/// How an error names the leader it knows of, for people: "; node 3 leads" or "; no leader
/// known" (not Rust's `Some(3)` / `None`).
pub fn leader_hint_text(leader_hint: Option<NodeId>) -> String {
    match leader_hint {
        Some(leader) => format!("; node {leader} leads"),
        None => "; no leader known".to_owned(),
    }
}

/// A 128-bit digest, as the log and the duplicate table keep it: of a client's session secret
/// (the session's key, computed by the node the client talked to; the secret itself never
/// enters the log) or of a proposal's payload ([`payload_digest`]).
pub type Digest = [u8; 16];

/// The digest the duplicate table keeps of a command's payload: a retry is a duplicate only if
/// its payload has the same digest. XXH3-128: stable across versions and machines (every replica
/// must compute the same), fast on large values. Not a cryptographic hash: only the session's
/// owner can send requests in its session (see [`crate::Value::Command`]'s `key`), and a collision can
/// only confuse two values of one client's own.
pub fn payload_digest(payload: &[u8]) -> Digest {
    xxhash_rust::xxh3::xxh3_128(payload).to_le_bytes()
}

/// What tells two requests with one request id apart (a client that reuses an id, or one that
/// names another's session): the session key and the payload's digest, hashed together. Answers
/// travel with it, and an answer goes only to whoever waits with the same fingerprint.
pub fn request_fingerprint(key: &Digest, payload: &[u8]) -> Digest {
    let mut both = [0u8; 32];
    both[..16].copy_from_slice(key);
    both[16..].copy_from_slice(&payload_digest(payload));
    xxhash_rust::xxh3::xxh3_128(&both).to_le_bytes()
}

impl RequestId {
    /// Reserved client id: a proposal with it asks for a new session. No session can have it
    /// (a session's id is the slot of its `Register` entry, and no slot reaches `u64::MAX`).
    pub const REGISTER_CLIENT_ID: u64 = u64::MAX;

    /// The seq of a session's first value, the one its `Register` entry carries: the client's
    /// next request in the session is seq 2.
    pub const FIRST_SEQ: u64 = 1;
}
