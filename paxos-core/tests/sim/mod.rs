//! A deterministic simulation of whole clusters: the honest successor of the teaching code's
//! "adversarial message pump". One seed fixes everything: fault rates, message delays, losses,
//! duplicates, partitions, crashes and client behaviour. Replaying a seed replays the run.
//!
//! The checker watches every applied entry and every reply, and fails the run on any violation
//! of agreement, validity, durability, exactly-once or promise monotonicity.

pub mod checker;
pub mod network;

use checker::Checker;
use network::Network;
use paxos_core::{
    Compaction, Config, MemStorage, NodeId, PersistOp, Proposal, ProposalError, Replica, RequestId, Rng, Slot,
};
use std::collections::BTreeMap;

/// Fault rates for one run, drawn from the seed. Probabilities are per mille.
#[derive(Clone, Debug)]
pub struct Faults {
    pub loss_per_mille: u64,
    pub duplicate_per_mille: u64,
    pub delay_ticks_max: u64,
    /// Chance per tick that some node crashes.
    pub crash_per_mille: u64,
    /// Chance that a crash strikes between taking a Ready and persisting it.
    pub crash_mid_ready_per_mille: u64,
    pub partition_per_mille: u64,
    /// Chance per tick of a compaction (GC, sometimes forced truncation) request.
    pub compact_per_mille: u64,
}

impl Faults {
    pub fn none() -> Self {
        Faults {
            loss_per_mille: 0,
            duplicate_per_mille: 0,
            delay_ticks_max: 1,
            crash_per_mille: 0,
            crash_mid_ready_per_mille: 0,
            partition_per_mille: 0,
            compact_per_mille: 0,
        }
    }

    pub fn draw(rng: &mut Rng) -> Self {
        Faults {
            loss_per_mille: rng.range(0, 200),
            duplicate_per_mille: rng.range(0, 100),
            delay_ticks_max: rng.range(1, 8),
            crash_per_mille: rng.range(0, 15),
            crash_mid_ready_per_mille: rng.range(0, 500),
            partition_per_mille: rng.range(0, 10),
            compact_per_mille: rng.range(0, 10),
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
        }
    }
}

/// Small limits so that batching, windows and table eviction are exercised in short runs.
pub fn small_limits(config: &mut Config) {
    config.slots_in_flight_max = 16;
    config.entries_per_message_max = 8;
    config.message_bytes_max = 256;
    config.proposals_queued_max = 64;
}

struct SimClient {
    client_id: u64,
    next_seq: u64,
    /// seq -> (node asked, tick sent)
    outstanding: BTreeMap<u64, (NodeId, u64)>,
    done: u64,
    last_issue_tick: u64,
}

struct SimNode {
    replica: Option<Replica>,
    /// What survives a crash.
    storage: MemStorage,
    /// What the running node sees: `storage` plus the unsynced batches.
    volatile: MemStorage,
    /// Batches written without sync since the last synced one; a crash keeps only a prefix.
    unsynced: Vec<Vec<PersistOp>>,
    restart_at: Option<u64>,
    incarnation: u64,
}

/// What a run did, for reports.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub ticks: u64,
    pub messages_delivered: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub acknowledged: u64,
    pub chosen_slots: u64,
    pub snapshot_truncations: u64,
    pub snapshot_installs: u64,
}

pub struct Simulation {
    rng: Rng,
    scenario: Scenario,
    members: Vec<NodeId>,
    nodes: BTreeMap<NodeId, SimNode>,
    network: Network,
    clients: Vec<SimClient>,
    checker: Checker,
    now: u64,
    stats: Stats,
    healed: bool,
}

const CLIENT_TIMEOUT_TICKS: u64 = 80;

impl Simulation {
    pub fn new(seed: u64, scenario: Scenario) -> Self {
        let mut rng = Rng::new(seed);
        let members: Vec<NodeId> = (1..=scenario.nodes).collect();
        let mut nodes = BTreeMap::new();
        for id in &members {
            let mut node = SimNode {
                replica: None,
                storage: MemStorage::default(),
                volatile: MemStorage::default(),
                unsynced: Vec::new(),
                restart_at: None,
                incarnation: 0,
            };
            if !scenario.down_at_start.contains(id) {
                node.replica = Some(Replica::new(Self::config(&scenario, &members, *id), rng.next_u64()));
            }
            nodes.insert(*id, node);
        }
        let clients = (0..scenario.clients)
            .map(|i| SimClient {
                client_id: 1000 + i as u64,
                next_seq: 1,
                outstanding: BTreeMap::new(),
                done: 0,
                last_issue_tick: 0,
            })
            .collect();
        Simulation {
            rng,
            network: Network::new(scenario.faults.clone()),
            scenario,
            members,
            nodes,
            clients,
            checker: Checker::default(),
            now: 0,
            stats: Stats::default(),
            healed: false,
        }
    }

    fn config(scenario: &Scenario, members: &[NodeId], id: NodeId) -> Config {
        let mut config = Config::new(id, members.to_vec());
        (scenario.config_tweak)(&mut config);
        config
    }

    /// Runs the faulty phase, heals, and runs until every request is acknowledged and every
    /// node holds the same history. Returns the first violation found.
    pub fn run(mut self) -> Result<Stats, String> {
        while self.now < self.scenario.fault_ticks {
            self.step()?;
        }
        self.heal();
        let deadline = self.now + self.scenario.heal_ticks_max;
        while self.now < deadline {
            self.step()?;
            if self.converged() {
                self.checker.check_final(&self.final_views())?;
                self.stats.ticks = self.now;
                self.stats.acknowledged = self.checker.acknowledged() as u64;
                self.stats.chosen_slots = self.checker.chosen_slots() as u64;
                return Ok(self.stats);
            }
        }
        Err(format!(
            "liveness: not converged {} ticks after healing: {}",
            self.scenario.heal_ticks_max,
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
                        "n{id}:{:?} upto={} start={} promised={} leader={:?} members={:?} {}",
                        s.role,
                        s.chosen_upto,
                        s.history_start,
                        s.promised,
                        s.leader,
                        s.member_chosen_upto,
                        r.debug_summary()
                    )
                }
                None => format!("n{id}:down"),
            })
            .collect();
        let clients: Vec<String> = self
            .clients
            .iter()
            .map(|c| {
                format!(
                    "c{}:{}/{} out={:?}",
                    c.client_id, c.done, self.scenario.requests_per_client, c.outstanding
                )
            })
            .collect();
        format!("{} | {}", nodes.join(", "), clients.join(", "))
    }

    fn heal(&mut self) {
        self.healed = true;
        self.network.heal();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let down_forever = self.scenario.down_at_start.contains(&id) && !self.scenario.heal_down;
            if self.nodes[&id].replica.is_none() && !down_forever {
                self.restart(id);
            }
        }
    }

    fn converged(&self) -> bool {
        let all_done = self.clients.iter().all(|c| c.done == self.scenario.requests_per_client);
        if !all_done {
            return false;
        }
        let uptos: Vec<Slot> =
            self.nodes.values().filter_map(|n| n.replica.as_ref()).map(|r| r.chosen_upto()).collect();
        let max = uptos.iter().copied().max().unwrap_or(0);
        uptos.iter().all(|u| *u == max) && self.checker.max_acknowledged_slot().is_none_or(|s| s < max)
    }

    fn final_views(&self) -> Vec<(NodeId, &MemStorage)> {
        self.nodes.iter().filter(|(_, n)| n.replica.is_some()).map(|(id, n)| (*id, &n.volatile)).collect()
    }

    fn step(&mut self) -> Result<(), String> {
        self.now += 1;
        if !self.healed {
            self.inject_faults();
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
            let Some(node) = self.nodes.get_mut(&envelope.to) else {
                continue;
            };
            if let Some(replica) = node.replica.as_mut() {
                self.stats.messages_delivered += 1;
                replica.step(envelope);
            }
        }
        self.run_clients();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            if let Some(replica) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()) {
                replica.tick();
            }
            self.drive(id)?;
        }
        Ok(())
    }

    /// The driver loop of one node: take Ready, persist, send, read, apply, reply.
    fn drive(&mut self, id: NodeId) -> Result<(), String> {
        for _ in 0..4 {
            let Some(replica) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()) else {
                return Ok(());
            };
            let mut ready = replica.take_ready();
            if ready.is_empty() {
                return Ok(());
            }
            // Messages that do not speak for the disk may leave before the write (the contract's
            // step 0), so a crash between them and the write is part of the model.
            let (after_write, before_write): (Vec<_>, Vec<_>) =
                std::mem::take(&mut ready.messages).into_iter().partition(|e| e.message.speaks_for_disk());
            for envelope in before_write {
                self.checker.on_send(&envelope)?;
                self.network.send(envelope, self.now, &mut self.rng);
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
            let installs =
                ready.persist.iter().filter(|op| matches!(op, PersistOp::InstallSnapshot(_))).count();
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
            for envelope in after_write {
                self.checker.on_send(&envelope)?;
                self.network.send(envelope, self.now, &mut self.rng);
            }
            let node = self.nodes.get_mut(&id).expect("node exists");
            for read in &ready.history_reads {
                let entries = node.volatile.read_history(
                    read.from_slot,
                    read.upto_slot,
                    read.entries_max,
                    read.bytes_max,
                );
                if let Some(replica) = node.replica.as_mut() {
                    replica.serve_catch_up(read.to, entries);
                }
            }
            for (slot, value) in &ready.chosen {
                self.checker.on_apply(id, *slot, value)?;
            }
            for reply in ready.replies {
                self.on_reply(id, reply.request_id, reply.outcome)?;
            }
        }
        Ok(())
    }

    fn on_reply(
        &mut self,
        node: NodeId,
        request_id: RequestId,
        outcome: Result<Slot, ProposalError>,
    ) -> Result<(), String> {
        let Some(client) = self.clients.iter_mut().find(|c| c.client_id == request_id.client_id) else {
            return Err(format!("reply for unknown client {request_id}"));
        };
        match outcome {
            Ok(slot) => {
                self.checker.on_acknowledged(request_id, slot)?;
                // Any node's answer settles the request, even if the client has since retried
                // elsewhere: the checker verifies all answers for one request agree.
                if client.outstanding.remove(&request_id.seq).is_some() {
                    client.done += 1;
                }
            }
            Err(ProposalError::RequestExpired(_)) | Err(ProposalError::TooLarge { .. }) => {
                return Err(format!("unexpected final error for {request_id}: {outcome:?}"));
            }
            Err(_) => {
                // Retryable: mark for a quick retry.
                if let Some(entry) = client.outstanding.get_mut(&request_id.seq) {
                    if entry.0 == node {
                        entry.1 = 0;
                    }
                }
            }
        }
        Ok(())
    }

    fn run_clients(&mut self) {
        let entry_nodes = if self.scenario.entry_nodes.is_empty() {
            self.members.clone()
        } else {
            self.scenario.entry_nodes.clone()
        };
        for index in 0..self.clients.len() {
            // New requests up to the window.
            loop {
                let client = &self.clients[index];
                let issued = client.next_seq - 1;
                if client.outstanding.len() as u64 >= self.scenario.client_window
                    || issued >= self.scenario.requests_per_client
                    || (issued > 0 && self.now < client.last_issue_tick + self.scenario.request_gap_ticks)
                {
                    break;
                }
                let seq = client.next_seq;
                self.clients[index].next_seq += 1;
                self.clients[index].last_issue_tick = self.now;
                let node = entry_nodes[self.rng.range(0, entry_nodes.len() as u64) as usize];
                self.send_request(index, seq, node);
            }
            // Retries of requests that failed or timed out, with the same request id.
            let stale: Vec<u64> = self.clients[index]
                .outstanding
                .iter()
                .filter(|(_, (_, sent))| self.now.saturating_sub(*sent) >= CLIENT_TIMEOUT_TICKS || *sent == 0)
                .map(|(seq, _)| *seq)
                .collect();
            for seq in stale {
                let node = entry_nodes[self.rng.range(0, entry_nodes.len() as u64) as usize];
                self.send_request(index, seq, node);
            }
        }
    }

    fn send_request(&mut self, index: usize, seq: u64, node: NodeId) {
        let client = &mut self.clients[index];
        let request_id = RequestId { client_id: client.client_id, seq };
        client.outstanding.insert(seq, (node, self.now));
        let payload = format!("c{}-{}", client.client_id, seq).into_bytes();
        self.checker.on_propose(request_id, &payload);
        if let Some(replica) = self.nodes.get_mut(&node).and_then(|n| n.replica.as_mut()) {
            replica.propose(Proposal { request_id, payload });
        }
    }

    fn inject_faults(&mut self) {
        let faults = self.scenario.faults.clone();
        if self.rng.chance(faults.crash_per_mille, 1000) {
            let alive: Vec<NodeId> =
                self.nodes.iter().filter(|(_, n)| n.replica.is_some()).map(|(id, _)| *id).collect();
            if !alive.is_empty() {
                let victim = alive[self.rng.range(0, alive.len() as u64) as usize];
                self.crash(victim);
            }
        }
        if self.rng.chance(faults.partition_per_mille, 1000) {
            self.stats.partitions += 1;
            let duration = self.rng.range(20, 200);
            let mut side: Vec<NodeId> =
                self.members.iter().copied().filter(|_| self.rng.chance(1, 2)).collect();
            if side.is_empty() {
                side.push(self.members[0]);
            }
            self.network.partition(side, self.now + duration);
        }
        if self.rng.chance(faults.compact_per_mille, 1000) {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            let id = ids[self.rng.range(0, ids.len() as u64) as usize];
            let truncate = self.rng.chance(1, 2);
            let force = self.rng.chance(1, 3);
            if let Some(replica) = self.nodes.get_mut(&id).and_then(|n| n.replica.as_mut()) {
                let compaction = Compaction {
                    truncate_below: truncate.then(|| replica.chosen_upto().saturating_sub(3)),
                    force,
                };
                if let Ok(report) = replica.compact(compaction) {
                    if report.history_entries_removed > 0 {
                        self.stats.snapshot_truncations += 1;
                    }
                }
            }
        }
    }

    fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
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

    fn restart(&mut self, id: NodeId) {
        let seed = self.rng.next_u64();
        let config = Self::config(&self.scenario, &self.members, id);
        let node = self.nodes.get_mut(&id).expect("node exists");
        node.restart_at = None;
        node.incarnation += 1;
        let durable = node.storage.durable_state();
        node.replica = Some(Replica::recover(config, durable, seed));
        self.checker.on_restart(id);
    }
}
