//! Availability under partial network faults, with real processes: 5 nodes behind a proxy on
//! every directed peer link, 4 clients proposing without pause, and each topology held still
//! for `PAXOS_PARTIAL_FAULT_HOLD_SECONDS` (default 20) around the leader in place:
//!
//! - a follower that hears nobody (every link into it cut) while its own messages arrive;
//! - one follower's links with the leader cut and restored every 300 ms;
//! - the bridge of openraft #2080: the leader hears only one member, which hears everyone;
//! - a chain: the leader and one follower cannot hear each other, both hear the rest;
//! - quorum loss: the leader and one follower cut off from the other three.
//!
//! Each checks what an operator would: commits resume within 5 s of the fault, the rate during
//! the hold is at least half the healthy rate just before, and leadership changes at most twice.
//! The history checker runs on everything at the end. The figures are printed as a table.

use paxos_core::{Ballot, RoleName};
use paxos_node::client::{Client, ClientOptions};
use paxos_tests::workload::Recorder;
use paxos_tests::Cluster;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(40);
const HEALTHY: Duration = Duration::from_secs(5);
const FIRST_COMMIT_MAX: Duration = Duration::from_secs(5);
const LEADER_CHANGES_MAX: usize = 2;
const FLAP_PERIOD: Duration = Duration::from_millis(300);
const NODES: u64 = 5;

#[derive(Clone, Copy, Debug)]
enum Topology {
    DeafFollower,
    FlappingFollower,
    Bridge,
    Chain,
    QuorumLoss,
}

/// Every leadership any node reported, with when it was first seen.
#[derive(Default)]
struct Leaderships {
    seen: Mutex<Vec<(Instant, u64, Ballot)>>,
}

impl Leaderships {
    /// Leaderships first seen at or after `since`.
    fn new_since(&self, since: Instant) -> Vec<(u64, Ballot)> {
        let seen = self.seen.lock().expect("lock");
        seen.iter().filter(|(at, _, _)| *at >= since).map(|(_, id, ballot)| (*id, *ballot)).collect()
    }
}

/// Polls every node's status every 50 ms and records each (leader, ballot) the first time.
fn watch_leaders(
    cluster: &Cluster,
    stop: Arc<AtomicBool>,
) -> (Arc<Leaderships>, tokio::task::JoinHandle<()>) {
    let leaderships = Arc::new(Leaderships::default());
    let clients: Vec<(u64, Client)> = (1..=NODES)
        .map(|id| {
            let mut options = ClientOptions::new(vec![cluster.addrs[&id].clone()], cluster.security.clone());
            options.timeout = Duration::from_millis(500);
            (id, Client::new(options).expect("endpoint"))
        })
        .collect();
    let recorded = leaderships.clone();
    let task = tokio::spawn(async move {
        let mut known: BTreeSet<(u64, Ballot)> = BTreeSet::new();
        while !stop.load(Ordering::SeqCst) {
            for (id, client) in &clients {
                if let Ok(status) = client.status().await {
                    if status.role == RoleName::Leader && known.insert((*id, status.ballot)) {
                        recorded.seen.lock().expect("lock").push((Instant::now(), *id, status.ballot));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (leaderships, task)
}

/// Acknowledged proposals invoked at or after `from` and completed before `to`, and the first
/// such completion.
fn commits_between(recorder: &Recorder, from: Instant, to: Instant) -> (usize, Option<Instant>) {
    let mut count = 0;
    let mut first: Option<Instant> = None;
    for operation in recorder.operations() {
        let (Some(_), Some(completed)) = (operation.slot, operation.completed) else {
            continue;
        };
        if operation.invoked >= from && completed <= to {
            count += 1;
            first = Some(first.map_or(completed, |first| first.min(completed)));
        }
    }
    (count, first)
}

/// Cuts the links of `topology` around `leader` (with `other` and `third` two followers);
/// returns a task that flaps a link, if the topology has one.
fn apply(
    cluster: &Arc<Cluster>,
    topology: Topology,
    leader: u64,
    other: u64,
    third: u64,
    stop: Arc<AtomicBool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let everyone: Vec<u64> = (1..=NODES).collect();
    match topology {
        Topology::DeafFollower => {
            for from in everyone.iter().filter(|id| **id != other) {
                cluster.cut_link(*from, other);
            }
            None
        }
        Topology::FlappingFollower => {
            let cluster = cluster.clone();
            Some(tokio::spawn(async move {
                let mut cut = false;
                while !stop.load(Ordering::SeqCst) {
                    cut = !cut;
                    if cut {
                        cluster.cut_link(leader, other);
                        cluster.cut_link(other, leader);
                    } else {
                        cluster.heal_link(leader, other);
                        cluster.heal_link(other, leader);
                    }
                    tokio::time::sleep(FLAP_PERIOD).await;
                }
            }))
        }
        Topology::Bridge => {
            for id in everyone.iter().filter(|id| **id != leader && **id != other) {
                cluster.cut_link(leader, *id);
                cluster.cut_link(*id, leader);
            }
            None
        }
        Topology::Chain => {
            cluster.cut_link(leader, third);
            cluster.cut_link(third, leader);
            None
        }
        Topology::QuorumLoss => {
            cluster.partition(&[leader, other]);
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partial_faults_keep_one_leader_and_most_of_the_rate() {
    let hold = Duration::from_secs(
        std::env::var("PAXOS_PARTIAL_FAULT_HOLD_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20),
    );
    let cluster = Arc::new(Cluster::start_with_proxies(NODES).await.expect("cluster"));
    cluster.wait_for_leader(SETTLE).await.expect("leader");
    let recorder = Recorder::default();
    let stop_load = Arc::new(AtomicBool::new(false));
    let everyone: Vec<u64> = (1..=NODES).collect();
    let mut load = Vec::new();
    for index in 0..4 {
        let client = cluster.client_with_timeout(&everyone, Duration::from_secs(5));
        let recorder = recorder.clone();
        let stop = stop_load.clone();
        load.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::SeqCst) {
                recorder.propose(&client, format!("pf-c{index}-{seq}")).await;
                seq += 1;
            }
        }));
    }
    let stop_watch = Arc::new(AtomicBool::new(false));
    let (leaderships, watcher) = watch_leaders(&cluster, stop_watch.clone());

    let topologies = [
        Topology::DeafFollower,
        Topology::FlappingFollower,
        Topology::Bridge,
        Topology::Chain,
        Topology::QuorumLoss,
    ];
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for topology in topologies {
        let leader = cluster.wait_for_leader(SETTLE).await.expect("leader before the fault");
        let followers: Vec<u64> = everyone.iter().copied().filter(|id| *id != leader).collect();
        let (other, third) = (followers[0], followers[1]);
        let healthy_from = Instant::now();
        tokio::time::sleep(HEALTHY).await;
        let (healthy, _) = commits_between(&recorder, healthy_from, Instant::now());
        let healthy_rate = healthy as f64 / HEALTHY.as_secs_f64();

        let fault_at = Instant::now();
        let stop_flap = Arc::new(AtomicBool::new(false));
        let flapper = apply(&cluster, topology, leader, other, third, stop_flap.clone());
        tokio::time::sleep(hold).await;
        let end = Instant::now();
        stop_flap.store(true, Ordering::SeqCst);
        if let Some(flapper) = flapper {
            flapper.await.expect("flapper");
        }
        cluster.heal();
        let (commits, first) = commits_between(&recorder, fault_at, end);
        let first_commit = first.map(|at| at - fault_at);
        let rate = commits as f64 / hold.as_secs_f64();
        let changes = leaderships.new_since(fault_at).len();
        let row = format!(
            "{topology:?} around leader {leader} (follower {other}, third {third}): first commit after {}, {changes} leader changes {:?}, {rate:.0} commits/s against {healthy_rate:.0} healthy ({:.0}%)",
            first_commit.map_or("never".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
            leaderships.new_since(fault_at),
            100.0 * rate / healthy_rate.max(1.0),
        );
        eprintln!("{row}");
        if first_commit.is_none_or(|d| d > FIRST_COMMIT_MAX) {
            failures.push(format!("{topology:?}: commits did not resume within {FIRST_COMMIT_MAX:?}"));
        }
        if rate < healthy_rate / 2.0 {
            failures.push(format!(
                "{topology:?}: {rate:.0} commits/s is under half the healthy {healthy_rate:.0}"
            ));
        }
        if changes > LEADER_CHANGES_MAX {
            failures.push(format!("{topology:?}: {changes} leader changes"));
        }
        rows.push(row);
    }
    stop_load.store(true, Ordering::SeqCst);
    for task in load {
        task.await.expect("client");
    }
    stop_watch.store(true, Ordering::SeqCst);
    watcher.await.expect("watcher");
    let report = cluster.converge_and_check(&recorder).await;
    eprintln!("partial faults, {} s each:\n  {}\nchecker: {report:?}", hold.as_secs(), rows.join("\n  "));
    assert!(failures.is_empty(), "{failures:#?}");
}
