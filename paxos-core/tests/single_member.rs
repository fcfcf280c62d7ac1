//! Paged phase 1 with a quorum of one: a lone member once recursed per page (stack overflow at ~2k pages
//! on a 2 MiB thread). Kept apart from `regressions.rs` because a stack overflow aborts the
//! whole test binary.

use paxos_core::{Config, MemStorage, Replica, RequestId, Value};

fn rid(client_id: u64, seq: u64) -> RequestId {
    RequestId { client_id, seq }
}

/// Quorum of one: `prepare_from` -> `maybe_become_leader` -> `next_promise_page` ->
/// `prepare_from` recurses once per page. A lone member recovered with `n` accepted records
/// above its applied prefix (e.g. a survivor of a larger cluster restarted alone) and
/// `entries_per_message_max = 1` recurses `n` deep.
#[test]
fn a_single_member_pages_through_thousands_of_recovered_records() {
    for n in [50u64, 4096] {
        let mut storage = MemStorage::bootstrapped(&[1]);
        for slot in 0..n {
            let value = Value::Command { request_id: rid(1, slot + 1), key: [0; 16], payload: b"v".to_vec() };
            storage.accepted.insert(slot, (paxos_core::Ballot::new(1, 2), value));
        }
        storage.promised = paxos_core::Ballot::new(1, 2);
        let mut config = Config::new(1, vec![1]);
        config.entries_per_message_max = 1;
        let mut replica = Replica::recover(config, storage.durable_state(), 7);
        for _ in 0..100 {
            replica.tick();
            let ready = replica.take_ready();
            replica.on_persisted(ready.number);
            // The leader's own votes count once the batch holding them is written.
            if replica.is_leader() && replica.applied_upto() == n {
                break;
            }
        }
        assert!(replica.is_leader(), "n={n}: {:?}", replica.status().role);
        assert_eq!(replica.applied_upto(), n);
    }
}

/// A lone voter's own vote is the whole quorum, and it counts only once the batch holding it
/// is written: nothing is chosen or answered before (a crash would lose the only vote, and the
/// slot could be chosen again with another value). The answer comes with the next Ready, and
/// may leave before that one's write: it rests on no vote of it.
#[test]
fn a_lone_voters_answer_waits_for_the_batch_holding_its_vote() {
    let mut storage = MemStorage::bootstrapped(&[1]);
    let mut replica = leader_alone(&mut storage);
    replica.propose(paxos_core::Proposal::register(42, [0; 16], 0, b"first".to_vec()));
    let ready = replica.take_ready();
    assert!(
        ready.replies.iter().all(|reply| reply.outcome.is_err()) && ready.chosen.is_empty(),
        "chosen before its only vote is written: {ready:?}"
    );
    // A crash now loses the vote, and with it the slot: the recovered node has nothing there.
    let recovered = Replica::recover(Config::new(1, vec![1]), storage.durable_state(), 8);
    assert_eq!(recovered.applied_upto(), replica.applied_upto());
    storage.apply(&ready.persist);
    replica.on_persisted(ready.number);
    let mut next = replica.take_ready();
    assert!(
        next.chosen.iter().any(|(_, value)| value.request_id().is_some()),
        "chosen once written: {next:?}"
    );
    let early = next.take_replies_before_write();
    assert!(early.iter().any(|reply| reply.outcome.is_ok()), "answered once written: {early:?}");
    storage.apply(&next.persist);
    replica.on_persisted(next.number);
}

/// A lone leader, every batch written to `storage` as it goes.
fn leader_alone(storage: &mut MemStorage) -> Replica {
    let mut replica = Replica::recover(Config::new(1, vec![1]), storage.durable_state(), 7);
    for _ in 0..100 {
        replica.tick();
        let ready = replica.take_ready();
        storage.apply(&ready.persist);
        replica.on_persisted(ready.number);
        if replica.is_leader() && ready.is_empty() {
            break;
        }
    }
    assert!(replica.is_leader());
    replica
}

fn add_learner_5() -> paxos_core::MembershipChange {
    paxos_core::MembershipChange::Add { id: 5, address: "h5:1".into(), role: paxos_core::MemberRole::Learner }
}

/// A configuration change on a lone voter is chosen only once the batch holding its vote is
/// written: its answer comes after the write like any other "chosen".
#[test]
fn a_lone_voters_change_is_answered_after_the_write() {
    let mut storage = MemStorage::bootstrapped(&[1]);
    let mut replica = leader_alone(&mut storage);
    let change = rid(77, 1);
    replica.change_membership(change, add_learner_5());
    let mut ready = replica.take_ready();
    let early = ready.take_replies_before_write();
    assert!(
        early.iter().chain(&ready.replies).all(|reply| reply.request_id != change),
        "answered before its vote is durable: {early:?} {:?}",
        ready.replies
    );
    storage.apply(&ready.persist);
    replica.on_persisted(ready.number);
    let ready = replica.take_ready();
    assert!(ready.replies.iter().any(|reply| reply.request_id == change && reply.outcome.is_ok()));
    storage.apply(&ready.persist);
    replica.on_persisted(ready.number);
}

/// A second request for the same change, in the same batch, is refused "already a member":
/// that says the change is done, and a crash before the write would undo it (found by a review
/// of the early answers). The refusal waits for the write too.
#[test]
fn a_refusal_resting_on_a_change_of_this_batch_waits_for_the_write() {
    let mut storage = MemStorage::bootstrapped(&[1]);
    let mut replica = leader_alone(&mut storage);
    replica.change_membership(rid(77, 1), add_learner_5());
    replica.change_membership(rid(77, 2), add_learner_5());
    let mut ready = replica.take_ready();
    let early = ready.take_replies_before_write();
    // A crash now loses the batch.
    let recovered = Replica::recover(Config::new(1, vec![1]), storage.durable_state(), 8);
    assert!(!recovered.membership().contains(5), "schedule: the change is only in the lost batch");
    let told_done =
        early.iter().any(|reply| matches!(reply.outcome, Err(paxos_core::ProposalError::ChangeRefused(_))));
    assert!(
        !told_done,
        "answered that the change is done before the write, and the crash lost it: {early:?}"
    );
}

/// A truncation snapshot carries the effects of every slot below its start (the duplicate
/// table, the configuration). From a lone voter, taken in the batch that chose and cut a slot
/// on the voter's own vote, it must not leave before that batch is written: a crash would let
/// the slot be chosen with another value while the node that installed the snapshot keeps the
/// first one's effects (raised by the review of the early answers).
#[test]
fn a_lone_voters_snapshot_waits_for_the_batch_it_covers() {
    let mut storage = MemStorage::bootstrapped(&[1]);
    let mut replica = leader_alone(&mut storage);
    replica.propose(paxos_core::Proposal::register(42, [0; 16], 0, b"first".to_vec()));
    // The vote is written; the slot is chosen, applied and cut in the batch after.
    let ready = replica.take_ready();
    storage.apply(&ready.persist);
    replica.on_persisted(ready.number);
    let cut = replica.applied_upto();
    replica
        .compact(paxos_core::Compaction { truncate_below: Some(cut), force: true })
        .expect("the slot chosen in this batch is applied, so it may be cut");
    replica.step(paxos_core::Envelope {
        from: 9,
        to: 1,
        incarnation: 9,
        role: Default::default(),
        message: paxos_core::Message::CatchUp { from_slot: 0, request: 1 },
    });
    let ready = replica.take_ready();
    let early = |envelope: &paxos_core::Envelope| {
        matches!(envelope.message, paxos_core::Message::CatchUpTruncated { .. })
    };
    assert!(
        !ready.messages.iter().any(early),
        "a snapshot of unwritten slots left before the write: {:?}",
        ready.messages
    );
    assert!(
        ready.persisted_messages.iter().any(early),
        "schedule: the snapshot answers the catch-up: {:?}",
        ready.persisted_messages
    );
    replica.on_persisted(ready.number);
}
