//! `paxos-cli leader transfer ID` on real processes: leadership moves to the member named,
//! under load, nothing acknowledged is lost; refusals are one line; and what it saves over a
//! kill -9 of the leader (the time no proposal is answered) is measured and printed, not
//! asserted (timing belongs to benchmarks).

use paxos_tests::workload::{run_clients, Operation, Recorder};
use paxos_tests::Cluster;
use std::process::Output;
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(30);

fn endpoints(cluster: &Cluster) -> String {
    cluster.addrs.values().cloned().collect::<Vec<_>>().join(",")
}

async fn cli(cluster: &Cluster, args: &[&str]) -> Output {
    let mut command = cluster.cli_command();
    command.env("PAXOS_ENDPOINTS", endpoints(cluster)).args(args);
    tokio::task::spawn_blocking(move || command.output().expect("run paxos-cli")).await.expect("join")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The longest time, in the window [from, to], during which no proposal was acknowledged:
/// what a client of the cluster sees of a leader change.
fn longest_silence(operations: &[Operation], from: Instant, to: Instant) -> Duration {
    let mut acknowledged: Vec<Instant> = operations
        .iter()
        .filter(|operation| operation.slot.is_some())
        .filter_map(|operation| operation.completed)
        .filter(|at| *at >= from && *at <= to)
        .collect();
    acknowledged.sort();
    let mut points = vec![from];
    points.extend(acknowledged);
    points.push(to);
    points.windows(2).map(|pair| pair[1] - pair[0]).max().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_transfer_under_load_moves_leadership_and_loses_nothing() {
    let mut cluster = Cluster::start(3).await.expect("cluster");
    let recorder = Recorder::default();
    let (clients, per_client) = (4, 500);
    let load = {
        let recorder = recorder.clone();
        let base = cluster.client();
        tokio::spawn(async move {
            run_clients(&recorder, move |_| base.clone_fresh(), clients, per_client, "t", Duration::ZERO)
                .await
        })
    };
    recorder.wait_acknowledged(200, SETTLE).await;
    let leader = cluster.wait_for_leader(SETTLE).await.expect("leader");
    let target = (1..=3).find(|id| *id != leader).expect("a follower");

    // The transfer, under load.
    let asked = Instant::now();
    let output = cli(&cluster, &["--json", "leader", "transfer", &target.to_string()]).await;
    let answered = Instant::now();
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(report["from"], leader, "{report}");
    assert_eq!(report["to"], target, "{report}");
    let took_ms = report["took_ms"].as_u64().expect("took_ms");
    assert_eq!(cluster.wait_for_leader(SETTLE).await.expect("leader"), target);
    let acknowledged = recorder.acknowledged();
    recorder.wait_acknowledged(acknowledged + 200, SETTLE).await;
    // From the ask to now: 200 proposals acknowledged after the answer.
    let transfer_silence = longest_silence(&recorder.operations(), asked, Instant::now());

    // The same load through a kill -9 of the leader, for comparison.
    let killed_at = Instant::now();
    cluster.kill(target).expect("kill the new leader");
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != target).collect();
    cluster.wait_for_leader_among(&survivors, SETTLE).await.expect("a leader after the kill");
    let acknowledged = recorder.acknowledged();
    recorder.wait_acknowledged(acknowledged + 200, SETTLE).await;
    let kill_silence = longest_silence(&recorder.operations(), killed_at, Instant::now());
    cluster.start_node(target).expect("restart");

    load.await.expect("clients");
    let report = cluster.converge_and_check(&recorder).await;
    assert_eq!(
        report.acknowledged,
        clients * per_client,
        "every proposal is acknowledged in the end: {report:?}"
    );
    eprintln!(
        "leader transfer {leader} -> {target} under {clients} clients: answered in {took_ms} ms (paxos-cli round trip {} ms); \
         longest time without an acknowledged proposal: {} ms around the transfer, {} ms around a kill -9 of the leader",
        (answered - asked).as_millis(),
        transfer_silence.as_millis(),
        kill_silence.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_transfer_refusals_are_one_line() {
    let mut cluster = Cluster::start(3).await.expect("cluster");
    let leader = cluster.wait_for_leader(SETTLE).await.expect("leader");
    let down = (1..=3).find(|id| *id != leader).expect("a follower");

    let output = cli(&cluster, &["leader", "transfer", &leader.to_string()]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), format!("node {leader} leads already"));

    for (args, expected) in [
        (vec!["leader", "transfer", "9"], "node 9 is not a member of the configuration".to_owned()),
        (
            vec!["--identity", "client", "leader", "transfer", &down.to_string()],
            "a leadership transfer needs an admin certificate".to_owned(),
        ),
    ] {
        let output = cli(&cluster, &args).await;
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let text = stderr(&output);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("paxos-cli: ") && text.contains(&expected), "{args:?}: {text}");
    }

    // A member that is down: refused once the leader has not heard it for an election timeout.
    cluster.kill(down).expect("kill");
    paxos_tests::wait_until("the transfer to the killed member to be refused", SETTLE, || async {
        let output = cli(&cluster, &["leader", "transfer", &down.to_string()]).await;
        let text = stderr(&output);
        if output.status.code() == Some(1)
            && text.contains(&format!("node {down} has not answered the leader"))
        {
            assert_eq!(text.lines().count(), 1, "{text}");
            return Ok(Some(()));
        }
        assert!(!output.status.success(), "a transfer to a dead member cannot succeed");
        Ok(None)
    })
    .await
    .expect("refused");
    assert_eq!(cluster.wait_for_leader(SETTLE).await.expect("leader"), leader, "the leader stays");
}
