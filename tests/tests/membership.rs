//! Disk loss and configuration changes with real processes, each through the history checker:
//! a member that lost its disk never overwrites what was acknowledged, `member replace`
//! admits its new disk under load, the cluster grows 3 -> 5 and shrinks 5 -> 3 under load, and
//! the leader can remove itself.

use paxos_core::{MemberRole, MembershipChange};
use paxos_node::client::Client;
use paxos_node::wire::StatusReport;
use paxos_tests::workload::{run_clients, Recorder};
use paxos_tests::{wait_until, Cluster};
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(40);

/// Proposes `count` values through `client`, recording each; returns how many were acknowledged.
async fn propose_many(recorder: &Recorder, client: &Client, prefix: &str, count: usize) -> usize {
    let mut acknowledged = 0;
    for index in 0..count {
        if recorder.propose(client, format!("{prefix}-{index}")).await.is_some() {
            acknowledged += 1;
        }
    }
    acknowledged
}

/// Waits until node `id`'s status satisfies `check`.
async fn wait_status(
    cluster: &Cluster,
    id: u64,
    what: &str,
    check: impl Fn(&StatusReport) -> bool,
) -> StatusReport {
    wait_until(what, SETTLE, || async {
        let status = cluster.status(id).await?;
        Ok(check(&status).then_some(status))
    })
    .await
    .expect(what)
}

fn role_of(status: &StatusReport, id: u64) -> Option<(MemberRole, bool)> {
    status.members.iter().find(|m| m.id == id).map(|m| (m.role, m.promote_to.is_some()))
}

/// The scenario. C is cut off while A (leader) and B acknowledge 20 values; A is killed;
/// B is killed, its data directory deleted, and B restarted empty with the same command line.
/// Before incarnations, B and C then acknowledged 20 new values at the same slots. Now B's
/// new disk is not admitted: B and C choose nothing, both say why, every acknowledged value
/// stays at its slot when A returns, and `member replace` brings B back as a voter.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_lost_its_disk_never_overwrites_acknowledged_values() {
    let mut cluster = Cluster::start_with_proxies(3).await.expect("cluster");
    let a = cluster.wait_for_leader(SETTLE).await.expect("leader");
    let others: Vec<u64> = (1..=3).filter(|id| *id != a).collect();
    let (b, c) = (others[0], others[1]);
    let recorder = Recorder::default();
    let through_a = cluster.client_with_timeout(&[a], Duration::from_secs(10));
    assert_eq!(propose_many(&recorder, &through_a, "before", 5).await, 5);
    cluster.wait_converged(0, SETTLE).await.expect("converged");

    cluster.partition(&[c]);
    assert_eq!(propose_many(&recorder, &through_a, "a-and-b", 20).await, 20);
    let acknowledged_slots: Vec<u64> = recorder.operations().iter().filter_map(|o| o.slot).collect();
    eprintln!("acknowledged at slots {acknowledged_slots:?}");

    cluster.kill(a).expect("kill a");
    cluster.kill(b).expect("kill b");
    std::fs::remove_dir_all(cluster.data_dir(b)).expect("wipe b");
    cluster.start_node(b).expect("restart b empty");
    cluster.heal();

    // B and C are a majority by count, but B's votes are not the ones the configuration knows.
    let through_b_and_c = cluster.client_with_timeout(&[b, c], Duration::from_secs(4));
    let chosen = propose_many(&recorder, &through_b_and_c, "b-and-c", 3).await;
    assert_eq!(chosen, 0, "a wiped member and a lagging one chose values on their own");

    let status_b = wait_status(&cluster, b, "b to say it is not admitted", |s| !s.problems.is_empty()).await;
    eprintln!("status of b: problems {:?}", status_b.problems);
    assert!(!status_b.can_vote);
    assert!(
        status_b.problems[0].contains(&format!("paxos-cli member replace {b}")),
        "{:?}",
        status_b.problems
    );
    let status_c = wait_status(&cluster, c, "c to name b's unknown disk", |s| !s.problems.is_empty()).await;
    eprintln!("status of c: problems {:?}", status_c.problems);
    assert!(status_c.problems.iter().any(|p| p.contains(&format!("node {b} came back"))));
    assert!(cluster.log(b).contains("is not admitted"), "b's log says nothing:\n{}", cluster.log(b));

    // A returns: A and C are the majority the configuration knows.
    cluster.start_node(a).expect("restart a");
    let leader = cluster.wait_for_leader_among(&[a, c], SETTLE).await.expect("leader");
    let through_leader = cluster.client_with_timeout(&[a, c], Duration::from_secs(10));
    assert_eq!(propose_many(&recorder, &through_leader, "after", 5).await, 5);

    // The operator admits B's new disk; B catches up as a learner and is promoted.
    let admin = cluster.admin_client();
    let slot = admin.change_membership(MembershipChange::Replace { id: b }).await.expect("replace");
    eprintln!("b replaced at slot {slot} (leader {leader})");
    wait_status(&cluster, a, "b promoted to voter", |s| role_of(s, b) == Some((MemberRole::Voter, false)))
        .await;
    wait_status(&cluster, b, "b voting", |s| s.can_vote && s.problems.is_empty()).await;
    assert_eq!(propose_many(&recorder, &through_leader, "replaced", 5).await, 5);
    cluster.converge_and_check(&recorder).await;
}

/// A member's disk dies under load: the node is restarted empty (as a joining node) and
/// `member replace` admits it while clients keep writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_replace_admits_a_new_disk_under_load() {
    let mut cluster = Cluster::start(3).await.expect("cluster");
    let leader = cluster.wait_for_leader(SETTLE).await.expect("leader");
    let victim = (1..=3).find(|id| *id != leader).expect("a follower");
    let recorder = Recorder::default();
    let load = {
        let recorder = recorder.clone();
        let make = {
            let client = cluster.client();
            move |_| client.clone_fresh()
        };
        tokio::spawn(
            async move { run_clients(&recorder, make, 3, 120, "load", Duration::from_millis(20)).await },
        )
    };
    wait_until("some load", SETTLE, || async { Ok((recorder.acknowledged() >= 20).then_some(())) })
        .await
        .expect("load");
    cluster.kill(victim).expect("kill");
    std::fs::remove_dir_all(cluster.data_dir(victim)).expect("wipe");
    cluster.set_extra_args(&["--initial-cluster-state", "existing"]);
    cluster.start_node(victim).expect("restart empty");
    let admin = cluster.admin_client();
    // The leader must have heard the new disk first: retry while it has not.
    let slot = wait_until("member replace", SETTLE, || async {
        match admin.change_membership(MembershipChange::Replace { id: victim }).await {
            Ok(slot) => Ok(Some(slot)),
            Err(error)
                if error.to_string().contains("not been heard")
                    || error.to_string().contains("already admitted") =>
            {
                Ok(None)
            }
            Err(error) => Err(error.into()),
        }
    })
    .await
    .expect("replaced");
    eprintln!("node {victim} replaced at slot {slot}");
    wait_status(&cluster, victim, "the new disk votes", |s| s.can_vote).await;
    load.await.expect("clients");
    cluster.converge_and_check(&recorder).await;
}

/// Grows 3 -> 5 and shrinks 5 -> 3 (removing the leader last) while clients write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_grows_to_five_and_shrinks_to_three_under_load_and_the_leader_removes_itself() {
    let mut cluster = Cluster::new(5).expect("cluster");
    // Nodes 1-3 bootstrap; 4 and 5 join later. Every node's flags list the first three.
    let first_three: Vec<(u64, String)> = (1..=3).map(|id| (id, cluster.addrs[&id].clone())).collect();
    for id in 1..=3 {
        cluster.start_node_with_peers(id, &first_three, &[]).expect("start");
    }
    cluster.wait_for_leader_among(&[1, 2, 3], SETTLE).await.expect("leader");
    let recorder = Recorder::default();
    let load = {
        let recorder = recorder.clone();
        let make = {
            let client = cluster.client_with_timeout(&[1, 2, 3], Duration::from_secs(20));
            move |_| client.clone_fresh()
        };
        tokio::spawn(
            async move { run_clients(&recorder, make, 3, 150, "load", Duration::from_millis(20)).await },
        )
    };
    let admin = cluster.admin_client_for(&[1, 2, 3]);
    for id in [4, 5] {
        cluster
            .start_node_with_peers(id, &first_three, &["--initial-cluster-state", "existing"])
            .expect("start joining node");
        let address = cluster.addrs[&id].clone();
        let slot = admin
            .change_membership(MembershipChange::Add { id, address, role: MemberRole::Voter })
            .await
            .expect("add");
        eprintln!("node {id} added at slot {slot}");
        let leader = cluster.wait_for_leader(SETTLE).await.expect("leader");
        wait_status(&cluster, leader, "promotion", |s| role_of(s, id) == Some((MemberRole::Voter, false)))
            .await;
    }
    let leader = cluster.wait_for_leader(SETTLE).await.expect("leader");
    let status = cluster.status(leader).await.expect("status");
    assert_eq!(status.members.iter().filter(|m| m.role == MemberRole::Voter).count(), 5);

    // Shrink: two followers, then the leader itself.
    let followers: Vec<u64> = (1..=5).filter(|id| *id != leader).collect();
    for id in &followers[..1] {
        let slot = admin.change_membership(MembershipChange::Remove { id: *id }).await.expect("remove");
        eprintln!("node {id} removed at slot {slot}");
        cluster.stop(*id).expect("stop removed");
    }
    let slot = admin.change_membership(MembershipChange::Remove { id: leader }).await.expect("remove leader");
    eprintln!("leader {leader} removed itself at slot {slot}");
    let rest: Vec<u64> = (1..=5).filter(|id| *id != leader && *id != followers[0]).collect();
    let new_leader = cluster.wait_for_leader_among(&rest, SETTLE).await.expect("a new leader");
    assert_ne!(new_leader, leader);
    cluster.stop(leader).expect("stop removed leader");
    let status = cluster.status(new_leader).await.expect("status");
    assert_eq!(
        status.members.iter().filter(|m| m.role == MemberRole::Voter).count(),
        3,
        "{:?}",
        status.members
    );
    load.await.expect("clients");
    cluster.converge_and_check(&recorder).await;
}

/// A node that joins with `--initial-cluster-state existing` and flags that name one follower
/// but not the leader learns the history without the leader's word: it tells the member it
/// knows how far it has applied, hears back that the member is ahead, and fetches from it.
/// Before the progress exchange it stayed at applied 0 for minutes (seen: 240 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_node_whose_flags_do_not_name_the_leader_catches_up_within_two_seconds() {
    let mut cluster = Cluster::new(4).expect("cluster");
    let first_three: Vec<(u64, String)> = (1..=3).map(|id| (id, cluster.addrs[&id].clone())).collect();
    for id in 1..=3 {
        cluster.start_node_with_peers(id, &first_three, &[]).expect("start");
    }
    let leader = cluster.wait_for_leader_among(&[1, 2, 3], SETTLE).await.expect("leader");
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let recorder = Recorder::default();
    let client = cluster.client_for(&[1, 2, 3]);
    assert_eq!(propose_many(&recorder, &client, "join", 50).await, 50);
    let admin = cluster.admin_client_for(&[1, 2, 3]);
    let address = cluster.addrs[&4].clone();
    admin
        .change_membership(MembershipChange::Add { id: 4, address, role: MemberRole::Voter })
        .await
        .expect("add");
    let target = cluster.status(leader).await.expect("leader status").applied_upto;
    let flags = [(follower, cluster.addrs[&follower].clone()), (4, cluster.addrs[&4].clone())];
    let started = std::time::Instant::now();
    cluster.start_node_with_peers(4, &flags, &["--initial-cluster-state", "existing"]).expect("start node 4");
    wait_until("node 4 catches up", SETTLE, || async {
        Ok(cluster.status(4).await.ok().filter(|s| s.applied_upto >= target).map(|_| ()))
    })
    .await
    .expect("node 4 catches up");
    let took = started.elapsed();
    eprintln!("node 4 (flags: node {follower} and itself; leader {leader}) applied {target} slots {took:?} after its start");
    assert!(took <= Duration::from_secs(2), "node 4 took {took:?} to catch up");
    cluster.converge_and_check(&recorder).await;
}
