//! Power loss: real nodes on lazy disks (FUSE) that forget every write not made durable.
//!
//! kill -9 alone cannot test the fsyncs: after a process crash the page cache still holds every
//! unsynced write. Here a cut drops them (or keeps a random prefix, torn at a sector), and names
//! not made durable by a directory fsync vanish. Every scenario ends in the history checker
//! (every acknowledged value at its slot on every node, identical histories, nothing twice)
//! and the promise watcher (no node ever reports a lower ballot than it did before a cut).
//!
//! `PAXOS_POWER_CYCLES` (default 20) random cycles follow the fixed scenarios; the soak in
//! docs/testing.md ("Power loss") runs 100 or more. `PAXOS_POWER_SEED` replays a run (each
//! prints its seed).

use paxos_tests::disk::{CutMode, DiskOptions, FileKind};
use paxos_tests::lazyfs::{self, LazyMount};
use paxos_tests::power::{wait_progress, Load, PowerCluster};
use paxos_tests::workload::{check, Histories, Recorder};
use std::io::Write;
use std::time::{Duration, Instant};

const PROGRESS_TIMEOUT: Duration = Duration::from_secs(40);
/// Big enough that RocksDB flushes memtables (8 MiB) and compacts during a run.
const VALUE_BYTES: usize = 1024;

/// Skips (one line, success) where the machine has no FUSE.
fn fuse_or_skip() -> bool {
    match lazyfs::available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("power-loss test skipped: {why}");
            false
        }
    }
}

fn seed() -> u64 {
    let seed = std::env::var("PAXOS_POWER_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("PAXOS_POWER_SEED={seed}");
    seed
}

fn fsync_dir(path: &std::path::Path) {
    std::fs::File::open(path).expect("open directory").sync_all().expect("fsync directory");
}

/// The harness loses what it should and keeps what it should, through the kernel.
#[test]
fn self_test_the_lazy_disk_forgets_what_was_not_made_durable() {
    if !fuse_or_skip() {
        return;
    }
    let point = tempfile::tempdir().expect("tempdir");
    let mount = LazyMount::mount(point.path(), DiskOptions::default(), 7).expect("mount");
    let root = mount.path();
    // Names made durable first, so only the data is at stake.
    for name in ["unsynced", "synced", "tmp"] {
        std::fs::write(root.join(name), b"").expect("create");
    }
    fsync_dir(root);
    let mut file = std::fs::OpenOptions::new().write(true).open(root.join("unsynced")).expect("open");
    file.write_all(&[1; 10_000]).expect("write");
    assert_eq!(std::fs::read(root.join("unsynced")).expect("read back").len(), 10_000, "read-your-writes");
    drop(file);
    let mut file = std::fs::OpenOptions::new().write(true).open(root.join("synced")).expect("open");
    file.write_all(&[2; 10_000]).expect("write");
    file.sync_all().expect("fsync");
    drop(file);
    // A rename whose directory is never fsynced, and a new file likewise.
    std::fs::rename(root.join("tmp"), root.join("CURRENT")).expect("rename");
    std::fs::write(root.join("000009.log"), b"never named durably").expect("write");
    std::fs::File::open(root.join("000009.log")).expect("open").sync_all().expect("fsync");

    let report = mount.power_cut(CutMode::DropUnsynced);
    eprintln!("self-test cut: {report}");
    let unsynced = std::fs::read(root.join("unsynced")).expect("the name was durable");
    assert!(unsynced.is_empty(), "a file written without fsync must be empty after a cut");
    assert_eq!(std::fs::read(root.join("synced")).expect("read"), vec![2; 10_000], "fsynced data is intact");
    assert!(root.join("tmp").exists() && !root.join("CURRENT").exists(), "the rename is undone");
    assert!(!root.join("000009.log").exists(), "a name never made durable is gone, fsynced data or not");
    assert_eq!(report.dropped.get(&FileKind::Other), Some(&(1, 10_000)));
    assert_eq!(report.names_dropped, 2, "one rename and one create");
    assert_eq!(report.inodes_lost, 1);
    eprintln!("self-test: the unsynced file is empty, the fsynced one intact, the rename undone, the unnamed file gone");
}

/// A node whose WAL fsyncs are ignored must lose acknowledged values at a power cut of every
/// node, and the checker must say so: a harness that never loses anything proves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn self_test_nodes_without_wal_fsync_lose_acknowledged_values_and_the_checker_says_so() {
    if !fuse_or_skip() {
        return;
    }
    let options = DiskOptions { ignore_fsync_of: Some(FileKind::Wal) };
    let mut power = PowerCluster::start(3, options, seed()).await.expect("cluster on lazy disks");
    let recorder = Recorder::default();
    let load = Load::start(&power.cluster, &recorder, 4, 64, "nofsync");
    wait_progress(&recorder, 300, PROGRESS_TIMEOUT).await.expect("proposals acknowledged");
    load.stop().await;
    let acknowledged = recorder.acknowledged();
    power.power_cut_all_with(CutMode::DropUnsynced).expect("power cut");
    for id in 1..=3 {
        // A node may or may not start on what is left; either way the values are gone.
        power.cluster.start_node(id).expect("spawn");
    }
    for id in 1..=3 {
        if let Err(error) = power.wait_serving(id).await {
            eprintln!("node {id} did not come back: {error:#}");
        }
    }
    let mut histories = Histories::new();
    for id in 1..=3 {
        if let Ok(history) = power.cluster.history(id).await {
            histories.insert(id, history);
        }
    }
    let report = check(&recorder.operations(), &histories);
    let lost = report.anomalies.iter().filter(|a| a.contains("acknowledged at slot")).count();
    eprintln!(
        "self-test: {acknowledged} values acknowledged, then every node lost power with its WAL fsyncs \
         ignored ({}); the checker reports {} anomalies ({lost} acknowledged values missing on a node), \
         and the promise watcher {} broken promises",
        power.totals,
        report.anomalies.len(),
        power.broken_promises().len()
    );
    for anomaly in report.anomalies.iter().take(3) {
        eprintln!("  e.g. {anomaly}");
    }
    assert!(lost > 0, "ignoring WAL fsyncs must lose acknowledged values, and the checker must see it");
    power.stop_watching().await;
}

#[derive(Clone, Copy, Debug)]
enum Scenario {
    Leader,
    Follower,
    DuringRecovery,
    AllNodes,
    /// Every node, a moment after the load paused: under load nearly every batch holds an
    /// accepted value and is synced, but once it stops the last batches (values applied,
    /// commit points learned from heartbeats) are unsynced, and only a cut now shows that
    /// losing them loses nothing acknowledged.
    AllNodesIdle,
}

/// Checks the slots from `checked_upto` up to what every node holds: every value acknowledged
/// there is at its slot on every node, no value twice, the same history everywhere. Returns
/// the new `checked_upto`. Run after every scenario, with the load still on, so that a value
/// lost in a cut is seen before a later truncation could hide it.
async fn check_so_far(power: &PowerCluster, recorder: &Recorder, checked_upto: u64) -> u64 {
    let mut histories = Histories::new();
    for id in power.cluster.running() {
        histories.insert(id, power.cluster.history_from(id, checked_upto).await.expect("history"));
    }
    let held_upto = histories.values().map(|h| h.last().map_or(checked_upto, |(slot, _)| slot + 1)).min();
    let upto = held_upto.unwrap_or(checked_upto).max(checked_upto);
    for history in histories.values_mut() {
        history.retain(|(slot, _)| *slot < upto);
    }
    let operations: Vec<_> = recorder
        .operations()
        .into_iter()
        .filter(|o| o.slot.is_some_and(|slot| (checked_upto..upto).contains(&slot)))
        .collect();
    let report = check(&operations, &histories);
    report.assert_clean();
    upto
}

async fn run(
    power: &mut PowerCluster,
    recorder: &Recorder,
    load: &Load,
    scenario: Scenario,
    checked_upto: u64,
) {
    let started = Instant::now();
    let leader = power.cluster.wait_for_leader(PROGRESS_TIMEOUT).await.expect("a leader before the cut");
    if power.draw(0, 3) == 0 && checked_upto > 0 {
        // A truncation in flight when the power goes: its batches are not synced (they say
        // nothing to peers), and a member that was behind installs a snapshot, maybe while it
        // recovers from a cut. Only below what was checked on every node.
        let applied = power.cluster.status(leader).await.map(|s| s.applied_upto).unwrap_or_default();
        let below = applied.saturating_sub(50).min(checked_upto);
        let forced = power.draw(0, 2) == 0;
        match power.cluster.admin_client().gc(Some(below), forced).await {
            Ok(report) => eprintln!("  truncated below {below} (forced: {forced}): {report:?}"),
            Err(error) => eprintln!("  truncation below {below} (forced: {forced}) refused: {error}"),
        }
    }
    match scenario {
        Scenario::Leader | Scenario::Follower => {
            let id = match scenario {
                Scenario::Leader => leader,
                _ => {
                    let followers: Vec<u64> =
                        power.cluster.addrs.keys().copied().filter(|id| *id != leader).collect();
                    followers[power.draw(0, followers.len() as u64) as usize]
                }
            };
            let mode = power.draw_mode();
            power.power_cut(id, mode).expect("cut");
            let without = wait_progress(recorder, 20, PROGRESS_TIMEOUT).await.expect("progress without it");
            eprintln!("  {scenario:?} {id} cut: 20 more values acknowledged {without:?} later");
            power.restart(id).await.expect("restart");
        }
        Scenario::DuringRecovery => {
            let id = power.draw(1, power.cluster.addrs.len() as u64 + 1);
            let mode = power.draw_mode();
            power.power_cut(id, mode).expect("cut");
            power.cluster.start_node(id).expect("spawn");
            // The second cut lands somewhere in recovery: opening RocksDB, replaying its WAL,
            // catching up. The delay is the fault's timing, not a synchronisation.
            tokio::time::sleep(Duration::from_millis(power.draw(0, 600))).await;
            let mode = power.draw_mode();
            power.power_cut(id, mode).expect("second cut");
            power.restart(id).await.expect("restart");
        }
        Scenario::AllNodes | Scenario::AllNodesIdle => {
            if matches!(scenario, Scenario::AllNodesIdle) {
                load.pause();
                // The fault's timing: 0-400 ms of quiet before the power goes.
                tokio::time::sleep(Duration::from_millis(power.draw(0, 400))).await;
            }
            power.power_cut_all().expect("cut all");
            for id in power.cluster.addrs.keys().copied().collect::<Vec<_>>() {
                power.cluster.start_node(id).expect("spawn");
            }
            for id in power.cluster.addrs.keys().copied().collect::<Vec<_>>() {
                power.wait_serving(id).await.expect("serving again");
            }
            load.resume();
        }
    }
    let back = wait_progress(recorder, 20, PROGRESS_TIMEOUT).await.expect("progress after the restart");
    eprintln!(
        "  {scenario:?}: done in {:?} (20 values acknowledged {back:?} after the restart); {} acknowledged so far",
        started.elapsed(),
        recorder.acknowledged()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_cuts_of_leader_follower_recovering_node_and_all_nodes_keep_every_acknowledged_value() {
    if !fuse_or_skip() {
        return;
    }
    let cycles: usize = std::env::var("PAXOS_POWER_CYCLES").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let started = Instant::now();
    let mut power =
        PowerCluster::start(3, DiskOptions::default(), seed()).await.expect("cluster on lazy disks");
    let recorder = Recorder::default();
    let load = Load::start(&power.cluster, &recorder, 4, VALUE_BYTES, "power");
    wait_progress(&recorder, 50, PROGRESS_TIMEOUT).await.expect("first proposals");
    let all = [
        Scenario::Leader,
        Scenario::Follower,
        Scenario::DuringRecovery,
        Scenario::AllNodes,
        Scenario::AllNodesIdle,
    ];
    let mut scenarios = all.to_vec();
    for _ in 0..cycles {
        scenarios.push(all[power.draw(0, all.len() as u64) as usize]);
    }
    let mut checked_upto = 0;
    for (index, scenario) in scenarios.iter().enumerate() {
        eprintln!("scenario {}/{}: {scenario:?}", index + 1, scenarios.len());
        run(&mut power, &recorder, &load, *scenario, checked_upto).await;
        let broken = power.broken_promises();
        assert!(broken.is_empty(), "broken promises after {scenario:?}: {broken:#?}");
        checked_upto = check_so_far(&power, &recorder, checked_upto).await;
    }
    load.stop().await;
    let report = power.cluster.converge_and_check(&recorder).await;
    power.stop_watching().await;
    let broken = power.broken_promises();
    assert!(broken.is_empty(), "broken promises: {broken:#?}");
    let promised: Vec<String> =
        power.cluster.addrs.keys().map(|id| format!("node {id} {}", power.highest_promise(*id))).collect();
    eprintln!(
        "power cuts: {} scenarios, {} cuts in {:?}; {} values acknowledged (each checked on every node \
         before a truncation could remove it; {} slots still held at the end), {} failed or \
         unknown ({} of those chosen); dropped in all: {} writes, {} bytes ({}); anomalies: {}; broken \
         promises: 0 ({})",
        scenarios.len(),
        power.cuts,
        started.elapsed(),
        report.acknowledged,
        report.slots,
        report.failed_or_unknown,
        report.unknown_but_chosen,
        power.totals.writes_dropped(),
        power.totals.bytes_dropped(),
        power.totals,
        report.anomalies.len(),
        promised.join(", ")
    );
}
