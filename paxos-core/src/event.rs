//! What happened to a replica's leadership, for the driver's log and metrics: the core has no
//! logger, so it hands these out in [`crate::Ready::events`]. They change nothing and carry no
//! obligation; a driver may drop them.

use crate::message::PreVoteRefusal;
use crate::types::{Ballot, NodeId};
use std::fmt;

/// One election event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// This replica started phase 1 with `ballot`.
    BecameCandidate { ballot: Ballot, reason: CampaignReason },
    /// A voting member refused this replica's pre-vote.
    PreVoteRefused { ballot: Ballot, by: NodeId, refusal: PreVoteRefusal },
    /// This replica leads `ballot`, on the promises of `votes_from` (itself included when it
    /// votes).
    BecameLeader { ballot: Ballot, votes_from: Vec<NodeId> },
    /// This replica stopped leading (or campaigning with) `ballot`.
    SteppedDown { ballot: Ballot, was_leader: bool, reason: StepDownReason },
    /// A Prepare above this replica's promise went unanswered: it hears a live leader
    /// (leader stickiness; see `election.rs`).
    PrepareIgnored { ballot: Ballot, from: NodeId, leader: NodeId },
}

/// Why a replica started phase 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CampaignReason {
    /// Its election timer fired and a majority of the voting members said yes to its pre-vote.
    Timeout,
    /// The leader handed over to it (`TimeoutNow`).
    Transfer { from: NodeId },
    /// A configuration entry was applied under its leadership or candidacy: the new
    /// configuration's voters must promise before anything is proposed above the entry.
    ConfigurationChange,
}

/// Why a leader or candidate gave up its ballot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepDownReason {
    /// A member promised or followed a higher ballot, `ballot` (its owner's).
    HigherBallot { ballot: Ballot },
    /// It handed leadership over to `to`, whose Prepare arrived.
    Transfer { to: NodeId },
    /// It has not heard a majority of the voting members for two election timeouts.
    LostQuorum,
    /// Another ballot chose a different value at a slot it had in flight.
    Superseded,
    /// Its phase 1 had no majority within an election timeout: it asks again (pre-vote first).
    Stalled,
    /// The configuration in force no longer lets it lead (removed, made a learner or acceptor,
    /// or its disk is not admitted).
    ConfigurationChange,
}

impl fmt::Display for CampaignReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CampaignReason::Timeout => write!(f, "election timeout, pre-vote won"),
            CampaignReason::Transfer { from } => write!(f, "leader {from} handed over"),
            CampaignReason::ConfigurationChange => write!(f, "configuration change"),
        }
    }
}

impl fmt::Display for StepDownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepDownReason::HigherBallot { ballot } => {
                write!(f, "higher ballot {ballot} from node {}", ballot.node)
            }
            StepDownReason::Transfer { to } => write!(f, "handed leadership to node {to}"),
            StepDownReason::LostQuorum => write!(f, "lost quorum"),
            StepDownReason::Superseded => write!(f, "superseded at a slot in flight"),
            StepDownReason::Stalled => write!(f, "phase 1 found no majority in time"),
            StepDownReason::ConfigurationChange => write!(f, "configuration change"),
        }
    }
}

impl StepDownReason {
    /// A short name, for metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            StepDownReason::HigherBallot { .. } => "higher_ballot",
            StepDownReason::Transfer { .. } => "transfer",
            StepDownReason::LostQuorum => "lost_quorum",
            StepDownReason::Superseded => "superseded",
            StepDownReason::Stalled => "stalled",
            StepDownReason::ConfigurationChange => "configuration_change",
        }
    }
}
