//! Attacks from the network, replayed against real processes: each is refused or bounded, and
//! the honest workload goes on. (More arrive with authenticated links; see the README.)

use paxos_core::{Ballot, Message};
use paxos_node::connection::Connection;
use paxos_node::wire::{Caller, Frame, Hello, PROTOCOL_VERSION};
use paxos_tests::Cluster;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Speaks as member `claimed` to the node at `addr` (links are not authenticated yet, so any
/// process may claim a member's id) and sends `message`.
async fn send_as_peer(addr: &str, claimed: u64, message: Message) {
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        cluster_id: "paxos".into(),
        caller: Caller::Node(claimed),
    };
    let (connection, _) = Connection::connect(addr, hello, TIMEOUT, TIMEOUT).await.expect("handshake");
    let (mut sink, _stream) = connection.split();
    futures::SinkExt::send(&mut sink, Frame::Peer(message)).await.expect("sent");
}

/// The first attack: one Prepare with round u64::MAX, to two nodes. It used to kill
/// every node within a second (the next election's `round + 1` wrapped), with the bad promise
/// on disk so that they died again at every restart. Now it is rejected and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_at_the_top_of_the_ballot_range_is_rejected() {
    let cluster = Cluster::start(3).await.expect("cluster");
    let client = cluster.client();
    let before = client.propose(b"before".to_vec()).await.expect("chosen before the attack");
    let forged = Message::Prepare { ballot: Ballot::new(u64::MAX, 2), from_slot: 0 };
    for target in [1, 3] {
        send_as_peer(&cluster.addrs[&target], 2, forged.clone()).await;
    }
    paxos_tests::wait_until("the forged Prepares counted", TIMEOUT, || async {
        let mut rejected = 0;
        for target in [1, 3] {
            rejected += cluster.status(target).await?.rejected_messages;
        }
        Ok((rejected >= 2).then_some(()))
    })
    .await
    .expect("rejected");
    // Several election timeouts later every node is still up, no promise went to the top, and
    // the cluster still chooses values.
    let after = client.propose(b"after".to_vec()).await.expect("chosen after the attack");
    assert!(after > before);
    for id in 1..=3 {
        assert!(cluster.is_running(id), "node {id} died: {}", cluster.log(id));
        let status = cluster.status(id).await.expect("status");
        assert!(
            status.ballot.round <= Ballot::ROUND_MAX,
            "node {id} took the forged ballot: {}",
            status.ballot
        );
    }
}
