//! Real-process fault scenarios, each checked by the history checker: kill -9, partitions,
//! rolling restarts, kill loops, truncation across downtime, whole-cluster crashes, and bad
//! data directories.
//!
//! `PAXOS_SOAK_PROPOSALS=N` lengthens the kill loop into a soak (e.g. 20000).

use paxos_core::Rng;
use paxos_tests::workload::{run_clients, Operation, Recorder};
use paxos_tests::Cluster;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_9_of_follower_and_of_leader_while_clients_stream() {
    let mut cluster = Cluster::start(3).await.expect("cluster");
    let recorder = Recorder::default();
    let clients = {
        let recorder = recorder.clone();
        let make = {
            let options = cluster.client();
            move |_| options.clone_fresh()
        };
        tokio::spawn(async move { run_clients(&recorder, make, 3, 100, "a", Duration::ZERO).await })
    };
    recorder.wait_acknowledged(40, SETTLE).await;
    let leader = cluster.wait_for_leader(SETTLE).await.expect("leader");
    let follower = (1..=3).find(|id| *id != leader).expect("follower");
    cluster.kill(follower).expect("kill follower");
    recorder.wait_acknowledged(100, SETTLE).await;
    cluster.start_node(follower).expect("restart follower");
    cluster.kill(leader).expect("kill leader");
    recorder.wait_acknowledged(180, SETTLE).await;
    cluster.start_node(leader).expect("restart leader");
    clients.await.expect("clients");
    let report = cluster.converge_and_check(&recorder).await;
    assert_eq!(report.acknowledged, 300, "every proposal is acknowledged in the end: {report:?}");
}

/// The teaching code's test: 5 nodes with 2 down, 1000 values through `paxos-cli propose
/// --stdin` (two streams, through two nodes), then the 2 start and catch up. A brand-new
/// cluster binds its first configuration once every listed member has answered, so the 2 go
/// down (kill -9) right after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b_five_nodes_two_down_thousand_values_through_the_cli() {
    let mut cluster = Cluster::start(5).await.expect("cluster");
    cluster.kill(4).expect("kill 4");
    cluster.kill(5).expect("kill 5");
    cluster.wait_for_leader_among(&[1, 2, 3], SETTLE).await.expect("leader");
    let recorder = Recorder::default();
    let mut streams = Vec::new();
    for (stream, through) in [(0, 1u64), (1, 2u64)] {
        let values: Vec<String> = (0..500).map(|i| format!("b-s{stream}-{i}")).collect();
        let addr = cluster.addrs[&through].clone();
        let mut command = cluster.cli_command();
        streams.push(tokio::task::spawn_blocking(move || {
            let invoked = Instant::now();
            let mut child = command
                .args(["--endpoint", &addr, "propose", "--stdin", "--timeout-ms", "30000"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn paxos-cli");
            let input: String = values.iter().map(|v| format!("{v}\n")).collect();
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write");
            let output = child.wait_with_output().expect("output");
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            let completed = Instant::now();
            let slots: Vec<u64> =
                String::from_utf8_lossy(&output.stdout).lines().map(|l| l.parse().expect("slot")).collect();
            assert_eq!(slots.len(), values.len(), "one slot per line");
            values
                .into_iter()
                .zip(slots)
                .map(|(value, slot)| Operation {
                    value,
                    invoked,
                    completed: Some(completed),
                    slot: Some(slot),
                    error: None,
                })
                .collect::<Vec<_>>()
        }));
    }
    for stream in streams {
        for operation in stream.await.expect("stream") {
            recorder.record(operation);
        }
    }
    cluster.start_node(4).expect("start 4");
    cluster.start_node(5).expect("start 5");
    let report = cluster.converge_and_check(&recorder).await;
    assert_eq!(report.acknowledged, 1000);
    assert_eq!(cluster.histories().await.expect("histories").len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn c_leader_cut_off_from_the_majority() {
    let cluster = Cluster::start_with_proxies(3).await.expect("cluster");
    let old_leader = cluster.wait_for_leader(SETTLE).await.expect("leader");
    let others: Vec<u64> = (1..=3).filter(|id| *id != old_leader).collect();
    let recorder = Recorder::default();
    // A client stuck on the old leader, with a short timeout, and clients on the majority.
    let stuck = cluster.client_with_timeout(&[old_leader], Duration::from_secs(3));
    let majority = cluster.client_with_timeout(&others, Duration::from_secs(20));
    for i in 0..20 {
        recorder.propose(&majority, format!("c-before-{i}")).await;
    }
    cluster.partition(&[old_leader]);
    let stuck_task = {
        let recorder = recorder.clone();
        tokio::spawn(async move {
            for i in 0..3 {
                recorder.propose(&stuck, format!("c-stuck-{i}")).await;
            }
        })
    };
    let new_leader = cluster.wait_for_leader_among(&others, SETTLE).await.expect("new leader");
    assert_ne!(new_leader, old_leader);
    for i in 0..50 {
        recorder.propose(&majority, format!("c-during-{i}")).await;
    }
    stuck_task.await.expect("stuck client");
    // The old leader's client got clear errors (or answers), never silence.
    for operation in recorder.operations().iter().filter(|o| o.value.starts_with("c-stuck")) {
        assert!(operation.completed.is_some());
        if let Some(error) = &operation.error {
            assert!(error.contains("no quorum") || error.contains("refused"), "unclear error: {error}");
        }
    }
    let old_status = cluster.status(old_leader).await.expect("status");
    assert_ne!(
        old_status.role,
        paxos_core::RoleName::Leader,
        "a leader cut off from the majority steps down"
    );
    cluster.heal();
    for i in 0..20 {
        recorder.propose(&majority, format!("c-after-{i}")).await;
    }
    let report = cluster.converge_and_check(&recorder).await;
    assert!(report.acknowledged >= 90, "{report:?}");
}

/// A silent partition (bytes swallowed, connections left open) and slow links: the minority
/// follower is cut off without any reset, links to the others are slowed; the majority keeps
/// choosing, and after healing a dropped byte stream (frames cut mid-way) is recovered from.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn c2_silent_partition_and_slow_links() {
    let cluster = Cluster::start_with_proxies(3).await.expect("cluster");
    let leader = cluster.wait_for_leader(SETTLE).await.expect("leader");
    let follower = (1..=3).find(|id| *id != leader).expect("follower");
    let recorder = Recorder::default();
    let client =
        cluster.client_with_timeout(&(1..=3).filter(|id| *id != follower).collect::<Vec<_>>(), SETTLE);
    cluster.set_delay(Duration::from_millis(2));
    for i in 0..30 {
        recorder.propose(&client, format!("c2-slow-{i}")).await;
    }
    cluster.blackhole(&[follower]);
    for i in 0..60 {
        recorder.propose(&client, format!("c2-dropped-{i}")).await;
    }
    cluster.set_delay(Duration::ZERO);
    cluster.heal();
    for i in 0..30 {
        recorder.propose(&client, format!("c2-healed-{i}")).await;
    }
    let report = cluster.converge_and_check(&recorder).await;
    assert_eq!(report.acknowledged, 120, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn d_rolling_restart_under_load() {
    let mut cluster = Cluster::start(3).await.expect("cluster");
    let recorder = Recorder::default();
    let clients = {
        let recorder = recorder.clone();
        let base = cluster.client();
        tokio::spawn(async move {
            run_clients(&recorder, move |_| base.clone_fresh(), 3, 150, "d", Duration::from_millis(5)).await
        })
    };
    for id in 1..=3 {
        recorder.wait_acknowledged(recorder.acknowledged() + 20, SETTLE).await;
        let status = cluster.stop(id).expect("stop");
        assert!(status.success(), "graceful stop of node {id}: {status}");
        cluster.start_node(id).expect("start");
        cluster.wait_caught_up(id, SETTLE).await.expect("caught up");
    }
    clients.await.expect("clients");
    let report = cluster.converge_and_check(&recorder).await;
    assert_eq!(report.acknowledged, 450, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e_kill_9_loop() {
    let proposals: usize =
        std::env::var("PAXOS_SOAK_PROPOSALS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let seed = std::env::var("PAXOS_SOAK_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("kill loop: {proposals} proposals, seed {seed} (PAXOS_SOAK_SEED replays the kill choices)");
    // Paced so that the proposals span several kills (about 4 s for 2000).
    const PACE: Duration = Duration::from_millis(8);
    let mut rng = Rng::new(seed);
    let mut cluster = Cluster::start(3).await.expect("cluster");
    let recorder = Recorder::default();
    let clients_count = 4;
    let clients = {
        let recorder = recorder.clone();
        let base = cluster.client();
        tokio::spawn(async move {
            run_clients(
                &recorder,
                move |_| base.clone_fresh(),
                clients_count,
                proposals / clients_count,
                "e",
                PACE,
            )
            .await
        })
    };
    let (mut kills, mut restarts) = (0, 0);
    while !clients.is_finished() {
        tokio::time::sleep(Duration::from_millis(rng.range(700, 1300))).await;
        if clients.is_finished() {
            break;
        }
        // Never a majority at once: one node down at a time, restarted before the next kill.
        let victim = rng.range(1, 4);
        cluster.kill(victim).expect("kill");
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.range(100, 600))).await;
        cluster.start_node(victim).expect("restart");
        restarts += 1;
    }
    clients.await.expect("clients");
    let report = cluster.converge_and_check(&recorder).await;
    eprintln!(
        "kill loop done: {} proposals, {} acknowledged, {kills} kills, {restarts} restarts, {} anomalies",
        report.operations,
        report.acknowledged,
        report.anomalies.len()
    );
    assert!(kills >= 1, "the loop killed nothing");
    assert_eq!(report.acknowledged, proposals, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn f_truncation_under_load_and_a_node_down_across_it() {
    let mut cluster = Cluster::start(3).await.expect("cluster");
    let recorder = Recorder::default();
    let client = cluster.client();
    for i in 0..50 {
        recorder.propose(&client, format!("f-early-{i}")).await;
    }
    let leader = cluster.wait_for_leader(SETTLE).await.expect("leader");
    let down = (1..=3).find(|id| *id != leader).expect("follower");
    cluster.kill(down).expect("kill");
    let load = {
        let recorder = recorder.clone();
        let base = cluster.client();
        tokio::spawn(async move {
            run_clients(&recorder, move |_| base.clone_fresh(), 2, 100, "f", Duration::ZERO).await
        })
    };
    recorder.wait_acknowledged(120, SETTLE).await;
    // Refused while a member has not applied past the cut, then forced.
    let admin = cluster.admin_client();
    let refused = admin.gc(Some(100), false).await.expect_err("member behind");
    assert!(refused.to_string().contains(&format!("member {down}")), "{refused}");
    let report = admin.gc(Some(100), true).await.expect("forced truncation");
    assert_eq!(report.history_start, 100);
    load.await.expect("load");
    cluster.start_node(down).expect("restart");
    let report = cluster.converge_and_check(&recorder).await;
    assert_eq!(report.acknowledged, 250);
    // The snapshot's session table stands where the leader had applied when it cut (at or
    // above 100): the installer's own history restarts there.
    let status = cluster.status(down).await.expect("status");
    assert!(status.history_start >= 100, "the node that was down installed the truncation: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn g_whole_cluster_killed_at_once_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start(3).await.expect("cluster");
    let recorder = Recorder::default();
    // Each client streams until its first failure (when the whole cluster is gone).
    let mut load = Vec::new();
    for index in 0..3 {
        let recorder = recorder.clone();
        let client = cluster.client_with_timeout(&[1, 2, 3], Duration::from_secs(2));
        load.push(tokio::spawn(async move {
            for seq in 0.. {
                if recorder.propose(&client, format!("g-c{index}-{seq}")).await.is_none() {
                    break;
                }
            }
        }));
    }
    recorder.wait_acknowledged(150, SETTLE).await;
    for id in 1..=3 {
        cluster.kill(id).expect("kill");
    }
    for task in load {
        task.await.expect("load"); // each ends with one failure: nobody answers
    }
    for id in 1..=3 {
        cluster.start_node(id).expect("restart");
    }
    cluster.wait_for_leader(SETTLE).await.expect("leader after restart");
    let report = cluster.converge_and_check(&recorder).await;
    assert!(report.acknowledged >= 150, "{report:?}");
}

fn directory_digest(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default()))
        // RocksDB's info log is rewritten on every open, successful or not; it holds no data.
        .filter(|(name, _)| !name.starts_with("LOG"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn h_wrong_identity_and_corrupt_records_are_refused_and_left_alone() {
    let mut cluster = Cluster::start(3).await.expect("cluster");
    let client = cluster.client();
    for i in 0..10 {
        client.propose(format!("h-{i}").into_bytes()).await.expect("propose");
    }
    cluster.wait_converged(10, SETTLE).await.expect("converged");
    cluster.stop(3).expect("stop 3");
    let dir3 = cluster.data_dir(3);

    // Another node's id on node 3's directory.
    let before = directory_digest(&dir3);
    let output = cluster.node_command_with_dir(2, &dir3).output().expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("belongs to node 3"), "{stderr}");
    assert!(directory_digest(&dir3) == before, "a refused start changed the data directory");

    // A corrupted record (the promised ballot): refused with the record named.
    {
        let storage = paxos_node::storage::Storage::open(&dir3, "paxos", 3).expect("open");
        let mut record = storage
            .raw_record_for_test(paxos_node::storage::cf::META, paxos_node::storage::cf::KEY_PROMISED)
            .expect("read")
            .expect("promised record");
        let last = record.len() - 1;
        record[last] ^= 0x01;
        storage
            .corrupt_for_test(paxos_node::storage::cf::META, paxos_node::storage::cf::KEY_PROMISED, &record)
            .expect("corrupt");
    }
    let before = directory_digest(&dir3);
    let output = cluster.node_command(3).output().expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("corrupt record") && stderr.contains("key promised"), "{stderr}");
    assert!(directory_digest(&dir3) == before, "a refused start changed the data directory");
    // Still corrupt on a second try: nothing was "repaired" behind the operator's back.
    let output = cluster.node_command(3).output().expect("run");
    assert!(String::from_utf8_lossy(&output.stderr).contains("checksum mismatch"));
}

/// Five nodes, a non-transitive split: {a, b} and {c, d} cannot hear each other, while the
/// bridge e hears and is heard by both, over links slowed on some hops. Each side forms a
/// majority with the bridge, so each side's elections pre-empt the other side's leader through
/// it and leadership moves between the sides; clients on both sides keep proposing. After
/// healing, everything acknowledged is in every history at its slot, once.
///
/// `PAXOS_SPLIT_SECONDS=N` lengthens the split (default 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn i_non_transitive_split_with_a_bridge_and_clients_on_both_sides() {
    let cluster = Cluster::start_with_proxies(5).await.expect("cluster");
    let leader = cluster.wait_for_leader(SETTLE).await.expect("leader");
    let others: Vec<u64> = (1..=5).filter(|id| *id != leader).collect();
    let left = vec![leader, others[0]];
    let bridge = others[1];
    let right = vec![others[2], others[3]];
    let recorder = Recorder::default();
    let left_client = cluster.client_with_timeout(&left, Duration::from_secs(4));
    let right_client = cluster.client_with_timeout(&right, Duration::from_secs(4));
    for i in 0..10 {
        recorder.propose(&left_client, format!("i-before-{i}")).await;
    }
    cluster.split_with_bridge(&left, &right);
    cluster.slow_link(left[1], bridge, Duration::from_millis(3));
    cluster.slow_link(bridge, right[0], Duration::from_millis(3));
    let split_seconds = std::env::var("PAXOS_SPLIT_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let until = Instant::now() + Duration::from_secs(split_seconds);
    let mut sides = Vec::new();
    for (name, client) in [("left", left_client), ("right", right_client)] {
        let recorder = recorder.clone();
        sides.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < until {
                recorder.propose(&client, format!("i-{name}-{i}")).await;
                i += 1;
            }
        }));
    }
    // Who leads, as the bridge sees it, while the split lasts.
    let mut leaders_seen = Vec::new();
    while Instant::now() < until {
        if let Ok(status) = cluster.status(bridge).await {
            if let Some(leader) = status.leader {
                if leaders_seen.last() != Some(&leader) {
                    leaders_seen.push(leader);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for side in sides {
        side.await.expect("side clients");
    }
    cluster.set_delay(Duration::ZERO);
    cluster.heal();
    let everyone = cluster.client_with_timeout(&[1, 2, 3, 4, 5], SETTLE);
    for i in 0..20 {
        recorder.propose(&everyone, format!("i-after-{i}")).await;
    }
    let report = cluster.converge_and_check(&recorder).await;
    let during: Vec<_> = recorder
        .operations()
        .into_iter()
        .filter(|o| o.value.starts_with("i-left") || o.value.starts_with("i-right"))
        .collect();
    eprintln!(
        "split: left {left:?}, bridge {bridge}, right {right:?}; leaders seen by the bridge: {leaders_seen:?}; \
         proposals during the split: {} acknowledged of {}",
        during.iter().filter(|o| o.slot.is_some()).count(),
        during.len()
    );
    let after =
        recorder.operations().into_iter().filter(|o| o.value.starts_with("i-after") && o.slot.is_some());
    assert_eq!(after.count(), 20, "every proposal after healing is acknowledged: {report:?}");
}
