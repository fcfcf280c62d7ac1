//! Roles apart, with real processes: the seed's topology (2 proposers that keep no acceptor
//! state, 5 acceptors that never lead), 2 acceptors down, clients streaming through both
//! proposers, kill -9 of the leading proposer mid-stream; then everything through the history
//! checker. And the CLI's guard rails: a configuration nobody could lead is refused.

use paxos_core::MemberRole;
use paxos_tests::workload::{run_clients, Recorder};
use paxos_tests::Cluster;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(40);
const PROPOSERS: [u64; 2] = [1, 2];
const ACCEPTORS_DOWN: [u64; 2] = [6, 7];
const CLIENTS: usize = 4;
const PER_CLIENT: usize = 150;
/// Between a client's proposals, so the stream lasts long enough to be cut in the middle.
const PAUSE: Duration = Duration::from_millis(5);

fn seed_roles() -> Vec<(u64, MemberRole)> {
    (1..=7)
        .map(|id| (id, if PROPOSERS.contains(&id) { MemberRole::Proposer } else { MemberRole::Acceptor }))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_topology_survives_kill_9_of_the_leading_proposer_mid_stream() {
    let mut cluster = Cluster::new(7).expect("cluster");
    cluster.set_roles(&seed_roles());
    for id in 1..=7 {
        cluster.start_node(id).expect("start");
    }
    cluster.wait_bootstrapped().await.expect("bootstrapped");
    let status = cluster.status(3).await.expect("status");
    for (id, role) in seed_roles() {
        let member = status.members.iter().find(|m| m.id == id).expect("member");
        assert_eq!(member.role, role, "the binding entry keeps each node's --role");
    }
    for id in ACCEPTORS_DOWN {
        cluster.kill(id).expect("kill acceptor");
    }

    // Clients talk to the proposers only, half of them to each one first.
    let recorder = Recorder::default();
    let clients = {
        let recorder = recorder.clone();
        let make = {
            let first = cluster.client_for(&[1, 2]);
            let second = cluster.client_for(&[2, 1]);
            move |index: usize| if index % 2 == 0 { first.clone_fresh() } else { second.clone_fresh() }
        };
        tokio::spawn(async move { run_clients(&recorder, make, CLIENTS, PER_CLIENT, "seed", PAUSE).await })
    };
    recorder.wait_acknowledged(150, SETTLE).await;
    let leader = cluster.wait_for_leader(SETTLE).await.expect("leader");
    assert!(PROPOSERS.contains(&leader), "an acceptor never leads (node {leader} does)");
    cluster.kill(leader).expect("kill the leading proposer");
    let acknowledged_at_kill = recorder.acknowledged();
    assert!(
        acknowledged_at_kill < CLIENTS * PER_CLIENT * 3 / 4,
        "killed mid-stream ({acknowledged_at_kill})"
    );
    let other = PROPOSERS.into_iter().find(|id| *id != leader).expect("two proposers");
    let survivors: Vec<u64> = (1..=7).filter(|id| *id != leader && !ACCEPTORS_DOWN.contains(id)).collect();
    let new_leader = cluster.wait_for_leader_among(&survivors, SETTLE).await.expect("a new leader");
    assert_eq!(new_leader, other, "the other proposer takes over");
    recorder.wait_acknowledged(400, SETTLE).await;
    cluster.start_node(leader).expect("restart the proposer");
    for id in ACCEPTORS_DOWN {
        cluster.start_node(id).expect("restart acceptor");
    }
    clients.await.expect("clients");
    let report = cluster.converge_and_check(&recorder).await;
    assert_eq!(
        report.acknowledged,
        CLIENTS * PER_CLIENT,
        "every proposal is acknowledged in the end: {report:?}"
    );

    for id in 1..=7 {
        let status = cluster.status(id).await.expect("status");
        if PROPOSERS.contains(&id) {
            assert_eq!(status.accepted_records, 0, "proposer {id} keeps no acceptor state");
            assert!(!status.can_vote && status.can_lead, "proposer {id}: {status:?}");
        } else {
            assert!(status.can_vote && !status.can_lead, "acceptor {id}: {status:?}");
        }
    }

    // Guard rails: the last member that may lead cannot give that up.
    let endpoints = cluster.addrs.values().cloned().collect::<Vec<_>>().join(",");
    let cli = |args: &[&str]| {
        let output = cluster
            .cli_command()
            .env("PAXOS_ENDPOINTS", &endpoints)
            .args(args)
            .output()
            .expect("paxos-cli runs");
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (ok, stderr) = cli(&["member", "role", &leader.to_string(), "acceptor"]);
    assert!(ok, "one proposer may become an acceptor: {stderr}");
    assert!(
        stderr.contains("warning: only one member may lead"),
        "the weak configuration is named: {stderr}"
    );
    let (ok, stderr) = cli(&["member", "role", &other.to_string(), "acceptor"]);
    assert!(!ok, "a configuration nobody could lead is refused");
    assert!(stderr.contains("no leader could ever be elected"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    let slot =
        cluster.client_for(&[3]).propose(b"after the role change".to_vec()).await.expect("still choosing");
    assert!(slot > 0);
}
