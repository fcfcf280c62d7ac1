//! `paxos-cli demo`: a local cluster in one command, for newcomers.
//!
//! Starts real `paxos-node` processes on free 127.0.0.1 ports with data directories under one
//! folder, proposes values, kills nodes with SIGKILL and restarts them, shows that the
//! histories agree, and leaves the cluster running with instructions to use and stop it. Two
//! topologies: three voters (the default), and the seed's: proposers apart from acceptors.

use anyhow::{bail, Context};
use futures::StreamExt;
use paxos_client::certs::IssueRequest;
use paxos_client::client::{Client, ClientOptions};
use paxos_client::tls::{CertFiles, Security, Tls};
use paxos_core::MemberRole;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const STATE_FILE: &str = "cluster.json";

/// Which cluster `paxos-cli demo` starts.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Three voters.
    Three,
    /// The seed's: 2 proposers (lead, keep no acceptor state) and 5 acceptors (vote, never lead).
    Seed,
}

impl Topology {
    fn roles(self) -> BTreeMap<u64, MemberRole> {
        match self {
            Topology::Three => (1..=3).map(|id| (id, MemberRole::Voter)).collect(),
            Topology::Seed => (1..=7)
                .map(|id| {
                    (id, if id <= SEED_PROPOSERS { MemberRole::Proposer } else { MemberRole::Acceptor })
                })
                .collect(),
        }
    }
}

/// The seed topology: nodes 1 and 2 propose, nodes 3 to 7 accept.
const SEED_PROPOSERS: u64 = 2;
/// Acceptors the seed demo kills (the last two): 3 of 5 remain, a majority.
const SEED_ACCEPTORS_KILLED: [u64; 2] = [6, 7];
/// Values the seed demo proposes, half through each proposer.
const SEED_VALUES: usize = 1000;
/// Proposals each proposer's client keeps in flight.
const SEED_WINDOW: usize = 16;

fn node_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating paxos-cli")?;
    let path = exe.with_file_name("paxos-node");
    if !path.exists() {
        bail!("{} not found: build both binaries with `cargo build --release --bins`", path.display());
    }
    Ok(path)
}

fn free_ports(count: u64) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free ports")?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Whether a process runs (a zombie waiting to be reaped does not count).
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn read_state(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join(STATE_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

fn state_pids(state: &serde_json::Value) -> Vec<u32> {
    state["nodes"]
        .as_array()
        .map(|nodes| nodes.iter().filter_map(|n| n["pid"].as_u64().map(|p| p as u32)).collect())
        .unwrap_or_default()
}

/// Stops a demo cluster started in `dir`.
pub fn stop(dir: &Path) -> anyhow::Result<()> {
    let Some(state) = read_state(dir) else {
        bail!("no demo cluster in {} (no {STATE_FILE})", dir.display());
    };
    let mut stopped = Vec::new();
    for pid in state_pids(&state) {
        if pid_alive(pid) {
            Command::new("kill").arg("-TERM").arg(pid.to_string()).status()?;
            stopped.push(pid);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while stopped.iter().any(|pid| pid_alive(*pid)) {
        if Instant::now() > deadline {
            bail!("demo nodes did not exit within 10 s of SIGTERM: pids {stopped:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = stopped.len();
    println!("stopped {stopped} node(s) of the demo cluster in {}", dir.display());
    Ok(())
}

struct Demo {
    dir: PathBuf,
    binary: PathBuf,
    addrs: BTreeMap<u64, String>,
    /// Where each node serves Prometheus metrics (`--metrics-listen`).
    metrics_addrs: BTreeMap<u64, String>,
    roles: BTreeMap<u64, MemberRole>,
    pids: BTreeMap<u64, u32>,
    /// Children started by this run (killing one needs its handle to reap it).
    children: BTreeMap<u64, std::process::Child>,
    security: Security,
}

impl Demo {
    /// A cluster of nodes with `roles` on free ports, none started yet, with its files in `dir`.
    fn new(dir: PathBuf, roles: BTreeMap<u64, MemberRole>) -> anyhow::Result<Demo> {
        let ports = free_ports(2 * roles.len() as u64)?;
        let (node_ports, metrics_ports) = ports.split_at(roles.len());
        let on_ports = |ports: &[u16]| -> BTreeMap<u64, String> {
            roles.keys().zip(ports).map(|(id, port)| (*id, format!("127.0.0.1:{port}"))).collect()
        };
        let (addrs, metrics_addrs) = (on_ports(node_ports), on_ports(metrics_ports));
        Ok(Demo {
            dir,
            binary: node_binary()?,
            addrs,
            metrics_addrs,
            roles,
            pids: BTreeMap::new(),
            children: BTreeMap::new(),
            security: Security::InsecurePlaintext,
        })
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{id}.log")))?;
        let mut command = Command::new(&self.binary);
        command.arg("--id").arg(id.to_string()).arg("--listen").arg(&self.addrs[&id]);
        for (peer, addr) in &self.addrs {
            command.arg("--peer").arg(format!("{peer}={addr}"));
        }
        command.arg("--data-dir").arg(self.dir.join(format!("node-{id}")));
        command.arg("--role").arg(self.roles[&id].to_string());
        // Each node is handed its own identity's directory, nothing else (no CA key, no other
        // identity), as on separate machines.
        command.arg("--certs").arg(self.certs_dir().join(format!("node-{id}")));
        command.arg("--metrics-listen").arg(&self.metrics_addrs[&id]);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        self.pids.insert(id, child.id());
        // Dropping a Child does not kill it: the nodes outlive this command and are stopped
        // with `paxos-cli demo --stop`.
        self.children.insert(id, child);
        self.save()
    }

    fn save(&self) -> anyhow::Result<()> {
        let nodes: Vec<_> = self
            .addrs
            .iter()
            .map(|(id, addr)| json!({ "id": id, "addr": addr, "role": self.roles[id], "pid": self.pids.get(id) }))
            .collect();
        let state = json!({ "nodes": nodes });
        std::fs::write(self.dir.join(STATE_FILE), serde_json::to_string_pretty(&state)?)?;
        Ok(())
    }

    /// The cluster's CA and every holder's certificate: the demo is what newcomers copy, so it
    /// runs with TLS like a real cluster.
    fn certs_dir(&self) -> PathBuf {
        self.dir.join("certs")
    }

    fn create_certs(&mut self) -> anyhow::Result<()> {
        let request = IssueRequest {
            cluster: paxos_client::DEFAULT_CLUSTER.into(),
            nodes: self.addrs.keys().copied().collect(),
            client: true,
            admin: true,
            overwrite: false,
        };
        paxos_client::certs::issue(&self.certs_dir(), &request)
            .context("creating the demo's certificates")?;
        let files = CertFiles::named(&self.certs_dir(), "client");
        let tls = Tls::for_client(&files, paxos_client::DEFAULT_CLUSTER)?;
        self.security = Security::Tls(Arc::new(tls));
        Ok(())
    }

    fn client(&self, ids: &[u64]) -> anyhow::Result<Client> {
        let mut options =
            ClientOptions::new(ids.iter().map(|id| self.addrs[id].clone()).collect(), self.security.clone());
        options.timeout = Duration::from_secs(15);
        Ok(Client::new(options)?)
    }

    async fn leader(&self, among: &[u64]) -> anyhow::Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut seen = Vec::new();
            for id in among {
                let mut options = ClientOptions::new(vec![self.addrs[id].clone()], self.security.clone());
                options.timeout = Duration::from_millis(500);
                seen.push(Client::new(options)?.status().await.ok().and_then(|s| s.leader));
            }
            if let Some(Some(leader)) = seen.first() {
                // Survivors may still name a dead leader until they elect a new one.
                if among.contains(leader) && seen.iter().all(|l| *l == Some(*leader)) {
                    return Ok(*leader);
                }
            }
            if Instant::now() > deadline {
                bail!("no leader elected within 20 s; see the node logs in {}", self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every node of `ids` holds a chosen configuration.
    async fn wait_bound(&self, ids: &[u64]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        for id in ids {
            let client = self.client(&[*id])?;
            while client.status().await.ok().and_then(|s| s.configuration_chosen_at).is_none() {
                if Instant::now() > deadline {
                    bail!(
                        "node {id} holds no chosen configuration after 20 s; see the logs in {}",
                        self.dir.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// The histories of the nodes among `ids` that answer.
    async fn histories(&self, ids: &[u64]) -> anyhow::Result<BTreeMap<u64, History>> {
        let mut histories = BTreeMap::new();
        for id in ids {
            // Each node's own history, as it holds it: a linearizable read would be answered
            // by whichever node the leader's read index sends the client to.
            let serializable = paxos_client::wire::ReadConsistency::Serializable;
            if let Ok(page) = self.client(&[*id])?.history_with(0, 10_000, serializable).await {
                histories.insert(*id, page.entries);
            }
        }
        Ok(histories)
    }

    fn kill9(&mut self, id: u64) -> anyhow::Result<()> {
        self.pids.remove(&id);
        if let Some(mut child) = self.children.remove(&id) {
            child.kill()?; // SIGKILL
            child.wait()?;
        }
        self.save()
    }
}

/// Values proposed in step 2.
const VALUES_BEFORE_KILL: usize = 5;
/// Values proposed in step 3 while the old leader is down, after the one that times the
/// takeover; step 4 waits until every node's history holds all of them.
const VALUES_WHILE_DOWN: usize = 3;

/// One node's history: each slot with its value, `None` for slots that open a client session.
type History = Vec<(paxos_core::Slot, Option<Vec<u8>>)>;

pub async fn run(dir: &Path, topology: Topology) -> anyhow::Result<()> {
    let dir = prepare_dir(dir)?;
    let mut demo = Demo::new(dir, topology.roles())?;
    if topology == Topology::Seed {
        return run_seed(&mut demo).await;
    }
    let all: Vec<u64> = demo.addrs.keys().copied().collect();
    let leader = start_nodes(&mut demo, &all).await?;
    propose_through_each_node(&demo, &all).await?;
    kill_leader(&mut demo, &all, leader).await?;
    let histories = restart_and_catch_up(&mut demo, &all, leader).await?;
    print_histories(&histories, &all);
    print_instructions(&demo)
}

/// Empties `dir` for a new cluster, unless a demo cluster still runs there, and returns its
/// canonical path.
fn prepare_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    if let Some(state) = read_state(dir) {
        if state_pids(&state).into_iter().any(pid_alive) {
            bail!(
                "a demo cluster is already running in {}; stop it first with `paxos-cli demo --stop --dir {}`",
                dir.display(),
                dir.display()
            );
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.canonicalize()?)
}

/// Step 1; returns the elected leader.
async fn start_nodes(demo: &mut Demo, all: &[u64]) -> anyhow::Result<u64> {
    demo.create_certs()?;
    let certs = demo.certs_dir();
    println!(
        "1. starting {} paxos-node processes, data in {}; links are mutual TLS, one certificate directory per identity:",
        all.len(),
        demo.dir.display(),
    );
    println!("   {}/ca/        the CA's key: on no machine that runs a node or a client", certs.display());
    for id in all {
        println!("   {}/node-{id}/    node {id}'s only (its --certs)", certs.display());
    }
    println!("   {}/client/    clients: propose, read", certs.display());
    println!("   {}/admin/     operators: gc, members, leader transfer", certs.display());
    for id in all {
        demo.spawn(*id)?;
        println!("   node {id} ({}) on {} (pid {})", demo.roles[id], demo.addrs[id], demo.pids[id]);
    }
    let leader = demo.leader(all).await?;
    // The first configuration entry binds every member's data directory and needs every
    // member's vote: nothing may be killed before it is chosen.
    demo.wait_bound(all).await?;
    println!("   node {leader} was elected leader, and the configuration is bound (slot 0)");
    Ok(leader)
}

/// Step 2: any node takes proposals (a follower forwards them to the leader).
async fn propose_through_each_node(demo: &Demo, all: &[u64]) -> anyhow::Result<()> {
    println!("2. proposing {VALUES_BEFORE_KILL} values, each through a different node");
    for i in 1..=VALUES_BEFORE_KILL {
        let through = all[(i - 1) % all.len()];
        let value = format!("hello-{i}");
        let slot = demo.client(&[through])?.propose(value.clone().into_bytes()).await?;
        println!("   {value:<10} through node {through} -> chosen at slot {slot}");
    }
    Ok(())
}

/// Step 3: the survivors elect a new leader and go on choosing values without the old one.
async fn kill_leader(demo: &mut Demo, all: &[u64], leader: u64) -> anyhow::Result<()> {
    println!("3. kill -9 of the leader, node {leader}");
    demo.kill9(leader)?;
    let survivors: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    let started = Instant::now();
    let new_leader = demo.leader(&survivors).await?;
    let client = demo.client(&survivors)?;
    let slot = client.propose(b"after-the-kill".to_vec()).await?;
    println!(
        "   node {new_leader} took over; \"after-the-kill\" chosen at slot {slot} ({} ms after the kill)",
        started.elapsed().as_millis()
    );
    // Values the restarted node missed and must catch up on in step 4.
    for i in 1..=VALUES_WHILE_DOWN {
        client.propose(format!("while-{leader}-is-down-{i}").into_bytes()).await?;
    }
    Ok(())
}

/// Step 4: restarts `id` on its data directory and returns every node's history once all agree.
async fn restart_and_catch_up(
    demo: &mut Demo,
    all: &[u64],
    id: u64,
) -> anyhow::Result<BTreeMap<u64, History>> {
    println!("4. restarting node {id} on its data directory");
    demo.spawn(id)?;
    let values_expected = VALUES_BEFORE_KILL + 1 + VALUES_WHILE_DOWN;
    converged_histories(demo, all, values_expected).await
}

/// Step 5: the values of the first node's history, then how every node's compares to it.
fn print_histories(histories: &BTreeMap<u64, History>, all: &[u64]) {
    println!("5. every node holds the same history:");
    let reference = &histories[&all[0]];
    for (slot, value) in reference {
        if let Some(value) = value {
            println!("   {slot}\t{}", crate::output::escaped(value));
        }
    }
    for (id, history) in histories {
        let values = history.iter().filter(|(_, value)| value.is_some()).count();
        println!(
            "   node {id}: {values} values in {} slots, identical: {}",
            history.len(),
            history == reference
        );
    }
}

/// The seed's scenario: 2 proposers and 5 acceptors; 2 acceptors killed with SIGKILL; 1000
/// values proposed through both proposers; the acceptors restarted; every member's history
/// compared, and what each member holds shown.
async fn run_seed(demo: &mut Demo) -> anyhow::Result<()> {
    let all: Vec<u64> = demo.addrs.keys().copied().collect();
    let proposers: Vec<u64> = (1..=SEED_PROPOSERS).collect();
    let leader = start_nodes(demo, &all).await?;
    println!("2. kill -9 of acceptors {:?}: 3 of the 5 acceptors remain, a majority", SEED_ACCEPTORS_KILLED);
    for id in SEED_ACCEPTORS_KILLED {
        demo.kill9(id)?;
    }
    println!(
        "3. proposing {SEED_VALUES} values, half through each proposer ({SEED_WINDOW} in flight each); node {leader} leads, the other forwards"
    );
    let started = Instant::now();
    let mut acknowledged: BTreeMap<Vec<u8>, paxos_core::Slot> = BTreeMap::new();
    let per_proposer = SEED_VALUES / proposers.len();
    let mut streams = Vec::new();
    for proposer in &proposers {
        let client = demo.client(&[*proposer])?;
        let values: Vec<Vec<u8>> =
            (1..=per_proposer).map(|i| format!("via-{proposer}-{i:04}").into_bytes()).collect();
        streams.push(async move {
            let slots: Vec<_> =
                client.propose_stream(futures::stream::iter(values.clone()), SEED_WINDOW).collect().await;
            (*proposer, values, slots)
        });
    }
    for (proposer, values, slots) in futures::future::join_all(streams).await {
        let mut chosen = 0;
        for (value, slot) in values.into_iter().zip(slots) {
            let slot = slot.with_context(|| format!("a proposal through node {proposer}"))?;
            acknowledged.insert(value, slot);
            chosen += 1;
        }
        println!("   {chosen} values through node {proposer} chosen");
    }
    let elapsed = started.elapsed();
    println!(
        "   {} values chosen in {} ms ({:.0} values/s) with 2 of 5 acceptors down",
        acknowledged.len(),
        elapsed.as_millis(),
        acknowledged.len() as f64 / elapsed.as_secs_f64()
    );
    println!("4. restarting acceptors {:?} on their data directories", SEED_ACCEPTORS_KILLED);
    for id in SEED_ACCEPTORS_KILLED {
        demo.spawn(id)?;
    }
    let histories = converged_histories(demo, &all, acknowledged.len()).await?;
    println!("5. every member's history, compared with node 1's:");
    let reference = &histories[&all[0]];
    for (id, history) in &histories {
        let values = history.iter().filter(|(_, value)| value.is_some()).count();
        let status = demo.client(&[*id])?.status().await?;
        let holds = match demo.roles[id] {
            MemberRole::Proposer => format!(
                "accepted records: {} (a proposer keeps no acceptor state; it learned the history from the acceptors)",
                status.accepted_records
            ),
            _ => format!("promised ballot {}, accepted records kept: {}", status.ballot, status.accepted_records),
        };
        println!(
            "   node {id} ({}): {values} values in {} slots, identical: {}; {holds}",
            demo.roles[id],
            history.len(),
            history == reference
        );
    }
    let misplaced = acknowledged
        .iter()
        .filter(|(value, slot)| {
            reference.iter().filter(|(_, held)| held.as_deref() == Some(value.as_slice())).count() != 1
                || !reference
                    .iter()
                    .any(|(at, held)| at == *slot && held.as_deref() == Some(value.as_slice()))
        })
        .count();
    if misplaced > 0 {
        bail!("{misplaced} acknowledged values are missing, repeated or not at their slot");
    }
    println!(
        "   every one of the {} acknowledged values is in the history once, at the slot it was acknowledged at",
        acknowledged.len()
    );
    print_instructions(demo)
}

/// Every node's history once all of `ids` answer with the same one holding `values` values.
async fn converged_histories(
    demo: &Demo,
    ids: &[u64],
    values_expected: usize,
) -> anyhow::Result<BTreeMap<u64, History>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let histories = demo.histories(ids).await?;
        let first = histories.values().next().cloned().unwrap_or_default();
        let values = first.iter().filter(|(_, value)| value.is_some()).count();
        if histories.len() == ids.len()
            && histories.values().all(|h| *h == first)
            && values >= values_expected
        {
            return Ok(histories);
        }
        if Instant::now() > deadline {
            bail!("histories did not converge within 30 s; see the logs in {}", demo.dir.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How to use and stop the cluster, which keeps running after this command.
fn print_instructions(demo: &Demo) -> anyhow::Result<()> {
    let endpoints = demo.addrs.values().cloned().collect::<Vec<_>>().join(",");
    println!();
    println!("The cluster keeps running. To use it:");
    println!("   export PAXOS_ENDPOINTS={endpoints}");
    println!("   export PAXOS_CERTS_DIR={}", demo.certs_dir().display());
    println!("   paxos-cli propose 'my value'");
    println!("   seq 1 1000 | paxos-cli propose --stdin");
    println!("   paxos-cli history --json");
    println!("   paxos-cli status --all");
    if let Some((id, addr)) = demo.metrics_addrs.iter().next() {
        println!(
            "   curl http://{addr}/metrics   (node {id}'s Prometheus metrics; each node serves its own)"
        );
    }
    println!("(paxos-cli is {})", std::env::current_exe()?.display());
    println!(
        "Node logs: {}/node-N.log. To stop it: paxos-cli demo --stop --dir {}",
        demo.dir.display(),
        demo.dir.display()
    );
    Ok(())
}
