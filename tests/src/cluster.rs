//! Start, kill and restart real node processes.

use anyhow::{bail, Context};
use paxos_node::certs::IssueRequest;
use paxos_node::client::{Client, ClientOptions};
use paxos_node::tls::{CertFiles, Security, Tls};
use paxos_node::wire::StatusReport;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Path of a workspace binary (`paxos-node`, `paxos-cli`), built by `cargo build --bins`.
pub fn binary(name: &str) -> PathBuf {
    // Integration tests run from target/<profile>/deps; the binaries sit one level up.
    let mut dir = std::env::current_exe().expect("test executable path");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(path.exists(), "{} not found: run `cargo build --workspace --bins` first", path.display());
    path
}

/// Polls `check` until it returns Ok(Some(value)) or `timeout` passes.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = String::from("condition not met");
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = format!("{error:#}"),
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last_error}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[derive(Debug)]
struct NodeProcess {
    child: Option<Child>,
    log: PathBuf,
}

/// A cluster of real `paxos-node` processes.
#[derive(Debug)]
pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// Where each node listens (clients use these).
    pub addrs: BTreeMap<u64, String>,
    /// (from, to) -> the proxy node `from` uses to reach node `to`, when links are proxied.
    proxies: BTreeMap<(u64, u64), crate::proxy::Proxy>,
    nodes: BTreeMap<u64, NodeProcess>,
    extra_args: Vec<String>,
    /// `--role` of each node started (a voter when not listed).
    roles: BTreeMap<u64, paxos_core::MemberRole>,
    /// Where each node serves metrics, once `serve_metrics` was called.
    pub metrics_addrs: BTreeMap<u64, String>,
    /// Data directories elsewhere than `dir/node-<id>` (e.g. on a lazy filesystem).
    data_dirs: BTreeMap<u64, PathBuf>,
    /// How clients and nodes talk: TLS with certificates in `certs_dir()` unless plaintext.
    pub security: Security,
    /// When set, nodes start under this `RLIMIT_NOFILE` (soft and hard, as `ulimit -n` sets
    /// them), through `prlimit`.
    pub open_files_limit: Option<u64>,
    /// `paxos-node` binaries other than this workspace's, by node (an earlier version's, for
    /// upgrades).
    node_binaries: BTreeMap<u64, PathBuf>,
}

/// The cluster name every test cluster uses (certificates name it).
pub const CLUSTER: &str = paxos_node::config::DEFAULT_CLUSTER;

impl Cluster {
    /// Starts `size` nodes (ids 1..=size) and waits for a leader and for the bootstrap
    /// configuration to be bound (chosen at slot 0 once every member answered).
    pub async fn start(size: u64) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::new(size)?;
        for id in 1..=size {
            cluster.start_node(id)?;
        }
        cluster.wait_started().await?;
        Ok(cluster)
    }

    /// `wait_bootstrapped` for a cluster just started; when it fails, the node logs are kept
    /// (a failed start returns an error, not a panic, so `Drop` would delete them).
    async fn wait_started(&mut self) -> anyhow::Result<()> {
        if let Err(error) = self.wait_bootstrapped().await {
            let mut context = String::new();
            for (id, node) in &mut self.nodes {
                let exited = node.child.as_mut().and_then(|child| child.try_wait().ok().flatten());
                if let Some(status) = exited {
                    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                    let last = log.lines().last().unwrap_or_default();
                    context.push_str(&format!("node {id} exited ({status}): {last}; "));
                }
            }
            context.push_str(&format!("node logs and data kept in {}", self.keep_dir().display()));
            return Err(error.context(context));
        }
        Ok(())
    }

    /// Keeps the cluster's directory (node logs, data, certificates) after the cluster is
    /// dropped, where a person can read why a test failed; its path.
    fn keep_dir(&mut self) -> PathBuf {
        let empty = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, empty).keep()
    }

    /// Waits until every running node has applied the configuration that binds the bootstrap.
    pub async fn wait_bootstrapped(&self) -> anyhow::Result<()> {
        self.wait_for_leader(Duration::from_secs(15)).await?;
        let running = self.running();
        wait_until("the bootstrap configuration bound on every node", Duration::from_secs(15), || async {
            for id in &running {
                if self.status(*id).await?.configuration_chosen_at.is_none() {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .await
    }

    /// A cluster with addresses, directories and certificates (nodes 1..=size, a client and
    /// an admin), nothing running.
    pub fn new(size: u64) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("paxos-test-").tempdir()?;
        let certs_dir = dir.path().join("certs");
        let request = IssueRequest {
            cluster: CLUSTER.into(),
            nodes: (1..=size).collect(),
            client: true,
            admin: true,
            overwrite: false,
        };
        paxos_node::certs::issue(&certs_dir, &request)?;
        let tls = Tls::for_client(&CertFiles::named(&certs_dir, "client"), CLUSTER)?;
        let ports = crate::ports::free_ports(size as usize);
        let addrs = (1..=size).zip(ports).map(|(id, port)| (id, format!("127.0.0.1:{port}"))).collect();
        Ok(Cluster {
            dir,
            addrs,
            proxies: BTreeMap::new(),
            nodes: BTreeMap::new(),
            extra_args: Vec::new(),
            roles: BTreeMap::new(),
            metrics_addrs: BTreeMap::new(),
            data_dirs: BTreeMap::new(),
            security: Security::Tls(Arc::new(tls)),
            open_files_limit: None,
            node_binaries: BTreeMap::new(),
        })
    }

    /// Like `new`, for nodes and clients that run with `--insecure-plaintext`.
    pub fn new_plaintext(size: u64) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::new(size)?;
        cluster.security = Security::InsecurePlaintext;
        Ok(cluster)
    }

    /// The certificates of nodes 1..=size, `client` and `admin`, and the CA's key.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// `paxos-cli` with this cluster's client certificates (or plaintext) in its environment.
    pub fn cli_command(&self) -> Command {
        let mut command = Command::new(binary("paxos-cli"));
        command.env("PAXOS_CERTS_DIR", self.certs_dir());
        if !self.security.is_tls() {
            command.env("PAXOS_INSECURE_PLAINTEXT", "true");
        }
        command
    }

    /// Like `start`, with a TCP proxy on every directed peer link, so tests can partition.
    pub async fn start_with_proxies(size: u64) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::new(size)?;
        for from in 1..=size {
            for to in (1..=size).filter(|to| *to != from) {
                let proxy = crate::proxy::Proxy::start(cluster.addrs[&to].clone()).await?;
                cluster.proxies.insert((from, to), proxy);
            }
        }
        for id in 1..=size {
            cluster.start_node(id)?;
        }
        cluster.wait_started().await?;
        Ok(cluster)
    }

    /// Cuts every link between `side` and the other nodes, both ways.
    pub fn partition(&self, side: &[u64]) {
        for ((from, to), proxy) in &self.proxies {
            if side.contains(from) != side.contains(to) {
                proxy.cut();
            }
        }
    }

    /// A non-transitive split: every link between `left` and `right` is cut, both ways; nodes
    /// in neither (bridges) still hear and are heard by both sides.
    pub fn split_with_bridge(&self, left: &[u64], right: &[u64]) {
        for ((from, to), proxy) in &self.proxies {
            let across =
                (left.contains(from) && right.contains(to)) || (right.contains(from) && left.contains(to));
            if across {
                proxy.cut();
            }
        }
    }

    /// Cuts the one directed link `from -> to` (what `from` sends `to`), until `heal_link`.
    pub fn cut_link(&self, from: u64, to: u64) {
        if let Some(proxy) = self.proxies.get(&(from, to)) {
            proxy.cut();
        }
    }

    /// Restores the one directed link `from -> to`.
    pub fn heal_link(&self, from: u64, to: u64) {
        if let Some(proxy) = self.proxies.get(&(from, to)) {
            proxy.heal();
        }
    }

    /// Slows the one directed link `from -> to` by `delay` per chunk forwarded.
    pub fn slow_link(&self, from: u64, to: u64, delay: Duration) {
        if let Some(proxy) = self.proxies.get(&(from, to)) {
            proxy.set_delay(delay);
        }
    }

    /// Silently drops all traffic between `side` and the others (connections stay open).
    pub fn blackhole(&self, side: &[u64]) {
        for ((from, to), proxy) in &self.proxies {
            if side.contains(from) != side.contains(to) {
                proxy.drop_traffic();
            }
        }
    }

    /// Slows every link by `delay` per chunk forwarded (0 restores).
    pub fn set_delay(&self, delay: Duration) {
        for proxy in self.proxies.values() {
            proxy.set_delay(delay);
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        for proxy in self.proxies.values() {
            proxy.heal();
        }
    }

    /// Extra flags for every node started from now on.
    pub fn set_extra_args(&mut self, args: &[&str]) {
        self.extra_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Every node started from now on serves Prometheus metrics (`--metrics-listen`) on a port
    /// of its own, in `metrics_addrs`.
    pub fn serve_metrics(&mut self) {
        let ids: Vec<u64> = self.addrs.keys().copied().collect();
        let ports = crate::ports::free_ports(ids.len());
        self.metrics_addrs =
            ids.into_iter().zip(ports).map(|(id, port)| (id, format!("127.0.0.1:{port}"))).collect();
    }

    /// Node `id`'s metrics, scraped now.
    pub async fn scrape(&self, id: u64) -> anyhow::Result<crate::scrape::Scrape> {
        let addr = self.metrics_addrs.get(&id).context("serve_metrics was not called")?;
        crate::scrape::scrape(addr).await.with_context(|| format!("node {id}'s metrics"))
    }

    /// The `--role` each node starts with (the bootstrap records them).
    pub fn set_roles(&mut self, roles: &[(u64, paxos_core::MemberRole)]) {
        self.roles = roles.iter().copied().collect();
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.data_dirs.get(&id).cloned().unwrap_or_else(|| self.dir.path().join(format!("node-{id}")))
    }

    /// Node `id` keeps its data in `path` from its next start on.
    pub fn set_data_dir(&mut self, id: u64, path: PathBuf) {
        self.data_dirs.insert(id, path);
    }

    /// The command line that starts node `id` (the same as `start_node` runs).
    pub fn node_command(&self, id: u64) -> Command {
        self.node_command_with_dir(id, &self.data_dir(id))
    }

    /// The command line of node `id` on another data directory.
    pub fn node_command_with_dir(&self, id: u64, data_dir: &Path) -> Command {
        let program = self.node_binaries.get(&id).cloned().unwrap_or_else(|| binary("paxos-node"));
        let mut command = Command::new(program);
        command.arg("--id").arg(id.to_string()).arg("--listen").arg(&self.addrs[&id]);
        for (peer, addr) in &self.addrs {
            let addr = self.proxies.get(&(id, *peer)).map(|p| &p.addr).unwrap_or(addr);
            command.arg("--peer").arg(format!("{peer}={addr}"));
        }
        command.arg("--data-dir").arg(data_dir);
        match self.security {
            Security::Tls(_) => command.arg("--certs-dir").arg(self.certs_dir()),
            Security::InsecurePlaintext => command.arg("--insecure-plaintext"),
        };
        if let Some(role) = self.roles.get(&id) {
            command.arg("--role").arg(role.to_string());
        }
        if let Some(addr) = self.metrics_addrs.get(&id) {
            command.arg("--metrics-listen").arg(addr);
        }
        command.args(&self.extra_args);
        command.env("RUST_LOG", std::env::var("PAXOS_TEST_LOG").unwrap_or_else(|_| "info".into()));
        command
    }

    /// Node `id` starts from this `paxos-node` binary from now on (`None`: this workspace's).
    pub fn set_node_binary(&mut self, id: u64, binary: Option<PathBuf>) {
        match binary {
            Some(path) => self.node_binaries.insert(id, path),
            None => self.node_binaries.remove(&id),
        };
    }

    /// Waits until node `id` has exited (within `timeout`); its exit status.
    pub async fn wait_exit(
        &mut self,
        id: u64,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let node = self.nodes.get_mut(&id).context("no such node")?;
        let deadline = Instant::now() + timeout;
        loop {
            let child = node.child.as_mut().context("node not running")?;
            if let Some(status) = child.try_wait()? {
                node.child = None;
                return Ok(status);
            }
            anyhow::ensure!(Instant::now() < deadline, "node {id} still runs after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn start_node(&mut self, id: u64) -> anyhow::Result<()> {
        let command = self.node_command(id);
        self.spawn_node(id, command)
    }

    /// Starts node `id` with these `--peer` flags instead of every node's, and `extra` flags
    /// (a node that joins later: its flags list the members it was told of).
    pub fn start_node_with_peers(
        &mut self,
        id: u64,
        peers: &[(u64, String)],
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let mut command = Command::new(binary("paxos-node"));
        command.arg("--id").arg(id.to_string()).arg("--listen").arg(&self.addrs[&id]);
        for (peer, addr) in peers {
            command.arg("--peer").arg(format!("{peer}={addr}"));
        }
        command.arg("--data-dir").arg(self.data_dir(id));
        match self.security {
            Security::Tls(_) => command.arg("--certs-dir").arg(self.certs_dir()),
            Security::InsecurePlaintext => command.arg("--insecure-plaintext"),
        };
        command.args(extra);
        command.env("RUST_LOG", std::env::var("PAXOS_TEST_LOG").unwrap_or_else(|_| "info".into()));
        self.spawn_node(id, command)
    }

    fn spawn_node(&mut self, id: u64, mut command: Command) -> anyhow::Result<()> {
        if let Some(limit) = self.open_files_limit {
            // prlimit sets the limits, then execs the node: the pid stays the node's.
            let mut limited = Command::new("prlimit");
            limited.arg(format!("--nofile={limit}:{limit}")).arg("--").arg(command.get_program());
            limited.args(command.get_args());
            for (key, value) in command.get_envs() {
                match value {
                    Some(value) => limited.env(key, value),
                    None => limited.env_remove(key),
                };
            }
            command = limited;
        }
        let log = self.dir.path().join(format!("node-{id}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let child = command
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("spawning node {id}"))?;
        self.nodes.insert(id, NodeProcess { child: Some(child), log });
        Ok(())
    }

    /// SIGKILL: no shutdown path runs, only what was fsynced survives.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some(node) = self.nodes.get_mut(&id) {
            if let Some(mut child) = node.child.take() {
                child.kill()?;
                child.wait()?;
            }
        }
        Ok(())
    }

    /// SIGTERM and wait for a graceful exit; returns the exit status.
    pub fn stop(&mut self, id: u64) -> anyhow::Result<std::process::ExitStatus> {
        let node = self.nodes.get_mut(&id).context("no such node")?;
        let mut child = node.child.take().context("node not running")?;
        let pid = child.id().to_string();
        Command::new("kill").arg("-TERM").arg(&pid).status()?;
        Ok(child.wait()?)
    }

    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id)?;
        self.start_node(id)
    }

    /// The process id of node `id`, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes.get(&id).and_then(|n| n.child.as_ref()).map(|c| c.id())
    }

    /// Resident memory of node `id`'s process, in bytes (Linux).
    pub fn rss_bytes(&self, id: u64) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid(id)?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.child.is_some())
    }

    pub fn log(&self, id: u64) -> String {
        self.nodes.get(&id).and_then(|n| std::fs::read_to_string(&n.log).ok()).unwrap_or_default()
    }

    pub fn log_path(&self, id: u64) -> Option<&Path> {
        self.nodes.get(&id).map(|n| n.log.as_path())
    }

    /// A client that talks to the given nodes only.
    pub fn client_for(&self, ids: &[u64]) -> Client {
        self.client_with_timeout(ids, Duration::from_secs(20))
    }

    /// A client that talks to the given nodes only and gives up after `timeout`.
    pub fn client_with_timeout(&self, ids: &[u64], timeout: Duration) -> Client {
        let endpoints = ids.iter().map(|id| self.addrs[id].clone()).collect();
        let mut options = ClientOptions::new(endpoints, self.security.clone());
        options.timeout = timeout;
        Client::new(options).expect("endpoints given")
    }

    /// Waits until the running nodes have applied every recorded slot alike, then checks the
    /// recorded operations against their histories (panics on an anomaly) and returns the report.
    pub async fn converge_and_check(&self, recorder: &crate::workload::Recorder) -> crate::workload::Report {
        let operations = recorder.operations();
        let max_slot = operations.iter().filter_map(|o| o.slot).max().map_or(0, |s| s + 1);
        self.wait_converged(max_slot, Duration::from_secs(40)).await.expect("converged");
        let histories = self.histories().await.expect("histories");
        let report = crate::workload::check(&operations, &histories);
        eprintln!("checker: {report:?}");
        report.assert_clean();
        report
    }

    /// A client with the admin certificate (gc, truncation, membership), knowing every node.
    pub fn admin_client(&self) -> Client {
        self.admin_client_for(&self.addrs.keys().copied().collect::<Vec<_>>())
    }

    /// A client with the admin certificate that talks to the given nodes only.
    pub fn admin_client_for(&self, ids: &[u64]) -> Client {
        let endpoints = ids.iter().map(|id| self.addrs[id].clone()).collect();
        let mut options = ClientOptions::new(endpoints, self.security.clone());
        if self.security.is_tls() {
            let files = CertFiles::named(&self.certs_dir(), "admin");
            let tls = Tls::for_client(&files, CLUSTER).expect("the admin certificate loads");
            options.security = Security::Tls(Arc::new(tls));
        }
        options.timeout = Duration::from_secs(20);
        Client::new(options).expect("endpoints given")
    }

    /// A client that knows every node.
    pub fn client(&self) -> Client {
        self.client_for(&self.addrs.keys().copied().collect::<Vec<_>>())
    }

    pub async fn status(&self, id: u64) -> anyhow::Result<StatusReport> {
        let mut options = ClientOptions::new(vec![self.addrs[&id].clone()], self.security.clone());
        options.timeout = Duration::from_secs(2);
        Ok(Client::new(options)?.status().await?)
    }

    /// Waits until every running node agrees on one leader; returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let running: Vec<u64> = self.running();
        self.wait_for_leader_among(&running, timeout).await
    }

    /// Waits until the given nodes agree on a leader that is one of them.
    pub async fn wait_for_leader_among(&self, ids: &[u64], timeout: Duration) -> anyhow::Result<u64> {
        wait_until("a leader the given nodes agree on", timeout, || async {
            let mut leaders = Vec::new();
            for id in ids {
                leaders.push(self.status(*id).await?.leader);
            }
            match leaders.first() {
                Some(Some(leader)) if ids.contains(leader) && leaders.iter().all(|l| *l == Some(*leader)) => {
                    Ok(Some(*leader))
                }
                _ => Ok(None),
            }
        })
        .await
    }

    /// The applied prefix of the current leader (waiting for one).
    pub async fn status_any_leader(&self) -> u64 {
        let leader = self.wait_for_leader(Duration::from_secs(30)).await.expect("leader");
        self.status(leader).await.map(|s| s.applied_upto).unwrap_or(0)
    }

    /// Waits (within `timeout`) until node `id` has applied everything the leader had applied
    /// when this was called: a node restarted, caught up.
    pub async fn wait_caught_up(&self, id: u64, timeout: Duration) -> anyhow::Result<()> {
        let target = self.status_any_leader().await;
        wait_until(&format!("node {id} back and caught up to {target}"), timeout, || async {
            Ok((self.status(id).await?.applied_upto >= target).then_some(()))
        })
        .await
    }

    /// Ids of the nodes whose process runs.
    pub fn running(&self) -> Vec<u64> {
        self.addrs.keys().copied().filter(|id| self.is_running(*id)).collect()
    }

    /// Every running node's full history.
    pub async fn histories(&self) -> anyhow::Result<crate::workload::Histories> {
        let mut histories = BTreeMap::new();
        for id in self.running() {
            histories.insert(id, self.history(id).await?);
        }
        Ok(histories)
    }

    /// The whole chosen history a node holds, as (slot, value) pairs.
    pub async fn history(&self, id: u64) -> anyhow::Result<crate::workload::History> {
        self.history_from(id, 0).await
    }

    /// The chosen history a node holds from slot `from` on (from its history start if it
    /// truncated above `from`).
    pub async fn history_from(&self, id: u64, from: u64) -> anyhow::Result<crate::workload::History> {
        let client = self.client_for(&[id]);
        let mut entries = Vec::new();
        let mut next = from;
        loop {
            // What this node holds (serializable): a linearizable read may be redirected to
            // the leader, and must not wait for a quorum the test may have taken away.
            let serializable = paxos_node::wire::ReadConsistency::Serializable;
            let page = match client.history_with(next, 10_000, serializable).await {
                Ok(page) => page,
                Err(paxos_node::client::ClientError::Truncated { history_start, .. }) => {
                    next = history_start;
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            let Some((last, _)) = page.entries.last() else {
                break;
            };
            next = last + 1;
            entries.extend(page.entries);
            if next >= page.applied_upto {
                break;
            }
        }
        Ok(entries)
    }

    /// Waits until every running node has applied the same prefix of at least `min_upto`
    /// slots; returns that common length.
    pub async fn wait_converged(&self, min_upto: u64, timeout: Duration) -> anyhow::Result<u64> {
        let running = self.running();
        wait_until("all running nodes to apply the same prefix", timeout, || async {
            let mut uptos = Vec::new();
            for id in &running {
                uptos.push(self.status(*id).await?.applied_upto);
            }
            let first = uptos[0];
            Ok((first >= min_upto && uptos.iter().all(|u| *u == first)).then_some(first))
        })
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("test failed; node logs and data kept in {}", self.keep_dir().display());
        }
    }
}
