//! The replica: one member's proposer, acceptor and learner, as a deterministic state machine.
//!
//! Inputs are [`Replica::tick`], [`Replica::step`], [`Replica::propose`] and
//! [`Replica::compact`]; the output is [`Replica::take_ready`].
//!
//! Each role's state is a room of its own, in a file that imports no rule: the [`Acceptor`]
//! (acceptor.rs: its promise and accepted records, changed only by its methods), the
//! [`Learner`] (learner.rs), the [`Proposer`] and the state of each phase (role.rs), the
//! [`MembershipNotes`] (membership_notes.rs), the reads held (reads.rs) and the [`Counters`].
//! The `Replica` keeps the configuration, the clock, the ready queue and the wiring: the rules
//! that cross roles are further `impl Replica` blocks, one file per concern (accepting.rs,
//! learning.rs, election.rs, phase_one.rs, phase_two.rs, forwarding.rs, proposer.rs,
//! reconfiguration.rs, transfer.rs, read_index.rs), and this file dispatches messages to them.
//! None of those files is imported here, so no file imports its importer
//! (`scripts/module-cycles`).

use crate::acceptor::Acceptor;
use crate::config::Config;
use crate::counters::Counters;
use crate::learner::Learner;
use crate::membership::{Incarnation, MemberRole, Membership, MembershipChange};
use crate::membership_notes::MembershipNotes;
use crate::message::{Envelope, Message, Proposal, ProposalError};
use crate::ready::{DurableState, PersistOp, Ready, Reply};
use crate::rng::Rng;
use crate::role::{Origin, PromiseData, Proposer, Role};
use crate::types::{Ballot, NodeId, RequestId, Slot};
use std::collections::{BTreeMap, BTreeSet};

/// A public view of the replica, for status reports and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: RoleName,
    pub leader: Option<NodeId>,
    pub promised: Ballot,
    /// The ballot this replica leads or campaigns with, if any.
    pub own_ballot: Option<Ballot>,
    pub applied_upto: Slot,
    pub history_start: Slot,
    pub accepted_records: usize,
    /// Bytes of the accepted records' values (`Value::size_bytes`): what garbage collection of
    /// applied slots frees.
    pub accepted_bytes: usize,
    pub request_records: usize,
    /// Client sessions open in the duplicate table.
    pub sessions: usize,
    /// Accepts refused for slots already applied here (a stale leader's, or a retransmission).
    pub stale_accepts_refused: u64,
    /// Leaderships given up because another ballot chose at a slot this leader had in flight.
    pub superseded_leaderships: u64,
    /// Messages dropped for breaking a rule no honest peer breaks.
    pub rejected_messages: u64,
    /// How far each member has applied, as this replica last heard.
    pub member_applied_upto: BTreeMap<NodeId, Slot>,
    /// This replica's incarnation.
    pub incarnation: Incarnation,
    /// The configuration in force here (as of `applied_upto`).
    pub membership: Membership,
    /// Whether this replica may vote: a voter of the configuration, with the incarnation it
    /// admits (and not a joining node that has yet to learn the configuration).
    pub can_vote: bool,
    /// Whether this replica may stand for election: a voter or a proposer of the
    /// configuration, with the incarnation it admits.
    pub can_lead: bool,
    /// Members whose messages this replica ignores because they present another incarnation
    /// than the configuration admits: node -> incarnation presented.
    pub refused_incarnations: BTreeMap<NodeId, Incarnation>,
    /// Peers that refused this replica's messages: node -> (incarnation they admit, slot of
    /// their configuration).
    pub refused_by: BTreeMap<NodeId, (Option<Incarnation>, Slot)>,
    /// Nodes whose history belongs to another log than this replica's (node -> their log):
    /// one of the two bootstrapped a cluster of its own.
    pub foreign_logs: BTreeMap<NodeId, u64>,
    /// The member this leader is handing leadership to, while a transfer is in progress.
    pub transfer_target: Option<NodeId>,
    /// Transfers this replica abandoned because the target did not take over in time.
    pub transfers_abandoned: u64,
    /// Campaigns this replica started because a leader handed over to it.
    pub transfers_taken: u64,
    /// Prepares above the promise left unanswered because this replica heard a live leader
    /// (leader stickiness, see `election.rs`).
    pub prepares_ignored: u64,
    /// Refusals of this replica's pre-votes.
    pub pre_votes_refused: u64,
}

/// What a replica is doing now; crosses the wire in status reports (as `"leader"` etc. in JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    Follower,
    Candidate,
    Leader,
}

impl std::fmt::Display for RoleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RoleName::Follower => "follower",
            RoleName::Candidate => "candidate",
            RoleName::Leader => "leader",
        })
    }
}

/// One member of a Multi-Paxos cluster.
///
/// # Correctness
/// The driver must honour the [`Ready`] contract: persist before sending. The replica's
/// in-memory state runs ahead of disk between `take_ready` calls, which is safe only because
/// nothing it decided leaves the process before the batch that records it is durable.
#[derive(Debug)]
pub struct Replica {
    pub(crate) config: Config,
    /// The role this replica announces while the configuration is unbound: the one its
    /// directory was first started with (see `Config::role`).
    pub(crate) announced_role: MemberRole,
    pub(crate) rng: Rng,
    pub(crate) tick_now: u64,

    /// What this member promised and accepted (durable).
    pub(crate) acceptor: Acceptor,

    /// What this member knows of the chosen history (applied prefix, truncation, duplicate
    /// table, commit bookkeeping, catch-up).
    pub(crate) learner: Learner,

    /// Counters of rare events.
    pub(crate) counters: Counters,

    /// The proposer: the role played now (follower, candidate, leader) and what it knows of
    /// leaders, elections and the proposals it forwarded.
    pub(crate) proposer: Proposer,

    /// The membership bookkeeping: incarnations seen and refused, foreign logs, and whether
    /// the configuration changed since it was last settled.
    pub(crate) membership_notes: MembershipNotes,

    /// Linearizable reads in progress (see `reads.rs` and `read_index.rs`).
    pub(crate) reads: crate::reads::Reads,
    pub(crate) ready: Ready,
    /// Number of the last Ready handed out.
    ready_number: u64,
    /// Every Ready up to this number is written (reported with `on_persisted`). Readies above
    /// it, up to `ready_number`, are in flight: the driver may write them while this replica
    /// goes on stepping input.
    persisted_number: u64,
    /// The Ready that carries the latest `Promise` write (0: on disk at recovery): the promise
    /// is durable once this one is persisted. A candidate counts its own promise only then.
    promise_written_by: u64,
}

impl Replica {
    /// A replica with empty storage.
    pub fn new(config: Config, seed: u64) -> Self {
        Self::recover(config, DurableState::default(), seed)
    }

    /// Rebuilds a replica from what storage returned after a restart.
    pub fn recover(config: Config, durable: DurableState, seed: u64) -> Self {
        config.validate();
        assert!(durable.applied_upto >= durable.truncation.history_start);
        let mut rng = Rng::new(seed ^ config.id.wrapping_mul(0x9E37_79B9));
        let election_deadline_ticks =
            rng.range(config.election_timeout_ticks, 2 * config.election_timeout_ticks);
        let round_seen = durable.promised.round;
        // See `Config::role`: the role the directory was first started with.
        let announced_role = durable.role.unwrap_or(config.role);
        Replica {
            announced_role,
            rng,
            tick_now: 0,
            acceptor: Acceptor::new(durable.promised, durable.accepted),
            learner: Learner::recover(
                config.id,
                durable.applied_upto,
                durable.truncation,
                durable.requests,
                {
                    let mut membership = durable
                        .membership
                        .unwrap_or_else(|| Membership::bootstrap(&config.members, &config.addresses));
                    membership.announce_role(config.id, announced_role);
                    membership
                },
            ),
            counters: Counters::default(),
            proposer: Proposer::new(round_seen, election_deadline_ticks),
            membership_notes: MembershipNotes::default(),
            reads: crate::reads::Reads::default(),
            ready: Ready::default(),
            ready_number: 0,
            persisted_number: 0,
            promise_written_by: 0,
            config,
        }
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Advances logical time by one tick: heartbeats, elections, retransmissions, timeouts.
    pub fn tick(&mut self) {
        self.tick_now += 1;
        self.tick_proposer();
        self.tick_learner();
        self.tick_progress();
        let now = self.tick_now;
        let expired: Vec<(RequestId, crate::Digest)> = self
            .proposer
            .forwarded
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(request_id, (_, fingerprint))| (*request_id, *fingerprint))
            .collect();
        for (request_id, fingerprint) in expired {
            self.proposer.forwarded.remove(&request_id);
            self.reply(Origin::Local, (request_id, fingerprint), Err(ProposalError::Timeout));
        }
        self.settle_membership();
    }

    /// Handles one message from a peer. Messages from non-members or for another replica are
    /// dropped: the transport should have refused them already.
    pub fn step(&mut self, envelope: Envelope) {
        self.step_message(envelope);
        self.settle_membership();
    }

    fn step_message(&mut self, envelope: Envelope) {
        let Some((from, incarnation, message)) = self.admit(envelope) else {
            return;
        };
        self.observe_ballot(&message);
        self.dispatch(from, incarnation, message);
    }

    /// What a message must pass before any rule sees it: addressed here, within the protocol's
    /// limits, of this log, from a member this configuration admits, in a role that may send
    /// it, in a ballot of its own. `None` when it stops here: dropped, or, from a node this
    /// replica does not count (yet), learned from as a stranger's and believed in nothing.
    fn admit(&mut self, envelope: Envelope) -> Option<(NodeId, Incarnation, Message)> {
        let Envelope { from, to, incarnation, role, message } = envelope;
        if to != self.config.id || from == self.config.id {
            return None;
        }
        if !message.within_limits() {
            self.counters.rejected_messages += 1;
            return None;
        }
        if let Some(theirs) = message.log_id() {
            if !self.same_log(from, theirs) {
                return None;
            }
        }
        // While the configuration is the bootstrap one, each member says what it is. A role
        // that holds no vote shrinks the unanimity a binding entry in flight waits for.
        if self.learner.announce_role(from, role) {
            self.check_quorums();
        }
        if self.membership_notes.note_incarnation(from, incarnation) {
            // What the member's former incarnation had applied says nothing of this one.
            self.learner.forget_member_progress(from);
        }
        let membership = self.learner.membership();
        if !membership.contains(from) || !membership.admits(from, incarnation) {
            if self.speaks_for_configuration() && membership.contains(from) {
                // A voter of the configuration in force speaks for it: this is a member with a
                // disk the configuration does not know.
                self.refuse_incarnation(from, incarnation, message);
            } else {
                // Not a member as far as this replica knows: this replica's configuration may
                // be behind (a node added since, a learner or joining node that has not caught
                // up), or the sender was removed. Learn from it; vote for nothing it says.
                self.learn_from_stranger(from, message);
            }
            return None;
        }
        // Only members that may lead prepare, accept and heartbeat; only voting members promise
        // and vote. One this replica knows in another role may have been promoted since (this
        // replica's configuration is behind): learn from it, believe none of it.
        let allowed = match &message {
            Message::Prepare { .. }
            | Message::Accept { .. }
            | Message::Heartbeat { .. }
            | Message::TimeoutNow { .. }
            | Message::PreVote { .. } => membership.may_lead(from),
            Message::Promise { .. } | Message::Accepted { .. } | Message::PreVoteReply { .. } => {
                membership.votes(from)
            }
            _ => true,
        };
        if !allowed {
            self.learn_from_stranger(from, message);
            return None;
        }
        // Only a ballot's owner may prepare, accept or heartbeat in it; anything else is a
        // confused or hostile peer, and believing it could make us follow a phantom leader.
        if let Message::Prepare { ballot, .. }
        | Message::Accept { ballot, .. }
        | Message::Heartbeat { ballot, .. }
        | Message::TimeoutNow { ballot, .. }
        | Message::PreVote { ballot, .. } = &message
        {
            if ballot.node != from {
                return None;
            }
        }
        Some((from, incarnation, message))
    }

    /// Hands an admitted message to its handler.
    fn dispatch(&mut self, from: NodeId, incarnation: Incarnation, message: Message) {
        match message {
            Message::Prepare { ballot, from_slot, transfer } => {
                self.on_prepare(from, ballot, from_slot, transfer)
            }
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
                let data = PromiseData { accepted, history, chosen, applied_upto, covered_upto };
                self.on_promise(from, incarnation, ballot, from_slot, data)
            }
            Message::Nack { ballot, promised } => self.on_nack(from, ballot, promised),
            Message::Accept { ballot, entries, commit_upto } => {
                self.on_accept(from, ballot, entries, commit_upto)
            }
            Message::Accepted { ballot, slots, applied_upto } => {
                self.on_accepted(from, incarnation, ballot, slots, applied_upto)
            }
            Message::Heartbeat { ballot, commit_upto, history_start, round } => {
                self.on_heartbeat(from, ballot, commit_upto, history_start, round)
            }
            Message::HeartbeatAck { ballot, applied_upto, round } => {
                self.on_heartbeat_ack(from, ballot, applied_upto, round)
            }
            Message::CatchUp { from_slot, request } => self.on_catch_up(from, from_slot, request),
            Message::CatchUpEntries { entries, applied_upto, request, .. } => {
                self.on_catch_up_entries(from, entries, applied_upto, request)
            }
            Message::CatchUpTruncated { snapshot, request } => {
                self.on_catch_up_truncated(from, snapshot, request)
            }
            Message::Forward { proposal } => self.on_forward(from, proposal),
            Message::ForwardReply { request_id, fingerprint, outcome } => {
                self.on_forward_reply(request_id, fingerprint, outcome)
            }
            Message::NotAdmitted { admitted, chosen_at, applied_upto } => {
                self.on_not_admitted(from, admitted, chosen_at, applied_upto)
            }
            Message::TimeoutNow { ballot, commit_upto } => self.on_timeout_now(from, ballot, commit_upto),
            Message::PreVote { ballot, attempt } => self.on_pre_vote(from, ballot, attempt),
            Message::PreVoteReply { ballot, attempt, promised, refusal } => {
                self.on_pre_vote_reply(from, incarnation, ballot, attempt, promised, refusal)
            }
            Message::Progress { applied_upto, .. } => self.on_progress(from, applied_upto),
            Message::ReadIndex { request } => self.on_read_index(from, request),
            Message::ReadIndexReply { request, outcome } => self.on_read_index_reply(from, request, outcome),
        }
    }

    /// A member presented an incarnation the configuration does not admit (it lost its disk,
    /// or it was replaced by a configuration this replica has not applied yet): no vote of it
    /// counts and it is not followed, but history and progress still flow both ways (the one
    /// history is the same whoever holds it), so whichever of the two is behind catches up. It
    /// is told why, at most once per election timeout.
    fn refuse_incarnation(&mut self, from: NodeId, incarnation: Incarnation, message: Message) {
        self.learn_from_stranger(from, message);
        let (now, quiet_ticks) = (self.tick_now, self.config.election_timeout_ticks);
        if !self.membership_notes.tell_refusal(from, incarnation, now, quiet_ticks) {
            return;
        }
        let membership = self.learner.membership();
        let message = Message::NotAdmitted {
            admitted: membership.get(from).map(|member| member.incarnation),
            chosen_at: membership.chosen_at.unwrap_or(0),
            applied_upto: self.learner.applied_upto(),
        };
        self.send(from, message);
    }

    /// Whether `from`'s history (of log `theirs`) may be taken: both logs unbound, or the same
    /// one. A node wiped and restarted as a brand-new single-member cluster has bound a log of
    /// its own; taking the old cluster's entries after its own would mix two histories, so it
    /// takes nothing, and says so (`status`).
    fn same_log(&mut self, from: NodeId, theirs: u64) -> bool {
        let ours = self.learner.membership().log_id;
        if ours == 0 || theirs == 0 || ours == theirs {
            return true;
        }
        self.membership_notes.note_foreign_log(from, theirs);
        false
    }

    /// What a replica takes from a node outside its configuration: the history (every node of
    /// the cluster holds a prefix of the one chosen history) and how far the node has got.
    /// Nothing that counts as a vote or makes it follow a leader.
    fn learn_from_stranger(&mut self, from: NodeId, message: Message) {
        match message {
            Message::CatchUp { from_slot, request } => self.on_catch_up(from, from_slot, request),
            Message::CatchUpEntries { entries, applied_upto, request, .. } => {
                self.on_catch_up_entries(from, entries, applied_upto, request)
            }
            Message::CatchUpTruncated { snapshot, request } => {
                self.on_catch_up_truncated(from, snapshot, request)
            }
            Message::Progress { applied_upto, .. } => self.on_progress(from, applied_upto),
            Message::NotAdmitted { admitted, chosen_at, applied_upto } => {
                self.on_not_admitted(from, admitted, chosen_at, applied_upto)
            }
            Message::Heartbeat { commit_upto: upto, .. }
            | Message::Accept { commit_upto: upto, .. }
            | Message::HeartbeatAck { applied_upto: upto, .. }
            | Message::Accepted { applied_upto: upto, .. }
            | Message::Promise { applied_upto: upto, .. } => {
                self.learner.note_member_progress(from, upto);
                self.maybe_catch_up();
            }
            Message::Prepare { ballot, .. } | Message::PreVote { ballot, .. } => {
                self.answer_prepare_without_promise(from, ballot)
            }
            Message::Nack { .. }
            | Message::Forward { .. }
            | Message::ForwardReply { .. }
            | Message::TimeoutNow { .. }
            | Message::PreVoteReply { .. } => {}
            // A stranger's read index vouches for nothing here; this replica, not a member as
            // far as it knows, answers none (the asker times out and asks elsewhere).
            Message::ReadIndex { .. } | Message::ReadIndexReply { .. } => {}
        }
    }

    fn on_not_admitted(
        &mut self,
        from: NodeId,
        admitted: Option<Incarnation>,
        chosen_at: Slot,
        applied_upto: Slot,
    ) {
        if admitted == Some(self.config.incarnation) {
            return;
        }
        let ours = self.learner.membership().chosen_at;
        if ours.is_some_and(|ours| ours > chosen_at) && self.learner.applied_upto() > applied_upto {
            // The refuser's configuration is older than this replica's, which admits this
            // incarnation (a replacement it has not applied yet): not a problem, a peer behind.
            // An empty page of history says how far this replica is, and it catches up.
            let applied_upto = self.learner.applied_upto();
            let log_id = self.learner.membership().log_id;
            let request = 0;
            self.send(from, Message::CatchUpEntries { entries: Vec::new(), applied_upto, log_id, request });
            return;
        }
        self.membership_notes.note_refused_by(from, admitted, chosen_at);
        self.learner.note_member_progress(from, applied_upto);
        self.maybe_catch_up();
    }

    /// Whether this replica may vote: a voter of the configuration in force, with the
    /// incarnation it admits.
    pub(crate) fn can_vote(&self) -> bool {
        self.learner.membership().counts_vote(self.config.id, self.config.incarnation)
    }

    /// Whether this replica may campaign: it may vote, and it is not a node joining a running
    /// cluster that has yet to learn the configuration (its flags' bootstrap configuration is
    /// not the cluster's). Such a node still votes when asked: only a node that counts it as
    /// a voter asks, and an unbound configuration needs every voter's vote, so a bootstrap
    /// that a member restarted with `existing` joined can still finish.
    pub(crate) fn can_lead(&self) -> bool {
        self.learner.membership().admits_leader(self.config.id, self.config.incarnation)
            && (self.learner.membership().is_bound() || !self.config.join_existing)
    }

    /// Whether this replica's own vote counts in its quorums when it campaigns or leads (a
    /// proposer's never does: it keeps no acceptor state).
    pub(crate) fn own_vote(&self) -> BTreeSet<NodeId> {
        if self.can_vote() {
            BTreeSet::from([self.config.id])
        } else {
            BTreeSet::new()
        }
    }

    /// Whether this replica speaks for the configuration in force: an admitted member that
    /// votes or may lead, whose word on who is admitted others take.
    pub(crate) fn speaks_for_configuration(&self) -> bool {
        self.can_vote() || self.can_lead()
    }

    /// Ends whatever candidacy or leadership the configuration changed under: a leader's phase
    /// 1 covered the slots above the entry with the old configuration's quorum, and the new one
    /// must promise before anything is proposed there. A replica that may still vote starts a
    /// new candidacy at once (no election timeout: usually the same leader wins again).
    pub(crate) fn settle_membership(&mut self) {
        let membership = self.learner.membership();
        if !self.membership_notes.settle(membership, self.config.id, self.config.incarnation) {
            return;
        }
        // The leader it follows may lead no more (it removed itself, or became an acceptor or a
        // learner; its last heartbeat said so): forget it, so no proposal is forwarded there,
        // whose answer would come from a stranger and be dropped, and an election may start.
        let hint_gone = self
            .proposer
            .leader_hint
            .is_some_and(|hint| hint != self.config.id && !membership.may_lead(hint));
        if hint_gone {
            self.proposer.leader_hint = None;
            self.fail_forwarded(None);
        }
        self.drop_acceptor_state_unless_voting();
        match &self.proposer.role {
            Role::Follower => {}
            // Even a candidacy that asked the configuration now in force: an entry can carry
            // the same `chosen_at` as the one the candidacy started with (a cluster bound
            // outside the log, at slot 0), and asking again costs one round trip.
            Role::Candidate(_) | Role::Leader(_) => {
                if self.can_lead() {
                    self.become_candidate(crate::event::CampaignReason::ConfigurationChange);
                } else {
                    if self.is_leader() {
                        // Its last word: the commit point, so the members learn that the change
                        // which ended this leadership is chosen. They accepted it but may never
                        // hear of it otherwise (this node stops leading, and an operator stops a
                        // removed node), and without it they hold the old configuration, in
                        // which the survivors of one more failure may be no majority.
                        self.broadcast_heartbeat();
                    }
                    self.step_down(None, crate::event::StepDownReason::ConfigurationChange);
                }
            }
        }
    }

    /// A member that does not vote (made a proposer or a learner, or removed) keeps no
    /// acceptor state it could still need: its accepted records of applied slots go, on disk
    /// too, as soon as it applies them. A non-voter accepts nothing new, so it ends with none,
    /// as one started that way.
    ///
    /// # Correctness
    ///
    /// Only slots below the applied prefix: they are chosen and applied, so their records are
    /// redundant for any role (`compact` drops them too). A record above it is kept: its slot
    /// may be governed by a later configuration this replica has not applied yet, in which it
    /// votes again with the same disk, and where its vote may be what chose the value (an
    /// adversarial review found agreement broken by dropping those: demoted and promoted back
    /// within one catch-up page, or added as a voter and promoted before applying its Add).
    pub(crate) fn drop_acceptor_state_unless_voting(&mut self) {
        let applied_upto = self.learner.applied_upto();
        if !self.can_vote() && self.acceptor.forget_below(applied_upto) > 0 {
            self.persist(PersistOp::DeleteAcceptedBelow(applied_upto));
        }
    }

    /// Proposes a client value. The answer comes back in a later `Ready::replies`, with the
    /// proposal's fingerprint.
    pub fn propose(&mut self, proposal: Proposal) {
        let answer_to = (proposal.request_id, proposal.fingerprint());
        if proposal.payload.len() > self.config.value_bytes_max {
            let error = ProposalError::TooLarge {
                size_bytes: proposal.payload.len(),
                limit_bytes: self.config.value_bytes_max,
            };
            self.reply(Origin::Local, answer_to, Err(error));
            return;
        }
        if matches!(self.proposer.role, Role::Leader(_)) {
            self.leader_propose(proposal, Origin::Local);
            return;
        }
        // A session this replica knows refuses a request without its key here: it must not
        // reach a leader, where it would wait beside the owner's request with the same id.
        if let Some(error) = self.refusal_by_table(&proposal) {
            self.reply(Origin::Local, answer_to, Err(error));
            return;
        }
        match self.proposer.leader_hint {
            Some(leader) if leader != self.config.id && !matches!(self.proposer.role, Role::Candidate(_)) => {
                if let Some((_, fingerprint)) = self.proposer.forwarded.get(&proposal.request_id) {
                    if *fingerprint != answer_to.1 {
                        self.reply(Origin::Local, answer_to, Err(ProposalError::RequestIdBusy(answer_to.0)));
                        return;
                    }
                }
                let deadline = self.tick_now + self.config.forward_timeout_ticks;
                self.proposer.forwarded.insert(proposal.request_id, (deadline, answer_to.1));
                self.send(leader, Message::Forward { proposal });
            }
            _ => self.reply(Origin::Local, answer_to, Err(ProposalError::NotLeader { leader_hint: None })),
        }
        self.settle_membership();
    }

    /// Why the duplicate table refuses `proposal` outright (the wrong key for its session, or
    /// an applied request id with another value), if it does.
    pub(crate) fn refusal_by_table(&self, proposal: &Proposal) -> Option<ProposalError> {
        if proposal.is_register() {
            return None;
        }
        let digest = crate::payload_digest(&proposal.payload);
        match self.learner.requests().lookup(
            proposal.request_id,
            proposal.key,
            digest,
            self.config.request_table,
        ) {
            crate::Lookup::WrongKey => Some(ProposalError::WrongSessionKey(proposal.request_id)),
            crate::Lookup::Reused(_) => Some(ProposalError::RequestIdReused(proposal.request_id)),
            _ => None,
        }
    }

    /// Asks for a configuration change, answered in a later `Ready::replies` with the slot of
    /// the entry once it is applied (or why not). Only the leader takes changes.
    pub fn change_membership(&mut self, request_id: RequestId, change: MembershipChange) {
        if !self.is_leader() {
            let error = ProposalError::NotLeader { leader_hint: self.proposer.leader_hint };
            self.reply(Origin::Local, (request_id, [0; 16]), Err(error));
            return;
        }
        self.propose_membership(change, Some(request_id));
        self.settle_membership();
    }

    /// Hands the driver everything decided since the last call. See [`Ready`] for the contract.
    /// Several Readies may be in flight at once (taken, not yet reported persisted).
    pub fn take_ready(&mut self) -> Ready {
        self.flush_accepts();
        self.release_reads();
        let mut ready = std::mem::take(&mut self.ready);
        if !ready.is_empty() {
            self.ready_number += 1;
            ready.number = self.ready_number;
        }
        ready
    }

    /// The driver reports that every Ready up to `number` is written (step 2 of the [`Ready`]
    /// contract): Readies are written in the order they were taken, and one report may cover
    /// several. Reporting 0 (an empty Ready) or a number already reported changes nothing.
    ///
    /// This is where this replica's own votes count: a leader's vote for the slots it accepted
    /// in those Readies; and where a candidate with a quorum leads, once its promise is written
    /// (see [`Ready`], "Correctness").
    pub fn on_persisted(&mut self, number: u64) {
        assert!(
            number <= self.ready_number,
            "Ready {number} reported persisted, but only {} were handed out",
            self.ready_number
        );
        if number <= self.persisted_number {
            return;
        }
        self.persisted_number = number;
        self.lead_once_promise_written();
        self.count_own_votes();
        // Like any input: a vote counted here may have applied a configuration entry, and a
        // promise counted here may have completed a phase 1 (see `settle_membership`).
        self.settle_membership();
    }

    /// The number of the Ready whose write makes durable everything this replica has asked to
    /// persist so far: the one being built if it holds anything, else the last handed out
    /// (Readies are written in order, so any later one would do as well).
    pub(crate) fn written_by(&self) -> u64 {
        if self.ready.is_empty() {
            self.ready_number
        } else {
            self.ready_number + 1
        }
    }

    /// Every Ready up to this number is written (see `on_persisted`).
    pub(crate) fn persisted_number(&self) -> u64 {
        self.persisted_number
    }

    /// Whether Ready `number` is written (see `on_persisted`).
    pub(crate) fn is_written(&self, number: u64) -> bool {
        number <= self.persisted_number
    }

    /// Whether this acceptor's promise, as it stands in memory, is on disk.
    pub(crate) fn promise_is_written(&self) -> bool {
        self.is_written(self.promise_written_by)
    }

    /// A snapshot of this replica's state for status reports.
    pub fn status(&self) -> Status {
        let (role, own_ballot) = match &self.proposer.role {
            Role::Follower => (RoleName::Follower, None),
            Role::Candidate(candidate) => (RoleName::Candidate, Some(candidate.ballot)),
            Role::Leader(leader) => (RoleName::Leader, Some(leader.ballot)),
        };
        let mut member_applied_upto = self.learner.member_applied_upto().clone();
        member_applied_upto.insert(self.config.id, self.learner.applied_upto());
        Status {
            id: self.config.id,
            role,
            leader: if role == RoleName::Leader { Some(self.config.id) } else { self.proposer.leader_hint },
            promised: self.acceptor.promised(),
            own_ballot,
            applied_upto: self.learner.applied_upto(),
            history_start: self.learner.history_start(),
            accepted_records: self.acceptor.accepted().len(),
            accepted_bytes: self.acceptor.accepted().values().map(|(_, value)| value.size_bytes()).sum(),
            request_records: self.learner.requests().len(),
            sessions: self.learner.requests().sessions(),
            stale_accepts_refused: self.counters.stale_accepts_refused,
            superseded_leaderships: self.counters.superseded_leaderships,
            rejected_messages: self.counters.rejected_messages,
            member_applied_upto,
            incarnation: self.config.incarnation,
            membership: self.learner.membership().clone(),
            can_vote: self.can_vote(),
            can_lead: self.can_lead(),
            refused_incarnations: self.membership_notes.refused_incarnations(),
            refused_by: self.membership_notes.refused_by().clone(),
            foreign_logs: self.membership_notes.foreign_logs().clone(),
            transfer_target: self.transfer_target(),
            transfers_abandoned: self.counters.transfers_abandoned,
            transfers_taken: self.counters.transfers_taken,
            prepares_ignored: self.counters.prepares_ignored,
            pre_votes_refused: self.counters.pre_votes_refused,
        }
    }

    /// Internal state worth seeing when a simulation run fails.
    pub fn debug_summary(&self) -> String {
        let leader = match &self.proposer.role {
            Role::Leader(leader) => format!(
                " next_slot={} in_flight={:?} queue={}",
                leader.next_slot,
                leader.in_flight.keys().collect::<Vec<_>>(),
                leader.queue.len()
            ),
            _ => String::new(),
        };
        format!(
            "catch_up={:?} pending={:?} table_upto={} commit={}@{}{leader}",
            self.learner.catch_up(),
            self.learner.chosen_pending().keys().collect::<Vec<_>>(),
            self.learner.truncation().table_upto,
            self.learner.commit_upto_in_ballot(),
            self.learner.commit_ballot()
        )
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.proposer.role, Role::Leader(_))
    }

    /// The leader at work as this replica knows it: itself if it leads, else the member whose
    /// heartbeat or accept it last followed, if nothing higher has been promised since. Unlike
    /// `Status::leader` (a hint), never a candidate that has only asked for promises.
    pub fn leader_heard(&self) -> Option<NodeId> {
        match &self.proposer.role {
            Role::Leader(_) => Some(self.config.id),
            Role::Candidate(_) => None,
            Role::Follower => {
                let ballot = self.proposer.heard_leading;
                (ballot.node != 0
                    && ballot == self.acceptor.promised()
                    && self.proposer.leader_hint == Some(ballot.node))
                .then_some(ballot.node)
            }
        }
    }

    pub fn applied_upto(&self) -> Slot {
        self.learner.applied_upto()
    }

    pub fn history_start(&self) -> Slot {
        self.learner.history_start()
    }

    pub fn promised(&self) -> Ballot {
        self.acceptor.promised()
    }

    // ----- shared helpers -----

    pub(crate) fn send(&mut self, to: NodeId, message: Message) {
        debug_assert_ne!(to, self.config.id, "messages to self are handled in place");
        // Sorted here so that no driver re-derives the rule: a Promise or Accepted waits for
        // the write it speaks for.
        let envelope = Envelope {
            from: self.config.id,
            to,
            incarnation: self.config.incarnation,
            role: self.announced_role,
            message,
        };
        if envelope.message.speaks_for_disk() {
            self.ready.persisted_messages.push(envelope);
        } else {
            self.ready.messages.push(envelope);
        }
    }

    pub(crate) fn broadcast(&mut self, message: Message) {
        let peers: Vec<NodeId> = self.peers().collect();
        for peer in peers {
            self.send(peer, message.clone());
        }
    }

    /// Every other member, learners included (heartbeats, truncation).
    pub(crate) fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.learner.membership().members.keys().copied().filter(move |id| *id != self.config.id)
    }

    /// Every other voting member (Prepare, Accept).
    pub(crate) fn voter_peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.learner.membership().voting().filter(move |id| *id != self.config.id)
    }

    pub fn membership(&self) -> &Membership {
        self.learner.membership()
    }

    /// This replica's role in the configuration in force (`None`: not a member).
    pub fn member_role(&self) -> Option<MemberRole> {
        self.learner.membership().get(self.config.id).map(|member| member.role)
    }

    pub(crate) fn persist(&mut self, op: PersistOp) {
        self.ready.persist.push(op);
    }

    /// Answers the proposal `(request id, fingerprint)` from `origin` (a configuration change
    /// has fingerprint zero).
    pub(crate) fn reply(
        &mut self,
        origin: Origin,
        (request_id, fingerprint): (RequestId, crate::Digest),
        outcome: Result<Slot, ProposalError>,
    ) {
        match origin {
            Origin::Local => self.ready.replies.push(Reply { request_id, fingerprint, outcome }),
            Origin::Remote(node) => {
                self.send(node, Message::ForwardReply { request_id, fingerprint, outcome })
            }
        }
    }

    /// Raises the acceptor's promise, durably.
    pub(crate) fn raise_promise(&mut self, ballot: Ballot) {
        if let Some(record) = self.acceptor.raise_promise(ballot) {
            self.persist(record);
            self.promise_written_by = self.written_by();
        }
    }

    fn observe_ballot(&mut self, message: &Message) {
        let ballot = match message {
            Message::Prepare { ballot, .. }
            | Message::Promise { ballot, .. }
            | Message::Accept { ballot, .. }
            | Message::Accepted { ballot, .. }
            | Message::Heartbeat { ballot, .. }
            | Message::HeartbeatAck { ballot, .. } => *ballot,
            Message::Nack { promised, .. } => *promised,
            _ => return,
        };
        self.proposer.round_seen = self.proposer.round_seen.max(ballot.round);
    }

    pub(crate) fn reset_election_timer(&mut self) {
        let timeout = self.config.election_timeout_ticks;
        self.proposer.election_timer.restart(&mut self.rng, timeout, 2 * timeout);
    }
}
