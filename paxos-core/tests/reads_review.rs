//! Review schedules against the read index (read_index.rs).

mod routed;

use paxos_core::{MemberRole, MembershipChange, Message};
use routed::*;

/// Three voters. Node 1 leads, chooses a configuration entry K (add learner 4) at slot k with
/// node 2, applies it, re-campaigns in the new configuration (as settle_membership does), and
/// chooses w at slot k+1 with node 2: the client is answered Ok(k+1). Node 2 heard no commit
/// for k (its catch-up is lost). Node 1 is cut off.
/// Node 3 (never heard of K) campaigns with node 2: node 2 reports K (ballot 1) and w at k+1.
/// phase_one_values stops at the configuration entry: node 3 leads with next_slot = k+1.
/// A read asked of node 3 now gets read_upto = k+1, confirmed by node 2's ack, and is served
/// once node 3 applied K: Ok(k+1), although w at slot k+1 was acknowledged before the read.
#[test]
fn a_read_index_taken_by_a_leader_whose_phase_one_stopped_at_a_configuration_entry_misses_a_chosen_slot() {
    let mut c = Cluster::new(3);
    c.campaign(1);
    c.deliver_everything();
    assert!(c.is_leader(1), "{}", c.histories());
    c.cut(1, 3);
    let k = c.applied_upto(1);
    c.change(1, 1, MembershipChange::Add { id: 4, address: "n4:1".into(), role: MemberRole::Learner });
    // Node 2 accepts K; node 1 learns it chosen, applies it and campaigns again.
    c.deliver_where(1, 2, is_accept);
    c.deliver_where(2, 1, is_accepted);
    assert_eq!(c.applied_upto(1), k + 1, "schedule: node 1 applied K{}", c.histories());
    // Node 1's new candidacy and leadership with node 2; node 2's catch-up is lost.
    for _ in 0..50 {
        c.drop_where(2, 1, is_catch_up);
        c.drop_where(1, 2, is_catch_up_entries);
        c.drop_where(1, 2, is_heartbeat);
        if c.links.get(&(1, 2)).is_none_or(|q| q.is_empty())
            && c.links.get(&(2, 1)).is_none_or(|q| q.is_empty())
        {
            break;
        }
        if let Some(e) = c.links.get_mut(&(1, 2)).and_then(|q| q.pop_front()) {
            c.deliver(e);
        }
        if let Some(e) = c.links.get_mut(&(2, 1)).and_then(|q| q.pop_front()) {
            c.deliver(e);
        }
    }
    if !c.is_leader(1) {
        c.campaign(1);
        c.deliver_where(1, 2, is_prepare);
        c.deliver_where(2, 1, is_promise);
    }
    assert!(c.is_leader(1), "schedule: node 1 leads again{}", c.histories());
    let w = rid(1, 1);
    c.propose(1, w, "w");
    c.deliver_where(1, 2, is_accept);
    c.deliver_where(2, 1, is_accepted);
    assert_eq!(c.reply(1, w), Some(&Ok(k + 1)), "schedule: w chosen at k+1{}", c.histories());
    assert_eq!(c.applied_upto(2), 0, "schedule: node 2 applied nothing{}", c.histories());
    c.cut(1, 2);

    // Node 3 campaigns with node 2.
    c.campaign(3);
    c.deliver_where(3, 2, is_prepare);
    c.deliver_where(2, 3, is_promise);
    assert!(c.is_leader(3), "schedule: node 3 leads{}", c.histories());

    // The read, asked after w was acknowledged.
    c.read(3, 1);
    c.deliver_where(3, 2, is_heartbeat);
    c.deliver_where(2, 3, is_heartbeat_ack);
    // Deliver one message at a time; note node 3's applied prefix when the read is answered.
    let mut applied_when_answered = None;
    for _ in 0..1000 {
        let next = [(2u64, 3u64), (3, 2)]
            .into_iter()
            .find_map(|link| c.links.get_mut(&link).and_then(|q| q.pop_front()));
        let Some(e) = next else { break };
        c.deliver(e);
        if applied_when_answered.is_none() && c.read_answer(3, 1).is_some() {
            applied_when_answered = Some(c.applied_upto(3));
        }
    }
    eprintln!("node 3 had applied up to {applied_when_answered:?} when it answered the read");
    eprintln!("read answer: {:?}{}", c.read_answer(3, 1), c.histories());
    if let Some(Ok(read_upto)) = c.read_answer(3, 1) {
        assert!(
            *read_upto > k + 1,
            "node 3 served a read up to {read_upto}, but w was acknowledged at slot {} before the read{}",
            k + 1,
            c.histories()
        );
    }
}

/// Three voters; node 1 runs with the pre-vote (and so leader stickiness) on, as in production;
/// 2 and 3 without (which only makes them promise more readily).
///
/// 1. Node 1 leads b1 and proposes K (add learner 4) at slot k: node 2 accepts it, its
///    Accepted is HELD; node 3 hears nothing more from node 1.
/// 2. Node 3 campaigns with node 2 (its Prepares also reach node 1, which, leading, ignores
///    them but notes their rounds); its phase 1 stops at K, it chooses K, applies it, campaigns
///    again and chooses w at k+1: the client is answered Ok(k+1).
/// 3. A read reaches node 1 (it still leads b1 in its view): read_upto = k+1, round r; its
///    heartbeats are lost.
/// 4. The held Accepted reaches node 1: K is chosen in b1, node 1 applies it and
///    `settle_membership` makes it a candidate (become_candidate: the confirming read is NOT
///    failed, unlike in step_down). Its ballot is above node 3's (it saw node 3's rounds).
///    Node 2 promises (reporting w), node 1 leads b2 and heartbeats round r again.
/// 5. Node 2 acknowledges round r in b2: the read of step 3 is confirmed with read_upto = k+1,
///    though w, acknowledged before it, sits at k+1.
#[test]
fn a_read_confirming_when_its_leader_campaigns_again_is_confirmed_with_its_stale_index() {
    let sessions = sessions().into_iter().map(|(r, (s, _))| (r, s)).collect();
    let mut c = Cluster::build(3, sessions, |config| config.pre_vote = config.id == 1);

    // Node 1 leads b1 (through its pre-vote).
    c.tick_until_sent(1, 2, is_pre_vote);
    for peer in [2, 3] {
        c.deliver_where(1, peer, is_pre_vote);
        c.deliver_where(peer, 1, is_pre_vote_reply);
    }
    c.deliver_everything();
    assert!(c.is_leader(1), "schedule: node 1 leads{}", c.histories());
    let k = c.applied_upto(1);

    // 1. K at slot k: node 2 accepts, its Accepted is held.
    c.cut(1, 3);
    c.change(1, 1, MembershipChange::Add { id: 4, address: "n4:1".into(), role: MemberRole::Learner });
    c.deliver_where(1, 2, is_accept);
    let held = c.take_where(2, 1, is_accepted);
    assert_eq!(held.len(), 1);
    c.cut(1, 2);
    c.heal(1, 2);
    c.heal(1, 3);

    // 2. Node 3 leads with node 2, chooses K, campaigns again, chooses w at k+1.
    c.campaign(3);
    for _ in 0..100 {
        // Node 1 sees node 3's Prepares (and ignores them, leading); nothing else of 3's
        // leadership reaches node 1, and nothing of node 1's reaches 2 or 3.
        c.deliver_where(3, 1, is_prepare);
        c.drop_all(3, 1);
        c.drop_all(1, 3);
        c.drop_all(1, 2);
        c.drop_all(2, 1);
        let next =
            [(2u64, 3u64), (3, 2)].into_iter().find_map(|l| c.links.get_mut(&l).and_then(|q| q.pop_front()));
        match next {
            Some(e) => c.deliver(e),
            None => break,
        }
    }
    assert!(c.is_leader(3), "schedule: node 3 leads{}", c.histories());
    assert!(c.is_leader(1), "schedule: node 1 still leads in its view{}", c.histories());
    let w = rid(1, 1);
    c.propose(3, w, "w");
    // Node 2 votes for w but never hears that it is chosen.
    c.deliver_where(3, 2, is_accept);
    c.deliver_where(2, 3, is_accepted);
    c.drop_all(3, 2);
    c.drop_all(3, 1);
    assert_eq!(c.applied_upto(2), k + 1, "schedule: node 2 has not applied w{}", c.histories());
    assert_eq!(c.reply(3, w), Some(&Ok(k + 1)), "schedule: w chosen at k+1{}", c.histories());
    let ballot_w = c.node(3).replica.status().own_ballot.expect("leads");
    assert!(c.is_leader(1), "schedule: node 1 still leads in its view{}", c.histories());
    assert!(c.node(1).replica.status().promised < ballot_w);

    // 3. The read reaches node 1; its heartbeats are lost.
    c.read(1, 1);
    c.drop_all(1, 2);
    c.drop_all(1, 3);

    // 4. The held Accepted: node 1 applies K and campaigns again.
    for e in held {
        c.deliver(e);
    }
    assert_eq!(c.applied_upto(1), k + 1, "schedule: node 1 applied K{}", c.histories());
    let own = c.node(1).replica.status().own_ballot;
    eprintln!(
        "node 1 after applying K: {:?} ballot {own:?}, node 3's ballot {ballot_w}",
        c.node(1).replica.status().role
    );
    c.drop_all(1, 3);
    c.drop_all(3, 2);
    c.deliver_where(1, 2, is_prepare);
    c.deliver_where(2, 1, is_promise);
    assert!(c.is_leader(1), "schedule: node 1 leads b2{}", c.histories());

    // 5. Node 2 acknowledges node 1's heartbeat in b2.
    c.deliver_where(1, 2, is_heartbeat);
    c.deliver_where(2, 1, is_heartbeat_ack);
    let applied_when_answered = c.applied_upto(1);
    eprintln!(
        "read answer: {:?}, node 1 applied up to {applied_when_answered}{}",
        c.read_answer(1, 1),
        c.histories()
    );
    if let Some(Ok(read_upto)) = c.read_answer(1, 1) {
        assert!(
            *read_upto > k + 1,
            "node 1 served a read up to {read_upto}, but w was acknowledged at slot {} before the read{}",
            k + 1,
            c.histories()
        );
    }
}

/// A read's number is all that ties a ReadIndexReply to the read: after a restart, the caller
/// numbers reads from 1 again (the driver's `next_read` starts at 0 in every process), and a
/// reply to the previous process's read 1, delivered late, answers the new read 1 with an
/// index taken before it was asked.
#[test]
fn a_late_read_index_reply_from_before_a_restart_answers_a_new_read_with_the_same_number() {
    let mut c = Cluster::new(3);
    c.campaign(1);
    c.deliver_everything();
    assert!(c.is_leader(1));

    // Read 1 at node 2 (process 1): confirmed, its reply is held.
    c.read(2, 1);
    c.deliver_where(2, 1, |m| matches!(m, Message::ReadIndex { .. }));
    c.deliver_all_between(1, 3);
    c.deliver_where(1, 2, is_heartbeat);
    c.deliver_where(2, 1, is_heartbeat_ack);
    let held = c.take_where(1, 2, is_read_index_reply);
    assert_eq!(held.len(), 1, "schedule: the leader answered read 1{}", c.histories());
    let Message::ReadIndexReply { outcome: Ok(old_index), .. } = held[0].message.clone() else { panic!() };

    // Node 2 restarts (a new process).
    let node = c.nodes.get_mut(&2).expect("member");
    let config = node.replica.config().clone();
    node.replica = paxos_core::Replica::recover(config, node.storage.durable_state(), 9002);
    c.links.retain(|(from, to), _| *from != 2 && *to != 2);

    // w is chosen and acknowledged (with node 3).
    let w = rid(1, 1);
    c.propose(1, w, "w");
    c.deliver_all_between(1, 3);
    let Some(Ok(w_slot)) = c.reply(1, w).cloned() else { panic!("schedule: w chosen") };
    assert!(w_slot >= old_index);

    // Node 2 hears the leader, and a client asks it for read 1 (the new process's first).
    c.tick_until_sent(1, 2, is_heartbeat);
    c.deliver_where(1, 2, is_heartbeat);
    c.read(2, 1);
    // The old reply arrives before the new one.
    for e in held {
        c.deliver(e);
    }
    eprintln!("read answer {:?}, node 2 applied {}", c.read_answer(2, 1), c.applied_upto(2));
    if let Some(Ok(read_upto)) = c.read_answer(2, 1) {
        assert!(
            *read_upto > w_slot,
            "node 2 served read 1 up to {read_upto}, without w at {w_slot}{}",
            c.histories()
        );
    }
}
