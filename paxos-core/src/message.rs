//! Messages between replicas. Every message carries the ballot it belongs to, so a receiver can
//! tell stale traffic from current traffic.

use crate::requests::RequestTable;
use crate::types::{Ballot, NodeId, RequestId, Slot};
use crate::value::Value;
use serde::{Deserialize, Serialize};

/// A message with its sender and receiver. The transport must deliver `from` truthfully (the
/// node daemon takes it from the authenticated Hello of the connection, never from the payload),
/// and `incarnation` as the sender's Hello gave it: a replica counts votes only from the
/// incarnation its configuration admits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub incarnation: crate::membership::Incarnation,
    /// The role the sender was started with (`--role`, taken from the authenticated Hello by
    /// the transport, like `incarnation`). It counts only while the configuration is the
    /// bootstrap one: the chosen configuration says who does what.
    pub role: crate::membership::MemberRole,
    pub message: Message,
}

/// A client's proposal (forwarded by the replica the client talked to, so the leader can
/// answer it). A proposal whose `request_id.client_id` is [`RequestId::REGISTER_CLIENT_ID`]
/// is a client's first value, which opens its session (see [`Proposal::register`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub request_id: RequestId,
    /// The digest of the client's session secret (see [`crate::Value::Command`]): computed by
    /// the node the client talked to, so no client can present a key it does not hold.
    pub key: crate::Digest,
    /// Bytes, not a sequence of u8 (see [`crate::Value::Command`]).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// A registration's floor (see [`crate::Value::Register`]); 0 and unused otherwise.
    pub floor_slot: Slot,
}

impl Proposal {
    /// A value in an open session.
    pub fn command(request_id: RequestId, key: crate::Digest, payload: Vec<u8>) -> Self {
        Proposal { request_id, key, payload, floor_slot: 0 }
    }

    /// A client's first value, opening its session. The answer is the slot of the `Register`
    /// entry, which is both the new session's client id and where the value sits (as the
    /// session's request [`RequestId::FIRST_SEQ`]). `nonce` (random) only routes the answer.
    /// `key`: the digest of the secret the session's requests will carry. `floor_slot`: a
    /// slot the first attempt cannot land below, the same in every retry (see
    /// [`crate::Value::Register`]).
    pub fn register(nonce: u64, key: crate::Digest, floor_slot: Slot, payload: Vec<u8>) -> Self {
        Proposal {
            request_id: RequestId { client_id: RequestId::REGISTER_CLIENT_ID, seq: nonce },
            key,
            payload,
            floor_slot,
        }
    }

    pub fn is_register(&self) -> bool {
        self.request_id.client_id == RequestId::REGISTER_CLIENT_ID
    }

    /// The value this proposal puts in the log.
    pub fn into_value(self) -> Value {
        if self.is_register() {
            Value::Register {
                nonce: self.request_id.seq,
                key: self.key,
                floor_slot: self.floor_slot,
                payload: self.payload,
            }
        } else {
            Value::Command { request_id: self.request_id, key: self.key, payload: self.payload }
        }
    }

    /// What the proposal's value will weigh (`Value::size_bytes`), without building it.
    pub fn size_bytes(&self) -> usize {
        let empty = if self.is_register() {
            Value::Register { nonce: 0, key: [0; 16], floor_slot: 0, payload: Vec::new() }
        } else {
            Value::Command { request_id: self.request_id, key: [0; 16], payload: Vec::new() }
        };
        empty.size_bytes() + self.payload.len()
    }

    /// What tells two proposals with one request id apart (see
    /// [`crate::request_fingerprint`]). One request id names one value; answers must
    /// never cross between two.
    ///
    /// # Correctness
    /// Equal to the fingerprint of the value the proposal becomes (`into_value`), which is
    /// what an applied entry answers.
    pub fn fingerprint(&self) -> crate::Digest {
        crate::types::request_fingerprint(&self.key, &self.payload)
    }
}

/// An entry an acceptor reports in a Promise: it accepted `value` at `slot` in `ballot`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedEntry {
    pub slot: Slot,
    pub ballot: Ballot,
    pub value: Value,
}

/// Why a proposal did not (or may not) reach the log. All of these are retryable with the same
/// request id: the log still holds each request at most once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposalError {
    /// This replica is not the leader and knows of none to forward to (or the leader changed
    /// while the proposal was in flight: it may or may not be chosen; retry to find out).
    #[error("not the leader{}", crate::types::leader_hint_text(*leader_hint))]
    NotLeader { leader_hint: Option<NodeId> },
    /// The leader did not answer a forwarded proposal in time.
    #[error("timed out waiting for the leader")]
    Timeout,
    /// The leader's queue of proposals is full.
    #[error("leader overloaded: too many proposals queued")]
    Overloaded,
    /// The request id is older than what the duplicate table remembers for its client, so the
    /// log can no longer tell whether it was chosen before. Not retryable with the same id.
    #[error("request id {0} is too old to be deduplicated")]
    RequestExpired(RequestId),
    /// The client's session is unknown: never registered, or evicted from the full session
    /// table. The log can no longer tell whether this request was chosen before, so it is
    /// refused; the client must register a new session (and treat this request's outcome as
    /// unknown).
    #[error("session {0} is unknown or expired: register a new session")]
    SessionExpired(u64),
    /// A registration retried after sessions opened since its first attempt may have evicted
    /// the session that attempt opened: the log can no longer tell whether its value was
    /// chosen, so it is refused (a no-op). Its outcome is unknown; not retryable with the same
    /// nonce.
    #[error("registration {nonce:x} was retried too late to tell whether it was applied")]
    RegistrationExpired { nonce: u64 },
    /// The request does not carry the secret its session was opened with: another client's
    /// session, or a guess. Refused, never applied; final.
    #[error("request {0} does not carry its session's secret")]
    WrongSessionKey(RequestId),
    /// This request id was applied with a different value: one request id names one value, and
    /// the answer for one value is never given to another. Final: use a new sequence number.
    #[error("request id {0} was already used for a different value")]
    RequestIdReused(RequestId),
    /// A different value with the same request id is in flight here: retry once it is answered.
    #[error("another value with request id {0} is in flight")]
    RequestIdBusy(RequestId),
    /// The value is larger than the configured limit.
    #[error("value of {size_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    TooLarge { size_bytes: usize, limit_bytes: usize },
    /// Another configuration change is not applied yet (or the bootstrap configuration is not
    /// bound yet): one change at a time.
    #[error("a configuration change is in progress; retry when it is applied")]
    ChangeInProgress,
    /// The change cannot follow the configuration in force.
    #[error("configuration change refused: {0}")]
    ChangeRefused(crate::membership::ChangeError),
}

impl ProposalError {
    /// Whether the same request may be sent again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProposalError::NotLeader { .. }
                | ProposalError::Timeout
                | ProposalError::Overloaded
                | ProposalError::ChangeInProgress
                | ProposalError::RequestIdBusy(_)
        )
    }
}

/// The protocol's messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Phase 1a: asks for a promise covering every slot from `from_slot` on. `transfer`: the
    /// candidate campaigns because the leader handed over to it (`TimeoutNow`), so a member that
    /// still hears that leader promises anyway (see `election.rs`, leader stickiness).
    Prepare { ballot: Ballot, from_slot: Slot, transfer: bool },
    /// Phase 1b, answering the Prepare of `ballot` that asked from `from_slot`.
    ///
    /// `history` is this acceptor's applied history from `from_slot` on, verbatim (as
    /// deduplicated when applied), one unbroken run bounded by the message limits (it may stop
    /// short of `applied_upto`). `chosen` holds raw chosen values it knows above `applied_upto`,
    /// and `accepted` every entry it accepted at slots `>= max(from_slot, applied_upto)`, both
    /// below `covered_upto` (`None`: all of them; `Some`: the page was full, and the candidate
    /// asks again from there). Together they let a candidate finish phase 1 with any majority,
    /// never waiting on a member that is gone.
    Promise {
        ballot: Ballot,
        from_slot: Slot,
        accepted: Vec<AcceptedEntry>,
        history: Vec<(Slot, Value)>,
        chosen: Vec<(Slot, Value)>,
        applied_upto: Slot,
        covered_upto: Option<Slot>,
        /// The sender's log (see [`crate::Membership::log_id`]; 0 while unbound).
        log_id: u64,
    },
    /// The receiver promised a higher ballot; `promised` lets the sender retry above it.
    Nack { ballot: Ballot, promised: Ballot },
    /// Phase 2a for a batch of slots. `commit_upto`: every slot below it is chosen.
    Accept { ballot: Ballot, entries: Vec<(Slot, Value)>, commit_upto: Slot },
    /// Phase 2b: the acceptor durably accepted these slots in `ballot`. `applied_upto` tells the
    /// leader how far this member has applied (used to gate truncation).
    Accepted { ballot: Ballot, slots: Vec<Slot>, applied_upto: Slot },
    /// Leader liveness and commit progress. `history_start` asks followers to truncate their
    /// history below it once they have applied that far.
    /// `round` numbers the leader's heartbeats that confirm reads (see `read_index.rs`).
    Heartbeat { ballot: Ballot, commit_upto: Slot, history_start: Slot, round: u64 },
    /// A follower's answer to a heartbeat: how far it has applied, and the heartbeat's round
    /// (0 when it answers something else).
    HeartbeatAck { ballot: Ballot, applied_upto: Slot, round: u64 },
    /// Asks for chosen entries from `from_slot`. `request` numbers the asker's requests (from
    /// 1; 0 is a probe outside the one chain of requests, see `Learner::catch_up_from`): the
    /// answer carries it back, and only the answer to the request outstanding starts the next.
    CatchUp { from_slot: Slot, request: u64 },
    /// Chosen entries, in slot order, exactly as the sender's history holds them.
    /// `log_id`: the sender's log (see [`crate::Membership::log_id`]; 0 while unbound).
    /// `request`: the `CatchUp` this answers (0: none, the sender volunteered it).
    CatchUpEntries { entries: Vec<(Slot, Value)>, applied_upto: Slot, log_id: u64, request: u64 },
    /// The requested range was truncated: the receiver restarts its history at `history_start`
    /// with the duplicate table the sender kept when it truncated. `request` as in
    /// `CatchUpEntries`.
    CatchUpTruncated { snapshot: TruncationSnapshot, request: u64 },
    /// A client proposal forwarded from the replica the client talked to.
    Forward { proposal: Proposal },
    /// The leader's answer to a forwarded proposal.
    ForwardReply { request_id: RequestId, fingerprint: crate::Digest, outcome: Result<Slot, ProposalError> },
    /// The receiver's configuration (chosen at `chosen_at`) admits another incarnation of the
    /// sender, so it ignored the sender's message: the sender lost its disk, or was replaced or
    /// removed. `applied_upto` lets the sender catch up and see the configuration itself.
    NotAdmitted { admitted: Option<crate::membership::Incarnation>, chosen_at: Slot, applied_upto: Slot },
    /// The leader of `ballot` hands leadership over: the receiver learns the commit point (as
    /// from a Heartbeat) and starts phase 1 at once (see `transfer.rs`). Last, so the variants
    /// before it keep their encoding.
    TimeoutNow { ballot: Ballot, commit_upto: Slot },
    /// The pre-vote: would the receiver promise `ballot` now? Nothing changes on either side
    /// (no promise, no timer): a member whose election timer fired asks this of the voting
    /// members first, and prepares only if a majority says yes (see `election.rs`).
    /// `attempt` tells the answers to one pre-vote from those to an earlier one.
    PreVote { ballot: Ballot, attempt: u64 },
    /// The answer to a `PreVote`. `promised`: the receiver's promise, so that a Prepare that
    /// follows goes above it. `refusal`: why not (`None`: yes).
    PreVoteReply { ballot: Ballot, attempt: u64, promised: Ballot, refusal: Option<PreVoteRefusal> },
    /// How far the sender has applied, sent now and then to every member it knows, leader or
    /// not: a member learns who is ahead (and catches up from it) without a leader's word.
    Progress { applied_upto: Slot, log_id: u64 },
    /// A replica asks the leader for a read index (see `read_index.rs`); `request` is the asker's
    /// number for the read.
    ReadIndex { request: u64 },
    /// The leader's answer: every value acknowledged before the read reached it is below
    /// `read_upto` (`Ok`), or why not (retryable).
    ReadIndexReply { request: u64, outcome: Result<Slot, ProposalError> },
}

/// Why a member refused a pre-vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreVoteRefusal {
    /// It heard `leader` at work `ticks_ago` ticks ago, within the minimum election timeout
    /// (`leader` is the refuser itself when it leads).
    HeardLeader { leader: NodeId, ticks_ago: u64 },
    /// It promised `candidate` `ticks_ago` ticks ago, within the minimum election timeout.
    PromisedCandidate { candidate: NodeId, ticks_ago: u64 },
    /// It holds no vote in the configuration in force (a learner, a proposer, or a disk the
    /// configuration does not admit).
    NotVoter,
}

impl std::fmt::Display for PreVoteRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PreVoteRefusal::HeardLeader { leader, ticks_ago } => {
                write!(f, "it heard leader {leader} {ticks_ago} ticks ago")
            }
            PreVoteRefusal::PromisedCandidate { candidate, ticks_ago } => {
                write!(f, "it promised candidate {candidate} {ticks_ago} ticks ago")
            }
            PreVoteRefusal::NotVoter => write!(f, "it holds no vote"),
        }
    }
}

impl Message {
    /// Roughly the bytes this message takes on the wire: its values' sizes and a fixed part.
    /// For byte bounds on what waits to be sent.
    pub fn size_bytes(&self) -> usize {
        let values =
            |entries: &[(Slot, Value)]| entries.iter().map(|(_, value)| value.size_bytes()).sum::<usize>();
        64 + match self {
            Message::Accept { entries, .. } | Message::CatchUpEntries { entries, .. } => values(entries),
            Message::Promise { accepted, history, chosen, .. } => {
                accepted.iter().map(|entry| entry.value.size_bytes()).sum::<usize>()
                    + values(history)
                    + values(chosen)
            }
            Message::CatchUpTruncated { snapshot, .. } => snapshot.requests.len() * 40,
            Message::Forward { proposal } => proposal.size_bytes(),
            _ => 0,
        }
    }

    /// Whether every ballot's round is at most [`Ballot::ROUND_MAX`] and every slot at most
    /// [`SLOT_MAX`]. Honest peers never come near either; a message past them is dropped, since
    /// believing it would leave no room above (the next ballot, the window after the slot).
    pub fn within_limits(&self) -> bool {
        let ballot_ok = |ballot: &Ballot| ballot.round <= Ballot::ROUND_MAX;
        let slot_ok = |slot: &Slot| *slot <= SLOT_MAX;
        let entries_ok = |entries: &[(Slot, Value)]| entries.iter().all(|(slot, _)| slot_ok(slot));
        match self {
            Message::Prepare { ballot, from_slot, .. } => ballot_ok(ballot) && slot_ok(from_slot),
            Message::Promise {
                ballot,
                from_slot,
                accepted,
                history,
                chosen,
                applied_upto,
                covered_upto,
                ..
            } => {
                ballot_ok(ballot)
                    && slot_ok(from_slot)
                    && accepted.iter().all(|entry| ballot_ok(&entry.ballot) && slot_ok(&entry.slot))
                    && entries_ok(history)
                    && entries_ok(chosen)
                    && slot_ok(applied_upto)
                    && covered_upto.as_ref().is_none_or(slot_ok)
            }
            Message::Nack { ballot, promised } => ballot_ok(ballot) && ballot_ok(promised),
            Message::Accept { ballot, entries, commit_upto } => {
                ballot_ok(ballot) && entries_ok(entries) && slot_ok(commit_upto)
            }
            Message::Accepted { ballot, slots, applied_upto } => {
                ballot_ok(ballot) && slots.iter().all(slot_ok) && slot_ok(applied_upto)
            }
            Message::Heartbeat { ballot, commit_upto, history_start, .. } => {
                ballot_ok(ballot) && slot_ok(commit_upto) && slot_ok(history_start)
            }
            Message::HeartbeatAck { ballot, applied_upto, .. } => ballot_ok(ballot) && slot_ok(applied_upto),
            Message::CatchUp { from_slot, .. } => slot_ok(from_slot),
            Message::CatchUpEntries { entries, applied_upto, .. } => {
                entries_ok(entries) && slot_ok(applied_upto)
            }
            Message::CatchUpTruncated { snapshot, .. } => {
                slot_ok(&snapshot.history_start) && slot_ok(&snapshot.table_upto)
            }
            Message::Forward { .. } => true,
            Message::ForwardReply { outcome, .. } => outcome.as_ref().map_or(true, slot_ok),
            Message::NotAdmitted { chosen_at, applied_upto, .. } => {
                slot_ok(chosen_at) && slot_ok(applied_upto)
            }
            Message::TimeoutNow { ballot, commit_upto } => ballot_ok(ballot) && slot_ok(commit_upto),
            Message::PreVote { ballot, .. } => ballot_ok(ballot),
            Message::PreVoteReply { ballot, promised, .. } => ballot_ok(ballot) && ballot_ok(promised),
            Message::Progress { applied_upto, .. } => slot_ok(applied_upto),
            Message::ReadIndex { .. } => true,
            Message::ReadIndexReply { outcome, .. } => outcome.as_ref().map_or(true, slot_ok),
        }
    }

    /// Whether this message speaks for the sender's disk: an acceptor's Promise or Accepted,
    /// a truncation snapshot, and a read index.
    ///
    /// # Correctness
    /// Only these must wait until the Ready's `persist` is durable. Every other message may go
    /// out before the write (see [`crate::Ready`]): a leader's Accept is a request, not a
    /// statement about its disk. This lets the leader's fsync overlap its followers'.
    ///
    /// A leader counts its own vote only once the batch holding it is written (see
    /// [`crate::Ready`]), so every slot it calls chosen rests on durable votes: commit points
    /// in Accepts and Heartbeats, and a `ForwardReply` saying "chosen", may leave early. (The
    /// `ForwardReply` once waited: a lone voter chose on its unwritten own vote, answered the
    /// learner that forwarded the proposal, and crashed, found by swarm seed 3967.) The values
    /// behind a commit point are served only from written history (catch-up reads run after
    /// the write). A `CatchUpTruncated` carries the effects of every slot below its start
    /// (duplicate table, configuration): it waits for the write that cut them (raised by a
    /// review; a unit test).
    pub fn speaks_for_disk(&self) -> bool {
        matches!(
            self,
            Message::Promise { .. }
                | Message::Accepted { .. }
                | Message::CatchUpTruncated { .. }
                | Message::ReadIndexReply { outcome: Ok(_), .. }
        )
    }

    /// The log a message of history speaks for (see [`crate::Membership::log_id`]).
    pub fn log_id(&self) -> Option<u64> {
        match self {
            Message::Promise { log_id, .. }
            | Message::CatchUpEntries { log_id, .. }
            | Message::Progress { log_id, .. } => Some(*log_id),
            Message::CatchUpTruncated { snapshot, .. } => snapshot.membership.as_ref().map(|m| m.log_id),
            _ => None,
        }
    }
}

/// The highest slot a replica takes from the network (see [`Message::within_limits`]).
pub const SLOT_MAX: Slot = u64::MAX / 2;

/// What a replica keeps of the history it truncated: where the history now starts, and the
/// duplicate table that lets a node starting from there apply later slots exactly as everyone
/// else did.
///
/// # Correctness
/// `requests` is the table as it was after applying every slot below `table_upto`
/// (`table_upto >= history_start`). A node that installs the snapshot restarts its own history
/// at `table_upto`, where the table stands (see `Replica::on_catch_up_truncated`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TruncationSnapshot {
    pub history_start: Slot,
    pub table_upto: Slot,
    pub requests: RequestTable,
    /// The configuration as of `table_upto` (`None`: the bootstrap one).
    pub membership: Option<crate::membership::Membership>,
}

#[cfg(test)]
mod tests {
    use super::ProposalError;

    /// Errors are read by people: no `Some(3)` or `None` in them.
    #[test]
    fn not_the_leader_says_who_leads_in_words() {
        let none = ProposalError::NotLeader { leader_hint: None };
        assert_eq!(none.to_string(), "not the leader; no leader known");
        let some = ProposalError::NotLeader { leader_hint: Some(3) };
        assert_eq!(some.to_string(), "not the leader; node 3 leads");
    }
}
