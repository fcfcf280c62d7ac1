//! Hand-routed schedules found by an adversarial review of the membership change; each broke
//! the core before its fix (the test says which rule was missing).
//! The harness is `routed/`, shared with `regressions.rs`.

mod routed;

use paxos_core::{Config, MemStorage, MemberRole, MembershipChange, Message, NodeId, Proposal, Slot, Value};

use routed::*;

fn voters(c: &Cluster, id: NodeId) -> Vec<NodeId> {
    c.node(id).replica.membership().voting().collect()
}

/// A bound cluster {1,2,3} (member id has incarnation id), plus `extra` nodes that start
/// empty (the bound configuration on disk, as the simulation's new disks) and join.
fn bound_cluster(extra: &[NodeId]) -> Cluster {
    let mut c = Cluster::empty();
    let members = [1, 2, 3];
    for id in members {
        let storage = MemStorage { requests: sessions(), ..MemStorage::bootstrapped(&members) };
        c.start(Config::new(id, members.to_vec()), storage);
    }
    for id in extra {
        let storage = MemStorage { requests: sessions(), ..MemStorage::bootstrapped(&members) };
        let mut config = Config::new(*id, members.to_vec());
        config.join_existing = true;
        c.start(config, storage);
    }
    c
}

// ----- 1. a candidate applies two configuration changes from a Promise and leads at once -----

/// Five nodes eventually; the cluster starts bound as {1,2,3} and grows to {1,2,3,4,5}.
///
/// 1. Node 1 leads ballot b1 in {1,2,3} and proposes x_0..x_19 at slots 0..19: it accepts
///    them itself, every Accept is lost, and node 1 is cut off from everyone.
/// 2. Node 2 leads and the operator adds 4 and then 5 (each: Add learner, Promote): the
///    configuration entries Add4, Promote4, Add5, Promote5 are chosen at slots 0..3 and
///    applied by 2, 3, 4, 5. The configuration in force is now {1,2,3,4,5} (majority 3).
/// 3. Node 2 is cut from 3, 4, 5. Node 3 leads with {3,4,5} and chooses w at slot 4; node 3
///    applies it and answers the client Ok(4). Nodes 4 and 5 voted but never hear the commit.
/// 4. Node 1, isolated, has campaigned again and again (its round is now above node 3's). The
///    link 1-2 (and 1-4) heals. Node 1 campaigns with ballot b in its configuration {1,2,3}:
///    node 2 promises (a majority of {1,2,3} with node 1), its Promise carrying the history
///    0..3 (the four configuration entries). Node 1 applies them, and IN THE SAME INPUT goes
///    on to `become_leader`: its phase 1 (answered by {1,2}, a majority of {1,2,3} but not of
///    {1,2,3,4,5}) makes it propose its own x_4..x_19 in ballot b > node 3's ballot, and it
///    accepts them locally. Only after that input does `settle_membership` start a new
///    candidacy.
/// 5. Node 1's new candidacy (ballot b' > b) is answered by {1,2,4}, a majority of the new
///    configuration. At slot 4 node 4 reports (ballot of node 3, w) and node 1 its own
///    (b, x_4): b wins, and node 1 gets x_4 chosen at slot 4.
///
/// Slot 4 is chosen twice: w (applied by node 3, answered to its client) and x_4.
#[test]
fn a_candidate_that_applies_two_configuration_changes_from_a_promise_does_not_lead_on_the_old_phase_one() {
    let mut c = bound_cluster(&[4, 5]);
    let all = [1, 2, 3, 4, 5];

    // 1. Node 1 leads b1 and accepts x_0..x_19 alone.
    c.campaign(1);
    c.deliver_all_among(&[1, 2, 3]);
    assert!(c.is_leader(1), "schedule: node 1 should lead{}", c.histories());
    for other in [2, 3, 4, 5] {
        c.cut(1, other);
    }
    for seq in 0..20 {
        c.propose(1, rid(1, 100 + seq), &format!("x{seq}"));
    }
    assert_eq!(c.node(1).storage.accepted.len(), 20);

    // 2. Node 2 leads and grows the cluster to five voters.
    c.campaign(2);
    c.deliver_all_among(&[2, 3, 4, 5]);
    assert!(c.is_leader(2), "schedule: node 2 should lead{}", c.histories());
    c.change(2, 1, MembershipChange::Add { id: 4, address: "n4:1".into(), role: MemberRole::Voter });
    for _ in 0..200 {
        c.run_among(&[2, 3, 4, 5], 1);
        if voters(&c, 2).contains(&4) && voters(&c, 4).contains(&4) {
            break;
        }
    }
    for _ in 0..200 {
        if c.leader_among(&[2, 3, 4, 5]).is_some() {
            break;
        }
        c.run_among(&[2, 3, 4, 5], 1);
    }
    let leader = c.leader_among(&[2, 3, 4, 5]).unwrap_or_else(|| panic!("no leader{}", c.histories()));
    c.change(leader, 2, MembershipChange::Add { id: 5, address: "n5:1".into(), role: MemberRole::Voter });
    for _ in 0..200 {
        c.run_among(&[2, 3, 4, 5], 1);
        if [2, 3, 4, 5].iter().all(|id| voters(&c, *id) == all) && c.leader_among(&[2, 3, 4, 5]).is_some() {
            break;
        }
    }
    let configured = c.applied_upto(2);
    assert!(
        [2, 3, 4, 5].iter().all(|id| voters(&c, *id) == all && c.applied_upto(*id) == configured),
        "schedule: 2..5 should have applied {{1,2,3,4,5}}{}",
        c.histories()
    );
    assert!(configured < 20, "schedule: node 1's records should reach above {configured}");

    // 3. Node 3 leads {1..5} with {3,4,5} and chooses w at slot `configured`.
    for other in [3, 4, 5] {
        c.cut(2, other);
    }
    c.campaign(3);
    c.deliver_all_among(&[3, 4, 5]);
    assert!(c.is_leader(3), "schedule: node 3 should lead{}", c.histories());
    let w = rid(2, 1);
    c.propose(3, w, "w");
    c.deliver_where(3, 4, is_accept);
    c.deliver_where(3, 5, is_accept);
    c.deliver_where(4, 3, is_accepted);
    c.deliver_where(5, 3, is_accepted);
    assert_eq!(c.reply(3, w), Some(&Ok(configured)), "schedule: w chosen{}", c.histories());
    c.cut(3, 4);
    c.cut(3, 5);
    assert_eq!(c.applied_upto(4), configured, "schedule: node 4 must not know w chosen");
    let ballot_w = c.node(3).replica.status().own_ballot.expect("leads");

    // 4. Node 1 (isolated, round above node 3's) campaigns; node 2 promises with the history.
    for _ in 0..5000 {
        if c.node(1).replica.promised().round > ballot_w.round {
            break;
        }
        c.tick(1);
    }
    c.heal(1, 2);
    c.heal(1, 4);
    c.tick_until_sent(1, 2, is_prepare);
    c.deliver_where(1, 2, is_prepare);
    c.deliver_where(2, 1, is_promise);
    let record = c.node(1).storage.accepted.get(&configured).cloned();
    eprintln!("node 1's record at slot {configured} after the promise: {record:?} (w chosen in {ballot_w})");

    // 5. Node 1's next candidacy, answered by {1,2,4}.
    for _ in 0..50 {
        c.deliver_all_among(&[1, 2, 4]);
        if c.applied_upto(1) > configured {
            break;
        }
        c.tick(1);
    }
    c.assert_agreement();
}

// ----- 2. a lone voter answers a forwarded proposal before its own vote is on disk -----

/// A configuration with one voter and a learner (a single-member cluster that added a
/// learner, or a cluster shrunk to one voter).
///
/// 1. Node 1 is the only voter and leads; node 2 is added as a learner and follows it.
/// 2. A client asks node 2, which forwards the proposal to node 1. Node 1 proposes it at slot
///    s; its own vote is a quorum of one. It used to choose, apply and answer at once, with the
///    ForwardReply Ok(s) in `Ready::messages`, which the Ready contract lets the driver send
///    BEFORE writing the batch (step 0). Now the own vote counts only once its batch is
///    written, so nothing may be chosen or answered in that Ready at all.
/// 3. Node 1 crashes before the write: the ForwardReply is out, the vote is not on disk.
/// 4. Node 1 restarts, leads again and chooses another value at slot s. Node 2 applies it and
///    answers its client Ok(s) for the first proposal, whose value is nowhere in the log.
#[test]
fn a_lone_voter_does_not_answer_a_forwarded_proposal_before_its_vote_is_durable() {
    let mut c = Cluster::empty();
    let storage = || MemStorage { requests: sessions(), ..MemStorage::bootstrapped(&[1]) };
    c.start(Config::new(1, vec![1]), storage());
    let mut joining = Config::new(2, vec![1]);
    joining.join_existing = true;
    c.start(joining, storage());

    // 1. Node 1 leads alone and adds node 2 as a learner.
    c.campaign(1);
    assert!(c.is_leader(1), "schedule: node 1 should lead{}", c.histories());
    c.change(1, 1, MembershipChange::Add { id: 2, address: "n2:1".into(), role: MemberRole::Learner });
    for _ in 0..100 {
        c.run_among(&[1, 2], 1);
        if c.is_leader(1)
            && c.node(2).replica.membership().contains(2)
            && c.node(2).replica.status().leader == Some(1)
        {
            break;
        }
    }
    assert!(
        c.node(2).replica.membership().contains(2),
        "schedule: node 2 should be a learner{}",
        c.histories()
    );

    // 2. A proposal through node 2, forwarded to node 1.
    let acked = rid(1, 1);
    c.propose(2, acked, "acked");
    let forward = c.take_where(2, 1, |m| matches!(m, Message::Forward { .. })).pop().expect("forwarded");
    c.replica(1).step(forward);
    let ready = c.replica(1).take_ready();
    // Node 1's own vote is the whole quorum, but it counts only once the batch holding it is
    // written: nothing is chosen, and no answer is given, before that.
    let slot = ready
        .persist
        .iter()
        .find_map(|op| match op {
            paxos_core::PersistOp::Accept { slot, .. } => Some(*slot),
            _ => None,
        })
        .unwrap_or_else(|| panic!("schedule: the batch should hold node 1's vote: {ready:?}"));
    assert!(
        !ready
            .messages
            .iter()
            .chain(&ready.persisted_messages)
            .any(|e| matches!(e.message, Message::ForwardReply { outcome: Ok(_), .. })),
        "node 1 answered before its only vote was written: {ready:?}"
    );
    assert!(ready.chosen.is_empty(), "node 1 chose before its only vote was written: {ready:?}");

    // 3. The driver sends `messages` (allowed before the write), then node 1 crashes.
    for envelope in ready.messages {
        c.links.entry((envelope.from, envelope.to)).or_default().push_back(envelope);
    }
    c.deliver_where(1, 2, |m| matches!(m, Message::ForwardReply { .. }));
    let storage = c.node(1).storage.clone();
    c.start(Config::new(1, vec![1]), storage);

    // 4. Node 1 leads again and chooses another value at the same slot.
    c.campaign(1);
    c.propose(1, rid(2, 1), "other");
    c.run_among(&[1, 2], 20);
    let answered = c.reply(2, acked).cloned();
    let at_slot = c.node(2).applied.iter().find(|(s, _)| *s == slot).map(|(_, v)| v.clone());
    assert!(
        answered != Some(Ok(slot)) || at_slot.as_ref().and_then(Value::request_id) == Some(acked),
        "durability: node 2 answered {acked} with {answered:?}, but slot {slot} holds {at_slot:?}{}",
        c.histories()
    );
}

// ----- 3. a stale leader that learns, by catch-up, a configuration without it keeps choosing -----

/// Three nodes, bound {1,2,3}.
///
/// 0. Node 2 leads and chooses u at slot 0 with node 3. Node 1 hears the commit point and asks
///    node 2 for slot 0 (CatchUp{0}); the network duplicates that request and holds the copy.
/// 1. Node 1 leads ballot b1 with all three and proposes v at slot 1: node 2 accepts, every
///    other Accept/Accepted is lost. The operator asks node 1 to add learner 4: the change waits
///    for the window to drain. Node 1 is cut off (and not ticked: it still believes it leads).
/// 2. Node 2 leads (ballot b2 > b1) with node 3, re-proposes v at slot 1, then removes node 1
///    (slot 2) and node 3 (slot 3): the configuration is {2}, quorum one.
/// 3. The late duplicate CatchUp{0} reaches node 2, which serves it (node 1 is now a stranger,
///    and strangers may read the history). Node 1, still leader of b1, applies slots 1..3
///    (v matches its own proposal, so it is not "superseded") and in the same input
///    `fill_window` proposes the waiting change at slot 4 and counts it chosen: the quorum of
///    {2} is one, and node 1 counts its OWN vote although it is not a voter of {2}. It applies
///    the entry and answers the operator Ok(4).
/// 4. Node 2, the only voter, chooses w at slot 4.
#[test]
fn a_stale_leader_does_not_count_its_own_vote_in_a_configuration_it_learned_by_catch_up() {
    let mut c = bound_cluster(&[]);

    // 0. Node 2 chooses u at 0; node 1's CatchUp is duplicated.
    c.campaign(2);
    c.deliver_all_among(&[1, 2, 3]);
    assert!(c.is_leader(2), "schedule: node 2 should lead{}", c.histories());
    c.propose(2, rid(3, 1), "u");
    c.take_where(2, 1, any);
    c.deliver_all_among(&[2, 3]);
    assert_eq!(c.applied_upto(2), 1, "schedule: u chosen{}", c.histories());
    c.tick_until_sent(2, 1, |m| matches!(m, Message::Heartbeat { commit_upto: 1, .. }));
    c.deliver_where(2, 1, |m| matches!(m, Message::Heartbeat { .. }));
    let catch_up = c.take_where(1, 2, |m| matches!(m, Message::CatchUp { .. })).pop().expect("catch-up");
    let duplicate = catch_up.clone();
    c.deliver(catch_up);
    c.deliver_all_among(&[1, 2, 3]);
    assert_eq!(c.applied_upto(1), 1, "schedule: node 1 caught up{}", c.histories());

    // 1. Node 1 leads b1; v reaches node 2 only; a change waits on node 1.
    c.campaign(1);
    c.deliver_all_among(&[1, 2, 3]);
    assert!(c.is_leader(1), "schedule: node 1 should lead{}", c.histories());
    c.propose(1, rid(1, 1), "v");
    c.take_where(1, 3, any);
    c.deliver_where(1, 2, is_accept);
    c.take_where(2, 1, any);
    c.change(1, 1, MembershipChange::Add { id: 4, address: "n4:1".into(), role: MemberRole::Learner });
    c.cut(1, 2);
    c.cut(1, 3);

    // 2. Node 2 leads, chooses v at 1, removes 1 then 3.
    c.campaign(2);
    c.deliver_all_among(&[2, 3]);
    assert!(c.is_leader(2), "schedule: node 2 should lead{}", c.histories());
    c.change(2, 2, MembershipChange::Remove { id: 1 });
    c.run_among(&[2, 3], 30);
    let leader = c.leader_among(&[2, 3]).unwrap_or_else(|| panic!("no leader{}", c.histories()));
    c.change(leader, 3, MembershipChange::Remove { id: 3 });
    c.run_among(&[2, 3], 30);
    assert_eq!(voters(&c, 2), vec![2], "schedule: node 2 alone{}", c.histories());
    assert!(c.is_leader(2), "schedule: node 2 should lead{}", c.histories());
    let next = c.applied_upto(2);

    // 3. The late duplicate reaches node 2; its answer reaches node 1.
    c.heal(1, 2);
    c.deliver(duplicate);
    c.deliver_where(2, 1, |m| matches!(m, Message::CatchUpEntries { .. }));
    eprintln!("operator's answer on node 1: {:?}", c.reply(1, rid(u64::MAX - 1, 1)));

    // 4. Node 2 chooses w at the next slot.
    c.cut(1, 2);
    c.propose(2, rid(2, 1), "w");
    c.run_among(&[2], 5);
    assert!(c.applied_upto(2) > next, "schedule: w chosen{}", c.histories());
    c.assert_agreement();
}

/// A cluster that bootstraps through the log: every node of `bootstrap` starts empty with the
/// `--peer` list `bootstrap` (unbound), and a leader binds it.
fn bootstrapping_cluster(bootstrap: &[NodeId]) -> Cluster {
    let mut c = Cluster::empty();
    for id in bootstrap {
        let storage = MemStorage { requests: sessions(), ..MemStorage::default() };
        c.start(Config::new(*id, bootstrap.to_vec()), storage);
    }
    c
}

fn bound_everywhere(c: &Cluster, group: &[NodeId]) -> bool {
    group.iter().all(|id| c.node(*id).replica.membership().is_bound())
}

// ----- 4. a wiped member restarted with its bootstrap flags forms a cluster of its own -----

/// `paxos-node` with no flags runs a single-member cluster; members are then added with
/// `paxos-cli member add`. The rule (docs/operations.md, "Joining, disk loss and incarnations"):
/// a member restarted with an empty directory never votes under its old id until `member
/// replace` admits the new directory, whichever state it is started with.
///
/// 1. Node 1 bootstraps alone (--peer list {1}) and binds itself at slot 0.
/// 2. Nodes 2 and 3 join (`existing`) and are added and promoted: voters {1,2,3}.
/// 3. Node 1's disk is lost; it is restarted the way it was first started (no flags: `new`,
///    peer list {1}). Its bootstrap configuration is {1}, so "every voter" is itself: it leads,
///    binds its new incarnation at slot 0 and chooses whatever its clients send, while nodes 2
///    and 3 (a majority of {1,2,3}) go on with the real history.
///
/// Nothing a node knows tells it, alone, that it is not a new cluster: that start makes a new
/// log (with its own id, the binding leader's incarnation). What must hold is that the two
/// logs never mix: when node 1 hears the cluster again, neither side takes the other's
/// history (before log ids, node 1 took the cluster's entries after its own), the cluster
/// goes on, and node 1 says it belongs to another log.
#[test]
fn a_wiped_member_restarted_as_a_new_cluster_never_mixes_its_log_with_the_clusters() {
    let mut c = bootstrapping_cluster(&[1]);
    c.campaign(1);
    c.run_among(&[1], 3);
    assert!(bound_everywhere(&c, &[1]) && c.is_leader(1), "schedule: node 1 bound{}", c.histories());

    // 2. Nodes 2 and 3 join.
    for id in [2, 3] {
        let mut joining = Config::new(id, vec![1]);
        joining.join_existing = true;
        c.start(joining, MemStorage { requests: sessions(), ..MemStorage::default() });
    }
    for (seq, id) in [(1, 2), (2, 3)] {
        let leader = c.leader_among(&[1, 2, 3]).unwrap_or_else(|| panic!("no leader{}", c.histories()));
        c.change(
            leader,
            seq,
            MembershipChange::Add { id, address: format!("n{id}:1"), role: MemberRole::Voter },
        );
        for _ in 0..100 {
            c.run_among(&[1, 2, 3], 1);
            if voters(&c, 1).contains(&id) && c.leader_among(&[1, 2, 3]).is_some() {
                break;
            }
        }
    }
    assert_eq!(voters(&c, 2), vec![1, 2, 3], "schedule: three voters{}", c.histories());
    let leader = c.leader_among(&[1, 2, 3]).expect("leader");
    c.propose(leader, rid(1, 1), "real");
    c.run_among(&[1, 2, 3], 5);

    // 3. Node 1 loses its disk and restarts as it was first started; 2 and 3 go on.
    let mut wiped = Config::new(1, vec![1]);
    wiped.incarnation = 77;
    c.start(wiped, MemStorage::default());
    c.cut(1, 2);
    c.cut(1, 3);
    c.campaign(1);
    c.run_among(&[1], 3);
    let registration = Proposal::register(7, [0; 16], 0, b"first".to_vec());
    c.replica(1).propose(registration.clone());
    c.flush(1);
    c.run_among(&[1], 3);
    c.run_among(&[2, 3], 30);
    eprintln!("wiped node 1 answered a registration: {:?}", c.reply(1, registration.request_id));
    let own: Vec<(Slot, Value)> = c.node(1).applied.clone();
    c.heal(1, 2);
    c.heal(1, 3);
    c.run_among(&[1, 2, 3], 60);
    assert_eq!(c.node(1).applied, own, "node 1 took entries of another log{}", c.histories());
    assert!(!c.node(1).replica.status().foreign_logs.is_empty(), "node 1 does not say{}", c.histories());
    let cluster = Cluster { nodes: c.nodes.split_off(&2), ..Cluster::empty() };
    cluster.assert_agreement();
}

// ----- 5. a joining node whose --peer list is not the bootstrap list -----

/// The bootstrap binding is checked on every replica against "the configuration in force",
/// which for a replica that has not applied it is the one built from ITS OWN --peer flags.
///
/// 1. Nodes 1, 2, 3 bootstrap ({1,2,3}) and bind at slot 0.
/// 2. Node 4 is started with `--initial-cluster-state existing` and a --peer list that names
///    every member including itself ({1,2,3,4}, as the README says of --peer), then added.
/// 3. Node 4 catches up from slot 0: the binding fails `check_successor` against {1,2,3,4}
///    (NotABinding), so node 4 writes a no-op at slot 0 where everyone else has the
///    configuration, stays unbound for good (every later configuration entry is a no-op there
///    too), serves that history to whoever catches up from it, and never votes although it is
///    promoted.
#[test]
fn a_joining_node_applies_the_bootstrap_binding_whatever_its_peer_flags() {
    let mut c = bootstrapping_cluster(&[1, 2, 3]);
    c.campaign(1);
    c.run_among(&[1, 2, 3], 10);
    assert!(bound_everywhere(&c, &[1, 2, 3]), "schedule: bound{}", c.histories());
    let mut joining = Config::new(4, vec![1, 2, 3, 4]);
    joining.join_existing = true;
    c.start(joining, MemStorage { requests: sessions(), ..MemStorage::default() });
    let leader = c.leader_among(&[1, 2, 3]).unwrap_or_else(|| panic!("no leader{}", c.histories()));
    c.change(leader, 1, MembershipChange::Add { id: 4, address: "n4:1".into(), role: MemberRole::Voter });
    c.run_among(&[1, 2, 3, 4], 50);
    eprintln!(
        "node 4: bound {} can_vote {}",
        c.node(4).replica.membership().is_bound(),
        c.node(4).replica.status().can_vote
    );
    c.assert_agreement();
}

// ----- a leader that removes itself steps down without saying the removal is chosen -----

/// Found by running the README's membership block verbatim (`scripts/readme-check`), not by the
/// simulation: its liveness check judged a majority by the configuration the live nodes hold,
/// and here they hold the old one.
///
/// 1. Four voters {1,2,3,4}; node 2 leads and the operator removes node 2 itself.
/// 2. Nodes 1, 3 and 4 accept the entry; node 2 hears the quorum, applies the removal (the
///    configuration in force is {1,3,4}) and steps down, as documented.
/// 3. Node 2 is stopped (it was removed) and node 3 dies at once: the operator's next step,
///    or a crash.
/// 4. Nodes 1 and 4 are a majority of {1,3,4}, the configuration chosen. But they accepted the
///    removal without ever hearing that it was chosen: for them {1,2,3,4} is still in force,
///    where two of four is no majority. No one can ever lead again.
///
/// The rule: a leader whose configuration change ends its leadership says the commit point to
/// every member before it steps down (a Heartbeat in its ballot).
#[test]
fn a_leader_that_removes_itself_tells_the_members_the_removal_is_chosen_before_it_steps_down() {
    let mut c = bound_cluster(&[4]);
    let all = [1, 2, 3, 4];
    c.campaign(2);
    c.deliver_all_among(&all);
    assert!(c.is_leader(2), "schedule: node 2 should lead{}", c.histories());
    c.change(2, 1, MembershipChange::Add { id: 4, address: "n4:1".into(), role: MemberRole::Voter });
    for _ in 0..200 {
        if voters(&c, 1) == all && voters(&c, 4) == all && c.leader_among(&all).is_some() {
            break;
        }
        c.run(1);
    }
    assert_eq!(voters(&c, 1), all, "schedule: node 4 a voter{}", c.histories());
    let leader = c.leader_among(&all).unwrap_or_else(|| panic!("no leader{}", c.histories()));
    // Everyone idle and caught up before the removal.
    c.run(5);

    // 1-2. The leader removes itself: its Accept reaches everyone, the Accepteds reach it.
    c.change(leader, 2, MembershipChange::Remove { id: leader });
    let others: Vec<NodeId> = all.iter().copied().filter(|id| *id != leader).collect();
    for id in &others {
        c.deliver_where(leader, *id, is_accept);
    }
    for id in &others {
        c.deliver_where(*id, leader, is_accepted);
    }
    assert!(
        !voters(&c, leader).contains(&leader),
        "schedule: the removal applied on {leader}{}",
        c.histories()
    );
    assert!(!c.is_leader(leader), "schedule: node {leader} stepped down{}", c.histories());

    // 3. What it sent on its way out arrives; then it stops, and another voter dies.
    for id in &others {
        c.deliver_all(leader, *id);
    }
    c.kill(leader);
    let victim = others[1];
    c.kill(victim);
    let survivors: Vec<NodeId> = others.iter().copied().filter(|id| *id != victim).collect();

    // 4. The survivors are a majority of the configuration chosen: they must lead and choose.
    c.run_among(&survivors, 200);
    let new_leader = c.leader_among(&survivors).unwrap_or_else(|| {
        panic!("no leader among {survivors:?}, a majority of the chosen configuration{}", c.histories())
    });
    let before = c.applied_upto(new_leader);
    c.propose(new_leader, rid(7, 1), "after");
    c.run_among(&survivors, 20);
    assert!(c.applied_upto(new_leader) > before, "nothing chosen after the removal{}", c.histories());
    c.assert_agreement();
}

// ----- a member made a proposer keeps the accepted records of its voting days -----

/// Found by a new user (issue 26): after `member role 1 proposer` (and `gc`, which runs on the
/// leader), node 1 still held 535 accepted records, though a proposer keeps no acceptor state
/// and a node started as one holds none. The rule: a member that stops voting drops its
/// accepted records once the change is applied, in memory and on disk; the cluster still
/// chooses and agrees without them.
#[test]
fn a_member_made_a_proposer_drops_its_accepted_records_and_the_cluster_goes_on() {
    let mut c = bound_cluster(&[]);
    let all = [1, 2, 3];
    c.campaign(2);
    c.deliver_all_among(&all);
    assert!(c.is_leader(2), "schedule: node 2 should lead{}", c.histories());
    for seq in 1..=5 {
        c.propose(2, rid(3, seq), &format!("v{seq}"));
    }
    c.run(20);
    assert!(c.node(1).replica.status().accepted_records > 0, "schedule: node 1 accepted{}", c.histories());

    c.change(2, 1, MembershipChange::SetRole { id: 1, role: MemberRole::Proposer });
    for _ in 0..200 {
        let role = c.node(1).replica.membership().get(1).map(|m| m.role);
        if role == Some(MemberRole::Proposer) && c.leader_among(&all).is_some() {
            break;
        }
        c.run(1);
    }
    assert_eq!(c.node(1).replica.membership().get(1).map(|m| m.role), Some(MemberRole::Proposer));
    assert_eq!(c.node(1).replica.status().accepted_records, 0, "in memory{}", c.histories());
    assert!(c.node(1).storage.accepted.is_empty(), "on disk: {:?}", c.node(1).storage.accepted);

    // The voters go on choosing; node 1 still learns and may lead.
    let leader = c.leader_among(&all).unwrap_or_else(|| panic!("no leader{}", c.histories()));
    let before = c.applied_upto(leader);
    c.propose(leader, rid(3, 6), "after");
    c.run(30);
    assert!(c.applied_upto(leader) > before, "nothing chosen after the change{}", c.histories());
    assert_eq!(c.node(1).replica.status().accepted_records, 0, "a proposer accepts nothing{}", c.histories());
    c.assert_agreement();
}

// ----- a non-voter drops only records of slots it has applied -----

/// Found by an adversarial review of the change above, which first dropped every accepted
/// record once a member stopped voting. The records above the applied prefix belong to slots
/// that a later configuration, not yet applied, may govern, in which the member votes again
/// with the same disk, and its vote there may be the one that chose the value.
///
/// Demote 3 to learner (c1 @0), promote it back (c2 @1) while 3 is cut off. 3 then votes for
/// u @2 under its stale C0 (the leader counts it: C2 makes 3 a voter), catches up one page at a
/// time, applies c1 alone -> drops u, applies c2 -> voter again with no record. Leader 1 dies;
/// 2 and 3 (a majority of C2) elect 2, which fills slot 2 with a no-op.
#[test]
fn a_member_demoted_and_promoted_back_within_one_page_keeps_the_vote_that_chose_a_value() {
    let mut c = bound_cluster_with(|config| config.entries_per_message_max = 1);
    let all = [1, 2, 3];
    c.campaign(1);
    c.deliver_all_among(&all);
    assert!(c.is_leader(1), "schedule{}", c.histories());
    c.cut(1, 3);
    c.cut(2, 3);

    c.change(1, 1, MembershipChange::SetRole { id: 3, role: MemberRole::Learner });
    for _ in 0..100 {
        if voters(&c, 1) == [1, 2] && c.is_leader(1) {
            break;
        }
        c.deliver_all_among(&[1, 2]);
        c.tick(1);
        c.tick(2);
    }
    c.deliver_all_among(&[1, 2]);
    assert_eq!(voters(&c, 1), [1, 2], "schedule: c1 applied{}", c.histories());
    assert!(c.is_leader(1), "schedule: 1 leads C1{}", c.histories());
    c.change(1, 2, MembershipChange::SetRole { id: 3, role: MemberRole::Voter });
    for _ in 0..100 {
        if voters(&c, 1) == all && c.is_leader(1) {
            break;
        }
        c.deliver_all_among(&[1, 2]);
        c.tick(1);
        c.tick(2);
    }
    c.deliver_all_among(&[1, 2]);
    assert_eq!(voters(&c, 1), all, "schedule: c2 applied{}", c.histories());
    assert!(c.is_leader(1), "schedule: 1 leads C2{}", c.histories());
    assert_eq!(c.applied_upto(1), 2);

    // u at slot 2: the Accept to 2 is lost, 3 (healed) votes.
    c.heal(1, 3);
    c.heal(2, 3);
    choose_u_with(&mut c, 3, 2);

    // 3 catches up one page at a time: slot 0 (c1) then slot 1 (c2), never slot 2.
    for _ in 0..2 {
        assert_eq!(c.deliver_where(3, 1, is_catch_up), 1, "catch-up request{}", c.histories());
        assert_eq!(c.deliver_where(1, 3, is_catch_up_entries), 1, "catch-up answer{}", c.histories());
    }
    assert_eq!(c.applied_upto(3), 2);
    assert_eq!(voters(&c, 3), all);

    // Leader 1 dies; 2 campaigns in C2, 3 promises with nothing at slot 2.
    c.kill(1);
    c.links.clear();
    c.campaign(2);
    c.deliver_all_among(&[2, 3]);
    c.run_among(&[2, 3], 5);
    assert!(c.is_leader(2), "schedule: 2 leads{}", c.histories());
    c.propose(2, rid(2, 1), "w");
    c.run_among(&[2, 3], 30);
    c.assert_agreement();
}

/// The same through `member add --role voter`: node 4 joins with its flags' unbound
/// configuration (a voter there), the leader promotes it while it is within a page, node 4
/// votes for u before it has applied its own Add, then applies the Add alone (one-entry pages,
/// as with large values) and becomes a learner for a moment.
#[test]
fn a_member_promoted_before_it_applied_its_own_add_keeps_its_vote() {
    let mut c = Cluster::empty();
    let members = [1, 2];
    for id in members {
        let storage = MemStorage { requests: sessions(), ..MemStorage::bootstrapped(&members) };
        let mut config = Config::new(id, members.to_vec());
        config.message_bytes_max = 1; // every page holds one entry (as with large values)
        c.start(config, storage);
    }
    c.campaign(1);
    c.deliver_all_among(&[1, 2]);
    assert!(c.is_leader(1));
    let mut joining = Config::new(4, vec![1, 2, 4]);
    joining.join_existing = true;
    c.start(joining, MemStorage { requests: sessions(), ..MemStorage::default() });
    c.tick(4);
    c.deliver_all(4, 1); // its Progress: the leader has heard incarnation 4 at slot 0
    c.drop_all(4, 2);
    c.change(1, 1, MembershipChange::Add { id: 4, address: "n4:1".into(), role: MemberRole::Voter });
    for _ in 0..200 {
        c.deliver_all_among(&[1, 2]);
        if voters(&c, 1) == [1, 2, 4] && c.is_leader(1) {
            break;
        }
        c.tick(1);
        c.tick(2);
        c.drop_all(4, 1);
        c.drop_all(4, 2);
    }
    c.deliver_all_among(&[1, 2]);
    assert_eq!(voters(&c, 1), [1, 2, 4], "schedule: 4 promoted{}", c.histories());
    assert!(c.is_leader(1));
    assert_eq!(c.applied_upto(4), 0);
    let slot = c.applied_upto(1);
    c.drop_all(1, 4);
    c.drop_all(4, 1);
    choose_u_with(&mut c, 4, slot);
    // One page: the Add entry alone.
    c.drop_where(1, 4, is_heartbeat);
    assert_eq!(c.deliver_where(4, 1, is_catch_up), 1, "{}", c.histories());
    for envelope in c.take_where(1, 4, is_catch_up_entries) {
        c.deliver(envelope);
    }
    c.kill(1);
    c.run_among(&[2, 4], 150);
    let leader = c.leader_among(&[2, 4]).unwrap_or_else(|| panic!("no leader{}", c.histories()));
    c.propose(leader, rid(2, 1), "w");
    c.run_among(&[2, 4], 30);
    c.assert_agreement();
}

/// A bound cluster {1,2,3} with `adjust` applied to every node's configuration.
fn bound_cluster_with(adjust: impl Fn(&mut Config)) -> Cluster {
    let mut c = Cluster::empty();
    let members = [1, 2, 3];
    for id in members {
        let storage = MemStorage { requests: sessions(), ..MemStorage::bootstrapped(&members) };
        let mut config = Config::new(id, members.to_vec());
        adjust(&mut config);
        c.start(config, storage);
    }
    c
}

/// Found by the same review: after the removed leader's last heartbeat the followers had
/// applied the removal yet still named it as their leader, and forwarded proposals to it; it
/// answered NotLeader, as a stranger now, and the follower dropped the answer, so the client
/// waited for the election timer (up to two election timeouts). The rule: a follower forgets
/// a leader the configuration it applied no longer lets lead, and answers what it forwarded
/// there at once (retryable).
#[test]
fn a_follower_forgets_a_leader_the_configuration_no_longer_lets_lead() {
    let mut c = bound_cluster_with(|_| {});
    let all = [1, 2, 3];
    c.campaign(2);
    c.deliver_all_among(&all);
    assert!(c.is_leader(2), "schedule: node 2 should lead{}", c.histories());
    c.run(3);
    c.change(2, 1, MembershipChange::Remove { id: 2 });
    for id in [1, 3] {
        c.deliver_where(2, id, is_accept);
    }
    for id in [1, 3] {
        c.deliver_where(id, 2, is_accepted);
    }
    assert!(!c.is_leader(2), "schedule: node 2 stepped down{}", c.histories());
    for id in [1, 3] {
        c.deliver_where(2, id, is_heartbeat);
    }
    assert_eq!(voters(&c, 1), vec![1, 3], "schedule: node 1 applied the removal{}", c.histories());
    assert_eq!(
        c.node(1).replica.status().leader,
        None,
        "node 1 still follows the removed node{}",
        c.histories()
    );
    assert_eq!(c.node(1).replica.leader_heard(), None);

    // A proposal now is answered at once (no leader known: retryable), not forwarded to node 2.
    c.propose(1, rid(1, 1), "p");
    assert_eq!(c.queued(1, 2, |m| matches!(m, Message::Forward { .. })), 0, "forwarded to the removed node");
    assert!(
        matches!(c.reply(1, rid(1, 1)), Some(Err(e)) if e.is_retryable()),
        "no answer: {:?}{}",
        c.reply(1, rid(1, 1)),
        c.histories()
    );
    // And 1 and 3 elect a leader of their own.
    c.kill(2);
    c.run_among(&[1, 3], 100);
    assert!(c.leader_among(&[1, 3]).is_some(), "no leader among 1 and 3{}", c.histories());
}

/// Leader 1 proposes u at `slot`; its Accept to node 2 is lost and `voter` alone votes with it:
/// u is chosen by {1, voter} and applied by node 1.
fn choose_u_with(c: &mut Cluster, voter: NodeId, slot: Slot) {
    c.propose(1, rid(1, 1), "u");
    c.drop_where(1, 2, is_accept);
    assert_eq!(c.deliver_where(1, voter, is_accept), 1);
    assert_eq!(c.node(voter).replica.status().accepted_records, 1, "{voter} accepted u{}", c.histories());
    c.deliver_where(voter, 1, is_accepted);
    assert_eq!(c.applied_upto(1), slot + 1, "u chosen with {{1, {voter}}} and applied by 1{}", c.histories());
}
