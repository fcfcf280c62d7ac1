//! The driver loop: the only owner of the replica.
//!
//! It runs on its own thread and repeats: wait for an input or the next tick; drain a bounded
//! batch of inputs; take the replica's Ready, send what may leave before the write and hand the
//! write to the writer thread (`writer.rs`), which owns the storage; collect the writes that
//! completed and do the rest of the contract for them, in order: report them persisted, then
//! messages, catch-up reads, chosen entries and client answers. The driver never waits for a
//! write unless `READIES_IN_FLIGHT_MAX` of them are under way, or when it has nothing else to
//! do: with no write under way, no input waiting and a small write, it writes the Ready
//! itself, which spares the two thread wake-ups of a hand-off (see `writer.rs`).

use crate::config::NodeConfig;
use crate::history_reader::HistoryReader;
use crate::input::{Input, Responder};
use crate::metrics::{Metrics, PeerLabels, ReasonLabels};
use crate::peer_link::PeerLinks;
use crate::storage::{Storage, StorageError};
use crate::wire::{
    session_key, GcError, GcReport, HistoryError, MemberInfo, ProposeError, ReadConsistency, Request,
    Response, StatusReport, TransferError, TransferReport,
};
use crate::writer::{Job, Writer, Written};
use paxos_core::{Compaction, CompactionError, NodeId, PersistOp, Proposal, Replica, RequestId, Slot, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Instant;

/// Inputs processed per loop iteration before the Ready is written: bounds latency while
/// letting one fsync cover many requests.
const INPUTS_PER_BATCH_MAX: usize = 4096;
/// Local proposals waiting for an answer; beyond this new ones are refused (retryable).
const PENDING_PROPOSALS_MAX: usize = 200_000;
/// Accepted records of applied slots are collected when there are more than this many.
const GC_ACCEPTED_RECORDS_MIN: usize = 2_048;
/// ...or once their values hold this many bytes: 2,048 records of 1 MiB values were 2 GiB.
const GC_ACCEPTED_BYTES_MIN: usize = 16 << 20;
const GC_INTERVAL_TICKS: u64 = 10;
/// How often the driver looks for new problems to log (see `StatusReport::problems`).
const PROBLEMS_CHECK_INTERVAL_TICKS: u64 = 50;
/// Readies handed to the writer and not yet written; past this the driver waits for a write
/// before it takes the next (each holds at most one batch of inputs' messages and answers).
const READIES_IN_FLIGHT_MAX: usize = 64;
/// A write of at most this many bytes (of values), with no reads and no snapshot, is done on
/// the driver's thread when nothing else is under way or waiting; a bigger one goes to the
/// writer thread even then, so that the driver steps input while it is written (A/B,
/// bench/ab.sh: 4 KiB values at 64 and 256 clients, each batch some hundreds of KiB, had a p99
/// a quarter higher written inline). The price of an inline write: while its fsync lasts, the
/// driver neither ticks nor steps input, so a disk that stalls then delays this node's
/// heartbeats as it did before the writer thread existed.
const INLINE_WRITE_BYTES_MAX: usize = 64 << 10;
/// Slots whose accept time the driver keeps for the commit latency; beyond this (a leader
/// that cannot reach a quorum) new ones are not timed.
const COMMIT_TIMES_MAX: usize = 65_536;

/// Every member with the address to dial it at, for the peer links: the one this node's
/// `--peer` flags give for it, if any (how this node reaches that member: a proxy, a NAT),
/// else the configuration's. Who is a member is the configuration's word alone.
fn members_of(
    membership: &paxos_core::Membership,
    flags: &BTreeMap<NodeId, String>,
) -> Vec<(NodeId, String)> {
    membership
        .members
        .iter()
        .map(|(id, m)| (*id, flags.get(id).cloned().unwrap_or_else(|| m.address.clone())))
        .collect()
}

/// The nodes this one accepts peer connections from (see `peer_link::AllowedPeers`): the
/// configuration's members and the ids of the `--peer` flags.
fn allowed_peers(membership: &paxos_core::Membership, flags: &BTreeMap<NodeId, String>) -> BTreeSet<NodeId> {
    membership.members.keys().chain(flags.keys()).copied().collect()
}

/// What needs an operator, one line each with the command that fixes it.
fn problems(id: NodeId, status: &paxos_core::Status) -> Vec<String> {
    let mut problems = Vec::new();
    for (peer, (admitted, chosen_at)) in &status.refused_by {
        let admitted = match admitted {
            Some(incarnation) => format!("admits incarnation {incarnation:016x} of node {id}"),
            None => format!("does not list node {id}"),
        };
        problems.push(format!(
            "this node (id {id}, data directory incarnation {:016x}) is not admitted: node {peer} says the \
             configuration chosen at slot {chosen_at} {admitted}. If this node lost its data directory, it \
             waits as a non-voter until an operator runs `paxos-cli member replace {id}`; if it was removed, \
             stop it",
            status.incarnation
        ));
    }
    for (peer, incarnation) in &status.refused_incarnations {
        let admitted = status.membership.get(*peer).map_or(0, |m| m.incarnation);
        problems.push(format!(
            "node {peer} came back with data directory incarnation {incarnation:016x}, but the configuration \
             admits {admitted:016x}: it lost its disk (or it is another node's directory) and its votes are \
             refused; admit it with `paxos-cli member replace {peer}`"
        ));
    }
    for (peer, theirs) in &status.foreign_logs {
        problems.push(format!(
            "node {peer} holds another log ({theirs:016x}) than this node ({:016x}): one of the two was \
             started as a brand-new cluster of its own (a member wiped and restarted with \
             --initial-cluster-state new and a --peer list that needs no one else). Neither takes the \
             other's history. Stop the one that is not the cluster, delete its data directory, start it \
             with --initial-cluster-state existing, and run `paxos-cli member replace ID`",
            status.membership.log_id
        ));
    }
    problems
}

/// Why the driver stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An invariant broke (an assertion): the node stops rather than go on with a state it
    /// cannot trust.
    #[error("the driver thread panicked (an invariant broke; see the log above)")]
    Panicked,
}

pub struct Driver {
    config: NodeConfig,
    /// Serves client history pages off this thread.
    history_reader: HistoryReader,
    replica: Replica,
    /// Owns the storage: every catch-up read and every write but the driver's short ones when
    /// idle (`Writer::write_now`) happens on its thread.
    writer: Writer,
    /// Readies handed to the writer, oldest first, with what is left to do once written.
    writing: VecDeque<Writing>,
    /// The last batch of inputs emptied the queue: nothing was waiting for the driver, so a
    /// write now may as well be done on this thread.
    inputs_drained: bool,
    /// The applied prefix and history start as written (by the last Ready completed): history
    /// pages are served from these, never from slots applied in a Ready still being written.
    written_applied_upto: Slot,
    written_history_start: Slot,
    links: PeerLinks,
    /// The problems last logged (see `StatusReport::problems`): each is logged once.
    problems_logged: Vec<String>,
    pending: BTreeMap<RequestId, Vec<Waiting>>,
    pending_count: usize,
    applied_since_start: u64,
    proposals_since_start: u64,
    ticks: u64,
    /// A storage failure met outside the Ready path; the loop stops on it.
    fatal: Option<StorageError>,
    /// Status requests of this batch, answered once its Ready is persisted: a status shows
    /// only a ballot that is on disk (the power-loss tests hold every node to the ballot its
    /// status showed before a cut).
    status_waiting: Vec<Responder>,
    /// Serializable history requests of this batch (see `process_ready`).
    history_waiting: Vec<(Slot, u64, Responder)>,
    /// Linearizable history reads waiting for the replica's answer: number -> (from slot,
    /// limit, whom to answer). Bounded by `paxos_core::READS_PENDING_MAX`.
    reads: BTreeMap<u64, (Slot, u64, Responder)>,
    next_read: u64,
    metrics: Arc<Metrics>,
    /// When this node wrote its accepted record of each slot not yet applied: the start of the
    /// commit latency (at most `COMMIT_TIMES_MAX`).
    accept_written: BTreeMap<Slot, Instant>,
    /// What the gauges last showed: the leader (to count changes), the fsync count (to turn it
    /// into a counter) and the peers with series (to drop those of members gone).
    leader_seen: Option<NodeId>,
    fsyncs: u64,
    fsyncs_counted: u64,
    written_bytes: u64,
    written_bytes_counted: u64,
    peers_shown: BTreeSet<NodeId>,
    /// Leadership transfers this node started, answered once the target leads.
    transfers_waiting: Vec<TransferWaiting>,
}

/// A Ready whose write is under way: the rest of the contract, done once it is written.
#[derive(Debug)]
struct Writing {
    number: u64,
    persisted_messages: Vec<paxos_core::Envelope>,
    chosen: Vec<(Slot, Value)>,
    replies: Vec<paxos_core::Reply>,
    reads: Vec<paxos_core::ReadReply>,
    /// The slots this Ready accepted (their commit clocks start when it is written).
    accepted_slots: Vec<Slot>,
    /// The Ready changed the configuration.
    changed: bool,
    /// The replica's applied prefix and history start when the Ready was taken.
    applied_upto: Slot,
    history_start: Slot,
    /// Status requests answered once this Ready is written, with the status as of it.
    statuses: Vec<(Responder, StatusReport)>,
    /// Serializable history requests served once this Ready is written (from slot, limit).
    histories: Vec<(Slot, u64, Responder)>,
}

/// An operator waiting for leadership to reach `target`.
#[derive(Debug)]
struct TransferWaiting {
    target: NodeId,
    respond: Responder,
    since: Instant,
    /// Past this the operator is told it failed: the core gives up after two election
    /// timeouts, and the old leader sees the new one at its first heartbeat.
    deadline: Instant,
}

/// A client waiting for the outcome of its proposal or configuration change.
#[derive(Debug)]
struct Waiting {
    respond: Responder,
    since: Instant,
    /// The proposal's fingerprint (zero for a configuration change): the answer it takes.
    fingerprint: paxos_core::Digest,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("id", &self.config.id).finish()
    }
}

impl Driver {
    pub fn new(
        config: NodeConfig,
        replica: Replica,
        storage: Storage,
        mut links: PeerLinks,
        metrics: Arc<Metrics>,
        inputs: std::sync::mpsc::SyncSender<Input>,
    ) -> Result<Self, std::io::Error> {
        links.follow(members_of(replica.membership(), &config.members));
        links.allow(allowed_peers(replica.membership(), &config.members));
        let history_reader = HistoryReader::spawn(config.id, storage.history_view(), inputs.clone())?;
        let (fsyncs, written_bytes) = (storage.fsyncs(), storage.written_bytes());
        let writer = Writer::spawn(config.id, storage, inputs)?;
        Ok(Driver {
            config,
            written_applied_upto: replica.applied_upto(),
            written_history_start: replica.history_start(),
            replica,
            writer,
            writing: VecDeque::new(),
            inputs_drained: true,
            links,
            problems_logged: Vec::new(),
            pending: BTreeMap::new(),
            pending_count: 0,
            applied_since_start: 0,
            proposals_since_start: 0,
            ticks: 0,
            fatal: None,
            status_waiting: Vec::new(),
            history_waiting: Vec::new(),
            reads: BTreeMap::new(),
            next_read: 0,
            metrics,
            accept_written: BTreeMap::new(),
            leader_seen: None,
            fsyncs,
            fsyncs_counted: 0,
            written_bytes,
            written_bytes_counted: 0,
            peers_shown: BTreeSet::new(),
            transfers_waiting: Vec::new(),
            history_reader,
        })
    }

    /// Runs until `Shutdown`, the input channel closes, or storage fails (fatal).
    pub fn run(mut self, inputs: Receiver<Input>) -> Result<(), DriverError> {
        let tick = self.config.tick;
        let mut next_tick = Instant::now() + tick;
        let result = loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let mut stop = false;
            self.inputs_drained = true;
            match inputs.recv_timeout(wait) {
                Ok(input) => {
                    stop |= self.handle(input);
                    self.inputs_drained = false;
                    for _ in 1..INPUTS_PER_BATCH_MAX {
                        match inputs.try_recv() {
                            Ok(input) => stop |= self.handle(input),
                            Err(_) => {
                                self.inputs_drained = true;
                                break;
                            }
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stop = true,
            }
            let now = Instant::now();
            if now >= next_tick {
                self.on_tick();
                next_tick += tick;
                if next_tick < now {
                    // Fell behind (a slow fsync): skip missed ticks rather than burst them.
                    next_tick = now + tick;
                }
            }
            if let Err(error) = self.process_ready() {
                break Err(error);
            }
            self.answer_transfers();
            if let Some(error) = self.fatal.take() {
                break Err(error.into());
            }
            if stop {
                break Ok(());
            }
        };
        for waiting in std::mem::take(&mut self.transfers_waiting) {
            let error = TransferError::Failed("the node is shutting down; ask the cluster's status".into());
            waiting.respond.send(Response::Transfer(Err(error)));
        }
        for (_, waiting) in std::mem::take(&mut self.pending) {
            for Waiting { respond, .. } in waiting {
                self.metrics.refused("shutting_down");
                respond.send(Response::Proposed(Err(ProposeError::ShuttingDown)));
            }
        }
        result
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        self.replica.tick();
        self.refresh_gauges();
        if self.ticks % PROBLEMS_CHECK_INTERVAL_TICKS == 0 {
            // Problems come from messages, not only from configuration changes.
            self.after_configuration_change(false);
        }
        if self.ticks % GC_INTERVAL_TICKS == 0 && {
            let status = self.replica.status();
            status.accepted_records > GC_ACCEPTED_RECORDS_MIN || status.accepted_bytes > GC_ACCEPTED_BYTES_MIN
        } {
            // Collecting accepted records of applied slots never fails and bounds memory.
            let _ = self.replica.compact(Compaction::default());
        }
    }

    /// Returns true on shutdown.
    fn handle(&mut self, input: Input) -> bool {
        match input {
            Input::Peer { from, incarnation, role, message } => {
                let to = self.config.id;
                self.replica.step(paxos_core::Envelope { from, to, incarnation, role, message });
            }
            Input::Client { request, mut respond } => {
                // Out of the queue: the server may queue another client request.
                respond.queued = None;
                self.on_request(request, respond)
            }
            Input::StorageFailed(error) => self.fatal = Some(error),
            // Completions are collected after each batch of input (`process_ready`).
            Input::Written => self.writer.woken(),
            Input::Shutdown => return true,
        }
        false
    }

    fn on_request(&mut self, request: Request, respond: Responder) {
        match request {
            Request::Propose { request_id, secret, value, floor_slot } => {
                self.metrics.proposals_received.inc();
                if self.pending_count >= PENDING_PROPOSALS_MAX {
                    self.metrics.refused("overloaded");
                    respond.send(Response::Proposed(Err(ProposeError::Overloaded)));
                    return;
                }
                // The secret stops here: the log and the peers see only its digest.
                let proposal = Proposal { request_id, key: session_key(&secret), payload: value, floor_slot };
                let fingerprint = proposal.fingerprint();
                let waiting = self.pending.entry(request_id).or_default();
                if waiting.iter().any(|w| w.fingerprint != fingerprint) {
                    // Another value under this id waits here (a client that reuses an id, or
                    // one naming a session it does not own): answers must not cross.
                    let error = paxos_core::ProposalError::RequestIdBusy(request_id);
                    self.metrics.refused(crate::metrics::refusal_reason(&error));
                    respond
                        .send(Response::Proposed(Err(ProposeError::Protocol { error, leader_addr: None })));
                    return;
                }
                waiting.push(Waiting { respond, since: Instant::now(), fingerprint });
                self.proposals_since_start += 1;
                self.pending_count += 1;
                self.replica.propose(proposal);
            }
            Request::History { from_slot, limit, consistency: ReadConsistency::Serializable } => {
                // Served once what this node applied so far is written (`process_ready`): a
                // client reads its own acknowledged writes here, answered before that write.
                self.history_waiting.push((from_slot, limit, respond));
            }
            Request::History { from_slot, limit, consistency: ReadConsistency::Linearizable } => {
                if self.reads.len() >= paxos_core::READS_PENDING_MAX {
                    let error = paxos_core::ProposalError::Overloaded;
                    respond.send(Response::History(Err(HistoryError::NotConfirmed {
                        error,
                        leader_addr: None,
                    })));
                    return;
                }
                // Served once the replica has applied up to the leader's confirmed read index
                // (`serve_read`).
                self.next_read += 1;
                self.reads.insert(self.next_read, (from_slot, limit, respond));
                self.replica.read(self.next_read);
            }
            Request::Status => self.status_waiting.push(respond),
            Request::ChangeMembership { request_id, change } => {
                if self.pending_count >= PENDING_PROPOSALS_MAX {
                    respond.send(Response::Proposed(Err(ProposeError::Overloaded)));
                    return;
                }
                tracing::info!(?change, "configuration change asked for");
                self.pending_count += 1;
                let waiting = Waiting { respond, since: Instant::now(), fingerprint: [0; 16] };
                self.pending.entry(request_id).or_default().push(waiting);
                self.replica.change_membership(request_id, change);
            }
            Request::TransferLeader { target } => self.on_transfer_leader(target, respond),
            Request::Gc { truncate_below, force } => {
                if !self.replica.is_leader() {
                    // gc goes through the leader: it alone knows how far every member applied.
                    let leader_addr = self.addr_of(self.replica.status().leader);
                    respond.send(Response::Gc(Err(GcError::NotLeader { leader_addr })));
                    return;
                }
                let result = self.replica.compact(Compaction { truncate_below, force });
                let response = match result {
                    Ok(report) => Ok(GcReport {
                        accepted_records_removed: report.accepted_records_removed,
                        history_entries_removed: report.history_entries_removed,
                        history_start: report.history_start,
                        applied_upto: report.applied_upto,
                    }),
                    Err(CompactionError::NotLeader { leader_hint }) => {
                        Err(GcError::NotLeader { leader_addr: self.addr_of(leader_hint) })
                    }
                    Err(error) => Err(GcError::Refused(error.to_string())),
                };
                respond.send(Response::Gc(response));
            }
        }
    }

    fn addr_of(&self, node: Option<NodeId>) -> Option<String> {
        let id = node?;
        match self.replica.membership().get(id) {
            Some(member) if !member.address.is_empty() => Some(member.address.clone()),
            _ => self.config.members.get(&id).cloned(),
        }
    }

    fn status(&self) -> StatusReport {
        let status = self.replica.status();
        let members = status
            .membership
            .members
            .iter()
            .map(|(id, member)| MemberInfo {
                id: *id,
                addr: member.address.clone(),
                applied_upto: status.member_applied_upto.get(id).copied(),
                role: member.role,
                incarnation: member.incarnation,
                promote_to: member.promote_to,
            })
            .collect();
        StatusReport {
            node: self.config.id,
            cluster_id: self.config.cluster.clone(),
            role: status.role,
            leader: status.leader,
            ballot: status.own_ballot.unwrap_or(status.promised),
            applied_upto: status.applied_upto,
            history_start: status.history_start,
            accepted_records: status.accepted_records as u64,
            sessions: status.sessions as u64,
            stale_accepts_refused: status.stale_accepts_refused,
            rejected_messages: status.rejected_messages,
            superseded_leaderships: status.superseded_leaderships,
            members,
            configuration_chosen_at: status.membership.chosen_at,
            incarnation: status.incarnation,
            can_vote: status.can_vote,
            can_lead: status.can_lead,
            started_as: self.config.role,
            warnings: status.membership.weakness().into_iter().collect(),
            problems: problems(self.config.id, &status),
            fsyncs: self.fsyncs,
            applied_since_start: self.applied_since_start,
            proposals_since_start: self.proposals_since_start,
        }
    }

    fn send(&self, envelopes: Vec<paxos_core::Envelope>) {
        for envelope in envelopes {
            let to = envelope.to;
            // No link (not a member here), or a full queue: dropped, the protocol retransmits.
            if !self.links.send(to, envelope.message) {
                tracing::debug!(peer = to, "no link, or its queue is full; message dropped");
            }
        }
    }

    /// After a Ready that changed the configuration: links follow it, and what changed is
    /// logged. Problems (a disk the cluster does not know, here or at a member) are logged once
    /// each, loudly: they need an operator.
    fn after_configuration_change(&mut self, changed: bool) {
        if changed {
            let membership = self.replica.membership().clone();
            self.links.follow(members_of(&membership, &self.config.members));
            self.links.allow(allowed_peers(&membership, &self.config.members));
            let members: Vec<String> = membership
                .members
                .iter()
                .map(|(id, m)| {
                    let promote = m.promote_to.map(|role| format!(", to become {role}")).unwrap_or_default();
                    format!("{id}={} ({}{promote})", m.address, m.role)
                })
                .collect();
            tracing::info!(chosen_at = ?membership.chosen_at, "configuration: {}", members.join(", "));
            if let Some(weakness) = membership.weakness().filter(|_| membership.is_bound()) {
                tracing::warn!("the configuration is weak: {weakness}");
            }
        }
        let problems = problems(self.config.id, &self.replica.status());
        for problem in &problems {
            if !self.problems_logged.contains(problem) {
                tracing::warn!("{problem}");
            }
        }
        self.problems_logged = problems;
    }

    /// A page of history from the applied prefix, on the history reader's thread: a page is
    /// megabytes, and the driver must not miss a tick for it.
    fn read_history(&mut self, from_slot: Slot, limit: u64, respond: Responder) {
        // As written: the slots applied in Readies still being written are not on disk yet.
        let (applied_upto, history_start) = (self.written_applied_upto, self.written_history_start);
        self.history_reader.read(from_slot, limit, applied_upto, history_start, respond);
    }

    /// A linearizable read the replica answered: served from the history as written, or
    /// refused (retryable) with the leader's address when one is known.
    fn serve_read(&mut self, read: paxos_core::ReadReply) {
        let Some((from_slot, limit, respond)) = self.reads.remove(&read.request) else {
            return;
        };
        match read.outcome {
            Ok(_) => self.read_history(from_slot, limit, respond),
            Err(error) => {
                let leader_hint = match &error {
                    paxos_core::ProposalError::NotLeader { leader_hint } => *leader_hint,
                    _ => self.replica.status().leader,
                };
                let leader_addr = self.addr_of(leader_hint.filter(|id| *id != self.config.id));
                respond.send(Response::History(Err(HistoryError::NotConfirmed { error, leader_addr })));
            }
        }
    }

    /// The Ready contract: take each Ready, send what may leave before its write and hand the
    /// write to the writer; for each write completed, in order: report it persisted, then
    /// send, read, apply, answer.
    fn process_ready(&mut self) -> Result<(), DriverError> {
        loop {
            while let Some(done) = self.writer.try_done() {
                self.on_written(done?)?;
            }
            if self.writing.len() >= READIES_IN_FLIGHT_MAX {
                // A disk this far behind: wait for it rather than queue more.
                let done = self.writer.wait_done()?;
                self.on_written(done)?;
                continue;
            }
            let ready = self.replica.take_ready();
            if ready.is_empty() {
                break;
            }
            self.start_write(ready)?;
        }
        // Status requests see only what is written: answered with the state as of the last
        // Ready, once it is. History requests are served once it is written, so that they see
        // every slot applied before they came (a reply may leave before its slot's write).
        let histories = std::mem::take(&mut self.history_waiting);
        match self.writing.back_mut() {
            Some(last) => last.histories.extend(histories),
            None => {
                for (from_slot, limit, respond) in histories {
                    self.read_history(from_slot, limit, respond);
                }
            }
        }
        if !self.status_waiting.is_empty() {
            let status = self.status();
            let waiting = std::mem::take(&mut self.status_waiting);
            match self.writing.back_mut() {
                Some(last) => {
                    last.statuses.extend(waiting.into_iter().map(|respond| (respond, status.clone())))
                }
                None => {
                    for respond in waiting {
                        respond.send(Response::Status(Box::new(status.clone())));
                    }
                }
            }
        }
        Ok(())
    }

    /// Steps 0 and 1 of the contract for `ready`: what says nothing about this node's disk goes
    /// out first, so the leader's write overlaps its followers'; Promise and Accepted wait for
    /// the write. Answers that rest on no vote of this batch go first too.
    fn start_write(&mut self, mut ready: paxos_core::Ready) -> Result<(), DriverError> {
        self.log_events(std::mem::take(&mut ready.events));
        self.send(std::mem::take(&mut ready.messages));
        self.answer(ready.take_replies_before_write());
        let accepted_slots = ready.accepted_slots().collect();
        let changed = ready
            .persist
            .iter()
            .any(|op| matches!(op, PersistOp::Membership(_) | PersistOp::InstallSnapshot(_)));
        let needs_sync = ready.persist_needs_sync();
        let writing = Writing {
            number: ready.number,
            persisted_messages: ready.persisted_messages,
            chosen: ready.chosen,
            replies: ready.replies,
            reads: ready.reads,
            accepted_slots,
            changed,
            applied_upto: self.replica.applied_upto(),
            history_start: self.replica.history_start(),
            statuses: Vec::new(),
            histories: Vec::new(),
        };
        if ready.persist.is_empty() && ready.history_reads.is_empty() && self.writing.is_empty() {
            // Nothing to write and nothing under way (a follower's acknowledgements, a
            // leader's heartbeats): done at once, without a trip through the writer.
            self.writing.push_back(writing);
            let written = Written {
                number: ready.number,
                reads: Vec::new(),
                synced: None,
                fsyncs: self.fsyncs,
                written_bytes: self.written_bytes,
            };
            return self.on_written(written);
        }
        let job = Job {
            number: ready.number,
            needs_sync,
            persist: ready.persist,
            history_reads: ready.history_reads,
        };
        if self.writing.is_empty() && self.inputs_drained && job.is_short(INLINE_WRITE_BYTES_MAX) {
            // Nothing to overlap the write with: do it here (no write is queued, so this one
            // cannot pass another). What arrives meanwhile waits for the next batch; a Ready
            // that follows from this one (its applies) is taken before that batch, and may be
            // written here too: `inputs_drained` says only what the last batch found.
            let written = self.writer.write_now(job)?;
            self.writing.push_back(writing);
            return self.on_written(written);
        }
        self.writer.write(job)?;
        self.writing.push_back(writing);
        Ok(())
    }

    /// Steps 2 to 5 of the contract for every Ready up to `written.number`.
    fn on_written(&mut self, written: Written) -> Result<(), DriverError> {
        if let Some((took, records)) = written.synced {
            Metrics::observe_duration(&self.metrics.fsync_duration, took);
            self.metrics.fsync_batch_records.observe(records as f64);
        }
        self.fsyncs = written.fsyncs;
        self.written_bytes = written.written_bytes;
        self.replica.on_persisted(written.number);
        let now = Instant::now();
        while self.writing.front().is_some_and(|writing| writing.number <= written.number) {
            let Some(done) = self.writing.pop_front() else {
                break;
            };
            self.written_applied_upto = done.applied_upto;
            self.written_history_start = done.history_start;
            self.time_accepts(&done.accepted_slots, now);
            if done.changed {
                self.after_configuration_change(true);
            }
            self.send(done.persisted_messages);
            self.applied_since_start += done.chosen.len() as u64;
            self.time_commits(&done.chosen);
            self.answer(done.replies);
            // After the write: a read's index may rest on slots applied in this batch.
            for read in done.reads {
                self.serve_read(read);
            }
            for (respond, status) in done.statuses {
                respond.send(Response::Status(Box::new(status)));
            }
            for (from_slot, limit, respond) in done.histories {
                self.read_history(from_slot, limit, respond);
            }
        }
        for (read, entries) in written.reads {
            self.replica.serve_history_read(&read, entries);
        }
        Ok(())
    }

    /// Elections in the log (INFO: who campaigned, who refused, who won, who stepped down and
    /// why) and in the metrics.
    fn log_events(&mut self, events: Vec<paxos_core::Event>) {
        use paxos_core::{CampaignReason, Event};
        for event in events {
            match event {
                Event::BecameCandidate { ballot, reason } => {
                    let label = match reason {
                        CampaignReason::Timeout => "timeout",
                        CampaignReason::Transfer { .. } => "transfer",
                        CampaignReason::ConfigurationChange => "configuration_change",
                    };
                    self.metrics.campaigns.get_or_create(&ReasonLabels { reason: label }).inc();
                    tracing::info!(%ballot, "became candidate ({reason})");
                }
                Event::PreVoteRefused { ballot, by, refusal } => {
                    self.metrics.pre_votes_refused.inc();
                    tracing::info!(%ballot, "pre-vote refused by node {by}: {refusal}");
                }
                Event::BecameLeader { ballot, votes_from } => {
                    tracing::info!(%ballot, "became leader (promises from {votes_from:?})");
                }
                Event::SteppedDown { ballot, was_leader, reason } => {
                    self.metrics.step_downs.get_or_create(&ReasonLabels { reason: reason.label() }).inc();
                    if was_leader {
                        tracing::info!(%ballot, "stepped down as leader: {reason}");
                    } else {
                        tracing::info!(%ballot, "candidacy ended: {reason}");
                    }
                }
                Event::PrepareIgnored { ballot, from, leader } => {
                    self.metrics.prepares_ignored.inc();
                    tracing::debug!(%ballot, "prepare from node {from} ignored: node {leader} leads");
                }
            }
        }
    }

    /// Answers the local proposals `replies` settle (see [`paxos_core::Ready`] for when).
    fn answer(&mut self, replies: Vec<paxos_core::Reply>) {
        for reply in replies {
            let Some(all) = self.pending.remove(&reply.request_id) else {
                continue;
            };
            // Only the requests with the answered proposal's fingerprint (see `on_request`:
            // one fingerprint per request id waits at a time, so this is all or nothing).
            let (waiting, others): (Vec<Waiting>, Vec<Waiting>) =
                all.into_iter().partition(|w| w.fingerprint == reply.fingerprint);
            if !others.is_empty() {
                self.pending.insert(reply.request_id, others);
            }
            self.pending_count -= waiting.len();
            match &reply.outcome {
                Ok(_) => {
                    for Waiting { since, .. } in &waiting {
                        Metrics::observe_duration(&self.metrics.proposal_duration, since.elapsed());
                    }
                }
                Err(error) => {
                    for _ in &waiting {
                        self.metrics.refused(crate::metrics::refusal_reason(error));
                    }
                }
            }
            let outcome = reply.outcome.map_err(|error| {
                let leader_addr = match &error {
                    paxos_core::ProposalError::NotLeader { leader_hint } => self.addr_of(*leader_hint),
                    _ => None,
                };
                ProposeError::Protocol { error, leader_addr }
            });
            for Waiting { respond, .. } in waiting {
                respond.send(Response::Proposed(outcome.clone()));
            }
        }
    }

    /// Starts the commit clock of each slot this batch accepted (first accept only: a new
    /// leader's re-accept of a slot does not restart it).
    fn time_accepts(&mut self, accepted_slots: &[Slot], written: Instant) {
        for slot in accepted_slots {
            if self.accept_written.len() < COMMIT_TIMES_MAX {
                self.accept_written.entry(*slot).or_insert(written);
            }
        }
    }

    /// Counts the values chosen and stops their commit clocks; forgets clocks of slots applied
    /// without being chosen here (installed from a peer's snapshot).
    fn time_commits(&mut self, chosen: &[(Slot, Value)]) {
        for (slot, value) in chosen {
            self.metrics.chosen(value);
            if let Some(written) = self.accept_written.remove(slot) {
                Metrics::observe_duration(&self.metrics.commit_duration, written.elapsed());
            }
        }
        // As written, not the replica's: slots applied in Readies still being written have
        // their commits to time yet.
        let applied_upto = self.written_applied_upto;
        if self.accept_written.first_key_value().is_some_and(|(slot, _)| *slot < applied_upto) {
            self.accept_written = self.accept_written.split_off(&applied_upto);
        }
    }

    /// Mirrors the replica's state into the gauges (once per tick: a scrape sees the state of
    /// at most one tick ago).
    fn refresh_gauges(&mut self) {
        let status = self.replica.status();
        let metrics = &self.metrics;
        let ballot = status.own_ballot.unwrap_or(status.promised);
        metrics.ballot_round.set(ballot.round);
        metrics.ballot_node.set(ballot.node);
        metrics.promised_round.set(status.promised.round);
        metrics.set_role(status.role);
        metrics.leader_id.set(status.leader.unwrap_or(0));
        metrics.has_leader.set(u64::from(self.replica.leader_heard().is_some()));
        for (kind, count) in crate::metrics::PROBLEM_KINDS.into_iter().zip([
            status.refused_by.len(),
            status.refused_incarnations.len(),
            status.foreign_logs.len(),
        ]) {
            metrics.problems.get_or_create(&crate::metrics::KindLabels { kind }).set(count as u64);
        }
        if status.leader.is_some() && status.leader != self.leader_seen {
            if self.leader_seen.is_some() {
                metrics.leader_changes.inc();
            }
            self.leader_seen = status.leader;
        }
        metrics.applied_upto.set(status.applied_upto);
        metrics.history_start.set(status.history_start);
        metrics.accepted_records.set(status.accepted_records as u64);
        metrics.requests_in_flight.set(self.pending_count as u64);
        let fsyncs = self.fsyncs;
        metrics.fsyncs.inc_by(fsyncs.saturating_sub(self.fsyncs_counted));
        self.fsyncs_counted = fsyncs;
        let written_bytes = self.written_bytes;
        metrics.storage_written.inc_by(written_bytes.saturating_sub(self.written_bytes_counted));
        self.written_bytes_counted = written_bytes;

        let mut peers = BTreeSet::new();
        for (peer, up) in self.links.link_states() {
            peers.insert(peer);
            metrics.peer_connected.get_or_create(&PeerLabels { peer }).set(u64::from(up));
        }
        for (&peer, &applied) in &status.member_applied_upto {
            if peer == self.config.id || !peers.contains(&peer) {
                continue;
            }
            let labels = PeerLabels { peer };
            metrics.peer_applied_upto.get_or_create(&labels).set(applied);
            metrics.peer_lag.get_or_create(&labels).set(status.applied_upto.saturating_sub(applied));
        }
        for gone in self.peers_shown.difference(&peers) {
            let labels = PeerLabels { peer: *gone };
            metrics.peer_connected.remove(&labels);
            metrics.peer_applied_upto.remove(&labels);
            metrics.peer_lag.remove(&labels);
        }
        self.peers_shown = peers;
    }

    /// Starts handing leadership to `target`; answered by `answer_transfers` once it leads.
    fn on_transfer_leader(&mut self, target: NodeId, respond: Responder) {
        let id = self.config.id;
        let error = match self.replica.transfer_leadership(target) {
            Ok(paxos_core::TransferStart::AlreadyLeader) => {
                respond.send(Response::Transfer(Ok(TransferReport { from: id, to: id, took_ms: 0 })));
                return;
            }
            Ok(paxos_core::TransferStart::Started) => {
                tracing::info!(target, "handing leadership over (paxos-cli leader transfer)");
                let ticks = 4 * self.config.election_timeout_ticks.max(1);
                let wait = self.config.tick.saturating_mul(u32::try_from(ticks).unwrap_or(u32::MAX));
                let since = Instant::now();
                let deadline = since + wait + std::time::Duration::from_secs(1);
                self.transfers_waiting.push(TransferWaiting { target, respond, since, deadline });
                return;
            }
            Err(paxos_core::TransferError::NotLeader { leader_hint }) => {
                TransferError::NotLeader { leader_addr: self.addr_of(leader_hint) }
            }
            Err(error) => TransferError::Refused(error.to_string()),
        };
        respond.send(Response::Transfer(Err(error)));
    }

    /// Answers the transfers whose target now leads, or that failed.
    fn answer_transfers(&mut self) {
        if self.transfers_waiting.is_empty() {
            return;
        }
        let id = self.config.id;
        // Not `Status::leader`, which names the target as soon as its Prepare arrives: the
        // operator is told once the target leads (its first heartbeat or accept).
        let leader = self.replica.leader_heard();
        let handing_over = self.replica.transfer_target();
        let leads = self.replica.is_leader();
        let now = Instant::now();
        for waiting in std::mem::take(&mut self.transfers_waiting) {
            let target = waiting.target;
            let took_ms = waiting.since.elapsed().as_millis() as u64;
            let outcome = if leader == Some(target) {
                tracing::info!(target, took_ms, "leadership handed over");
                Ok(TransferReport { from: id, to: target, took_ms })
            } else if leads && handing_over != Some(target) {
                Err(TransferError::Failed(format!(
                    "node {target} did not take over within {took_ms} ms; node {id} leads on (is node {target} slow or cut off?)"
                )))
            } else if now >= waiting.deadline {
                let leader = leader.map_or_else(|| "none yet".to_owned(), |leader| format!("node {leader}"));
                Err(TransferError::Failed(format!(
                    "leadership did not reach node {target} within {took_ms} ms (leader now: {leader})"
                )))
            } else {
                self.transfers_waiting.push(waiting);
                continue;
            };
            waiting.respond.send(Response::Transfer(outcome));
        }
    }
}
