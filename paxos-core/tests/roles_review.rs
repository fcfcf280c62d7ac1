//! Schedules an adversarial review of roles apart routed by hand; each broke the core before
//! its fix. Harness: `routed/`.

mod routed;

use paxos_core::{Config, MemStorage, MemberRole, NodeId};

use routed::*;

fn start_unbound(c: &mut Cluster, id: NodeId, members: &[NodeId], role: MemberRole, storage: MemStorage) {
    let mut config = Config::new(id, members.to_vec());
    config.role = role;
    c.start(config, storage);
}

/// Bootstrap, --peer {1,2,3,4}: node 1 started as voter, nodes 2, 3, 4 as proposers.
///
/// 1. Proposer 2 campaigns; 3 and 4 answer HeartbeatAck (announcing "proposer"), so 2's
///    unbound view has one voting member, {1}: majority 1, unanimity 1. Node 1 promises;
///    node 2 leads, proposes Bind B1 (roles 1:V 2:P 3:P 4:P, log 2) at slot 0; node 1
///    accepts; node 2 counts it chosen (unanimity of {1}) and applies it. Nothing else from
///    node 2 reaches node 1 (commit lost).
/// 2. Nodes 3 and 4 (which never learned B1; as proposers they stored nothing) are restarted
///    on their disks with --role voter. A directory announces the role it was first started
///    with (`Config::role`, `DurableState::role`), so they still announce "proposer".
/// 3. (As the review found it, with 3 and 4 announcing "voter".) Node 3 campaigns. Node 2
///    answers HeartbeatAck (announcing "proposer"), so 3's view is voting {1,3,4}: majority 2. Node 4 promises (empty): node 3 leads on {3,4}, which
///    reports nothing at slot 0. Node 1's promise arrives late (ignored, but 1 is now heard),
///    and node 3 proposes Bind B2 (roles 1:V 2:P 3:V 4:V, log 3) at slot 0; 1 and 4 accept
///    (node 1 has not applied slot 0, and 1.3 > 1.2): unanimity of {1,3,4}.
///
/// Before a directory kept its first role, slot 0 held B1 at node 2 and B2 at node 3.
#[test]
fn a_role_changed_mid_bootstrap_is_not_announced() {
    let members = [1, 2, 3, 4];
    let mut c = Cluster::empty();
    let empty = || MemStorage { requests: sessions(), ..MemStorage::default() };
    start_unbound(&mut c, 1, &members, MemberRole::Voter, empty());
    for id in [2, 3, 4] {
        start_unbound(&mut c, id, &members, MemberRole::Proposer, empty());
    }

    // 1. Proposer 2 binds with node 1's vote alone.
    c.campaign(2);
    for id in [3, 4] {
        c.deliver_where(2, id, is_prepare);
        c.deliver_all(id, 2);
    }
    c.deliver_where(2, 1, is_prepare);
    c.deliver_where(1, 2, is_promise);
    assert!(c.is_leader(2), "schedule: node 2 should lead{}", c.histories());
    c.deliver_where(2, 1, is_accept);
    c.deliver_where(1, 2, is_accepted);
    assert_eq!(c.applied_upto(2), 1, "schedule: B1 chosen at node 2{}", c.histories());
    c.cut(1, 2);
    assert_eq!(c.applied_upto(1), 0);

    // 2. Proposers 3 and 4 restart as voters, on their own disks.
    for id in [3, 4] {
        let storage = c.node(id).storage.clone();
        start_unbound(&mut c, id, &members, MemberRole::Voter, storage);
    }

    // 3. Node 3 campaigns. Had 3 and 4 announced "voter" now, 3's view would be voting
    //    {1,3,4} and it would lead on {3,4}, which know nothing of B1, and bind B2 with 1, 3
    //    and 4 (the review's schedule). Their disks announce "proposer" still: 3's view has one
    //    voting member, {1}, whose promise reports B1, and B1 is what 3 proposes again.
    c.campaign(3);
    c.deliver_where(3, 2, is_prepare);
    c.deliver_all(2, 3);
    c.deliver_where(3, 4, is_prepare);
    c.deliver_all(4, 3);
    assert!(!c.is_leader(3), "3 and 4 hold no vote: 3 cannot lead on {{3,4}}{}", c.histories());
    c.deliver_where(3, 1, is_prepare);
    c.deliver_where(1, 3, is_promise);
    c.deliver_all_among(&[1, 3, 4]);
    c.run_among(&[1, 3, 4], 50);
    c.assert_agreement();
    assert_eq!(c.applied_upto(3), 1, "B1 chosen again{}", c.histories());
}

/// Liveness (swarm seed 24510 fails the same way: a leader with the binding entry in flight
/// forever). Bootstrap, --peer {1,2,3,4,5}: 1, 2, 5 proposers, 3, 4 acceptors.
///
/// 1. Proposer 1 leads on {3,4} and proposes Bind B; 3 and 4 accept; their Accepteds are
///    lost and node 1 dies.
/// 2. Proposer 2 has heard from 1 (its Prepare) but not yet from 5, which it therefore counts
///    as a voter: voting {3,4,5}, majority 2, unanimity 3. It leads on {3,4}, re-proposes B
///    (reported by phase 1) and gets 3's and 4's votes: 2 of 3.
/// 3. Node 5 answers (announcing "proposer"): node 2's unanimity set is now {3,4}, which both
///    voted. But the in-flight slot is judged only when an Accepted arrives, and every voting
///    member has voted already, so none is retransmitted: B is never counted chosen, and
///    node 2 heartbeats everyone (no one campaigns) for ever.
#[test]
fn a_binding_entry_whose_quorum_shrinks_by_an_announcement_is_never_counted_chosen() {
    use MemberRole::{Acceptor, Proposer};
    let members = [1, 2, 3, 4, 5];
    let roles = [(1, Proposer), (2, Proposer), (3, Acceptor), (4, Acceptor), (5, Proposer)];
    let mut c = Cluster::empty();
    for (id, role) in roles {
        start_unbound(
            &mut c,
            id,
            &members,
            role,
            MemStorage { requests: sessions(), ..MemStorage::default() },
        );
    }

    // 1. Node 1 leads, 3 and 4 accept B, node 1 dies.
    c.campaign(1);
    for id in [2, 5] {
        c.deliver_where(1, id, is_prepare);
        c.deliver_all(id, 1);
    }
    for id in [3, 4] {
        c.deliver_where(1, id, is_prepare);
        c.deliver_where(id, 1, is_promise);
    }
    assert!(c.is_leader(1), "schedule: node 1 should lead{}", c.histories());
    for id in [3, 4] {
        c.deliver_where(1, id, is_accept);
        c.drop_where(id, 1, is_accepted);
    }
    assert_eq!(c.node(3).storage.accepted.len(), 1, "schedule: 3 accepted B");
    c.kill(1);

    // 2. Node 2 leads on {3,4} with 5 counted as a voter, and re-proposes B.
    c.campaign(2);
    for id in [3, 4] {
        c.deliver_where(2, id, is_prepare);
        c.deliver_where(id, 2, is_promise);
    }
    assert!(c.is_leader(2), "schedule: node 2 should lead{}", c.histories());
    c.deliver_all_among(&[2, 3, 4]);
    assert_eq!(c.applied_upto(2), 0, "schedule: B is not chosen yet (unanimity of {{3,4,5}})");

    // 3. Node 5 speaks; everything is delivered from now on.
    c.run_among(&[2, 3, 4, 5], 500);
    assert!(c.is_leader(2), "node 2 still leads{}", c.histories());
    assert_eq!(
        c.applied_upto(2),
        1,
        "B was accepted by every voting member (3 and 4) 500 ticks ago and is still not chosen{}",
        c.histories()
    );
}
