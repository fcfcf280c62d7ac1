//! What travels over TCP: the handshake, peer messages and the client protocol.
//!
//! Every connection starts with a [`Hello`]; the server answers with a [`Welcome`] or an
//! [`Frame::Refused`] and closes. After that a peer connection carries [`Frame::Peer`] frames one
//! way, and a client connection carries [`Frame::Request`] / [`Frame::Response`] pairs matched by
//! `id`, so a client may pipeline many requests on one connection.

use paxos_core::{Ballot, Message, NodeId, ProposalError, RequestId, RoleName, Slot};
use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change to these types.
pub const PROTOCOL_VERSION: u32 = 9;

/// A client session's secret: 128 random bits.
pub type SessionSecret = [u8; 16];

/// The key a session's entries carry: the first 128 bits of the secret's SHA-256. The log and
/// its readers see only this; finding a secret from it is a preimage attack on SHA-256.
pub fn session_key(secret: &SessionSecret) -> paxos_core::Digest {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret);
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest.as_ref()[..16]);
    key
}

/// A new session secret from the operating system's random source.
pub fn new_session_secret() -> Result<SessionSecret, String> {
    use ring::rand::SecureRandom;
    let mut secret = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| "the operating system's random source failed".to_owned())?;
    Ok(secret)
}

/// Most history entries one `History` request returns (the node caps a larger `limit`).
pub const HISTORY_PAGE_ENTRIES_MAX: u64 = 10_000;
/// Most value bytes one history page carries; a page stops before exceeding it (but always
/// holds at least one entry, which a value's own limit keeps below the frame limit).
pub const HISTORY_PAGE_BYTES_MAX: usize = 8 << 20;
/// The largest `--value-bytes-max` a node accepts.
pub const VALUE_BYTES_LIMIT: usize = 4 << 20;

/// Bytes an entry costs on the wire besides its value (slot, ballot, request id, lengths and
/// tags, all varints), and a frame besides its entries: generous upper bounds.
const ENTRY_OVERHEAD_BYTES_MAX: usize = 64;
const FRAME_OVERHEAD_BYTES_MAX: usize = 4096;

/// The largest frame a page of at most `entries_max` entries and `bytes_max` value bytes can
/// make: a page passes `bytes_max` only with a single entry, which a value's limit bounds.
const fn page_frame_bytes_max(entries_max: usize, bytes_max: usize) -> usize {
    let values = if bytes_max > VALUE_BYTES_LIMIT { bytes_max } else { VALUE_BYTES_LIMIT };
    values + entries_max * ENTRY_OVERHEAD_BYTES_MAX + FRAME_OVERHEAD_BYTES_MAX
}

/// Largest frame accepted or sent: a few batches of maximum-size values. A rule of the
/// protocol, which the codec (codec.rs) enforces on every frame in both directions.
pub const FRAME_BYTES_MAX: usize = 16 << 20;

// Every page fits a frame: a client's history page, and the core's messages at their defaults
// (the node does not change them). An Accept or CatchUpEntries is one page; a Promise is two (its
// history, and its page of accepted records and pending chosen values, where one slot may carry
// two values, hence the doubled value limit).
/// The largest answer to a `History` request.
pub const HISTORY_PAGE_FRAME_BYTES_MAX: usize =
    page_frame_bytes_max(HISTORY_PAGE_ENTRIES_MAX as usize, HISTORY_PAGE_BYTES_MAX);
const _: () = assert!(HISTORY_PAGE_FRAME_BYTES_MAX <= FRAME_BYTES_MAX);
const CORE_PAGE_FRAME_BYTES_MAX: usize = page_frame_bytes_max(
    paxos_core::Config::ENTRIES_PER_MESSAGE_MAX_DEFAULT,
    paxos_core::Config::MESSAGE_BYTES_MAX_DEFAULT,
);
const _: () = assert!(2 * CORE_PAGE_FRAME_BYTES_MAX + VALUE_BYTES_LIMIT <= FRAME_BYTES_MAX);

/// Who opens a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Caller {
    /// A node, with the incarnation of its data directory (see [`paxos_core::Incarnation`])
    /// and the role it was started with (`--role`; counts only during the bootstrap).
    Node(NodeId, paxos_core::Incarnation, paxos_core::MemberRole),
    Client,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub cluster_id: String,
    pub caller: Caller,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub node_id: NodeId,
    pub cluster_id: String,
    /// What the node had applied when it welcomed the caller: no proposal sent after this can
    /// land below it, which a client's first proposal (its registration) carries as its floor
    /// (see [`paxos_core::Value::Register`]).
    pub applied_upto: Slot,
}

/// One frame on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    Hello(Hello),
    Welcome(Welcome),
    /// The handshake failed for good (wrong cluster, certificate or version); the reason is for
    /// logs and for the client's error line.
    Refused(String),
    /// The node cannot take this connection now (every slot busy): retry later.
    Busy(String),
    /// A protocol message from the peer that opened this connection (the sender is the id the
    /// handshake established, never a field of the frame).
    Peer(Message),
    Request {
        id: u64,
        request: Request,
    },
    Response {
        id: u64,
        response: Response,
    },
}

/// How a `History` request reads the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadConsistency {
    /// Sees every value acknowledged before the request was sent, whichever node it asks: the
    /// node asks the leader for a read index (the leader's next slot, confirmed by a heartbeat
    /// round a quorum acknowledges) and answers once it has applied that far. Like
    /// `etcdctl get`. Needs a leader and a quorum.
    #[default]
    Linearizable,
    /// The node's own applied prefix, at once: it may trail what the leader acknowledged (a
    /// follower learns the commit point a heartbeat later), and it answers without a quorum.
    Serializable,
}

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A value to propose in a session, or (with [`RequestId::REGISTER_CLIENT_ID`] and the
    /// registration's nonce as seq) a client's first value, which opens its session.
    /// `secret`: the session's secret, which the client chose at random for it and never
    /// shows anyone else; the node hashes it ([`session_key`]) into the key the log keeps, so
    /// a request without the secret cannot write in the session.
    Propose {
        request_id: RequestId,
        secret: SessionSecret,
        /// Bytes, not a sequence of u8 (see [`paxos_core::Value::Command`]).
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// A registration's floor: the `applied_upto` of the [`Welcome`] the client had before
        /// its first attempt, the same in every retry (see [`paxos_core::Value::Register`]).
        /// 0 otherwise.
        floor_slot: Slot,
    },
    /// Chosen history from `from_slot`, at most `limit` entries (the node caps it too), read
    /// as `consistency` says.
    History {
        from_slot: Slot,
        limit: u64,
        consistency: ReadConsistency,
    },
    Status,
    Gc {
        truncate_below: Option<Slot>,
        force: bool,
    },
    /// A configuration change (admin only), answered with `Proposed`: the slot of the entry
    /// once it is applied on the leader.
    ChangeMembership {
        request_id: RequestId,
        change: paxos_core::MembershipChange,
    },
    /// Hand leadership to member `target` (admin only), answered with `Transfer` once the
    /// target leads (or why not).
    TransferLeader {
        target: NodeId,
    },
}

impl Request {
    /// The bytes of this request the node holds until it answers (a proposal's value).
    pub fn request_bytes(&self) -> usize {
        match self {
            Request::Propose { value, .. } => value.len(),
            _ => 0,
        }
    }

    /// An upper bound on the bytes of this request's answer on the wire, which the server
    /// reserves before it takes the request: what a connection's unread answers may hold is
    /// bounded in bytes, not only in number. A status report is bounded by the members it
    /// lists (a few dozen bytes each), the others by their fixed fields and an address.
    pub fn answer_bytes_max(&self) -> usize {
        match self {
            Request::Propose { .. }
            | Request::Gc { .. }
            | Request::ChangeMembership { .. }
            | Request::TransferLeader { .. } => 4 << 10,
            Request::Status => 64 << 10,
            Request::History { .. } => HISTORY_PAGE_FRAME_BYTES_MAX,
        }
    }
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Proposed(Result<Slot, ProposeError>),
    History(Result<HistoryPage, HistoryError>),
    Status(Box<StatusReport>),
    Gc(Result<GcReport, GcError>),
    /// The node could not take the request (overloaded, shutting down): retry, maybe elsewhere.
    Unavailable(String),
    /// The caller's certificate does not allow this request (e.g. gc without an admin
    /// certificate). Final: retrying cannot help.
    Forbidden(String),
    Transfer(Result<TransferReport, TransferError>),
}

/// Why a proposal has no slot (yet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeError {
    #[error("{error}")]
    Protocol {
        error: ProposalError,
        /// Address of the leader, when the node knows one.
        leader_addr: Option<String>,
    },
    #[error("node overloaded: too many requests queued")]
    Overloaded,
    #[error("node is shutting down")]
    ShuttingDown,
}

impl ProposeError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ProposeError::Protocol { error, .. } => error.is_retryable(),
            ProposeError::Overloaded | ProposeError::ShuttingDown => true,
        }
    }
}

/// A page of the chosen history. `value` is `None` for a no-op slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub entries: Vec<(Slot, Option<Vec<u8>>)>,
    pub history_start: Slot,
    pub applied_upto: Slot,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum HistoryError {
    #[error("slot {requested} was truncated: history now starts at slot {history_start}")]
    Truncated { requested: Slot, history_start: Slot },
    #[error("storage error: {0}")]
    Storage(String),
    /// A linearizable read could not be confirmed (no leader known, no quorum answered in
    /// time, too many reads waiting): retry, at `leader_addr` if given.
    #[error("read not confirmed by a leader: {error}")]
    NotConfirmed { error: ProposalError, leader_addr: Option<String> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: NodeId,
    pub addr: String,
    /// How far it has applied, as this node last heard (None: never heard).
    pub applied_upto: Option<Slot>,
    pub role: paxos_core::MemberRole,
    /// The incarnation whose votes count (0: not bound yet).
    pub incarnation: paxos_core::Incarnation,
    /// The role a learner is promoted to once it has caught up.
    pub promote_to: Option<paxos_core::MemberRole>,
}

/// A node's view of itself and the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub node: NodeId,
    pub cluster_id: String,
    pub role: RoleName,
    pub leader: Option<NodeId>,
    pub ballot: Ballot,
    pub applied_upto: Slot,
    pub history_start: Slot,
    pub accepted_records: u64,
    /// Client sessions open in the duplicate table.
    pub sessions: u64,
    /// Accepts refused for slots this node had already applied (a stale leader's: its value
    /// cannot be checked against the history, so no vote is given).
    pub stale_accepts_refused: u64,
    /// Peer messages dropped for breaking a rule no honest peer breaks (e.g. a ballot above
    /// `Ballot::ROUND_MAX`).
    pub rejected_messages: u64,
    /// Times this node gave up leading because another ballot chose a different value at a
    /// slot it had in flight.
    pub superseded_leaderships: u64,
    /// The configuration in force on this node (`Membership::chosen_at`: the slot of its entry,
    /// none for the bootstrap configuration from the `--peer` flags).
    pub members: Vec<MemberInfo>,
    pub configuration_chosen_at: Option<Slot>,
    /// This node's data directory's incarnation, and whether the configuration lets it vote.
    pub incarnation: paxos_core::Incarnation,
    pub can_vote: bool,
    /// Whether the configuration lets this node stand for election (a voter or a proposer).
    pub can_lead: bool,
    /// The role this node was started with (`--role`): what it announced to the bootstrap.
    pub started_as: paxos_core::MemberRole,
    /// Why the configuration is weak though legal (too few voting members to survive a
    /// failure, a single member that may lead), one line each.
    pub warnings: Vec<String>,
    /// What is wrong, in one line with the command that fixes it: this node's disk is not the
    /// one the cluster knows, or a member came back with another disk.
    pub problems: Vec<String>,
    /// Synced batches written since start, and values applied since start: their ratio is the
    /// fsyncs per chosen value (group commit at work).
    pub fsyncs: u64,
    pub applied_since_start: u64,
    pub proposals_since_start: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub accepted_records_removed: u64,
    pub history_entries_removed: u64,
    pub history_start: Slot,
    pub applied_upto: Slot,
}

/// A leadership transfer that completed: `from` led, `to` leads now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferReport {
    pub from: NodeId,
    pub to: NodeId,
    /// From the request reaching the old leader to its seeing the target lead.
    pub took_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TransferError {
    #[error("not the leader; a transfer goes through the leader")]
    NotLeader { leader_addr: Option<String> },
    /// The leader would not start it (the target cannot lead, is not heard, ...).
    #[error("{0}")]
    Refused(String),
    /// It started, and the target did not take over in time.
    #[error("{0}")]
    Failed(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum GcError {
    #[error("not the leader; truncation goes through the leader")]
    NotLeader { leader_addr: Option<String> },
    #[error("{0}")]
    Refused(String),
}
