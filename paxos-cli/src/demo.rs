//! `paxos-cli demo`: a local 3-node cluster in one command, for newcomers.
//!
//! Starts three real `paxos-node` processes on free 127.0.0.1 ports with data directories under
//! one folder, proposes values, kills a node with SIGKILL and restarts it, shows that the
//! histories agree, and leaves the cluster running with instructions to use and stop it.

use anyhow::{bail, Context};
use paxos_node::client::{Client, ClientOptions};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NODES: u64 = 3;
const STATE_FILE: &str = "cluster.json";

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
    pids: BTreeMap<u64, u32>,
    /// Children started by this run (killing one needs its handle to reap it).
    children: BTreeMap<u64, std::process::Child>,
}

impl Demo {
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
            .map(|(id, addr)| json!({ "id": id, "addr": addr, "pid": self.pids.get(id) }))
            .collect();
        let state = json!({ "nodes": nodes });
        std::fs::write(self.dir.join(STATE_FILE), serde_json::to_string_pretty(&state)?)?;
        Ok(())
    }

    fn client(&self, ids: &[u64]) -> anyhow::Result<Client> {
        let mut options = ClientOptions::new(ids.iter().map(|id| self.addrs[id].clone()).collect());
        options.timeout = Duration::from_secs(15);
        Ok(Client::new(options)?)
    }

    async fn leader(&self, among: &[u64]) -> anyhow::Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut seen = Vec::new();
            for id in among {
                let mut options = ClientOptions::new(vec![self.addrs[id].clone()]);
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

    fn kill9(&mut self, id: u64) -> anyhow::Result<()> {
        self.pids.remove(&id);
        if let Some(mut child) = self.children.remove(&id) {
            child.kill()?; // SIGKILL
            child.wait()?;
        }
        self.save()
    }
}

pub async fn run(dir: &Path) -> anyhow::Result<()> {
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
    let dir = dir.canonicalize()?;
    let ports = free_ports(NODES)?;
    let addrs = (1..=NODES).zip(ports).map(|(id, port)| (id, format!("127.0.0.1:{port}"))).collect();
    let mut demo = Demo {
        dir: dir.clone(),
        binary: node_binary()?,
        addrs,
        pids: BTreeMap::new(),
        children: BTreeMap::new(),
    };
    let all: Vec<u64> = (1..=NODES).collect();

    println!("1. starting {NODES} paxos-node processes, data in {}", dir.display());
    for id in &all {
        demo.spawn(*id)?;
        println!("   node {id} on {} (pid {})", demo.addrs[id], demo.pids[id]);
    }
    let leader = demo.leader(&all).await?;
    println!("   node {leader} was elected leader");

    println!("2. proposing 5 values, each through a different node");
    for i in 1..=5u64 {
        let through = all[(i as usize - 1) % all.len()];
        let value = format!("hello-{i}");
        let slot = demo.client(&[through])?.propose(value.clone().into_bytes()).await?;
        println!("   {value:<10} through node {through} -> chosen at slot {slot}");
    }

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
    for i in 1..=3u64 {
        client.propose(format!("while-{leader}-is-down-{i}").into_bytes()).await?;
    }

    println!("4. restarting node {leader} on its data directory");
    demo.spawn(leader)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let histories = loop {
        let mut histories = BTreeMap::new();
        for id in &all {
            if let Ok(page) = demo.client(&[*id])?.history(0, 10_000).await {
                histories.insert(*id, page.entries);
            }
        }
        let first = histories.values().next().cloned().unwrap_or_default();
        let values = first.iter().filter(|(_, value)| value.is_some()).count();
        if histories.len() == all.len() && histories.values().all(|h| *h == first) && values >= 9 {
            break histories;
        }
        if Instant::now() > deadline {
            bail!("histories did not converge within 20 s; see the logs in {}", dir.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    println!("5. every node holds the same history (slots without a value open client sessions):");
    let reference = &histories[&all[0]];
    for (slot, value) in reference {
        if let Some(value) = value {
            println!("   {slot}\t{}", String::from_utf8_lossy(value));
        }
    }
    for (id, history) in &histories {
        let values = history.iter().filter(|(_, value)| value.is_some()).count();
        println!(
            "   node {id}: {values} values in {} slots, identical: {}",
            history.len(),
            history == reference
        );
    }

    let endpoints = demo.addrs.values().cloned().collect::<Vec<_>>().join(",");
    println!();
    println!("The cluster keeps running. To use it:");
    println!("   export PAXOS_ENDPOINTS={endpoints}");
    println!("   paxos-cli propose 'my value'");
    println!("   seq 1 1000 | paxos-cli propose --stdin");
    println!("   paxos-cli history --json");
    println!("   paxos-cli status");
    println!("(paxos-cli is {})", std::env::current_exe()?.display());
    println!(
        "Node logs: {}/node-N.log. To stop it: paxos-cli demo --stop --dir {}",
        dir.display(),
        dir.display()
    );
    Ok(())
}
