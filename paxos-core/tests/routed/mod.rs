//! A cluster routed by hand, message by message, for the regression tests (`regressions.rs`,
//! `membership_regressions.rs`).
//!
//! It routes only envelopes the replicas themselves produced: a test picks them by kind
//! (`matches!(m, Message::Prepare { .. })`) and by link (from, to), and delivers, holds, drops
//! or reorders them. Elections happen only through ticks of the node that should campaign.
//! Nothing here builds a protocol message by hand, so the tests survive changes to the
//! messages' contents.

#![allow(dead_code)] // each test file uses part of it

use paxos_core::{
    Config, Envelope, MemStorage, MembershipChange, Message, NodeId, Proposal, ProposalError, Replica,
    RequestId, RoleName, Slot, Value,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub fn any(_: &Message) -> bool {
    true
}

/// Sessions 1, 2 and 3 open (as if registered before slot 0), so schedules' slot numbers hold
/// only their own values.
/// Sessions 1 to 3, open with key zero (what every proposal of these schedules carries).
pub fn sessions() -> BTreeMap<RequestId, (Slot, paxos_core::Digest)> {
    (1..=3).map(|client| (rid(client, 0), (client, [0; 16]))).collect()
}

pub type Kind = fn(&Message) -> bool;

pub fn is_prepare(m: &Message) -> bool {
    matches!(m, Message::Prepare { .. })
}
pub fn is_promise(m: &Message) -> bool {
    matches!(m, Message::Promise { .. })
}
pub fn is_nack(m: &Message) -> bool {
    matches!(m, Message::Nack { .. })
}
pub fn is_accepted(m: &Message) -> bool {
    matches!(m, Message::Accepted { .. })
}
pub fn is_accept(m: &Message) -> bool {
    matches!(m, Message::Accept { .. })
}
pub fn is_heartbeat(m: &Message) -> bool {
    matches!(m, Message::Heartbeat { .. })
}
pub fn is_catch_up(m: &Message) -> bool {
    matches!(m, Message::CatchUp { .. })
}
pub fn is_catch_up_entries(m: &Message) -> bool {
    matches!(m, Message::CatchUpEntries { .. })
}
pub fn is_catch_up_truncated(m: &Message) -> bool {
    matches!(m, Message::CatchUpTruncated { .. })
}
pub fn is_heartbeat_ack(m: &Message) -> bool {
    matches!(m, Message::HeartbeatAck { .. })
}
pub fn is_pre_vote(m: &Message) -> bool {
    matches!(m, Message::PreVote { .. })
}
pub fn is_pre_vote_reply(m: &Message) -> bool {
    matches!(m, Message::PreVoteReply { .. })
}
pub fn is_read_index_reply(m: &Message) -> bool {
    matches!(m, Message::ReadIndexReply { .. })
}

pub struct Node {
    pub replica: Replica,
    pub storage: MemStorage,
    /// Every `(slot, value)` this node applied, in order (`Ready::chosen`).
    pub applied: Vec<(Slot, Value)>,
    /// Every answer to a local proposal (`Ready::replies`).
    pub replies: Vec<(RequestId, Result<Slot, ProposalError>)>,
    /// Every answer to a local read (`Ready::reads`): (request, outcome).
    pub reads: Vec<(u64, Result<Slot, ProposalError>)>,
}

impl Node {
    /// Ready `ready` is written: persist it, report it, record applied slots, replies and
    /// reads, serve its history reads; returns the messages that waited for the write.
    pub fn write_done(&mut self, ready: paxos_core::Ready) -> Vec<paxos_core::Envelope> {
        self.storage.apply(&ready.persist);
        self.replica.on_persisted(ready.number);
        self.applied.extend(ready.chosen);
        self.replies.extend(ready.replies.into_iter().map(|r| (r.request_id, r.outcome)));
        self.reads.extend(ready.reads.into_iter().map(|r| (r.request, r.outcome)));
        for read in &ready.history_reads {
            let entries =
                self.storage.read_history(read.from_slot, read.upto_slot, read.entries_max, read.bytes_max);
            self.replica.serve_history_read(read, entries);
        }
        ready.persisted_messages
    }
}

/// See `Cluster::start` for why the pre-vote is off in these schedules.
pub struct Cluster {
    pub nodes: BTreeMap<NodeId, Node>,
    /// Messages sent and not yet delivered, per link (from, to), in sending order.
    pub links: BTreeMap<(NodeId, NodeId), VecDeque<Envelope>>,
    /// Links that lose everything sent on them.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Crashed for good: never ticked, everything to or from them is lost.
    pub dead: BTreeSet<NodeId>,
    pub next_client_id: u64,
}

impl Cluster {
    /// A cluster whose duplicate table already holds sessions 1, 2 and 3 (as if registered
    /// before the schedule began), so the schedules' slot numbers hold only their own values.
    pub fn new(size: u64) -> Self {
        Self::build(size, sessions().into_iter().map(|(r, (s, _))| (r, s)).collect(), |_| {})
    }

    pub fn with_config(size: u64, adjust: impl Fn(&mut Config)) -> Self {
        Self::build(size, Vec::new(), adjust)
    }

    pub fn build(size: u64, sessions: Vec<(RequestId, Slot)>, adjust: impl Fn(&mut Config)) -> Self {
        let members: Vec<NodeId> = (1..=size).collect();
        let nodes = members
            .iter()
            .map(|id| {
                let mut config = Config::new(*id, members.clone());
                config.pre_vote = false;
                adjust(&mut config);
                let storage = MemStorage {
                    requests: sessions
                        .iter()
                        .map(|(request_id, slot)| (*request_id, (*slot, [0; 16])))
                        .collect(),
                    ..MemStorage::bootstrapped(&members)
                };
                let node = Node {
                    replica: Replica::recover(config, storage.durable_state(), 1000 + id),
                    storage,
                    applied: Vec::new(),
                    replies: Vec::new(),
                    reads: Vec::new(),
                };
                (*id, node)
            })
            .collect();
        Cluster {
            nodes,
            links: BTreeMap::new(),
            cut: BTreeSet::new(),
            dead: BTreeSet::new(),
            next_client_id: 100,
        }
    }

    /// A cluster with no node yet: tests `start` each node with its own configuration and disk
    /// (joining nodes, wiped nodes, nodes of a cluster that bootstraps through the log).
    pub fn empty() -> Self {
        Cluster {
            nodes: BTreeMap::new(),
            links: BTreeMap::new(),
            cut: BTreeSet::new(),
            dead: BTreeSet::new(),
            next_client_id: 100,
        }
    }

    /// Adds (or replaces, e.g. after a wipe or a crash) node `config.id`, recovered from
    /// `storage`; messages on its links are lost.
    ///
    /// The pre-vote and leader stickiness are off here (see `Config::pre_vote`): time passes
    /// only for the nodes a schedule ticks, so a follower would never stop hearing a leader the
    /// schedule deposes. Stickiness only withholds promises and a pre-vote changes nothing, so
    /// the schedules without them include every schedule with them: safety shown here holds
    /// with them on (their own tests are in `election.rs` and the simulation).
    pub fn start(&mut self, mut config: Config, mut storage: MemStorage) {
        config.pre_vote = false;
        let id = config.id;
        // As a driver does: a directory keeps the role it was first started with.
        storage.role.get_or_insert(config.role);
        let replica = Replica::recover(config, storage.durable_state(), 1000 + id);
        self.links.retain(|(from, to), _| *from != id && *to != id);
        self.dead.remove(&id);
        self.nodes.insert(
            id,
            Node { replica, storage, applied: Vec::new(), replies: Vec::new(), reads: Vec::new() },
        );
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[&id]
    }

    pub fn replica(&mut self, id: NodeId) -> &mut Replica {
        &mut self.nodes.get_mut(&id).expect("member").replica
    }

    pub fn is_leader(&self, id: NodeId) -> bool {
        self.node(id).replica.is_leader()
    }

    pub fn applied_upto(&self, id: NodeId) -> Slot {
        self.node(id).replica.applied_upto()
    }

    /// Does what a driver does with a Ready, until the replica has nothing more: persist, record
    /// applied slots and replies, serve history reads, and queue outgoing messages per link.
    pub fn flush(&mut self, id: NodeId) {
        loop {
            let node = self.nodes.get_mut(&id).expect("member");
            let ready = node.replica.take_ready();
            if ready.is_empty() {
                return;
            }
            let mut ready = ready;
            let early = std::mem::take(&mut ready.messages);
            let persisted = node.write_done(ready);
            for envelope in early.into_iter().chain(persisted) {
                let link = (envelope.from, envelope.to);
                if self.cut.contains(&link)
                    || self.dead.contains(&envelope.from)
                    || self.dead.contains(&envelope.to)
                    || !self.nodes.contains_key(&envelope.to)
                {
                    continue;
                }
                self.links.entry(link).or_default().push_back(envelope);
            }
        }
    }

    pub fn tick(&mut self, id: NodeId) {
        assert!(!self.dead.contains(&id), "node {id} is dead");
        self.replica(id).tick();
        self.flush(id);
    }

    /// Ticks `id` alone until it stands for election (its election timer fires).
    pub fn campaign(&mut self, id: NodeId) {
        for _ in 0..1000 {
            self.tick(id);
            if self.node(id).replica.status().role != RoleName::Follower {
                return;
            }
        }
        panic!("node {id} never campaigned");
    }

    /// Ticks `id` alone until a message of `kind` waits on the link `id -> to`.
    pub fn tick_until_sent(&mut self, id: NodeId, to: NodeId, kind: Kind) {
        for _ in 0..1000 {
            if self.queued(id, to, kind) > 0 {
                return;
            }
            self.tick(id);
        }
        panic!("node {id} never sent the expected message to {to}");
    }

    pub fn propose(&mut self, id: NodeId, request_id: RequestId, payload: &str) {
        self.replica(id).propose(Proposal::command(request_id, [0; 16], payload.as_bytes().to_vec()));
        self.flush(id);
    }

    /// An operator's configuration change, asked of `id` (answered in `replies`).
    pub fn change(&mut self, id: NodeId, seq: u64, change: MembershipChange) {
        self.replica(id).change_membership(rid(u64::MAX - 1, seq), change);
        self.flush(id);
    }

    /// A client asks `id` for a linearizable read numbered `request` (answered in `reads`).
    pub fn read(&mut self, id: NodeId, request: u64) {
        self.replica(id).read(request);
        self.flush(id);
    }

    /// The answer `node` gave to read `request`, if any.
    pub fn read_answer(&self, node: NodeId, request: u64) -> Option<&Result<Slot, ProposalError>> {
        self.node(node).reads.iter().find(|(r, _)| *r == request).map(|(_, outcome)| outcome)
    }

    pub fn queued(&self, from: NodeId, to: NodeId, kind: Kind) -> usize {
        self.links.get(&(from, to)).map_or(0, |q| q.iter().filter(|e| kind(&e.message)).count())
    }

    /// Hands one envelope to its receiver (lost if either end is dead).
    pub fn deliver(&mut self, envelope: Envelope) {
        if self.dead.contains(&envelope.from) || self.dead.contains(&envelope.to) {
            return;
        }
        let to = envelope.to;
        self.replica(to).step(envelope);
        self.flush(to);
    }

    /// Removes the messages of `kind` queued on `from -> to` now, without delivering them.
    pub fn take_where(&mut self, from: NodeId, to: NodeId, kind: Kind) -> Vec<Envelope> {
        let Some(queue) = self.links.get_mut(&(from, to)) else {
            return Vec::new();
        };
        let (taken, kept): (Vec<Envelope>, Vec<Envelope>) = queue.drain(..).partition(|e| kind(&e.message));
        queue.extend(kept);
        taken
    }

    /// Delivers, in order, the messages of `kind` queued on `from -> to` now (others stay).
    pub fn deliver_where(&mut self, from: NodeId, to: NodeId, kind: Kind) -> usize {
        let taken = self.take_where(from, to, kind);
        let count = taken.len();
        for envelope in taken {
            self.deliver(envelope);
        }
        count
    }

    pub fn drop_where(&mut self, from: NodeId, to: NodeId, kind: Kind) {
        self.take_where(from, to, kind);
    }

    pub fn drop_all(&mut self, from: NodeId, to: NodeId) {
        self.links.remove(&(from, to));
    }

    /// Delivers everything on `from -> to`, including what arrives there meanwhile.
    pub fn deliver_all(&mut self, from: NodeId, to: NodeId) {
        while let Some(envelope) = self.links.get_mut(&(from, to)).and_then(VecDeque::pop_front) {
            self.deliver(envelope);
        }
    }

    /// Delivers everything between `a` and `b`, both ways, until both links are empty.
    pub fn deliver_all_between(&mut self, a: NodeId, b: NodeId) {
        self.deliver_all_among(&[a, b]);
    }

    /// Delivers everything on every link inside `group` until they are all empty.
    pub fn deliver_all_among(&mut self, group: &[NodeId]) {
        for _ in 0..1_000_000 {
            let link = self
                .links
                .iter()
                .find(|((from, to), q)| !q.is_empty() && group.contains(from) && group.contains(to))
                .map(|(link, _)| *link);
            let Some((from, to)) = link else {
                return;
            };
            let envelope = self.links.get_mut(&(from, to)).and_then(VecDeque::pop_front).expect("non-empty");
            self.deliver(envelope);
        }
        panic!("messages among {group:?} never stopped");
    }

    pub fn deliver_everything(&mut self) {
        let all: Vec<NodeId> = self.nodes.keys().copied().collect();
        self.deliver_all_among(&all);
    }

    /// Loses everything between `a` and `b`, both ways, from now until `heal`.
    pub fn cut(&mut self, a: NodeId, b: NodeId) {
        for link in [(a, b), (b, a)] {
            self.cut.insert(link);
            self.links.remove(&link);
        }
    }

    pub fn heal(&mut self, a: NodeId, b: NodeId) {
        self.cut.remove(&(a, b));
        self.cut.remove(&(b, a));
    }

    /// `id` crashes for good: it is never ticked again and all its traffic is lost.
    pub fn kill(&mut self, id: NodeId) {
        self.dead.insert(id);
        self.links.retain(|(from, to), _| *from != id && *to != id);
    }

    /// Ticks every live node `ticks` times, delivering every message after each round.
    pub fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            let live: Vec<NodeId> = self.nodes.keys().copied().filter(|id| !self.dead.contains(id)).collect();
            for id in live {
                self.tick(id);
            }
            self.deliver_everything();
        }
    }

    /// Ticks every node of `group` once per round and delivers everything inside `group`.
    pub fn run_among(&mut self, group: &[NodeId], ticks: u64) {
        for _ in 0..ticks {
            for id in group {
                self.tick(*id);
            }
            self.deliver_all_among(group);
        }
    }

    pub fn leader_among(&self, group: &[NodeId]) -> Option<NodeId> {
        group.iter().copied().find(|id| self.is_leader(*id))
    }

    /// The last answer `node` gave to a local proposal of `request_id`.
    pub fn reply(&self, node: NodeId, request_id: RequestId) -> Option<&Result<Slot, ProposalError>> {
        self.node(node).replies.iter().rev().find(|(r, _)| *r == request_id).map(|(_, outcome)| outcome)
    }

    /// Agreement: no two nodes (nor one node twice) applied different values at one slot.
    pub fn assert_agreement(&self) {
        let mut first: BTreeMap<Slot, (NodeId, &Value)> = BTreeMap::new();
        for (id, node) in &self.nodes {
            for (slot, value) in &node.applied {
                match first.get(slot) {
                    Some((other, earlier)) if *earlier != value => panic!(
                        "agreement violated at slot {slot}: node {other} applied {earlier:?}, node {id} applied {value:?}{}",
                        self.histories()
                    ),
                    Some(_) => {}
                    None => {
                        first.insert(*slot, (*id, value));
                    }
                }
            }
        }
    }

    pub fn histories(&self) -> String {
        self.nodes
            .iter()
            .map(|(id, node)| {
                let status = node.replica.status();
                format!(
                    "\n  node {id}: {:?} promised {} applied_upto {} voters {:?} {} applied {:?}",
                    status.role,
                    status.promised,
                    status.applied_upto,
                    status.membership.voting().collect::<Vec<_>>(),
                    node.replica.debug_summary(),
                    node.applied
                )
            })
            .collect()
    }
}

pub fn rid(client_id: u64, seq: u64) -> RequestId {
    RequestId { client_id, seq }
}
