//! What a leader that steps down owes its operator, routed by hand (found by the review of the
//! leader-transfer change). Harness: `routed/`.

mod routed;

use paxos_core::MembershipChange;
use routed::*;

/// A configuration change waiting for the window to drain when the leader steps down was
/// dropped without an answer: the daemon's request hung for ever (and its pending count
/// leaked). Now it is answered NotLeader, like the proposals the leader was waiting on.
#[test]
fn a_change_waiting_for_the_window_is_answered_when_the_leader_steps_down() {
    let mut c = Cluster::new(3);
    c.campaign(1);
    c.deliver_everything();
    c.run(3);
    assert!(c.is_leader(1), "schedule: node 1 leads{}", c.histories());
    c.propose(1, rid(1, 1), "in flight");
    c.drop_where(1, 2, is_accept);
    c.drop_where(1, 3, is_accept);
    c.change(1, 7, MembershipChange::Remove { id: 3 });
    assert_eq!(c.reply(1, rid(u64::MAX - 1, 7)), None, "schedule: the change waits for the window");
    c.campaign(2);
    c.deliver_where(2, 1, is_prepare);
    assert!(!c.is_leader(1), "schedule: node 1 stepped down{}", c.histories());
    assert!(c.reply(1, rid(1, 1)).is_some(), "the proposal in flight is answered (NotLeader)");
    c.run(30);
    assert!(
        matches!(c.reply(1, rid(u64::MAX - 1, 7)), Some(Err(paxos_core::ProposalError::NotLeader { .. }))),
        "the configuration change was never answered{}",
        c.histories()
    );
}
