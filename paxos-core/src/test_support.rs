//! Helpers for the unit tests of the protocol rules: a tiny, lossless, in-order cluster.

use crate::{Config, Envelope, MemStorage, Message, Proposal, Ready, Replica, RequestId};
use std::collections::{BTreeMap, VecDeque};

pub(crate) fn replica(id: u64, members: &[u64]) -> Replica {
    // A bound cluster, as if its bootstrap were done: the rules under test come after it.
    Replica::recover(Config::new(id, members.to_vec()), MemStorage::bootstrapped(members).durable_state(), 42)
}

/// The session key every test session is registered with (see [`Cluster::session`]).
pub(crate) const TEST_KEY: crate::Digest = [0x5e; 16];

/// Request `n` of session `client_id` (from 1) after the value its registration carried, so
/// request id seq `n + 1`: a session's seq 1 is its registration's value
/// ([`RequestId::FIRST_SEQ`]), and every test session is opened by [`Cluster::session`].
pub(crate) fn proposal(client_id: u64, n: u64, text: &str) -> Proposal {
    let request_id = RequestId { client_id, seq: n + RequestId::FIRST_SEQ };
    Proposal::command(request_id, TEST_KEY, text.as_bytes().to_vec())
}

/// Messages of a given kind in a Ready (both lists).
pub(crate) fn sent(ready: &Ready, kind: fn(&Message) -> bool) -> Vec<&Envelope> {
    ready.messages.iter().chain(&ready.persisted_messages).filter(|e| kind(&e.message)).collect()
}

/// Every message of a Ready, those that wait for the write last.
pub(crate) fn all_messages(ready: Ready) -> Vec<Envelope> {
    ready.messages.into_iter().chain(ready.persisted_messages).collect()
}

/// A cluster that delivers every message in order, persisting before sending, with an
/// optional set of nodes that drop everything (down), and of nodes that hear nobody while
/// their own messages still arrive (deaf: a broken receive path).
pub(crate) struct Cluster {
    pub(crate) replicas: BTreeMap<u64, Replica>,
    pub(crate) storage: BTreeMap<u64, MemStorage>,
    pub(crate) down: Vec<u64>,
    pub(crate) deaf: Vec<u64>,
    pub(crate) replies: Vec<(u64, crate::Reply)>,
    /// Answers to local reads, with the node that gave them.
    pub(crate) reads: Vec<(u64, crate::ReadReply)>,
    queue: VecDeque<Envelope>,
    /// Sessions opened by [`Cluster::session`], which numbers their nonces.
    sessions_opened: u64,
}

impl Cluster {
    /// Takes node `id`'s Ready and writes its operations to the node's storage, for tests that
    /// look at the Ready before delivering its messages.
    pub(crate) fn take_ready_written(&mut self, id: u64) -> crate::Ready {
        let ready = self.node(id).take_ready();
        self.storage.get_mut(&id).expect("member").apply(&ready.persist);
        self.node(id).on_persisted(ready.number);
        ready
    }

    pub(crate) fn new(size: u64) -> Self {
        let members: Vec<u64> = (1..=size).collect();
        Cluster {
            replicas: members.iter().map(|id| (*id, replica(*id, &members))).collect(),
            storage: members.iter().map(|id| (*id, MemStorage::bootstrapped(&members))).collect(),
            down: Vec::new(),
            deaf: Vec::new(),
            replies: Vec::new(),
            reads: Vec::new(),
            queue: VecDeque::new(),
            sessions_opened: 0,
        }
    }

    /// A bound cluster whose members have the given roles (ids in `roles`).
    pub(crate) fn with_roles(roles: &[(u64, crate::MemberRole)]) -> Self {
        let members: Vec<u64> = roles.iter().map(|(id, _)| *id).collect();
        let mut membership = crate::Membership::bound(&members, |id| id);
        for (id, role) in roles {
            membership.members.get_mut(id).expect("listed").role = *role;
        }
        let storage = MemStorage { membership: Some(membership), ..MemStorage::default() };
        let replica = |id: u64| {
            let mut config = Config::new(id, members.clone());
            config.role = roles.iter().find(|(member, _)| *member == id).expect("listed").1;
            Replica::recover(config, storage.durable_state(), 42)
        };
        Cluster {
            replicas: members.iter().map(|id| (*id, replica(*id))).collect(),
            storage: members.iter().map(|id| (*id, storage.clone())).collect(),
            down: Vec::new(),
            deaf: Vec::new(),
            replies: Vec::new(),
            reads: Vec::new(),
            queue: VecDeque::new(),
            sessions_opened: 0,
        }
    }

    pub(crate) fn node(&mut self, id: u64) -> &mut Replica {
        self.replicas.get_mut(&id).expect("member")
    }

    /// Drives every replica until no message is left.
    pub(crate) fn settle(&mut self) {
        for _ in 0..10_000 {
            let ids: Vec<u64> = self.replicas.keys().copied().collect();
            for id in ids {
                let replica = self.replicas.get_mut(&id).expect("member");
                let ready = replica.take_ready();
                let storage = self.storage.get_mut(&id).expect("member");
                storage.apply(&ready.persist);
                replica.on_persisted(ready.number);
                for read in &ready.history_reads {
                    let entries = storage.read_history(
                        read.from_slot,
                        read.upto_slot,
                        read.entries_max,
                        read.bytes_max,
                    );
                    replica.serve_history_read(read, entries);
                }
                self.queue.extend(ready.messages);
                self.queue.extend(ready.persisted_messages);
                self.replies.extend(ready.replies.into_iter().map(|r| (id, r)));
                self.reads.extend(ready.reads.into_iter().map(|r| (id, r)));
            }
            let Some(envelope) = self.queue.pop_front() else {
                if self.replicas.values_mut().all(|r| r.take_ready_is_idle()) {
                    return;
                }
                continue;
            };
            if self.down.contains(&envelope.to)
                || self.down.contains(&envelope.from)
                || self.deaf.contains(&envelope.to)
            {
                continue;
            }
            self.node(envelope.to).step(envelope);
        }
        panic!("cluster did not settle");
    }

    /// Ticks every live replica `ticks` times, settling after each.
    pub(crate) fn run_ticks(&mut self, ticks: u64) {
        for _ in 0..ticks {
            let ids: Vec<u64> = self.replicas.keys().copied().filter(|id| !self.down.contains(id)).collect();
            for id in ids {
                self.node(id).tick();
            }
            self.settle();
        }
    }

    /// Opens a client session through `node` and returns its client id (the registration's
    /// slot, which holds the session's request 1); the registration's reply is removed from
    /// `replies`. [`proposal`] numbers the session's later requests.
    pub(crate) fn session(&mut self, node: u64) -> u64 {
        self.sessions_opened += 1;
        let nonce = 0xC0FFEE + self.sessions_opened;
        let registration = Proposal::register(nonce, TEST_KEY, 0, format!("open {nonce:x}").into_bytes());
        let request_id = registration.request_id;
        self.node(node).propose(registration);
        self.settle();
        let index = self
            .replies
            .iter()
            .position(|(_, reply)| reply.request_id == request_id)
            .expect("registration answered");
        let (_, reply) = self.replies.remove(index);
        reply.outcome.expect("registration chosen")
    }

    /// Ticks until some replica leads.
    pub(crate) fn elect(&mut self) -> u64 {
        for _ in 0..200 {
            self.run_ticks(1);
            if let Some((id, _)) =
                self.replicas.iter().find(|(id, r)| r.is_leader() && !self.down.contains(id))
            {
                return *id;
            }
        }
        panic!("no leader elected");
    }
}

impl Replica {
    /// Takes the Ready and reports it persisted at once, for tests that act as a driver whose
    /// writes cannot fail.
    pub(crate) fn take_ready_persisted(&mut self) -> Ready {
        let ready = self.take_ready();
        self.on_persisted(ready.number);
        ready
    }

    /// True when nothing is pending for the driver (test helper).
    pub(crate) fn take_ready_is_idle(&mut self) -> bool {
        self.ready.is_empty()
            && !matches!(&self.proposer.role, crate::role::Role::Leader(l) if !l.unsent.is_empty())
    }
}
