//! Upgrades keep the data: a cluster started on the previous storage format's binary is
//! upgraded onto this one a node at a time, with clients writing throughout, and its history
//! is checked after (issue 28, item 5).
//!
//! The earlier binary is `PAXOS_UPGRADE_FROM_NODE`: `scripts/build-upgrade-from` builds it
//! from the commit it names (the last of storage format 3) in a target directory of its own,
//! and `scripts/test` passes it in. Without it the test says it was skipped and passes:
//! `cargo test` alone does not build an old tree.

use paxos_tests::workload::{run_clients, Recorder};
use paxos_tests::{wait_until, Cluster};
use std::path::PathBuf;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(40);
/// What a format 4 node logs when it migrates a format 3 directory at its start.
const MIGRATED: &str = "migrated the data directory from storage format 3 to 4";

fn upgrade_from() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("PAXOS_UPGRADE_FROM_NODE")?);
    assert!(path.is_file(), "PAXOS_UPGRADE_FROM_NODE={} is not a file", path.display());
    Some(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_of_the_previous_format_upgrades_one_node_at_a_time_under_load() {
    let Some(old) = upgrade_from() else {
        eprintln!("skipped: PAXOS_UPGRADE_FROM_NODE is not set (scripts/test builds it)");
        return;
    };
    let mut cluster = Cluster::new(3).expect("cluster");
    for id in 1..=3 {
        cluster.set_node_binary(id, Some(old.clone()));
        cluster.start_node(id).expect("start an old node");
    }
    cluster.wait_bootstrapped().await.expect("the old cluster binds its configuration");
    let recorder = Recorder::default();
    let clients = {
        let recorder = recorder.clone();
        let base = cluster.client();
        tokio::spawn(async move {
            run_clients(&recorder, move |_| base.clone_fresh(), 3, 200, "u", Duration::from_millis(5)).await
        })
    };
    recorder.wait_acknowledged(60, SETTLE).await;

    // One node at a time, the leader last (whichever it is by then), each stopped gracefully
    // as an operator would, started on the new binary over its old directory, and caught up
    // with writes still landing before the next one goes.
    let mut order = Vec::new();
    while order.len() < 3 {
        let leader = cluster.wait_for_leader(SETTLE).await.expect("a leader");
        let next = (1..=3).find(|id| *id != leader && !order.contains(id)).unwrap_or(leader);
        let acknowledged = recorder.acknowledged();
        let status = cluster.stop(next).expect("stop");
        assert!(status.success(), "graceful stop of node {next}: {status}");
        cluster.set_node_binary(next, None);
        cluster.start_node(next).expect("start on the new binary");
        wait_until(&format!("node {next} migrated its directory"), SETTLE, || async {
            Ok(cluster.log(next).contains(MIGRATED).then_some(()))
        })
        .await
        .expect("migration logged");
        cluster.wait_caught_up(next, SETTLE).await.expect("caught up");
        recorder.wait_acknowledged(acknowledged + 30, SETTLE).await;
        order.push(next);
        eprintln!("node {next} upgraded; {} values acknowledged so far", recorder.acknowledged());
    }
    clients.await.expect("clients");
    let report = cluster.converge_and_check(&recorder).await;
    assert_eq!(report.acknowledged, 600, "{report:?}");

    // A downgrade is refused in one line, and leaves the directory to the new binary.
    let victim = order[0];
    assert!(cluster.stop(victim).expect("stop").success());
    cluster.set_node_binary(victim, Some(old));
    cluster.start_node(victim).expect("start the old binary on a new directory");
    let status = cluster.wait_exit(victim, SETTLE).await.expect("the old binary exits");
    assert!(!status.success(), "the old binary ran on a format 4 directory");
    let log = cluster.log(victim);
    assert!(log.contains("written by a newer paxos-node"), "{log}");
    cluster.set_node_binary(victim, None);
    cluster.start_node(victim).expect("start the new binary again");
    cluster.wait_caught_up(victim, SETTLE).await.expect("back after the refused downgrade");
}
