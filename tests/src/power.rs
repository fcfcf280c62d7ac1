//! Power cuts of real nodes: a [`Cluster`] whose every node keeps its data directory on a lazy
//! filesystem of its own ([`crate::lazyfs`]), a load that keeps proposing through the cuts, and
//! a watcher that checks no node ever goes back on a promise.
//!
//! A power cut of a node is SIGKILL, a wait until the process is reaped, then the disk drops
//! what was not durable (or keeps a random prefix of it, torn at a sector, in half of the cuts).

use crate::disk::{CutMode, CutReport, DiskOptions};
use crate::lazyfs::LazyMount;
use crate::workload::Recorder;
use crate::{wait_until, Cluster};
use anyhow::Context;
use paxos_core::Ballot;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a node may take to serve again after a restart (RocksDB recovery included).
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);

/// What the promise watcher saw: the highest ballot each node reported, and every time one
/// reported less than before.
#[derive(Debug, Default)]
struct Promises {
    highest: BTreeMap<u64, Ballot>,
    broken: Vec<String>,
}

/// A cluster of nodes on lazy disks.
pub struct PowerCluster {
    /// Declared first so it drops first: the nodes die before their disks are unmounted.
    pub cluster: Cluster,
    mounts: BTreeMap<u64, LazyMount>,
    /// The mount points live apart from the cluster's directory, which is removed on drop.
    mount_root: tempfile::TempDir,
    rng: paxos_core::Rng,
    /// Every cut's figures added up, and how many cuts.
    pub totals: CutReport,
    pub cuts: u64,
    promises: Arc<Mutex<Promises>>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    stop_watcher: Arc<AtomicBool>,
}

impl std::fmt::Debug for PowerCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerCluster").field("mounts", &self.mounts).field("cuts", &self.cuts).finish()
    }
}

impl PowerCluster {
    /// Mounts a lazy disk for each of `size` nodes and starts them (plaintext links: the
    /// certificates would live off the lazy disks anyway, and TLS changes nothing on disk).
    /// `seed` decides every cut's mode and what a prefix cut keeps.
    pub async fn start(size: u64, options: DiskOptions, seed: u64) -> anyhow::Result<PowerCluster> {
        let mut cluster = Cluster::new_plaintext(size)?;
        let mount_root = tempfile::Builder::new().prefix("paxos-power-").tempdir()?;
        let mut mounts = BTreeMap::new();
        for id in 1..=size {
            let point = mount_root.path().join(format!("disk-{id}"));
            std::fs::create_dir(&point)?;
            let mount = LazyMount::mount(&point, options, seed.wrapping_mul(31).wrapping_add(id))
                .with_context(|| format!("mounting the lazy filesystem at {}", point.display()))?;
            cluster.set_data_dir(id, point.join("data"));
            mounts.insert(id, mount);
        }
        let mut power = PowerCluster {
            cluster,
            mounts,
            mount_root,
            rng: paxos_core::Rng::new(seed),
            totals: CutReport::default(),
            cuts: 0,
            promises: Arc::default(),
            watcher: None,
            stop_watcher: Arc::default(),
        };
        for id in 1..=size {
            power.cluster.start_node(id)?;
        }
        power.cluster.wait_bootstrapped().await?;
        power.watch_promises();
        Ok(power)
    }

    /// Polls every node's status and records the ballot it is bound to; a node that reports a
    /// lower one than it did before (across any number of cuts) broke a promise.
    fn watch_promises(&mut self) {
        let clients: Vec<(u64, paxos_node::client::Client)> = self
            .cluster
            .addrs
            .keys()
            .map(|id| (*id, self.cluster.client_with_timeout(&[*id], Duration::from_millis(500))))
            .collect();
        let promises = self.promises.clone();
        let stop = self.stop_watcher.clone();
        self.watcher = Some(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // All at once: a node that is down must not slow the sampling of the others.
                let answers = futures::future::join_all(
                    clients.iter().map(|(id, client)| async move { (*id, client.status().await) }),
                )
                .await;
                for (id, answer) in answers {
                    // A node answers status once its batch is persisted: a ballot it shows is
                    // on disk (a promise is always a synced write).
                    let Ok(status) = answer else { continue };
                    let mut promises = promises.lock().expect("promises lock");
                    let highest = promises.highest.entry(id).or_default();
                    if status.ballot < *highest {
                        let line = format!("node {id} reported ballot {} after {}", status.ballot, highest);
                        promises.broken.push(line);
                    } else {
                        *highest = status.ballot;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }

    /// Broken promises seen so far (empty when every node kept its word).
    pub fn broken_promises(&self) -> Vec<String> {
        self.promises.lock().expect("promises lock").broken.clone()
    }

    /// The highest ballot node `id` was seen bound to.
    pub fn highest_promise(&self, id: u64) -> Ballot {
        self.promises.lock().expect("promises lock").highest.get(&id).copied().unwrap_or_default()
    }

    /// Half the cuts drop every unsynced write, half keep a random prefix of them.
    pub fn draw_mode(&mut self) -> CutMode {
        if self.rng.chance(1, 2) {
            CutMode::KeepPrefix
        } else {
            CutMode::DropUnsynced
        }
    }

    /// A random number in `low..high` from the run's seed.
    pub fn draw(&mut self, low: u64, high: u64) -> u64 {
        self.rng.range(low, high)
    }

    /// Cuts node `id`'s power: SIGKILL, reap, then its disk forgets what was not durable.
    pub fn power_cut(&mut self, id: u64, mode: CutMode) -> anyhow::Result<CutReport> {
        self.cluster.kill(id)?;
        let report = self.cut_disk(id, mode)?;
        eprintln!("power cut of node {id}: {report}");
        Ok(report)
    }

    /// Drops what node `id`'s disk had not made durable, then reads what the node will recover
    /// from (a copy of the durable image, RocksDB opened read-only) before anything can raise
    /// it: a promise below one the node reported before is a broken promise.
    fn cut_disk(&mut self, id: u64, mode: CutMode) -> anyhow::Result<CutReport> {
        let report = self.mounts[&id].power_cut(mode);
        self.totals.add(&report);
        self.cuts += 1;
        let image = tempfile::Builder::new().prefix("paxos-power-image-").tempdir()?;
        self.mounts[&id].write_durable_image(image.path())?;
        let durable = paxos_node::storage::Storage::read_durable_state(&image.path().join("data"))
            .with_context(|| format!("reading node {id}'s disk after a power cut"))?;
        let mut promises = self.promises.lock().expect("promises lock");
        let highest = promises.highest.get(&id).copied().unwrap_or_default();
        if durable.promised < highest {
            let line = format!(
                "node {id}'s disk holds promise {} after a cut; it reported {highest} before",
                durable.promised
            );
            promises.broken.push(line);
        }
        Ok(report)
    }

    /// Every node loses power at once (all are killed before any disk drops anything), each
    /// disk in a mode drawn as for one cut.
    pub fn power_cut_all(&mut self) -> anyhow::Result<()> {
        self.cut_all(None)
    }

    /// Every node loses power at once, every disk in `mode`.
    pub fn power_cut_all_with(&mut self, mode: CutMode) -> anyhow::Result<()> {
        self.cut_all(Some(mode))
    }

    fn cut_all(&mut self, mode: Option<CutMode>) -> anyhow::Result<()> {
        let ids: Vec<u64> = self.mounts.keys().copied().collect();
        for id in &ids {
            self.cluster.kill(*id)?;
        }
        for id in ids {
            let mode = mode.unwrap_or_else(|| self.draw_mode());
            let report = self.cut_disk(id, mode)?;
            eprintln!("power cut of node {id} (all at once): {report}");
        }
        Ok(())
    }

    /// Starts node `id` again and waits until it serves; a node that cannot start (a corrupt
    /// disk, say) fails the test with the end of its log.
    pub async fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.cluster.start_node(id)?;
        self.wait_serving(id).await
    }

    /// Waits until node `id` answers a status request, and checks that its first answer is
    /// bound to at least the ballot it reported before its cuts (the watcher polls, and can
    /// miss a node that comes back low and is raised by the next leader before the next poll).
    pub async fn wait_serving(&self, id: u64) -> anyhow::Result<()> {
        let result =
            wait_until(&format!("node {id} to serve after its restart"), RESTART_TIMEOUT, || async {
                Ok(self.cluster.status(id).await.ok())
            })
            .await;
        if let Ok(status) = &result {
            let mut promises = self.promises.lock().expect("promises lock");
            let highest = promises.highest.get(&id).copied().unwrap_or_default();
            if status.ballot < highest {
                let line = format!(
                    "node {id} came back bound to ballot {} after reporting {highest}",
                    status.ballot
                );
                promises.broken.push(line);
            }
        }
        result.map(|_| ()).with_context(|| {
            let log = self.cluster.log(id);
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            format!("node {id}'s log ends with:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
        })
    }

    /// Stops the promise watcher (before the final checks).
    pub async fn stop_watching(&mut self) {
        self.stop_watcher.store(true, Ordering::Relaxed);
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.await;
        }
    }

    /// Writes each disk's durable image next to the kept test directory (for a failed test).
    pub fn keep_durable_images(&self) {
        for (id, mount) in &self.mounts {
            let dir = std::env::temp_dir().join(format!(
                "paxos-power-durable-{}-node-{id}",
                self.mount_root.path().file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
            ));
            match mount.write_durable_image(&dir) {
                Ok(()) => eprintln!("node {id}'s durable disk image: {}", dir.display()),
                Err(error) => eprintln!("writing node {id}'s durable image: {error}"),
            }
        }
    }
}

impl Drop for PowerCluster {
    fn drop(&mut self) {
        self.stop_watcher.store(true, Ordering::Relaxed);
        if std::thread::panicking() {
            self.keep_durable_images();
        }
    }
}

/// Clients that keep proposing unique values until stopped, recording every outcome.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `clients` concurrent proposers through any node (each client finds the leader), each
    /// value padded to `value_bytes` (large values fill memtables, so RocksDB flushes and
    /// compacts, and SSTs and the MANIFEST are written, between cuts).
    pub fn start(
        cluster: &Cluster,
        recorder: &Recorder,
        clients: usize,
        value_bytes: usize,
        tag: &str,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let ids: Vec<u64> = cluster.addrs.keys().copied().collect();
        let tasks = (0..clients)
            .map(|index| {
                let client = cluster.client_with_timeout(&ids, Duration::from_secs(5));
                let recorder = recorder.clone();
                let stop = stop.clone();
                let paused = paused.clone();
                let tag = format!("{tag}-c{index}");
                tokio::spawn(async move {
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        if paused.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        }
                        let mut value = format!("{tag}-{seq}-");
                        let padding = value_bytes.saturating_sub(value.len());
                        value.extend(std::iter::repeat_n('.', padding));
                        if recorder.propose(&client, value).await.is_none() {
                            // The cluster is down or electing: do not spin.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        seq += 1;
                    }
                })
            })
            .collect();
        Load { stop, paused, tasks }
    }

    /// Clients finish the proposal they are on and start no other until `resume`.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::Relaxed);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::Relaxed);
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Waits until `recorder` has `more` acknowledgements beyond what it had when called: the
/// cluster is taking proposals.
pub async fn wait_progress(recorder: &Recorder, more: usize, timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let target = recorder.acknowledged() + more;
    wait_until(&format!("{more} more acknowledged proposals"), timeout, || async {
        Ok((recorder.acknowledged() >= target).then_some(()))
    })
    .await?;
    Ok(start.elapsed())
}
