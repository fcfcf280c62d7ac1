//! `paxos-node --metrics-listen`: Prometheus scrapes of real nodes, and figures that move with
//! what the cluster does (proposals, fsyncs, a member killed, a leader killed, a refusal).

use paxos_tests::scrape::Scrape;
use paxos_tests::{wait_until, Cluster};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// Every family docs/operations.md lists ("Metrics"), with its type.
const FAMILIES: &[(&str, &str)] = &[
    ("paxos_proposal_duration_seconds", "histogram"),
    ("paxos_commit_duration_seconds", "histogram"),
    ("paxos_fsync_duration_seconds", "histogram"),
    ("paxos_fsync_batch_records", "histogram"),
    ("paxos_fsyncs", "counter"),
    ("paxos_values_chosen", "counter"),
    ("paxos_proposals_received", "counter"),
    ("paxos_proposals_refused", "counter"),
    ("paxos_leader_changes", "counter"),
    ("paxos_ballot_round", "gauge"),
    ("paxos_ballot_node", "gauge"),
    ("paxos_promised_round", "gauge"),
    ("paxos_role", "gauge"),
    ("paxos_leader_id", "gauge"),
    ("paxos_applied_upto_slot", "gauge"),
    ("paxos_history_start_slot", "gauge"),
    ("paxos_accepted_records", "gauge"),
    ("paxos_peer_connected", "gauge"),
    ("paxos_peer_applied_upto_slot", "gauge"),
    ("paxos_peer_lag_slots", "gauge"),
    ("paxos_requests_in_flight", "gauge"),
    ("paxos_client_connections", "gauge"),
    ("paxos_has_leader", "gauge"),
    ("paxos_problems", "gauge"),
    ("paxos_build", "info"),
];

fn peer(name: &str, peer: u64) -> String {
    format!("{name}{{peer=\"{peer}\"}}")
}

/// Waits until node `id`'s scrape satisfies `check`; returns that scrape.
async fn wait_scrape(cluster: &Cluster, id: u64, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    let last = std::sync::Mutex::new(String::new());
    let result = wait_until(what, WAIT, || async {
        let scrape = cluster.scrape(id).await?;
        if check(&scrape) {
            return Ok(Some(scrape));
        }
        *last.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = scrape.text;
        Ok(None)
    })
    .await;
    result.unwrap_or_else(|error| {
        panic!("{error}; node {id}'s last scrape:\n{}", last.lock().unwrap_or_else(|p| p.into_inner()))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scrape_of_real_nodes_moves_with_proposals_fsyncs_a_dead_member_and_a_new_leader() {
    let mut cluster = Cluster::new(3).expect("cluster");
    cluster.serve_metrics();
    cluster.set_extra_args(&["--value-bytes-max", "1000"]);
    for id in 1..=3 {
        cluster.start_node(id).expect("start");
    }
    cluster.wait_bootstrapped().await.expect("bootstrapped");
    let leader = cluster.wait_for_leader(WAIT).await.expect("leader");
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let (through, other) = (followers[0], followers[1]);

    // Every family is exposed, with its type, by every node; the parser insists on `# EOF`.
    // Gauges are refreshed once a tick: a leader that just stepped down for the binding entry
    // and won again (both within a millisecond) may still show its old role for up to a tick.
    let leads = |scrape: &Scrape| scrape.value_or_zero("paxos_role{role=\"leader\"}") == 1.0;
    wait_scrape(&cluster, leader, "the leader's role gauge", leads).await;
    let mut before = std::collections::BTreeMap::new();
    for id in 1..=3 {
        let scrape = cluster.scrape(id).await.expect("scrape");
        for (family, kind) in FAMILIES {
            assert_eq!(scrape.types.get(*family).map(String::as_str), Some(*kind), "node {id}: {family}");
        }
        before.insert(id, scrape);
    }
    // What an alert needs: a leader heard, no problem of any kind, and the build answering.
    for id in 1..=3 {
        let hears = |scrape: &Scrape| scrape.value_or_zero("paxos_has_leader") == 1.0;
        let scrape = wait_scrape(&cluster, id, "a leader heard", hears).await;
        for kind in ["not_admitted", "refused_incarnation", "foreign_log"] {
            let series = format!("paxos_problems{{kind=\"{kind}\"}}");
            assert_eq!(scrape.value(&series).expect("problems"), 0.0, "node {id}: {series}");
        }
        let build = scrape.text.lines().find(|l| l.starts_with("paxos_build_info{")).expect("build info");
        assert!(build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{build}");
        assert!(build.ends_with(" 1"), "{build}");
    }
    let role_of =
        |scrape: &Scrape, role: &str| scrape.value_or_zero(&format!("paxos_role{{role=\"{role}\"}}"));
    assert_eq!(role_of(&before[&leader], "leader"), 1.0);
    assert_eq!(role_of(&before[&through], "follower"), 1.0);

    // 100 values through a follower (which forwards them to the leader).
    let client = cluster.client_for(&[through]);
    for i in 0..100 {
        client.propose(format!("metrics-{i}").into_bytes()).await.expect("chosen");
    }
    let on_through = cluster.scrape(through).await.expect("scrape");
    let grew = |scrape: &Scrape, id: u64, series: &str| {
        scrape.value_or_zero(series) - before[&id].value_or_zero(series)
    };
    // 100 proposals: the first opens the session in its own entry.
    assert!(grew(&on_through, through, "paxos_proposals_received_total") >= 100.0, "{}", on_through.text);
    assert!(grew(&on_through, through, "paxos_proposal_duration_seconds_count") >= 100.0);
    assert!(on_through.value("paxos_proposal_duration_seconds_sum").expect("sum") > 0.0);
    assert_eq!(on_through.value("paxos_leader_id").expect("leader id"), leader as f64);
    assert!(on_through.value("paxos_client_connections").expect("connections") >= 1.0);
    let on_leader = wait_scrape(&cluster, leader, "the leader's gauges to show the 100 values", |scrape| {
        grew(scrape, leader, "paxos_applied_upto_slot") >= 100.0
    })
    .await;
    // A client's first value opens its session in the same entry (kind `register`).
    let values = grew(&on_leader, leader, "paxos_values_chosen_total{kind=\"command\"}")
        + grew(&on_leader, leader, "paxos_values_chosen_total{kind=\"register\"}");
    assert!(values >= 100.0, "{values}");
    assert!(grew(&on_leader, leader, "paxos_commit_duration_seconds_count") >= 100.0);
    assert!(grew(&on_leader, leader, "paxos_fsyncs_total") >= 1.0);
    assert!(grew(&on_leader, leader, "paxos_fsync_duration_seconds_count") >= 1.0);
    assert!(grew(&on_leader, leader, "paxos_fsync_batch_records_sum") >= 100.0, "each value is a record");
    assert!(on_leader.value("paxos_ballot_round").expect("ballot") >= 1.0);
    assert_eq!(on_leader.value("paxos_ballot_node").expect("ballot node"), leader as f64);
    for id in &followers {
        assert_eq!(on_leader.value(&peer("paxos_peer_connected", *id)).expect("link"), 1.0);
    }
    assert!(!on_leader.samples.contains_key(&peer("paxos_peer_connected", leader)), "no link to itself");

    // A refusal, by reason: a value over --value-bytes-max.
    assert!(client.propose(vec![7; 2000]).await.is_err(), "a value over the limit is refused");
    let refused = cluster.scrape(through).await.expect("scrape");
    assert_eq!(refused.value("paxos_proposals_refused_total{reason=\"too_large\"}").expect("refusal"), 1.0);

    // A member killed: its link goes down on the leader, and its lag grows with the log.
    cluster.kill(other).expect("kill");
    wait_scrape(&cluster, leader, "the leader's link to the killed member to go down", |scrape| {
        scrape.value_or_zero(&peer("paxos_peer_connected", other)) == 0.0
    })
    .await;
    for i in 0..50 {
        client.propose(format!("lag-{i}").into_bytes()).await.expect("chosen by two of three");
    }
    let lagging = wait_scrape(&cluster, leader, "the killed member's lag to reach 50 slots", |scrape| {
        scrape.value_or_zero(&peer("paxos_peer_lag_slots", other)) >= 50.0
    })
    .await;
    eprintln!(
        "leader {leader}: lag of killed node {other} = {}, of node {through} = {}",
        lagging.value_or_zero(&peer("paxos_peer_lag_slots", other)),
        lagging.value_or_zero(&peer("paxos_peer_lag_slots", through))
    );

    // The member back, then the leader killed: a survivor counts a leader change and shows the
    // new leader and its new role.
    cluster.restart(other).expect("restart");
    wait_scrape(&cluster, leader, "the restarted member to catch up", |scrape| {
        scrape.value_or_zero(&peer("paxos_peer_connected", other)) == 1.0
            && scrape.value_or_zero(&peer("paxos_peer_lag_slots", other)) == 0.0
    })
    .await;
    let changes_before =
        cluster.scrape(through).await.expect("scrape").value_or_zero("paxos_leader_changes_total");
    cluster.kill(leader).expect("kill the leader");
    let new_leader = cluster.wait_for_leader_among(&followers, WAIT).await.expect("a new leader");
    let after = wait_scrape(&cluster, through, "a leader change counted", |scrape| {
        scrape.value_or_zero("paxos_leader_changes_total") > changes_before
            && scrape.value_or_zero("paxos_leader_id") == new_leader as f64
    })
    .await;
    let on_new_leader =
        wait_scrape(&cluster, new_leader, "the new leader's role", |scrape| role_of(scrape, "leader") == 1.0)
            .await;
    assert!(
        on_new_leader.value("paxos_ballot_round").expect("ballot")
            > on_leader.value("paxos_ballot_round").expect("ballot"),
        "the new leader leads a higher ballot"
    );
    eprintln!(
        "after killing leader {leader}: node {through} saw {} leader change(s), new leader {new_leader}",
        after.value_or_zero("paxos_leader_changes_total")
    );
    // What an operator pastes into a report: the new leader's scrape without the buckets.
    eprintln!(
        "{}",
        on_new_leader
            .text
            .lines()
            .filter(|l| !l.contains("_bucket") && !l.starts_with("# HELP"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_address_answers_only_get_of_known_paths_and_a_taken_port_is_a_one_line_error() {
    let mut cluster = Cluster::new(1).expect("cluster");
    cluster.serve_metrics();
    cluster.start_node(1).expect("start");
    cluster.wait_for_leader(WAIT).await.expect("leader");
    let addr = cluster.metrics_addrs[&1].clone();
    let error = paxos_tests::scrape::get(&addr, "/nothing").await.expect_err("404");
    assert!(error.to_string().contains("404"), "{error}");
    assert!(paxos_tests::scrape::get(&addr, "/").await.expect("index").contains("/metrics"));

    // A second node whose --metrics-listen is taken refuses to start, saying which flag.
    let dir = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(paxos_tests::binary("paxos-node"))
        .args(["--id", "2", "--listen", "127.0.0.1:0", "--insecure-plaintext", "--metrics-listen", &addr])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("run paxos-node");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("paxos-node: cannot start: cannot serve metrics on")
            && last.contains("--metrics-listen"),
        "{stderr}"
    );
}
