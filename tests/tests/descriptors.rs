//! File descriptors: a node under the usual `ulimit -n 1024` (soft and hard) with about a
//! thousand idle client connections and then a burst of proposals. Before the budget, the
//! leader exited with "rocksdb ... Too many open files" after 822 "accept failed" warnings; now it
//! caps its connections to what its limit leaves once RocksDB and the members have theirs, and
//! keeps serving.

use paxos_node::wire::Caller;
use paxos_tests::{Cluster, CLUSTER};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_under_ulimit_1024_survives_a_thousand_idle_clients_and_a_burst() {
    // This process holds the thousand connections: it needs more than 1,024 descriptors itself.
    let own = paxos_node::limits::raise_open_files_limit().expect("raise this process's limit");
    if own < 2048 {
        // Not this machine's case (its hard limit is far higher), but a CI box with `ulimit -Hn
        // 1024` cannot hold the thousand connections on the test's side: say so, loudly.
        eprintln!("SKIPPED: the test process needs ~1,100 descriptors and may have only {own} (ulimit -Hn)");
        return;
    }
    let mut cluster = Cluster::new(3).expect("cluster");
    cluster.open_files_limit = Some(1024);
    for id in 1..=3 {
        cluster.start_node(id).expect("start");
    }
    cluster.wait_bootstrapped().await.expect("bootstrapped");
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await.expect("leader");
    assert!(
        cluster.log(leader).contains("file descriptor budget"),
        "the node logs its budget:\n{}",
        cluster.log(leader)
    );
    let status = cluster.status(leader).await.expect("status");
    let ballot_before = status.ballot;
    let addr = cluster.addrs[&leader].clone();
    let name = paxos_node::tls::any_node_name(CLUSTER);
    let hello = paxos_node::wire::Hello {
        protocol_version: paxos_node::wire::PROTOCOL_VERSION,
        cluster_id: CLUSTER.into(),
        caller: Caller::Client,
    };
    let mut idle = Vec::new();
    let mut busy = 0;
    for _ in 0..1000 {
        match paxos_node::connection::Connection::connect(
            &addr,
            hello.clone(),
            &cluster.security,
            &name,
            TIMEOUT,
            TIMEOUT,
        )
        .await
        {
            Ok((connection, _)) => idle.push(connection),
            Err(_) => busy += 1,
        }
    }
    eprintln!("1,000 idle client connections to the leader: {} held, {busy} refused as busy", idle.len());
    // The burst: 64 clients, 20 proposals each, while the idle connections stay open.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let client = cluster.client_for(&[leader]);
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                client.propose(format!("burst-{i}").into_bytes()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("every burst proposal chosen");
    }
    eprintln!("1,280 proposals from 64 new clients in {:?}", started.elapsed());
    drop(idle);
    for id in 1..=3 {
        assert!(cluster.is_running(id), "node {id} exited:\n{}", cluster.log(id));
        let log = cluster.log(id);
        assert!(!log.contains("Too many open files"), "node {id}:\n{log}");
    }
    let status = cluster.status(leader).await.expect("status");
    assert_eq!(status.ballot, ballot_before, "the leader kept its ballot: members stayed connected");
    let accept_failures = cluster.log(leader).matches("accept failed").count();
    eprintln!("accept failures logged: {accept_failures}");
    assert_eq!(accept_failures, 0, "the leader never ran out of descriptors");
}
