//! Writes beside replication (issue 28): schedules where a node keeps stepping input while its
//! Readies' writes are under way, then crashes and loses every unreported write. Found by the
//! review of the change (8bb52c0), which led on a ballot not yet written.
//! Harness: `routed/` for the synchronous nodes; `Slow` below holds a node's Readies unwritten.

mod routed;

use paxos_core::{Config, Envelope, NodeId, Ready, Slot, Value};
use routed::*;

/// Readies of one node taken but not yet written (in order).
#[derive(Default)]
struct Slow {
    pending: Vec<Ready>,
}

impl Slow {
    /// Takes `id`'s Ready without writing it: its early `messages` leave now (as the new
    /// driver sends them), the rest waits.
    fn take(&mut self, c: &mut Cluster, id: NodeId) {
        loop {
            let mut ready = c.replica(id).take_ready();
            if ready.is_empty() {
                return;
            }
            let early = std::mem::take(&mut ready.messages);
            let node = c.nodes.get_mut(&id).expect("member");
            node.replies
                .extend(ready.take_replies_before_write().into_iter().map(|r| (r.request_id, r.outcome)));
            for envelope in early {
                queue(c, envelope);
            }
            self.pending.push(ready);
        }
    }

    /// Steps one envelope into `id` without writing anything.
    fn deliver(&mut self, c: &mut Cluster, envelope: Envelope) {
        let id = envelope.to;
        c.replica(id).step(envelope);
        self.take(c, id);
    }

    /// The writes are done, in order: the rest of the contract for each.
    fn complete(&mut self, c: &mut Cluster, id: NodeId) {
        for ready in std::mem::take(&mut self.pending) {
            let persisted = c.nodes.get_mut(&id).expect("member").write_done(ready);
            for envelope in persisted {
                queue(c, envelope);
            }
            self.take(c, id);
        }
    }
}

fn queue(c: &mut Cluster, envelope: Envelope) {
    if c.dead.contains(&envelope.to) || c.cut.contains(&(envelope.from, envelope.to)) {
        return;
    }
    c.links.entry((envelope.from, envelope.to)).or_default().push_back(envelope);
}

fn take_one(c: &mut Cluster, from: NodeId, to: NodeId, kind: Kind) -> Envelope {
    let mut taken = c.take_where(from, to, kind);
    assert!(!taken.is_empty(), "nothing of that kind on {from} -> {to}");
    taken.remove(0)
}

/// Crashes `id`: every write not reported is lost; it restarts from what its disk holds.
fn crash(c: &mut Cluster, slow: &mut Slow, id: NodeId) {
    slow.pending.clear();
    let storage = c.node(id).storage.clone();
    let members: Vec<NodeId> = c.nodes.keys().copied().collect();
    let applied = std::mem::take(&mut c.nodes.get_mut(&id).expect("member").applied);
    c.start(Config::new(id, members), storage);
    // What it applied before the crash stays on record for the agreement check.
    c.nodes.get_mut(&id).expect("member").applied = applied;
}

fn applied_at(c: &Cluster, id: NodeId, slot: Slot) -> Option<Value> {
    c.node(id).applied.iter().find(|(s, _)| *s == slot).map(|(_, v)| v.clone())
}

/// A candidate could LEAD on its peers' promises while its own promise was not yet written
/// (the quorum does not need its own), and its Accepts left at once. A crash then lost its
/// promise, so the restarted node could campaign with THE SAME ballot (its round is the
/// durable promise's plus one), and phase 1 of that second life need not see what the first
/// life put in the slot. Two values ended up accepted in one ballot at one slot: the first
/// life's acceptor, hearing the second life's commit point of that ballot, took its own
/// record as chosen.
///
/// Under the old contract the candidate could not lead before its promise was written (no
/// input was stepped before `on_persisted`), so a ballot that reached phase 2 was durable.
#[test]
fn a_leader_elected_before_its_own_promise_is_written_can_reuse_its_ballot_after_a_crash() {
    let mut c = Cluster::new(3);
    let mut slow = Slow::default();
    // Node 1 campaigns; its promise is taken, not written.
    for _ in 0..1000 {
        c.replica(1).tick();
        slow.take(&mut c, 1);
        if c.node(1).replica.status().role != paxos_core::RoleName::Follower {
            break;
        }
    }
    let first_ballot = c.node(1).replica.status().own_ballot.expect("campaigns");
    for peer in [2, 3] {
        let prepare = take_one(&mut c, 1, peer, is_prepare);
        c.deliver(prepare);
    }
    for peer in [2, 3] {
        let promise = take_one(&mut c, peer, 1, is_promise);
        slow.deliver(&mut c, promise);
    }
    if !c.is_leader(1) {
        // Fixed: a candidate leads only once its own promise (its ballot) is written.
        assert_eq!(c.queued(1, 2, is_accept) + c.queued(1, 3, is_accept), 0);
        slow.complete(&mut c, 1);
        assert!(c.is_leader(1), "leads once its promise is written: {}", c.histories());
        return;
    }
    // A client value; its Accept reaches node 2 only.
    c.replica(1).propose(paxos_core::Proposal::command(rid(1, 1), [0; 16], b"A".to_vec()));
    slow.take(&mut c, 1);
    let accept = take_one(&mut c, 1, 2, is_accept);
    c.deliver(accept);
    c.drop_all(1, 3);
    c.drop_all(2, 1);
    // Node 1 crashes before any of its writes is done.
    crash(&mut c, &mut slow, 1);
    c.campaign(1);
    let second_ballot = c.node(1).replica.status().own_ballot.expect("campaigns");
    eprintln!("first life's ballot {first_ballot}, second life's {second_ballot}");
    // The second life asks node 3 only (node 2 is slow to answer).
    c.drop_all(1, 2);
    c.deliver_all_between(1, 3);
    assert!(c.is_leader(1), "{}", c.histories());
    c.propose(1, rid(2, 1), "B");
    c.deliver_all_between(1, 3);
    assert!(applied_at(&c, 1, 0).is_some(), "slot 0 chosen by 1 and 3: {}", c.histories());
    // Node 2 hears the second life.
    c.run(3);
    eprintln!("{}", c.histories());
    c.assert_agreement();
}

/// The same ballot reuse with the pre-vote ON (as the node always runs), through a leadership
/// transfer: `TimeoutNow` starts a candidacy without a pre-vote, so nothing tells the restarted
/// node of the ballot its first life led with. Five voters; node 2 leads in ballot 1.2 and is
/// cut off from 3, 4 and 5, which (not hearing it) elect node 1 in ballot 2.1 on their three
/// promises while node 1's own promise is still being written. Node 1 sends Accept(A) to node
/// 3, crashes, restarts with promise 1.2, follows node 2 (still leading: it heard its quorum
/// recently), and node 2 transfers leadership to it: ballot 2.1 again. The second life chooses
/// B at slot 0 with 1, 2, 4, 5; node 3, hearing the commit point of ballot 2.1, applies A.
#[test]
fn with_the_pre_vote_on_a_transfer_lets_a_restarted_leader_reuse_its_lost_ballot() {
    let members: Vec<NodeId> = (1..=5).collect();
    let adjust = |config: &mut Config| {
        config.pre_vote = true;
        if config.id > 2 {
            config.election_timeout_ticks = 40;
        }
    };
    let mut c = Cluster::build(5, sessions().into_iter().map(|(r, (s, _))| (r, s)).collect(), adjust);
    let mut slow = Slow::default();
    // Phase A: node 2 leads ballot 1.2, every member follows it.
    for peer in 2..=5 {
        c.cut(1, peer);
    }
    for _ in 0..200 {
        if c.is_leader(2) {
            break;
        }
        c.run_among(&[2, 3, 4, 5], 1);
    }
    assert!(c.is_leader(2), "{}", c.histories());
    for peer in 2..=5 {
        c.heal(1, peer);
    }
    c.run(4);
    assert!(c.is_leader(2), "{}", c.histories());
    let ballot_a = c.node(2).replica.status().own_ballot.expect("leads");
    // Phase B: node 2 is cut off from everyone; node 1 writes slowly.
    for peer in [1, 3, 4, 5] {
        c.cut(2, peer);
    }
    let group = [1, 3, 4, 5];
    for _ in 0..400 {
        if c.is_leader(1) {
            break;
        }
        if c.node(1).replica.status().role == paxos_core::RoleName::Follower {
            slow.complete(&mut c, 1);
        }
        for id in [3, 4, 5] {
            c.tick(id);
        }
        c.replica(1).tick();
        slow.take(&mut c, 1);
        loop {
            let link = c
                .links
                .iter()
                .find(|((from, to), q)| !q.is_empty() && group.contains(from) && group.contains(to))
                .map(|(link, _)| *link);
            let Some((from, to)) = link else { break };
            let envelope = c.links.get_mut(&(from, to)).and_then(|q| q.pop_front()).expect("non-empty");
            if to == 1 {
                slow.deliver(&mut c, envelope);
            } else {
                c.deliver(envelope);
            }
        }
    }
    if !c.is_leader(1) {
        // Fixed: a candidate leads only once its own promise (its ballot) is written.
        assert!(slow
            .pending
            .iter()
            .any(|r| r.persist.iter().any(|op| matches!(op, paxos_core::PersistOp::Promise(_)))));
        return;
    }
    let first_life = c.node(1).replica.status().own_ballot.expect("leads");
    assert!(c.node(1).storage.promised < first_life, "its promise is not written yet");
    // Its Accept of A reaches node 3 only.
    c.replica(1).propose(paxos_core::Proposal::command(rid(1, 1), [0; 16], b"A".to_vec()));
    slow.take(&mut c, 1);
    let accept = take_one(&mut c, 1, 3, is_accept);
    c.deliver(accept);
    // Node 1 crashes before any write is done.
    slow.pending.clear();
    let storage = c.node(1).storage.clone();
    let mut config = Config::new(1, members.clone());
    config.pre_vote = true;
    c.nodes.get_mut(&1).expect("member").replica =
        paxos_core::Replica::recover(config, storage.durable_state(), 7);
    c.links.retain(|(from, to), _| *from != 1 && *to != 1);
    // Phase C: node 2 (still leading; it heard its quorum recently) reaches node 1 again.
    c.heal(1, 2);
    for _ in 0..4 {
        c.tick(2);
        c.deliver_all_between(1, 2);
    }
    assert!(c.is_leader(2), "{}", c.histories());
    let started = c.replica(2).transfer_leadership(1);
    assert!(started.is_ok(), "{started:?}");
    c.flush(2);
    for _ in 0..4 {
        c.deliver_all_between(1, 2);
        if c.node(1).replica.status().own_ballot.is_some() {
            break;
        }
        c.tick(2);
    }
    let second_life = c.node(1).replica.status().own_ballot.expect("campaigns after TimeoutNow");
    eprintln!("node 2 led {ballot_a}; node 1's first life {first_life}, second life {second_life}");
    // Node 3 is slow to answer the second life.
    c.drop_all(1, 3);
    c.deliver_all_among(&[1, 2, 4, 5]);
    assert!(c.is_leader(1), "{}", c.histories());
    c.propose(1, rid(2, 1), "B");
    c.deliver_all_among(&[1, 2, 4, 5]);
    assert!(applied_at(&c, 1, 0).is_some(), "{}", c.histories());
    // Node 3 hears the second life's commit point.
    for _ in 0..3 {
        c.tick(1);
        c.deliver_all_among(&[1, 3, 4, 5]);
    }
    eprintln!("{}", c.histories());
    c.assert_agreement();
}
