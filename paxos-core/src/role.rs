//! What the proposer holds ([`Proposer`]), and what each role holds while it plays it: a follower its pre-vote in progress, a candidate its
//! phase 1 (the promises gathered so far), a leader its phase 2 window, the proposals queued behind it and
//! a transfer in progress. Plain state, no rules: the rules are in election.rs, proposer.rs and
//! transfer.rs, which import this file, and so does replica.rs, without importing them.

use crate::membership::MembershipChange;
use crate::message::{PreVoteRefusal, Proposal};
use crate::rng::Rng;
use crate::types::{Ballot, Digest, NodeId, RequestId, Slot};
use crate::value::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Where an answer to a proposal must go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Origin {
    Local,
    Remote(NodeId),
}

/// A slot the leader proposed and has not yet seen chosen.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub(crate) value: Value,
    pub(crate) votes: BTreeSet<NodeId>,
    pub(crate) sent_tick: u64,
}

/// The leader's slots in flight, with the bytes of their values: the window is bounded in
/// bytes as well as in slots (`Config::window_bytes_max`), so large values cannot pile up
/// gigabytes at the leader and in its Accepts.
///
/// Reads go through `Deref`; every change of the set goes through a method here, which keeps
/// `bytes` equal to the sum of `Value::size_bytes` over the slots (checked in debug builds).
#[derive(Debug, Default)]
pub(crate) struct InFlightSlots {
    slots: BTreeMap<Slot, InFlight>,
    bytes: usize,
}

impl InFlightSlots {
    pub(crate) fn insert(&mut self, slot: Slot, in_flight: InFlight) {
        self.bytes += in_flight.value.size_bytes();
        if let Some(old) = self.slots.insert(slot, in_flight) {
            self.bytes -= old.value.size_bytes();
        }
    }

    pub(crate) fn remove(&mut self, slot: &Slot) -> Option<InFlight> {
        let removed = self.slots.remove(slot)?;
        self.bytes -= removed.value.size_bytes();
        Some(removed)
    }

    pub(crate) fn pop_first(&mut self) -> Option<(Slot, InFlight)> {
        let (slot, removed) = self.slots.pop_first()?;
        self.bytes -= removed.value.size_bytes();
        Some((slot, removed))
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&Slot, &mut InFlight)> {
        self.slots.iter_mut()
    }

    /// Counts `from`'s vote for each of `slots` (the slots of one Accepted); removes and
    /// returns, in that order, those whose votes reached `quorum`: they are chosen.
    ///
    /// # Correctness
    /// Only votes of the leader's own ballot reach here (the caller checks the Accepted's
    /// ballot), and `quorum` is that of the configuration governing every slot in flight.
    pub(crate) fn count_votes(
        &mut self,
        from: NodeId,
        slots: Vec<Slot>,
        quorum: usize,
    ) -> Vec<(Slot, Value)> {
        let mut chosen = Vec::new();
        for slot in slots {
            if let Some(in_flight) = self.slots.get_mut(&slot) {
                in_flight.votes.insert(from);
                if in_flight.votes.len() >= quorum {
                    if let Some(in_flight) = self.remove(&slot) {
                        chosen.push((slot, in_flight.value));
                    }
                }
            }
        }
        chosen
    }

    /// Removes and returns, in slot order, every slot whose votes already reach `quorum` (the
    /// quorum shrank: a voter left, or announced a role that holds no vote).
    pub(crate) fn take_chosen(&mut self, quorum: usize) -> Vec<(Slot, Value)> {
        let done: Vec<Slot> = self
            .slots
            .iter()
            .filter(|(_, in_flight)| in_flight.votes.len() >= quorum)
            .map(|(slot, _)| *slot)
            .collect();
        let mut chosen = Vec::with_capacity(done.len());
        for slot in done {
            if let Some(in_flight) = self.remove(&slot) {
                chosen.push((slot, in_flight.value));
            }
        }
        chosen
    }

    /// Bytes of the values in flight.
    pub(crate) fn bytes(&self) -> usize {
        debug_assert_eq!(self.bytes, self.slots.values().map(|f| f.value.size_bytes()).sum::<usize>());
        self.bytes
    }
}

impl std::ops::Deref for InFlightSlots {
    type Target = BTreeMap<Slot, InFlight>;

    fn deref(&self) -> &Self::Target {
        &self.slots
    }
}

#[derive(Debug)]
pub(crate) struct CandidateState {
    pub(crate) ballot: Ballot,
    /// Phase 1 covers every slot from here on (this replica's applied prefix when it asked).
    pub(crate) from_slot: Slot,
    pub(crate) promises: BTreeMap<NodeId, PromiseData>,
    /// A quorum answered but some member has applied slots whose values no promise carried:
    /// wait for them (catch-up), then ask again from the new applied prefix.
    pub(crate) waiting_for_gap: bool,
    /// The highest-ballot accepted value of every slot below `from_slot` that earlier pages of
    /// this candidacy reported (phase 1 pages through a long run of accepted records).
    pub(crate) earlier_pages: BTreeMap<Slot, (Ballot, Value)>,
    /// The configuration this candidacy asks (its `chosen_at`): a candidacy whose
    /// configuration changed under it never leads (see `Replica::settle_membership`).
    pub(crate) configuration: Option<Slot>,
    /// The candidacy follows a leader's `TimeoutNow`: its Prepares say so (see `election.rs`).
    pub(crate) transfer: bool,
}

/// The content of one Promise, kept until the candidate has a quorum.
#[derive(Debug, Clone)]
pub(crate) struct PromiseData {
    pub(crate) accepted: Vec<crate::message::AcceptedEntry>,
    /// Applied history entries (verbatim), an unbroken run from the Prepare's `from_slot`.
    pub(crate) history: Vec<(Slot, Value)>,
    /// Raw values known chosen above the promiser's applied prefix.
    pub(crate) chosen: Vec<(Slot, Value)>,
    pub(crate) applied_upto: Slot,
    /// `accepted` and `chosen` cover the slots below this only (`None`: every slot).
    pub(crate) covered_upto: Option<Slot>,
}

#[derive(Debug)]
pub(crate) struct LeaderState {
    pub(crate) ballot: Ballot,
    /// The next slot to give a new proposal. Every slot in `[applied_upto, next_slot)` is either
    /// in flight, chosen, or (right after election) known chosen and awaiting catch-up.
    pub(crate) next_slot: Slot,
    pub(crate) in_flight: InFlightSlots,
    /// The leader's own votes not yet counted: (the Ready that writes its accept, slot), in
    /// the order taken. Each counts once that Ready is persisted (`Replica::on_persisted`).
    pub(crate) own_votes_waiting: VecDeque<(u64, Slot)>,
    /// Slots proposed since the last `take_ready`, to send in one Accept per peer.
    pub(crate) unsent: Vec<Slot>,
    pub(crate) queue: VecDeque<Proposal>,
    /// Payload bytes of `queue` (bounded by `Config::proposals_queued_bytes_max`).
    pub(crate) queued_bytes: usize,
    /// Who waits for each request id proposed by this leader.
    /// The fingerprint of the proposal queued or in flight under each request id: a proposal
    /// with another fingerprint is refused as busy, and an applied value with another one
    /// answers no one here.
    pub(crate) waiters: BTreeMap<RequestId, (crate::Digest, Vec<Origin>)>,
    pub(crate) last_heartbeat_tick: u64,
    /// Last tick unanswered Accepts were looked at for resending.
    pub(crate) last_retransmit_tick: u64,
    /// The commit point followers were last told (in an Accept or a Heartbeat).
    pub(crate) announced_commit: Slot,
    /// Last tick each peer answered us: a leader that cannot hear a quorum steps down.
    pub(crate) last_heard_tick: BTreeMap<NodeId, u64>,
    /// The slot of a configuration entry in flight: nothing is proposed above it until it is
    /// applied, and then this leadership ends (see `Replica::propose_membership`).
    pub(crate) config_slot: Option<Slot>,
    /// A change waiting for the window to drain, and whom to answer.
    pub(crate) pending_change: Option<(MembershipChange, Option<RequestId>)>,
    /// Who waits for the configuration entry in flight.
    pub(crate) change_waiter: Option<RequestId>,
    /// Last tick each member (of any role) answered this leadership: a transfer's target must
    /// have answered within an election timeout.
    pub(crate) answered_tick: BTreeMap<NodeId, u64>,
    /// A leadership transfer in progress: nothing new is proposed meanwhile.
    pub(crate) transfer: Option<Transfer>,
}

#[derive(Debug)]
pub(crate) enum Role {
    Follower,
    Candidate(CandidateState),
    Leader(Box<LeaderState>),
}

/// A transfer in progress, kept in the leader's state.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Transfer {
    pub(crate) target: NodeId,
    /// The transfer is abandoned at this tick if the target has not taken over.
    pub(crate) deadline_tick: u64,
    /// When `TimeoutNow` was last sent (it is sent again each heartbeat interval: it may be lost).
    pub(crate) timeout_now_sent_tick: Option<u64>,
    /// When the target was last sent the commit point out of turn.
    pub(crate) nudged_tick: Option<u64>,
}

/// A pre-vote in progress: this member asked whether a majority would promise `ballot`.
#[derive(Debug, Clone)]
pub(crate) struct PreVote {
    pub(crate) ballot: Ballot,
    pub(crate) attempt: u64,
    /// Voting members that said yes (this member itself, when it votes).
    pub(crate) grants: BTreeSet<NodeId>,
    pub(crate) refusals: BTreeMap<NodeId, PreVoteRefusal>,
}

/// The proposer's state: the role this replica plays now and what it knows of leaders,
/// elections and the proposals it forwarded. The rules that change it are the proposer's:
/// election.rs, phase_one.rs, phase_two.rs, forwarding.rs, transfer.rs and proposer.rs.
#[derive(Debug)]
pub(crate) struct Proposer {
    pub(crate) role: Role,
    pub(crate) leader_hint: Option<NodeId>,
    /// The ballot of the last leader this replica heard lead (a Heartbeat, an Accept, a
    /// TimeoutNow): `leader_heard` tells a leader at work from a candidate that prepared.
    pub(crate) heard_leading: Ballot,
    /// The tick this replica last followed a leader at work (see `election.rs`).
    pub(crate) leader_heard_tick: Option<u64>,
    /// The candidate this replica last granted a promise to, and when (see `election.rs`).
    pub(crate) promise_granted: Option<(NodeId, u64)>,
    /// The pre-vote in progress, if any (see `election.rs`).
    pub(crate) pre_vote: Option<PreVote>,
    /// Pre-votes started so far: numbers each one's answers.
    pub(crate) pre_vote_attempts: u64,
    /// Highest round seen in any ballot: a new candidacy goes above it.
    pub(crate) round_seen: u64,
    /// When this member may next start an election.
    pub(crate) election_timer: ElectionTimer,
    /// Proposals forwarded to the leader: request id -> tick after which they time out, and the
    /// proposal's fingerprint (one per request id: another is refused as busy).
    pub(crate) forwarded: BTreeMap<RequestId, (u64, Digest)>,
    /// Answers from the leader held until this replica has applied the slot, so a client that
    /// reads the history of the node it proposed through sees its own write.
    pub(crate) replies_after_apply: BTreeMap<Slot, Vec<(RequestId, Digest)>>,
}

impl Proposer {
    /// A follower that knows no leader, above every round its promise has seen, with its
    /// first election deadline drawn.
    pub(crate) fn new(round_seen: u64, election_deadline_ticks: u64) -> Proposer {
        Proposer {
            role: Role::Follower,
            leader_hint: None,
            heard_leading: Ballot::ZERO,
            leader_heard_tick: None,
            promise_granted: None,
            pre_vote: None,
            pre_vote_attempts: 0,
            round_seen,
            election_timer: ElectionTimer { elapsed_ticks: 0, deadline_ticks: election_deadline_ticks },
            forwarded: BTreeMap::new(),
            replies_after_apply: BTreeMap::new(),
        }
    }
}

/// When a member that hears no leader may start an election: a deadline drawn at random, so
/// that two members rarely time out together, counted in ticks.
#[derive(Debug)]
pub(crate) struct ElectionTimer {
    elapsed_ticks: u64,
    deadline_ticks: u64,
}

impl ElectionTimer {
    /// Counts one tick; whether the deadline is reached.
    pub(crate) fn tick(&mut self) -> bool {
        self.elapsed_ticks += 1;
        self.elapsed_ticks >= self.deadline_ticks
    }

    /// Starts over, with a deadline drawn from `[min_ticks, max_ticks)`.
    pub(crate) fn restart(&mut self, rng: &mut Rng, min_ticks: u64, max_ticks: u64) {
        self.elapsed_ticks = 0;
        self.deadline_ticks = rng.range(min_ticks, max_ticks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_flight(payload: &str) -> InFlight {
        let value = Value::Command {
            request_id: RequestId { client_id: 1, seq: 1 },
            key: [0; 16],
            payload: payload.as_bytes().to_vec(),
        };
        InFlight { value, votes: BTreeSet::from([1]), sent_tick: 0 }
    }

    /// A slot is chosen on the vote that makes a quorum, not one vote before, and leaves the
    /// window with its bytes.
    #[test]
    fn a_slot_is_chosen_exactly_when_its_votes_reach_the_quorum() {
        let mut window = InFlightSlots::default();
        window.insert(4, in_flight("a"));
        window.insert(5, in_flight("bb"));
        assert!(window.count_votes(1, vec![4, 5], 3).is_empty(), "a repeated vote counts once");
        assert!(window.count_votes(2, vec![5, 9], 3).is_empty(), "two votes of three");
        let chosen = window.count_votes(3, vec![5, 4], 3);
        assert_eq!(chosen.iter().map(|(slot, _)| *slot).collect::<Vec<_>>(), vec![5], "in message order");
        assert_eq!(window.len(), 1);
        assert_eq!(window.bytes(), in_flight("a").value.size_bytes());
        assert!(window.take_chosen(3).is_empty());
        assert_eq!(window.take_chosen(2).len(), 1, "the quorum shrank to the votes slot 4 holds");
        assert_eq!(window.bytes(), 0);
    }
}
