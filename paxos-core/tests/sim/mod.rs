//! A deterministic simulation of whole clusters: the honest successor of the teaching code's
//! "adversarial message pump". One seed fixes everything: the fault mix, message delays,
//! losses, duplicates, link cuts, crashes and client behaviour. Replaying a seed replays the run.
//!
//! Two mixes are drawn from a seed. [`Scenario::random`] is the original one (3 or 5 nodes,
//! clean two-sided partitions, every crashed node restarted before the liveness check).
//! [`Scenario::swarm`] is the adversary: each seed switches every kind of fault on or off and
//! draws its intensity (swarm testing, as TigerBeetle's VOPR does), over 3, 5 and 7 nodes, with
//! one-way and non-transitive link cuts, slow links, members that never come back, forced
//! truncations followed by a leader crash, duplicate-request storms and late retries, and more
//! clients than the session table holds.
//!
//! The checker watches every durable vote, every applied entry and every reply, and fails the
//! run on any violation of agreement, validity, durability, exactly-once or promise
//! monotonicity; after healing it checks liveness with only the surviving majority.

pub mod checker;
pub mod liveness;
pub mod network;
pub mod operator;
pub mod transfer;

use checker::Checker;
use network::Network;
use operator::Operator;
use paxos_core::{
    Compaction, Config, Incarnation, MemStorage, MemberRole, Membership, NodeId, PersistOp, Proposal,
    ProposalError, Replica, RequestId, Rng, Slot,
};
use std::collections::BTreeMap;

/// Fault rates for one run, drawn from the seed. Probabilities are per mille (per tick for
/// the events, per message for loss and duplication).
#[derive(Clone, Debug)]
pub struct Faults {
    pub loss_per_mille: u64,
    pub duplicate_per_mille: u64,
    /// Duplicates may arrive hundreds of ticks after the original.
    pub late_duplicates: bool,
    pub delay_ticks_max: u64,
    /// Chance per tick that some node crashes (and restarts later).
    pub crash_per_mille: u64,
    /// Chance that a crash strikes between taking a Ready and persisting it.
    pub crash_mid_ready_per_mille: u64,
    /// A slow disk: each Ready's write completes 0 to this many ticks after it was taken, in
    /// the order taken. Meanwhile the node keeps stepping messages, ticks and requests and takes
    /// further Readies (the driver's writer thread); a crash loses every write not completed.
    pub write_delay_ticks_max: u64,
    /// Chance per tick that a node with writes under way crashes: after its early messages
    /// left (a leader's Accepts, a candidate's Prepares) and before the write that backs them.
    pub crash_mid_write_per_mille: u64,
    /// Chance per tick that a node's disk stalls (a slow fsync, a busy device) for up to
    /// `DISK_STALL_TICKS_MAX`: no write of it completes meanwhile, while its messages flow.
    pub disk_stall_per_mille: u64,
    /// Clean two-sided partitions.
    pub partition_per_mille: u64,
    /// One directed link cut (a hears b, b does not hear a).
    pub one_way_per_mille: u64,
    /// Non-transitive splits: two sides that cannot hear each other and a bridge node that
    /// hears both.
    pub bridge_per_mille: u64,
    /// One directed link made slow for a while.
    pub slow_link_per_mille: u64,
    /// Chance per tick of a compaction (GC, sometimes forced truncation) request.
    pub compact_per_mille: u64,
    /// Chance that a forced truncation is followed at once by a crash of the leader.
    pub crash_after_truncation_per_mille: u64,
    /// Members that crash during the faulty phase and never come back (at most a minority).
    pub permanent_failures: usize,
    /// Chance per tick that a client re-sends an already answered request (same id) through a
    /// random node, long after the first try.
    pub late_retry_per_mille: u64,
    /// Chance that a new request is also sent through a second and third node at once.
    pub storm_per_mille: u64,
    /// Chance per tick that a node pauses (a GC pause, SIGSTOP, a stalled disk): no ticks, no
    /// deliveries, for a long while; then it resumes with its stale state (a leader that still
    /// believes it leads) and everything sent to it meanwhile.
    pub pause_per_mille: u64,
    /// Chance per tick that the operator changes the configuration: adds a member (voter or
    /// learner), removes one (the leader sometimes), or wipes a member's disk (it restarts
    /// with a new incarnation, half the time claiming a brand-new cluster) and replaces it.
    pub reconfigure_per_mille: u64,
    /// Chance that the leader crashes a few ticks after taking a change.
    pub crash_mid_change_per_mille: u64,
    /// Chance per tick that the operator asks a leader to hand leadership to a member drawn at
    /// random (`paxos-cli leader transfer`).
    pub transfer_per_mille: u64,
    /// Chance per tick that a hostile client (it holds a client certificate, not the secret)
    /// proposes its own value under another client's session id and a sequence number near
    /// that client's: a guessed or reused session. None of these may ever be applied, and none
    /// may be answered Ok.
    pub hijack_per_mille: u64,
    /// Chance per tick that a client sends an answered request id again with another value
    /// (a buggy client): refused, never answered Ok, never applied.
    pub reuse_per_mille: u64,
}

impl Faults {
    pub fn none() -> Self {
        Faults {
            loss_per_mille: 0,
            duplicate_per_mille: 0,
            late_duplicates: false,
            delay_ticks_max: 1,
            crash_per_mille: 0,
            crash_mid_ready_per_mille: 0,
            write_delay_ticks_max: 0,
            crash_mid_write_per_mille: 0,
            disk_stall_per_mille: 0,
            partition_per_mille: 0,
            one_way_per_mille: 0,
            bridge_per_mille: 0,
            slow_link_per_mille: 0,
            compact_per_mille: 0,
            crash_after_truncation_per_mille: 0,
            permanent_failures: 0,
            late_retry_per_mille: 0,
            storm_per_mille: 0,
            pause_per_mille: 0,
            reconfigure_per_mille: 0,
            crash_mid_change_per_mille: 0,
            transfer_per_mille: 0,
            hijack_per_mille: 0,
            reuse_per_mille: 0,
        }
    }

    /// The original mix: every fault on, at a drawn rate; clean partitions only.
    pub fn draw(rng: &mut Rng) -> Self {
        Faults {
            loss_per_mille: rng.range(0, 200),
            duplicate_per_mille: rng.range(0, 100),
            delay_ticks_max: rng.range(1, 8),
            crash_per_mille: rng.range(0, 15),
            crash_mid_ready_per_mille: rng.range(0, 500),
            partition_per_mille: rng.range(0, 10),
            compact_per_mille: rng.range(0, 10),
            ..Faults::none()
        }
    }

    /// The swarm mix: each kind of fault is on or off for the whole run, with its own rate.
    pub fn draw_swarm(rng: &mut Rng, nodes: u64) -> Self {
        let on = |rng: &mut Rng, low: u64, high: u64| if rng.chance(1, 2) { rng.range(low, high) } else { 0 };
        let minority = ((nodes - 1) / 2) as usize;
        Faults {
            loss_per_mille: on(rng, 1, 300),
            duplicate_per_mille: on(rng, 1, 150),
            late_duplicates: rng.chance(1, 2),
            delay_ticks_max: if rng.chance(1, 4) { rng.range(8, 40) } else { rng.range(1, 8) },
            crash_per_mille: on(rng, 1, 20),
            crash_mid_ready_per_mille: on(rng, 1, 1000),
            // Drawn last, in `Scenario::swarm`, with the others below.
            write_delay_ticks_max: 0,
            crash_mid_write_per_mille: 0,
            disk_stall_per_mille: 0,
            partition_per_mille: on(rng, 1, 15),
            one_way_per_mille: on(rng, 1, 20),
            bridge_per_mille: on(rng, 1, 15),
            slow_link_per_mille: on(rng, 1, 20),
            compact_per_mille: on(rng, 1, 30),
            crash_after_truncation_per_mille: on(rng, 100, 1000),
            permanent_failures: if rng.chance(1, 2) { rng.range(1, minority as u64 + 1) as usize } else { 0 },
            late_retry_per_mille: on(rng, 1, 50),
            storm_per_mille: on(rng, 1, 300),
            pause_per_mille: on(rng, 1, 10),
            reconfigure_per_mille: on(rng, 1, 8),
            crash_mid_change_per_mille: on(rng, 100, 1000),
            // Drawn last, in `Scenario::swarm`, so the other rates stay what they were.
            transfer_per_mille: 0,
            hijack_per_mille: 0,
            reuse_per_mille: 0,
        }
    }
}

/// The shape of one run.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub nodes: u64,
    /// Nodes that are down for the whole faulty phase (started only at healing, if `heal_down`).
    pub down_at_start: Vec<NodeId>,
    pub heal_down: bool,
    pub clients: usize,
    pub requests_per_client: u64,
    /// Requests a client keeps outstanding at once.
    pub client_window: u64,
    /// Ticks between a client's new requests, so the load spans the faulty phase.
    pub request_gap_ticks: u64,
    /// Clients talk only to these nodes (all nodes when empty).
    pub entry_nodes: Vec<NodeId>,
    pub fault_ticks: u64,
    pub heal_ticks_max: u64,
    pub faults: Faults,
    pub config_tweak: fn(&mut Config),
    /// Session-table limits smaller than the number of clients (sessions get evicted, so
    /// `SessionExpired` and `RequestExpired` are expected answers).
    pub small_table: Option<(usize, usize)>,
    /// Tiny message limits `(entries_per_message_max, message_bytes_max)`, so that Accepts,
    /// catch-up and phase 1 run in many small pages (a long run of accepted records takes
    /// many round trips to report).
    pub tiny_messages: Option<(usize, usize)>,
    /// The bootstrap members' roles (`--role`); a member not listed is a voter. Mixed roles
    /// put proposers that keep no acceptor state apart from acceptors that never lead.
    pub roles: BTreeMap<NodeId, MemberRole>,
    /// A static partial fault held once the run has converged, with liveness measured and
    /// checked (see `liveness.rs`).
    pub partial_fault: Option<liveness::TopologyKind>,
}

/// Mixed roles for `nodes` members: one to three proposers that do not vote, and acceptors or
/// voters for the rest (at least one member may lead; the seed's topology, 2 proposers and 5
/// acceptors, is one of them).
pub fn draw_roles(rng: &mut Rng, nodes: u64) -> BTreeMap<NodeId, MemberRole> {
    let proposers = rng.range(1, 4).min(nodes - 1);
    let acceptor_share = rng.range(1, 5);
    let mut roles = BTreeMap::new();
    for id in 1..=nodes {
        let role = if id <= proposers {
            MemberRole::Proposer
        } else if rng.chance(acceptor_share, 4) {
            MemberRole::Acceptor
        } else {
            MemberRole::Voter
        };
        roles.insert(id, role);
    }
    roles
}

impl Scenario {
    pub fn random(rng: &mut Rng) -> Self {
        let nodes = if rng.chance(1, 2) { 3 } else { 5 };
        let fault_ticks = 1500;
        let requests_per_client = rng.range(10, 80);
        Scenario {
            nodes,
            down_at_start: Vec::new(),
            heal_down: true,
            clients: rng.range(1, 5) as usize,
            requests_per_client,
            client_window: rng.range(1, 6),
            request_gap_ticks: rng.range(0, 2 * fault_ticks / requests_per_client),
            entry_nodes: Vec::new(),
            fault_ticks,
            heal_ticks_max: 4000,
            faults: Faults::draw(rng),
            config_tweak: small_limits,
            small_table: None,
            tiny_messages: None,
            roles: BTreeMap::new(),
            partial_fault: None,
        }
    }

    pub fn swarm(rng: &mut Rng) -> Self {
        let nodes = [3, 5, 7][rng.range(0, 3) as usize];
        let fault_ticks = rng.range(500, 2500);
        let requests_per_client = rng.range(5, 60);
        let clients = rng.range(1, 9) as usize;
        let small_table =
            rng.chance(1, 3).then(|| (rng.range(1, clients as u64 + 1) as usize, rng.range(2, 10) as usize));
        let mut scenario = Scenario {
            nodes,
            down_at_start: Vec::new(),
            heal_down: true,
            clients,
            requests_per_client,
            client_window: rng.range(1, 8),
            request_gap_ticks: rng.range(0, 2 * fault_ticks / requests_per_client),
            entry_nodes: Vec::new(),
            fault_ticks,
            heal_ticks_max: 6000,
            faults: Faults::draw_swarm(rng, nodes),
            config_tweak: small_limits,
            small_table,
            tiny_messages: None,
            roles: BTreeMap::new(),
            partial_fault: None,
        };
        // Drawn last, so every other part of a seed's scenario stays what it was before.
        scenario.tiny_messages = rng
            .chance(1, 4)
            .then(|| ([1, 2, 3][rng.range(0, 3) as usize], [1, 64, 256][rng.range(0, 3) as usize]));
        if rng.chance(1, 3) {
            scenario.roles = draw_roles(rng, nodes);
        }
        if rng.chance(1, 2) {
            scenario.faults.transfer_per_mille = rng.range(1, 30);
        }
        // A quarter of the seeds: a hold runs for tens of election timeouts, and the mutant
        // runner runs the whole suite once per mutant.
        if rng.chance(1, 4) {
            let kinds = liveness::TopologyKind::ALL;
            scenario.partial_fault = Some(kinds[rng.range(0, kinds.len() as u64) as usize]);
        }
        if rng.chance(1, 3) {
            scenario.faults.hijack_per_mille = rng.range(1, 40);
        }
        if rng.chance(1, 3) {
            scenario.faults.reuse_per_mille = rng.range(1, 40);
        }
        if rng.chance(1, 2) {
            scenario.faults.write_delay_ticks_max = rng.range(1, 8);
            if rng.chance(1, 2) {
                scenario.faults.crash_mid_write_per_mille = rng.range(1, 100);
            }
            if rng.chance(1, 2) {
                scenario.faults.disk_stall_per_mille = rng.range(1, 20);
            }
        }
        scenario
    }
}

/// Small limits so that batching, windows and table eviction are exercised in short runs.
pub fn small_limits(config: &mut Config) {
    config.slots_in_flight_max = 16;
    config.entries_per_message_max = 8;
    config.message_bytes_max = 256;
    config.proposals_queued_max = 64;
    // A few values' worth (a command is ~40 bytes here): the window and the queue fill by
    // bytes before they fill by count.
    config.window_bytes_max = 400;
    config.proposals_queued_bytes_max = 300;
}

/// One request a client has not settled yet.
struct Outstanding {
    request_id: RequestId,
    node: NodeId,
    sent_tick: u64,
}

struct SimClient {
    /// The open session, once registered.
    session: Option<u64>,
    /// The registration in progress: (nonce, node asked, tick sent, floor slot). A
    /// registration carries the client's first value (see `registration`).
    registering: Option<(u64, NodeId, u64, Slot)>,
    /// Registrations answered Ok, (nonce, floor slot), for late retries.
    registered: Vec<(u64, Slot)>,
    registrations: u64,
    expiries: u64,
    next_seq: u64,
    /// seq -> the request in flight.
    outstanding: BTreeMap<u64, Outstanding>,
    /// Requests answered Ok, for late retries.
    answered: Vec<RequestId>,
    done: u64,
    last_issue_tick: u64,
}

/// The longest a stalled disk holds its writes (see `Faults::disk_stall_per_mille`): a few
/// election timeouts' worth of a leader's Accepts answered before its own write is done.
const DISK_STALL_TICKS_MAX: u64 = 40;

/// A Ready whose write is under way: what is left of it once its early messages and replies
/// went out, and the tick its write completes.
struct Writing {
    ready: paxos_core::Ready,
    done_at: u64,
}

struct SimNode {
    replica: Option<Replica>,
    /// The incarnation of its data directory (a wipe draws a new one).
    incarnation: Incarnation,
    /// Started with `--initial-cluster-state existing` (an added node; half the wiped ones).
    join_existing: bool,
    /// What survives a crash.
    storage: MemStorage,
    /// What the running node sees: `storage` plus the unsynced batches.
    volatile: MemStorage,
    /// Batches written without sync since the last synced one; a crash keeps only a prefix.
    unsynced: Vec<Vec<PersistOp>>,
    /// Readies taken and not yet written (a slow disk), oldest first; a crash loses them.
    writing: std::collections::VecDeque<Writing>,
    /// No write completes before this tick (a stalled disk).
    disk_stalled_until: u64,
    restart_at: Option<u64>,
    /// Crashed for good.
    dead: bool,
    /// Paused (not crashed) until this tick.
    paused_until: Option<u64>,
}

/// What a run did, for reports.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub ticks: u64,
    pub messages_delivered: u64,
    pub crashes: u64,
    pub permanent_failures: u64,
    pub partitions: u64,
    pub one_way_cuts: u64,
    pub bridges: u64,
    pub pauses: u64,
    pub acknowledged: u64,
    pub chosen_slots: u64,
    pub snapshot_truncations: u64,
    pub snapshot_installs: u64,
    pub late_retries: u64,
    /// Proposals of hostile clients under another's session, and of answered ids reused.
    pub hijacks: u64,
    pub reuses: u64,
    /// Their refusals: the wrong key, the id reused, the id busy with the owner's value.
    pub hostile_refused: u64,
    pub sessions_expired: u64,
    /// Linearizable reads served, and refused (no leader, timed out).
    pub reads_served: u64,
    pub reads_refused: u64,
    pub superseded_leaderships: u64,
    pub stale_accepts_refused: u64,
    /// Promises whose page of accepted records was full (the candidate asks for the next one).
    pub promise_pages_cut: u64,
    /// Readies taken while an earlier one of the same node was still being written, and
    /// writes lost to a crash with Readies of theirs already answered in part.
    pub writes_overlapped: u64,
    pub writes_lost: u64,
    pub disk_stalls: u64,
    /// Runs that started from the bootstrap configuration (bound through the log).
    pub bootstraps: u64,
    /// Configuration entries applied, and the operator's changes by kind.
    pub configurations_applied: u64,
    pub members_added: u64,
    pub members_removed: u64,
    pub disks_wiped: u64,
    pub members_replaced: u64,
    /// Members given another role by the operator.
    pub roles_changed: u64,
    /// Runs with mixed roles (proposers apart from acceptors).
    pub mixed_roles: u64,
    /// Leadership transfers asked for, started (the rest refused), completed (the target
    /// led), abandoned by their leader, and the most ticks one took to complete.
    pub transfers_asked: u64,
    pub transfers_started: u64,
    pub transfers_refused: u64,
    pub transfers_completed: u64,
    pub transfers_abandoned: u64,
    pub transfer_ticks_max: u64,
    /// Static partial faults held after convergence, by kind (see `liveness.rs`).
    pub partial_faults: BTreeMap<liveness::TopologyKind, liveness::TopologyTotals>,
}

impl Stats {
    pub fn add(&mut self, other: &Stats) {
        self.ticks += other.ticks;
        self.messages_delivered += other.messages_delivered;
        self.crashes += other.crashes;
        self.permanent_failures += other.permanent_failures;
        self.partitions += other.partitions;
        self.one_way_cuts += other.one_way_cuts;
        self.bridges += other.bridges;
        self.pauses += other.pauses;
        self.acknowledged += other.acknowledged;
        self.chosen_slots += other.chosen_slots;
        self.snapshot_truncations += other.snapshot_truncations;
        self.snapshot_installs += other.snapshot_installs;
        self.late_retries += other.late_retries;
        self.hijacks += other.hijacks;
        self.reuses += other.reuses;
        self.hostile_refused += other.hostile_refused;
        self.sessions_expired += other.sessions_expired;
        self.reads_served += other.reads_served;
        self.reads_refused += other.reads_refused;
        self.superseded_leaderships += other.superseded_leaderships;
        self.stale_accepts_refused += other.stale_accepts_refused;
        self.promise_pages_cut += other.promise_pages_cut;
        self.writes_overlapped += other.writes_overlapped;
        self.writes_lost += other.writes_lost;
        self.disk_stalls += other.disk_stalls;
        self.bootstraps += other.bootstraps;
        self.configurations_applied += other.configurations_applied;
        self.members_added += other.members_added;
        self.members_removed += other.members_removed;
        self.disks_wiped += other.disks_wiped;
        self.members_replaced += other.members_replaced;
        self.roles_changed += other.roles_changed;
        self.mixed_roles += other.mixed_roles;
        self.transfers_asked += other.transfers_asked;
        self.transfers_started += other.transfers_started;
        self.transfers_refused += other.transfers_refused;
        self.transfers_completed += other.transfers_completed;
        self.transfers_abandoned += other.transfers_abandoned;
        self.transfer_ticks_max = self.transfer_ticks_max.max(other.transfer_ticks_max);
        for (kind, totals) in &other.partial_faults {
            self.partial_faults.entry(*kind).or_default().add(totals);
        }
    }
}

pub struct Simulation {
    rng: Rng,
    scenario: Scenario,
    /// Every node id that ever ran (members added later included).
    members: Vec<NodeId>,
    /// The bootstrap configuration's members (every node's `--peer` flags).
    bootstrap_members: Vec<NodeId>,
    operator: Operator,
    nodes: BTreeMap<NodeId, SimNode>,
    network: Network,
    clients: Vec<SimClient>,
    /// Session id -> client index.
    session_owner: BTreeMap<u64, usize>,
    checker: Checker,
    now: u64,
    stats: Stats,
    healed: bool,
    /// Ticks at which the permanent failures strike.
    permanent_at: Vec<u64>,
    /// `PAXOS_SIM_TRACE_FROM=TICK`: print every delivered message from that tick on.
    trace_from: Option<u64>,
    /// Leadership transfers started and not yet completed.
    transfers: Vec<transfer::Transfer>,
    /// The probe load of a partial-fault hold.
    probes: liveness::Probes,
    /// Linearizable reads in progress: (node asked, request) -> the highest slot acknowledged
    /// to any client when the read was asked, which the read must cover.
    reads: BTreeMap<(NodeId, u64), Option<Slot>>,
    /// Draws when and where reads are asked, apart from `rng`, so that reads do not move the
    /// other faults of a seed.
    read_rng: Rng,
    /// Reads asked of each node since it last started: numbers its reads from 1 in each life,
    /// as the node's driver does, so an answer from an earlier life may meet a new read with
    /// the same number (a review found that confusion).
    reads_asked: BTreeMap<NodeId, u64>,
}

/// Chance per tick, per mille, that a client asks some node for a linearizable read.
const READ_PER_MILLE: u64 = 100;

pub(crate) const CLIENT_TIMEOUT_TICKS: u64 = 80;
/// Messages the simulated network may hold at once (see `Simulation::step`).
const NETWORK_IN_FLIGHT_MAX: usize = 1_000_000;
/// A client whose session expires this often gives up on its remaining requests: with more
/// clients than the table holds, re-registering evicts another client, which could go on for
/// ever (a workload livelock, not the protocol's).
const CLIENT_SESSION_EXPIRIES_MAX: u64 = 3;

impl Simulation {
    pub fn new(seed: u64, scenario: Scenario) -> Self {
        let mut rng = Rng::new(seed);
        let members: Vec<NodeId> = (1..=scenario.nodes).collect();
        // Half the runs bootstrap through the log (binding every incarnation needs every
        // member, so not with members down from the start or dying for good); the others start
        // bound, as if the bootstrap were done.
        let bootstrap =
            scenario.down_at_start.is_empty() && scenario.faults.permanent_failures == 0 && rng.chance(1, 2);
        // The roles the members are started with: what they announce while unbound (so the
        // operator's liveness guards know, during the bootstrap, who may lead and who votes).
        let with_roles = |mut membership: Membership| {
            for (id, role) in &scenario.roles {
                if let Some(member) = membership.members.get_mut(id) {
                    member.role = *role;
                }
            }
            membership
        };
        let (storage, initial) = if bootstrap {
            (MemStorage::default(), with_roles(Membership::bootstrap(&members, &BTreeMap::new())))
        } else {
            let bound = with_roles(Membership::bound(&members, |id| id));
            (MemStorage { membership: Some(bound.clone()), ..MemStorage::default() }, bound)
        };
        let mut nodes = BTreeMap::new();
        for id in &members {
            let mut node = SimNode {
                replica: None,
                incarnation: *id,
                join_existing: false,
                storage: storage.clone(),
                volatile: storage.clone(),
                unsynced: Vec::new(),
                writing: Default::default(),
                disk_stalled_until: 0,
                restart_at: None,
                dead: false,
                paused_until: None,
            };
            if !scenario.down_at_start.contains(id) {
                let config = Self::config(&scenario, &members, *id, &node);
                node.replica = Some(Replica::recover(config, storage.durable_state(), rng.next_u64()));
            }
            nodes.insert(*id, node);
        }
        let clients = (0..scenario.clients)
            .map(|_| SimClient {
                session: None,
                registering: None,
                registered: Vec::new(),
                registrations: 0,
                expiries: 0,
                next_seq: FIRST_COMMAND_SEQ,
                outstanding: BTreeMap::new(),
                answered: Vec::new(),
                done: 0,
                last_issue_tick: 0,
            })
            .collect();
        let permanent_at = (0..scenario.faults.permanent_failures)
            .map(|_| rng.range(1, scenario.fault_ticks.max(2)))
            .collect();
        let mixed_roles = !scenario.roles.is_empty() as u64;
        Simulation {
            rng,
            network: Network::new(scenario.faults.clone()),
            checker: Checker::new(initial),
            scenario,
            bootstrap_members: members.clone(),
            members,
            operator: Operator::default(),
            nodes,
            clients,
            session_owner: BTreeMap::new(),
            now: 0,
            stats: Stats { bootstraps: bootstrap as u64, mixed_roles, ..Stats::default() },
            healed: false,
            permanent_at,
            trace_from: std::env::var("PAXOS_SIM_TRACE_FROM").ok().and_then(|v| v.parse().ok()),
            transfers: Vec::new(),
            probes: liveness::Probes::default(),
            reads: BTreeMap::new(),
            read_rng: Rng::new(seed ^ 0x5EAD_5EAD),
            reads_asked: BTreeMap::new(),
        }
    }

    fn config(scenario: &Scenario, members: &[NodeId], id: NodeId, node: &SimNode) -> Config {
        let mut config = Config::new(id, members.to_vec());
        config.incarnation = node.incarnation;
        config.join_existing = node.join_existing;
        config.role = scenario.roles.get(&id).copied().unwrap_or_default();
        (scenario.config_tweak)(&mut config);
        if let Some((entries_max, bytes_max)) = scenario.tiny_messages {
            config.entries_per_message_max = entries_max;
            config.message_bytes_max = bytes_max;
        }
        // Timeouts sit above the round trip, as an operator sets them (Raft's broadcast time
        // << election timeout): the slowest healthy round trip is twice the largest delay.
        let round_trip_ticks = 2 * scenario.faults.delay_ticks_max;
        config.election_timeout_ticks = config.election_timeout_ticks.max(round_trip_ticks + 2);
        if scenario.partial_fault.is_some() {
            // A run that measures liveness (`liveness.rs`) keeps the timing requirement of
            // leader election (broadcast time << election timeout, as the Raft paper puts it;
            // a real cluster runs at a ratio in the hundreds): members that lost their leader
            // together time out within a spread of one election timeout, and with a spread near
            // the round trip most elections split their votes, however the protocol runs them.
            // The other runs keep the tighter timing, for the stress it puts on safety.
            config.election_timeout_ticks = config.election_timeout_ticks.max(5 * round_trip_ticks);
        }
        config.forward_timeout_ticks = config.forward_timeout_ticks.max(3 * round_trip_ticks);
        config.catch_up_timeout_ticks = config.catch_up_timeout_ticks.max(round_trip_ticks + 1);
        if let Some((clients_max, seqs_per_client_max)) = scenario.small_table {
            config.request_table.clients_max = clients_max;
            config.request_table.seqs_per_client_max = seqs_per_client_max;
        }
        config
    }

    /// Runs the faulty phase, heals, and runs until every request is settled and every live
    /// node holds the same history. Returns the first violation found.
    pub fn run(mut self) -> Result<Stats, String> {
        while self.now < self.scenario.fault_ticks {
            self.step()?;
        }
        self.heal();
        // What is left of the load after healing needs time in proportion to the requests, the
        // gaps between them and the message delay.
        let faults = &self.scenario.faults;
        let load_ticks = self.scenario.requests_per_client
            * (self.scenario.request_gap_ticks + 8 * faults.delay_ticks_max);
        let mut deadline = self.now + self.scenario.heal_ticks_max + load_ticks;
        while self.now < deadline {
            self.step()?;
            if self.converged() {
                if let Some(kind) = self.scenario.partial_fault.take() {
                    let report = self.hold_partial_fault(kind)?;
                    self.stats.partial_faults.entry(kind).or_default().add_report(&report);
                    // Then converge again, with the fault lifted: the member furthest behind
                    // (one the fault cut off, or a proposer that learns by catch-up only)
                    // fetches what it lacks, at least a page per round trip (one request
                    // outstanding at a time; a page may hold a single entry).
                    let applied: Vec<Slot> = self
                        .nodes
                        .values()
                        .filter_map(|n| n.replica.as_ref())
                        .map(|r| r.applied_upto())
                        .collect();
                    let lag = applied.iter().max().unwrap_or(&0) - applied.iter().min().unwrap_or(&0);
                    let catch_up_ticks = lag * 4 * self.scenario.faults.delay_ticks_max;
                    deadline = self.now + self.scenario.heal_ticks_max + catch_up_ticks;
                    continue;
                }
                self.checker.check_votes()?;
                self.checker.check_final(&self.final_views())?;
                self.check_bound_roles()?;
                self.stats.ticks = self.now;
                self.stats.acknowledged = self.checker.acknowledged() as u64;
                self.stats.chosen_slots = self.checker.chosen_slots() as u64;
                for (id, node) in &self.nodes {
                    if let Some(replica) = &node.replica {
                        let status = replica.status();
                        // A member that does not vote in the configuration it applied keeps no
                        // acceptor state (a proposer, a learner, a member demoted to either).
                        let in_force = replica.membership();
                        if in_force.get(*id).is_some() && !in_force.votes(*id) && status.accepted_records > 0
                        {
                            return Err(format!(
                                "node {id} does not vote in the configuration it applied, yet holds {} accepted records",
                                status.accepted_records
                            ));
                        }
                        // Honest peers never send what a replica rejects.
                        if status.rejected_messages > 0 {
                            return Err(format!(
                                "node {id} rejected {} messages from honest peers",
                                status.rejected_messages
                            ));
                        }
                        self.stats.superseded_leaderships += status.superseded_leaderships;
                        self.stats.stale_accepts_refused += status.stale_accepts_refused;
                        self.stats.transfers_abandoned += status.transfers_abandoned;
                    }
                }
                return Ok(self.stats);
            }
        }
        Err(format!(
            "liveness: not converged {} ticks after healing (live nodes: {}): {}",
            self.scenario.heal_ticks_max + load_ticks,
            self.nodes.values().filter(|n| !n.dead).count(),
            self.progress()
        ))
    }

    fn progress(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|(id, node)| match &node.replica {
                Some(r) => {
                    let s = r.status();
                    format!(
                        "n{id}:{:?} vote={} config@{:?}={:?} refused_by={:?} upto={} start={} promised={} leader={:?} members={:?} {}",
                        s.role,
                        s.can_vote,
                        s.membership.chosen_at,
                        s.membership.members.iter().map(|(id, m)| format!("{id}:{}@{}", m.role, m.incarnation)).collect::<Vec<_>>(),
                        s.refused_by,
                        s.applied_upto,
                        s.history_start,
                        s.promised,
                        s.leader,
                        s.member_applied_upto,
                        r.debug_summary()
                    )
                }
                None if node.dead => format!("n{id}:dead"),
                None => format!("n{id}:down"),
            })
            .collect();
        let clients: Vec<String> = self
            .clients
            .iter()
            .enumerate()
            .map(|(index, c)| {
                format!(
                    "c{index}:{:?} {}/{} out={:?}",
                    c.session,
                    c.done,
                    self.scenario.requests_per_client,
                    c.outstanding.values().map(|o| (o.request_id.to_string(), o.node)).collect::<Vec<_>>()
                )
            })
            .collect();
        format!("{} | {}", nodes.join(", "), clients.join(", "))
    }

    fn heal(&mut self) {
        self.healed = true;
        self.network.heal();
        for node in self.nodes.values_mut() {
            node.paused_until = None;
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let down_forever = self.scenario.down_at_start.contains(&id) && !self.scenario.heal_down;
            if self.nodes[&id].replica.is_none() && !down_forever && !self.nodes[&id].dead {
                self.restart(id);
            }
        }
    }

    /// Every request settled, and every live node has applied as far as the furthest one and
    /// past every acknowledged slot.
    fn converged(&self) -> bool {
        let all_done = self.clients.iter().all(|c| c.done == self.scenario.requests_per_client);
        if !all_done {
            return false;
        }
        if !self.operator.is_idle() {
            return false;
        }
        // Members of the latest configuration, with the incarnation it admits: a removed node
        // (or one not admitted) no longer hears the history.
        let latest = self.checker.latest_config();
        let uptos: Vec<Slot> = self
            .nodes
            .iter()
            .filter(|(id, n)| {
                latest.get(**id).is_some_and(|m| m.incarnation == 0 || m.incarnation == n.incarnation)
            })
            .filter_map(|(_, n)| n.replica.as_ref())
            .map(|r| r.applied_upto())
            .collect();
        let max = uptos.iter().copied().max().unwrap_or(0);
        uptos.iter().all(|u| *u == max) && self.checker.max_acknowledged_slot().is_none_or(|s| s < max)
    }

    fn final_views(&self) -> Vec<(NodeId, &MemStorage)> {
        self.nodes.iter().filter(|(_, n)| n.replica.is_some()).map(|(id, n)| (*id, &n.volatile)).collect()
    }

    fn step(&mut self) -> Result<(), String> {
        self.now += 1;
        // A run whose messages multiply without bound fails as a run, not as the machine's
        // memory: no honest schedule comes near this.
        if self.network.in_flight() > NETWORK_IN_FLIGHT_MAX {
            return Err(format!(
                "runaway: {} messages in flight at tick {} (limit {NETWORK_IN_FLIGHT_MAX})",
                self.network.in_flight(),
                self.now
            ));
        }
        // A compaction lands before or after this tick's messages: the driver takes operator
        // requests and peer messages in one batch, in any order.
        let compact_late = self.rng.chance(1, 2);
        if !self.healed {
            self.inject_faults()?;
            if !compact_late {
                self.inject_compaction()?;
            }
        }
        // Restarts that are due.
        let due: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.restart_at.is_some_and(|t| t <= self.now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.restart(id);
        }
        // Deliver due messages in a random order.
        for envelope in self.network.deliver_due(self.now, &mut self.rng) {
            if self.trace_from.is_some_and(|from| self.now >= from) {
                eprintln!("t{} {} -> {}: {:?}", self.now, envelope.from, envelope.to, envelope.message);
            }
            let Some(node) = self.nodes.get_mut(&envelope.to) else {
                continue;
            };
            if let Some(until) = node.paused_until.filter(|until| *until > self.now) {
                self.network.requeue(envelope, until);
                continue;
            }
            if let Some(replica) = node.replica.as_mut() {
                self.stats.messages_delivered += 1;
                replica.step(envelope);
            }
        }
        if !self.healed && compact_late {
            self.inject_compaction()?;
        }
        self.run_clients();
        self.run_reads();
        self.run_hostile_clients();
        self.run_operator();
        self.watch_transfers();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            if self.nodes[&id].paused_until.is_some_and(|until| until > self.now) {
                continue;
            }
            // Each new fault draws only when it is on: a seed without it runs as it ran before.
            let faults = &self.scenario.faults;
            let (stall_rate, crash_rate) = (faults.disk_stall_per_mille, faults.crash_mid_write_per_mille);
            if !self.healed && stall_rate > 0 && self.rng.chance(stall_rate, 1000) {
                let until = self.now + self.rng.range(1, DISK_STALL_TICKS_MAX + 1);
                let node = self.nodes.get_mut(&id).expect("node exists");
                node.disk_stalled_until = node.disk_stalled_until.max(until);
                self.stats.disk_stalls += 1;
            }
            if !self.healed
                && crash_rate > 0
                && !self.nodes[&id].writing.is_empty()
                && self.rng.chance(crash_rate, 1000)
            {
                self.crash(id);
                continue;
            }
            if let Some(replica) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()) {
                replica.tick();
            }
            self.drive(id)?;
        }
        Ok(())
    }

    /// The driver loop of one node: take Ready, send what may leave early, hand the write to the
    /// disk; once written (now, or some ticks later on a slow disk): report it, send, read,
    /// apply, reply.
    fn drive(&mut self, id: NodeId) -> Result<(), String> {
        self.complete_writes(id)?;
        for _ in 0..4 {
            let Some(replica) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()) else {
                return Ok(());
            };
            let mut ready = replica.take_ready();
            if replica.is_leader() && !replica.membership().may_lead(id) {
                return Err(format!(
                    "node {id} leads, but its own configuration makes it a {:?}",
                    replica.member_role()
                ));
            }
            if ready.is_empty() {
                return Ok(());
            }
            // Messages that do not speak for the disk may leave before the write (the contract's
            // step 0), so a crash between them and the write is part of the model.
            for envelope in std::mem::take(&mut ready.messages) {
                self.checker.on_send(&envelope)?;
                self.network.send(envelope, self.now, &mut self.rng);
            }
            // So may the replies that rest on no vote of this batch: the crash below then tests
            // that what they acknowledge is chosen without it. The slots they name were applied
            // when learned (in this Ready or one still being written); the checker hears of those
            // now, of the rest of `chosen` only once the write is done.
            let early = ready.take_replies_before_write();
            for reply in &early {
                // Applied in this Ready, or in an earlier one still being written.
                let writing = &self.nodes[&id].writing;
                let applied = writing.iter().flat_map(|w| &w.ready.chosen).chain(&ready.chosen);
                if let Some((slot, value)) = applied.clone().find(|(slot, _)| Ok(*slot) == reply.outcome) {
                    self.checker.on_apply(id, *slot, value)?;
                }
            }
            for reply in early {
                self.on_reply(id, reply.request_id, reply.fingerprint, reply.outcome)?;
            }
            if !self.healed
                && self.rng.chance(self.scenario.faults.crash_mid_ready_per_mille, 1000)
                && self.rng.chance(1, 20)
            {
                // Crash before the batch is durable: it is lost, with every message that speaks
                // for it.
                self.crash(id);
                return Ok(());
            }
            let delay_max = self.scenario.faults.write_delay_ticks_max;
            let done_at = self.now + if delay_max == 0 { 0 } else { self.rng.range(0, delay_max + 1) };
            let node = self.nodes.get_mut(&id).expect("node exists");
            if !node.writing.is_empty() {
                self.stats.writes_overlapped += 1;
            }
            node.writing.push_back(Writing { ready, done_at });
            self.complete_writes(id)?;
        }
        Ok(())
    }

    /// Completes, in the order taken, the writes of `id` that are due.
    fn complete_writes(&mut self, id: NodeId) -> Result<(), String> {
        loop {
            let node = self.nodes.get_mut(&id).expect("node exists");
            if node.replica.is_none()
                || node.disk_stalled_until > self.now
                || node.writing.front().is_none_or(|w| w.done_at > self.now)
            {
                return Ok(());
            }
            let Some(Writing { ready, .. }) = node.writing.pop_front() else {
                return Ok(());
            };
            self.complete_write(id, ready)?;
        }
    }

    /// Ready `ready`'s write is done: the rest of the contract, from step 2 on.
    fn complete_write(&mut self, id: NodeId, ready: paxos_core::Ready) -> Result<(), String> {
        let installs = ready.persist.iter().filter(|op| matches!(op, PersistOp::InstallSnapshot(_))).count();
        self.stats.snapshot_installs += installs as u64;
        let node = self.nodes.get_mut(&id).expect("node exists");
        // An ordered store: a synced batch makes every earlier batch durable.
        node.volatile.apply(&ready.persist);
        if ready.persist_needs_sync() {
            for batch in node.unsynced.drain(..) {
                node.storage.apply(&batch);
            }
            node.storage.apply(&ready.persist);
        } else if !ready.persist.is_empty() {
            node.unsynced.push(ready.persist.clone());
        }
        if let Some(replica) = node.replica.as_mut() {
            replica.on_persisted(ready.number);
        }
        // Accepts are synced: each is a durable vote from here on.
        for op in &ready.persist {
            if let PersistOp::Accept { slot, ballot, value } = op {
                let incarnation = self.nodes[&id].incarnation;
                self.checker.on_vote(id, incarnation, *slot, *ballot, value)?;
            }
        }
        for envelope in ready.persisted_messages {
            if matches!(envelope.message, paxos_core::Message::Promise { covered_upto: Some(_), .. }) {
                self.stats.promise_pages_cut += 1;
            }
            self.checker.on_send(&envelope)?;
            self.network.send(envelope, self.now, &mut self.rng);
        }
        let node = self.nodes.get_mut(&id).expect("node exists");
        // Against the history as this write left it: later Readies are not written yet.
        for read in &ready.history_reads {
            let entries =
                node.volatile.read_history(read.from_slot, read.upto_slot, read.entries_max, read.bytes_max);
            if let Some(replica) = node.replica.as_mut() {
                replica.serve_history_read(read, entries);
            }
        }
        for (slot, value) in &ready.chosen {
            self.checker.on_apply(id, *slot, value)?;
            if matches!(value, paxos_core::Value::Config(_))
                && self.checker.latest_config().chosen_at == Some(*slot)
            {
                self.stats.configurations_applied = self.checker.configs_applied() as u64;
            }
        }
        for reply in ready.replies {
            self.on_reply(id, reply.request_id, reply.fingerprint, reply.outcome)?;
        }
        for read in ready.reads {
            self.on_read(id, read.request, read.outcome)?;
        }
        Ok(())
    }

    /// Now and then a client asks a random node for a linearizable read.
    fn run_reads(&mut self) {
        if !self.read_rng.chance(READ_PER_MILLE, 1000) {
            return;
        }
        let index = self.read_rng.range(0, self.entry_nodes().len() as u64) as usize;
        let node = self.entry_nodes()[index];
        let Some(replica) = self.nodes.get_mut(&node).and_then(|n| n.replica.as_mut()) else {
            return;
        };
        let asked = self.reads_asked.entry(node).or_default();
        *asked += 1;
        let request = *asked;
        self.reads.insert((node, request), self.checker.max_acknowledged_slot());
        replica.read(request);
    }

    /// A read was answered: `Ok(read_upto)` must cover every value acknowledged before it was
    /// asked (linearizability), and the node must have applied that far.
    fn on_read(
        &mut self,
        node: NodeId,
        request: u64,
        outcome: Result<Slot, ProposalError>,
    ) -> Result<(), String> {
        let Some(acknowledged_max) = self.reads.remove(&(node, request)) else {
            return Err(format!("node {node} answered read {request}, which nobody asked of it"));
        };
        match outcome {
            Ok(read_upto) => {
                if acknowledged_max.is_some_and(|slot| slot >= read_upto) {
                    return Err(format!(
                        "linearizability: node {node} served read {request} up to slot {read_upto}, but slot {} was \
                         acknowledged before the read was asked",
                        acknowledged_max.unwrap_or_default()
                    ));
                }
                let applied = self.nodes[&node].replica.as_ref().map_or(0, |r| r.applied_upto());
                if applied < read_upto {
                    return Err(format!(
                        "node {node} served read {request} up to slot {read_upto} having applied below {applied}"
                    ));
                }
                self.stats.reads_served += 1;
            }
            Err(_) => self.stats.reads_refused += 1,
        }
        Ok(())
    }

    fn on_reply(
        &mut self,
        node: NodeId,
        request_id: RequestId,
        fingerprint: paxos_core::Digest,
        outcome: Result<Slot, ProposalError>,
    ) -> Result<(), String> {
        if request_id.client_id == RequestId::REGISTER_CLIENT_ID
            && request_id.seq >> 32 == liveness::PROBE_INDEX
        {
            return self.on_probe_reply(request_id, outcome);
        }
        if request_id.client_id == RequestId::REGISTER_CLIENT_ID {
            return self.on_registration_reply(node, request_id, outcome);
        }
        if request_id.client_id == operator::OPERATOR_CLIENT_ID {
            self.on_operator_reply(request_id, outcome);
            return Ok(());
        }
        let Some(index) = self.session_owner.get(&request_id.client_id).copied() else {
            return Err(format!("reply for unknown session {request_id}"));
        };
        let owners = self.owners_proposal(request_id).map(|p| p.fingerprint());
        if owners != Some(fingerprint) {
            // The answer to a hostile or buggy client's value: never Ok (an Ok would either
            // acknowledge a value in a session the client does not own, or name the slot of
            // another value), and never the owner's business.
            return match outcome {
                Ok(slot) => Err(format!(
                    "takeover: {request_id} with another value than its owner's answered Ok({slot}) by node {node}"
                )),
                Err(_) => {
                    self.stats.hostile_refused += 1;
                    Ok(())
                }
            };
        }
        let small_table = self.scenario.small_table.is_some();
        let client = &mut self.clients[index];
        let mine = client.outstanding.get(&request_id.seq).is_some_and(|o| o.request_id == request_id);
        match outcome {
            Ok(slot) => {
                self.checker.on_acknowledged(request_id, slot)?;
                // Read-your-writes: the node that answered has applied the slot it names.
                let applied = self.nodes[&node].replica.as_ref().map_or(0, |r| r.applied_upto());
                if slot >= applied {
                    return Err(format!(
                        "node {node} answered {request_id} with slot {slot} before applying it (applied below {applied})"
                    ));
                }
                // Any node's answer settles the request, even if the client has since retried
                // elsewhere: the checker verifies all answers for one request agree.
                if mine {
                    client.outstanding.remove(&request_id.seq);
                    client.answered.push(request_id);
                    client.done += 1;
                }
            }
            Err(ProposalError::SessionExpired(_)) | Err(ProposalError::RequestExpired(_)) => {
                // Final: the log can no longer tell whether this request was applied (the
                // checker still verifies it was applied at most once). Expected only when the
                // session table is smaller than the load, or for a late retry.
                let late_retry = client.answered.contains(&request_id);
                if !small_table && !late_retry {
                    return Err(format!("unexpected final error for {request_id}: {outcome:?}"));
                }
                if mine {
                    client.outstanding.remove(&request_id.seq);
                    client.done += 1;
                    self.stats.sessions_expired += 1;
                    if client.session == Some(request_id.client_id) {
                        client.session = None;
                        client.expiries += 1;
                        if client.expiries >= CLIENT_SESSION_EXPIRIES_MAX {
                            // Give up: what is outstanding still settles (or is dropped here).
                            let end = self.scenario.requests_per_client + FIRST_COMMAND_SEQ;
                            client.done += end - client.next_seq + client.outstanding.len() as u64;
                            client.next_seq = end;
                            client.outstanding.clear();
                        }
                    }
                }
            }
            Err(ProposalError::TooLarge { .. })
            | Err(ProposalError::WrongSessionKey(_))
            | Err(ProposalError::RequestIdReused(_)) => {
                return Err(format!("unexpected final error for {request_id}: {outcome:?}"));
            }
            Err(_) => {
                // Retryable: mark for a quick retry.
                if let Some(entry) = client.outstanding.get_mut(&request_id.seq) {
                    if entry.node == node && entry.request_id == request_id {
                        entry.sent_tick = 0;
                    }
                }
            }
        }
        Ok(())
    }

    fn on_registration_reply(
        &mut self,
        node: NodeId,
        request_id: RequestId,
        outcome: Result<Slot, ProposalError>,
    ) -> Result<(), String> {
        let nonce = request_id.seq;
        let index = (nonce >> 32) as usize;
        let Some(client) = self.clients.get_mut(index) else {
            return Err(format!("registration reply for unknown nonce {nonce:x}"));
        };
        match outcome {
            Ok(slot) => {
                self.checker.on_registered(nonce, slot)?;
                if let Some((n, _, _, floor_slot)) = client.registering {
                    if n == nonce {
                        client.registering = None;
                        client.session = Some(slot);
                        client.registered.push((nonce, floor_slot));
                        self.session_owner.insert(slot, index);
                    }
                }
            }
            Err(error) if error.is_retryable() => {
                if let Some((n, asked, sent, _)) = client.registering.as_mut() {
                    if *n == nonce && *asked == node {
                        *sent = 0;
                    }
                }
            }
            // A late retry of a registration answered long ago: its session may have left its
            // first request behind, or be gone.
            Err(ProposalError::RequestExpired(_) | ProposalError::RegistrationExpired { .. })
                if client.registered.iter().any(|(n, _)| *n == nonce) =>
            {
                self.stats.sessions_expired += 1;
            }
            Err(ProposalError::RegistrationExpired { .. }) => {
                // Sessions opened since the first attempt may have evicted the one it opened:
                // its outcome is unknown (the checker verifies it is in the log at most once).
                // Expected only with a table smaller than the load.
                if self.scenario.small_table.is_none() {
                    return Err(format!("registration {nonce:x} refused as expired with a large table"));
                }
                if client.registering.is_some_and(|(n, ..)| n == nonce) {
                    // A new registration, with its own nonce and value.
                    client.registering = None;
                    self.stats.sessions_expired += 1;
                }
            }
            Err(error) => return Err(format!("registration {nonce:x} refused: {error}")),
        }
        Ok(())
    }

    /// The nodes clients talk to: the scenario's entry nodes, or every node.
    fn entry_nodes(&self) -> &[NodeId] {
        if self.scenario.entry_nodes.is_empty() {
            &self.members
        } else {
            &self.scenario.entry_nodes
        }
    }

    fn entry_node(&mut self) -> NodeId {
        let index = self.rng.range(0, self.entry_nodes().len() as u64) as usize;
        self.entry_nodes()[index]
    }

    fn run_clients(&mut self) {
        for index in 0..self.clients.len() {
            let finished = self.clients[index].next_seq
                >= self.scenario.requests_per_client + FIRST_COMMAND_SEQ
                && self.clients[index].outstanding.is_empty();
            // A session first: register (again, after an expiry), retrying on silence.
            if self.clients[index].session.is_none() && !finished {
                let timeout = CLIENT_TIMEOUT_TICKS.max(6 * self.scenario.faults.delay_ticks_max);
                let stale = match self.clients[index].registering {
                    None => true,
                    Some((_, _, sent, _)) => sent == 0 || self.now.saturating_sub(sent) >= timeout,
                };
                if stale {
                    let node = self.entry_node();
                    // What the node a client first talks to has applied: a real client learns
                    // it from the node's Welcome before it sends anything.
                    let applied = self.nodes[&node].replica.as_ref().map_or(0, |r| r.applied_upto());
                    let client = &mut self.clients[index];
                    // A retry keeps its nonce and floor (and value); a new registration (after
                    // an expiry) draws its own.
                    let (nonce, floor_slot) = match client.registering {
                        Some((nonce, _, _, floor_slot)) => (nonce, floor_slot),
                        None => {
                            client.registrations += 1;
                            (((index as u64) << 32) | client.registrations, applied)
                        }
                    };
                    client.registering = Some((nonce, node, self.now, floor_slot));
                    let proposal = registration(index, nonce, floor_slot);
                    self.checker.on_register(nonce, &proposal.payload);
                    if let Some(replica) = self.nodes.get_mut(&node).and_then(|n| n.replica.as_mut()) {
                        replica.propose(proposal);
                    }
                }
            }
            // New requests up to the window.
            while let Some(session) = self.clients[index].session {
                let client = &self.clients[index];
                let issued = client.next_seq - FIRST_COMMAND_SEQ;
                if client.outstanding.len() as u64 >= self.scenario.client_window
                    || issued >= self.scenario.requests_per_client
                    || (issued > 0 && self.now < client.last_issue_tick + self.scenario.request_gap_ticks)
                {
                    break;
                }
                let seq = client.next_seq;
                self.clients[index].next_seq += 1;
                self.clients[index].last_issue_tick = self.now;
                let request_id = RequestId { client_id: session, seq };
                let node = self.entry_node();
                self.send_request(index, request_id, node);
                if !self.healed && self.rng.chance(self.scenario.faults.storm_per_mille, 1000) {
                    // The same request through two more nodes at once.
                    for _ in 0..2 {
                        let node = self.entry_node();
                        self.propose_to(node, request_id);
                    }
                }
            }
            // Retries of requests that failed or timed out, with the same request id.
            let timeout = CLIENT_TIMEOUT_TICKS.max(6 * self.scenario.faults.delay_ticks_max);
            let stale: Vec<u64> = self.clients[index]
                .outstanding
                .iter()
                .filter(|(_, o)| self.now.saturating_sub(o.sent_tick) >= timeout || o.sent_tick == 0)
                .map(|(seq, _)| *seq)
                .collect();
            for seq in stale {
                let request_id = self.clients[index].outstanding[&seq].request_id;
                let node = self.entry_node();
                self.send_request(index, request_id, node);
            }
            // A late retry of a request answered long ago.
            if !self.healed
                && !self.clients[index].answered.is_empty()
                && self.rng.chance(self.scenario.faults.late_retry_per_mille, 1000)
            {
                let answered = &self.clients[index].answered;
                let request_id = answered[self.rng.range(0, answered.len() as u64) as usize];
                let node = self.entry_node();
                self.stats.late_retries += 1;
                self.propose_to(node, request_id);
            }
            // A late retry of a registration answered long ago (the client's first value): a
            // duplicate while its session is held, refused once it may have been evicted.
            if !self.healed
                && !self.clients[index].registered.is_empty()
                && self.rng.chance(self.scenario.faults.late_retry_per_mille, 1000)
            {
                let registered = &self.clients[index].registered;
                let (nonce, floor_slot) = registered[self.rng.range(0, registered.len() as u64) as usize];
                let node = self.entry_node();
                self.stats.late_retries += 1;
                if let Some(replica) = self.nodes.get_mut(&node).and_then(|n| n.replica.as_mut()) {
                    replica.propose(registration(index, nonce, floor_slot));
                }
            }
        }
    }

    fn send_request(&mut self, index: usize, request_id: RequestId, node: NodeId) {
        let client = &mut self.clients[index];
        client.outstanding.insert(request_id.seq, Outstanding { request_id, node, sent_tick: self.now });
        self.propose_to(node, request_id);
    }

    fn propose_to(&mut self, node: NodeId, request_id: RequestId) {
        let Some(proposal) = self.owners_proposal(request_id) else {
            return;
        };
        self.checker.on_propose(request_id, &proposal.payload);
        if let Some(replica) = self.nodes.get_mut(&node).and_then(|n| n.replica.as_mut()) {
            replica.propose(proposal);
        }
    }

    /// What the owner of `request_id`'s session proposes under it: its key and its value.
    fn owners_proposal(&self, request_id: RequestId) -> Option<Proposal> {
        let owner = *self.session_owner.get(&request_id.client_id)?;
        let payload = format!("c{}-{}", request_id.client_id, request_id.seq).into_bytes();
        Some(Proposal::command(request_id, client_key(owner), payload))
    }

    /// Hostile and buggy clients (see `Faults::hijack_per_mille`, `Faults::reuse_per_mille`):
    /// another client's session with a wrong key, or an answered request id with another value.
    fn run_hostile_clients(&mut self) {
        let faults = &self.scenario.faults;
        let (hijack, reuse) = (faults.hijack_per_mille, faults.reuse_per_mille);
        if self.healed || self.session_owner.is_empty() {
            return;
        }
        let sessions: Vec<(u64, usize)> = self.session_owner.iter().map(|(s, o)| (*s, *o)).collect();
        if hijack > 0 && self.rng.chance(hijack, 1000) {
            let (session, owner) = sessions[self.rng.range(0, sessions.len() as u64) as usize];
            let near = self.clients[owner].next_seq;
            let seq = self.rng.range(near.saturating_sub(3).max(1), near + 3);
            let request_id = RequestId { client_id: session, seq };
            // A guess: the session's id and sequence numbers are public, its secret is not.
            let key = [0xEE; 16];
            let payload = format!("evil{}-{}", session, seq).into_bytes();
            self.checker.on_propose_hostile(request_id, &payload);
            self.stats.hijacks += 1;
            let node = self.entry_node();
            if let Some(replica) = self.nodes.get_mut(&node).and_then(|n| n.replica.as_mut()) {
                replica.propose(Proposal::command(request_id, key, payload));
            }
        }
        if reuse > 0 && self.rng.chance(reuse, 1000) {
            let (_, owner) = sessions[self.rng.range(0, sessions.len() as u64) as usize];
            let answered = &self.clients[owner].answered;
            if answered.is_empty() {
                return;
            }
            let request_id = answered[self.rng.range(0, answered.len() as u64) as usize];
            if self.session_owner.get(&request_id.client_id) != Some(&owner) {
                return;
            }
            let payload = format!("again{}-{}", request_id.client_id, request_id.seq).into_bytes();
            self.checker.on_propose_hostile(request_id, &payload);
            self.stats.reuses += 1;
            let node = self.entry_node();
            if let Some(replica) = self.nodes.get_mut(&node).and_then(|n| n.replica.as_mut()) {
                replica.propose(Proposal::command(request_id, client_key(owner), payload));
            }
        }
    }

    fn alive(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, n)| n.replica.is_some()).map(|(id, _)| *id).collect()
    }

    fn random_member(&mut self) -> NodeId {
        self.members[self.rng.range(0, self.members.len() as u64) as usize]
    }

    fn inject_faults(&mut self) -> Result<(), String> {
        let faults = self.scenario.faults.clone();
        let now = self.now;
        if self.rng.chance(faults.crash_per_mille, 1000) {
            let alive = self.alive();
            if !alive.is_empty() {
                let victim = alive[self.rng.range(0, alive.len() as u64) as usize];
                self.crash(victim);
            }
        }
        if self.permanent_at.contains(&now) {
            // A member that never comes back: the leader half of the time. Never one whose
            // loss leaves no live majority of the voting members or nobody that may lead: the
            // run checks liveness after healing.
            let candidates: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|(id, n)| !n.dead && self.may_die_for_good(**id))
                .map(|(id, _)| *id)
                .collect();
            let leader = candidates
                .iter()
                .copied()
                .find(|id| self.nodes[id].replica.as_ref().is_some_and(|r| r.is_leader()));
            let victim = match leader {
                Some(leader) if self.rng.chance(1, 2) => Some(leader),
                _ if candidates.is_empty() => None,
                _ => Some(candidates[self.rng.range(0, candidates.len() as u64) as usize]),
            };
            if let Some(victim) = victim {
                self.crash(victim);
                let node = self.nodes.get_mut(&victim).expect("node exists");
                node.dead = true;
                node.restart_at = None;
                self.stats.permanent_failures += 1;
            }
        }
        if self.rng.chance(faults.pause_per_mille, 1000) {
            // The leader most of the time: a paused leader is the classic stale leader.
            let leader = self.nodes.iter().find(|(_, n)| n.replica.as_ref().is_some_and(|r| r.is_leader()));
            let victim = match leader {
                Some((id, _)) if self.rng.chance(3, 4) => *id,
                _ => self.random_member(),
            };
            let until = now + self.rng.range(20, 300);
            self.nodes.get_mut(&victim).expect("node exists").paused_until = Some(until);
            self.stats.pauses += 1;
        }
        if self.rng.chance(faults.partition_per_mille, 1000) {
            self.stats.partitions += 1;
            let until = now + self.rng.range(20, 200);
            let mut side: Vec<NodeId> =
                self.members.iter().copied().filter(|_| self.rng.chance(1, 2)).collect();
            if side.is_empty() {
                side.push(self.members[0]);
            }
            let members = self.members.clone();
            self.network.partition(&members, &side, until);
        }
        if self.rng.chance(faults.one_way_per_mille, 1000) {
            self.stats.one_way_cuts += 1;
            let from = self.random_member();
            let to = self.random_member();
            let until = now + self.rng.range(20, 300);
            if from != to {
                self.network.cut(from, to, until);
            }
        }
        if self.rng.chance(faults.bridge_per_mille, 1000) {
            self.stats.bridges += 1;
            let bridge = self.random_member();
            let (mut left, mut right) = (Vec::new(), Vec::new());
            for id in self.members.clone() {
                if id != bridge {
                    if self.rng.chance(1, 2) {
                        left.push(id)
                    } else {
                        right.push(id)
                    }
                }
            }
            let until = now + self.rng.range(50, 400);
            self.network.bridge(&left, &right, until);
        }
        if self.rng.chance(faults.reconfigure_per_mille, 1000) {
            self.plan_reconfiguration();
        }
        // Only in runs that have transfers: the others draw exactly what they drew before.
        if faults.transfer_per_mille > 0 && self.rng.chance(faults.transfer_per_mille, 1000) {
            self.inject_transfer();
        }
        if self.rng.chance(faults.slow_link_per_mille, 1000) {
            let from = self.random_member();
            let to = self.random_member();
            let extra = self.rng.range(5, 60);
            let until = now + self.rng.range(20, 300);
            self.network.slow(from, to, extra, until);
        }
        Ok(())
    }

    /// A compaction request (GC, sometimes a forced truncation), maybe followed by a crash of
    /// the node that truncated.
    fn inject_compaction(&mut self) -> Result<(), String> {
        let faults = self.scenario.faults.clone();
        if self.rng.chance(faults.compact_per_mille, 1000) {
            let id = self.random_member();
            let truncate = self.rng.chance(1, 2);
            let force = self.rng.chance(1, 3);
            let mut truncated = false;
            if let Some(replica) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()) {
                let below = replica.applied_upto().saturating_sub(self.rng.range(0, 6));
                let compaction = Compaction { truncate_below: truncate.then_some(below), force };
                if let Ok(report) = replica.compact(compaction) {
                    if report.history_entries_removed > 0 {
                        self.stats.snapshot_truncations += 1;
                        truncated = true;
                    }
                }
            }
            if truncated && force && self.rng.chance(faults.crash_after_truncation_per_mille, 1000) {
                // The truncating leader dies before anyone copies what it cut.
                self.drive(id)?;
                self.crash(id);
            }
        }
        Ok(())
    }

    fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        // Writes under way never happened.
        if !node.writing.is_empty() {
            self.stats.writes_lost += 1;
            node.writing.clear();
        }
        // Unsynced batches: some prefix reached the disk, the rest is lost.
        let kept = self.rng.range(0, node.unsynced.len() as u64 + 1) as usize;
        for batch in node.unsynced.drain(..).take(kept) {
            node.storage.apply(&batch);
        }
        node.volatile = node.storage.clone();
        if node.replica.take().is_some() {
            self.stats.crashes += 1;
            node.restart_at = Some(self.now + self.rng.range(1, 100));
        }
    }

    /// A run that bootstraps through the log: the binding entry gives every member the role
    /// it was started with (`--role`, announced in its envelopes).
    fn check_bound_roles(&self) -> Result<(), String> {
        if self.stats.bootstraps == 0 {
            return Ok(());
        }
        let Some(bound) = self.checker.first_config() else {
            return Ok(());
        };
        for id in &self.bootstrap_members {
            let started_as = self.scenario.roles.get(id).copied().unwrap_or_default();
            let bound_as = bound.get(*id).map(|member| member.role);
            if bound_as != Some(started_as) {
                return Err(format!(
                    "the binding entry makes node {id} a {bound_as:?}, but it was started as a {started_as}"
                ));
            }
        }
        Ok(())
    }

    fn restart(&mut self, id: NodeId) {
        let seed = self.rng.next_u64();
        let node = self.nodes.get_mut(&id).expect("node exists");
        let config = Self::config(&self.scenario, &self.bootstrap_members, id, node);
        node.restart_at = None;
        let durable = node.storage.durable_state();
        node.replica = Some(Replica::recover(config, durable, seed));
        // A new life: its reads are numbered from 1 again, and those of the last are lost.
        self.reads_asked.remove(&id);
        self.reads.retain(|(asked, _), _| *asked != id);
    }
}

/// The session key of client `index` (the digest of its secret): distinct per client, and never
/// the key a hostile client guesses.
/// The seq of a client's first command in a session: seq 1 is the value its registration
/// carried ([`RequestId::FIRST_SEQ`]).
const FIRST_COMMAND_SEQ: u64 = RequestId::FIRST_SEQ + 1;

/// Client `index`'s registration `nonce`, with its first value (distinct per nonce, so the
/// checker can tell them apart).
fn registration(index: usize, nonce: u64, floor_slot: Slot) -> Proposal {
    Proposal::register(nonce, client_key(index), floor_slot, format!("r{nonce:x}").into_bytes())
}

fn client_key(index: usize) -> paxos_core::Digest {
    let mut key = [0x11; 16];
    key[..8].copy_from_slice(&(index as u64 + 1).to_le_bytes());
    key
}
