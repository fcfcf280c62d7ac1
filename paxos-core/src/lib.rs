//! Multi-Paxos as a deterministic, I/O-free state machine.
//!
//! A [`Replica`] is one member of a cluster: proposer, acceptor and learner. It never touches a
//! disk, a socket or a clock. The driver feeds it inputs ([`Replica::tick`], [`Replica::step`],
//! [`Replica::propose`], [`Replica::compact`]) and executes what [`Replica::take_ready`] returns,
//! honouring the [`Ready`] contract: persist durably, then send. The same recovered state, inputs
//! and seed always produce the same outputs, which is what makes the simulation in `tests/`
//! replayable.

mod accepting;
mod acceptor;
mod config;
mod counters;
mod election;
mod event;
mod forwarding;
mod learner;
mod learning;
mod membership;
mod membership_notes;
mod message;
mod phase_one;
mod phase_two;
mod proposer;
mod read_index;
mod reads;
mod ready;
mod reconfiguration;
mod replica;
mod requests;
mod rng;
mod role;
mod seq_window;
mod storage;
#[cfg(test)]
mod test_support;
mod transfer;
mod types;
mod value;

pub use config::Config;
pub use event::{CampaignReason, Event, StepDownReason};
pub use learner::{Compaction, CompactionError, CompactionReport};
pub use membership::{ChangeError, Incarnation, Member, MemberRole, Membership, MembershipChange};
pub use message::{
    AcceptedEntry, Envelope, Message, PreVoteRefusal, Proposal, ProposalError, TruncationSnapshot, SLOT_MAX,
};
pub use reads::READS_PENDING_MAX;
pub use ready::{page_has_room, DurableState, HistoryRead, PersistOp, ReadPurpose, ReadReply, Ready, Reply};
pub use replica::{Replica, RoleName, Status};
pub use requests::{Lookup, RequestTable, TableChange, TableLimits};
pub use rng::Rng;
pub use storage::MemStorage;
pub use transfer::{TransferError, TransferStart};
pub use types::{payload_digest, request_fingerprint, Ballot, Digest, NodeId, RequestId, Slot};
pub use value::Value;
