//! Arbitrary messages from a member never panic a replica. A member's identity is all the
//! transport vouches for; what it says may be anything (a bug, a forged frame), and the replica
//! must drop what it cannot believe instead of tripping an assertion, which would stop the node.
//!
//!   PAXOS_HOSTILE_SEEDS=N   seeds (default 300); each drives one replica through 300 steps.
//!   PAXOS_HOSTILE_SEED=N cargo test -p paxos-core --test hostile_messages replay_one -- --ignored
//!                           replays one seed (with RUST_BACKTRACE=1 for where it panicked).

use paxos_core::{
    AcceptedEntry, Ballot, Config, Envelope, MemStorage, MemberRole, Membership, Message, Proposal,
    ProposalError, Replica, RequestId, Rng, TruncationSnapshot, Value,
};

/// Mostly small numbers, so messages meet the replica's state; sometimes the edges.
fn number(rng: &mut Rng) -> u64 {
    match rng.range(0, 20) {
        0 => u64::MAX,
        1 => u64::MAX / 2,
        2 => rng.next_u64(),
        _ => rng.range(0, 24),
    }
}

/// Half the time a ballot the replica used or saw (so messages meet its state: promises for its
/// candidacy, accepts in the ballot it follows); else usually the sender's own, sometimes
/// anyone's.
fn ballot(rng: &mut Rng, from: u64, known: &[Ballot]) -> Ballot {
    if !known.is_empty() && rng.chance(1, 2) {
        return known[rng.range(0, known.len() as u64) as usize];
    }
    let node = if rng.chance(4, 5) { from } else { rng.range(0, 5) };
    Ballot::new(number(rng), node)
}

fn value(rng: &mut Rng) -> Value {
    match rng.range(0, 5) {
        0 => Value::Noop,
        1 => Value::Register {
            nonce: number(rng),
            key: [number(rng) as u8; 16],
            floor_slot: number(rng),
            payload: vec![3; 4],
        },
        4 => Value::Config(forged_membership(rng)),
        _ => Value::Command {
            request_id: RequestId { client_id: number(rng), seq: number(rng) },
            key: [number(rng) as u8; 16],
            payload: vec![7; rng.range(0, 40) as usize],
        },
    }
}

fn entries(rng: &mut Rng) -> Vec<(u64, Value)> {
    (0..rng.range(0, 6)).map(|_| (number(rng), value(rng))).collect()
}

fn message(rng: &mut Rng, from: u64, known: &[Ballot]) -> Message {
    match rng.range(0, 19) {
        0 => Message::Prepare {
            ballot: ballot(rng, from, known),
            from_slot: number(rng),
            transfer: rng.chance(1, 2),
        },
        1 => Message::Promise {
            ballot: ballot(rng, from, known),
            from_slot: number(rng),
            accepted: (0..rng.range(0, 5))
                .map(|_| AcceptedEntry {
                    slot: number(rng),
                    ballot: ballot(rng, from, known),
                    value: value(rng),
                })
                .collect(),
            history: entries(rng),
            chosen: entries(rng),
            applied_upto: number(rng),
            covered_upto: rng.chance(1, 2).then(|| number(rng)),
            log_id: if rng.chance(1, 2) { 1 } else { number(rng) },
        },
        2 => Message::Nack { ballot: ballot(rng, from, known), promised: ballot(rng, from, known) },
        3 => Message::Accept {
            ballot: ballot(rng, from, known),
            entries: entries(rng),
            commit_upto: number(rng),
        },
        4 => Message::Accepted {
            ballot: ballot(rng, from, known),
            slots: (0..rng.range(0, 5)).map(|_| number(rng)).collect(),
            applied_upto: number(rng),
        },
        5 => Message::Heartbeat {
            ballot: ballot(rng, from, known),
            commit_upto: number(rng),
            history_start: number(rng),
            round: number(rng),
        },
        6 => Message::HeartbeatAck {
            ballot: ballot(rng, from, known),
            applied_upto: number(rng),
            round: number(rng),
        },
        7 => Message::CatchUp { from_slot: number(rng), request: number(rng) },
        8 => Message::CatchUpEntries {
            entries: entries(rng),
            applied_upto: number(rng),
            log_id: number(rng),
            request: number(rng),
        },
        9 => Message::CatchUpTruncated {
            snapshot: TruncationSnapshot {
                history_start: number(rng),
                table_upto: number(rng),
                requests: Default::default(),
                membership: rng.chance(1, 2).then(|| forged_membership(rng)),
            },
            request: number(rng),
        },
        10 => Message::Forward {
            proposal: Proposal {
                request_id: RequestId { client_id: number(rng), seq: number(rng) },
                key: [number(rng) as u8; 16],
                payload: vec![1],
                floor_slot: number(rng),
            },
        },
        11 => Message::ForwardReply {
            request_id: RequestId { client_id: number(rng), seq: number(rng) },
            fingerprint: [number(rng) as u8; 16],
            outcome: if rng.chance(1, 2) { Ok(number(rng)) } else { Err(ProposalError::Timeout) },
        },
        12 => Message::NotAdmitted {
            admitted: rng.chance(1, 2).then(|| number(rng)),
            chosen_at: number(rng),
            applied_upto: number(rng),
        },
        13 => Message::PreVote { ballot: ballot(rng, from, known), attempt: number(rng) },
        14 => Message::PreVoteReply {
            ballot: ballot(rng, from, known),
            attempt: number(rng),
            promised: ballot(rng, from, known),
            refusal: rng.chance(1, 2).then_some(paxos_core::PreVoteRefusal::NotVoter),
        },
        15 => Message::Progress { applied_upto: number(rng), log_id: number(rng) },
        16 => Message::ReadIndex { request: number(rng) },
        17 => Message::ReadIndexReply {
            request: number(rng),
            outcome: if rng.chance(1, 2) { Ok(number(rng)) } else { Err(ProposalError::Timeout) },
        },
        _ => Message::CatchUp { from_slot: 0, request: 0 },
    }
}

/// A configuration no honest leader proposes: any members, roles and incarnations.
fn forged_membership(rng: &mut Rng) -> Membership {
    let ids: Vec<u64> = (0..rng.range(0, 5)).map(|_| rng.range(0, 6)).collect();
    // Member 4 unbound, which no chosen configuration allows for a voter.
    let mut membership = Membership::bound(&ids, |id| if id == 4 { 0 } else { id });
    for member in membership.members.values_mut() {
        if member.incarnation % 2 == 1 {
            member.role = MemberRole::Learner;
        }
    }
    membership.chosen_at = rng.chance(1, 2).then(|| number(rng));
    membership
}

/// One replica (node 1 of 3) fed arbitrary messages from nodes 2 and 3, ticks and proposals,
/// driven as a node drives it.
fn run(seed: u64) -> (u64, u64, bool) {
    let mut rng = Rng::new(seed);
    // Half the seeds start from a bound cluster, half from the bootstrap configuration.
    let mut storage =
        if seed % 2 == 0 { MemStorage::bootstrapped(&[1, 2, 3]) } else { MemStorage::default() };
    let mut replica = Replica::recover(Config::new(1, vec![1, 2, 3]), storage.durable_state(), seed);
    let (mut persisted, mut sent) = (0, 0);
    let mut known: Vec<Ballot> = Vec::new();
    let mut led = false;
    for step in 0..300u64 {
        match rng.range(0, 10) {
            0..=5 => {
                let from = rng.range(2, 4);
                replica.step(Envelope {
                    from,
                    to: 1,
                    incarnation: from,
                    role: Default::default(),
                    message: message(&mut rng, from, &known),
                });
            }
            6..=8 => replica.tick(),
            _ if rng.chance(1, 3) => replica.read(step),
            _ => replica.propose(Proposal {
                request_id: RequestId { client_id: number(&mut rng), seq: step },
                key: [number(&mut rng) as u8; 16],
                payload: vec![2; 8],
                floor_slot: number(&mut rng),
            }),
        }
        led |= replica.is_leader();
        let ready = replica.take_ready();
        persisted += ready.persist.len() as u64;
        sent += (ready.messages.len() + ready.persisted_messages.len()) as u64;
        for envelope in ready.messages.iter().chain(&ready.persisted_messages) {
            if let Message::Prepare { ballot, .. } | Message::Accept { ballot, .. } = &envelope.message {
                if !known.contains(ballot) {
                    known.push(*ballot);
                }
            }
        }
        storage.apply(&ready.persist);
        replica.on_persisted(ready.number);
        for read in &ready.history_reads {
            let entries =
                storage.read_history(read.from_slot, read.upto_slot, read.entries_max, read.bytes_max);
            replica.serve_history_read(read, entries);
        }
    }
    (persisted, sent, led)
}

#[test]
fn arbitrary_messages_from_members_never_panic_a_replica() {
    let seeds: u64 = std::env::var("PAXOS_HOSTILE_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let mut failures = Vec::new();
    let (mut persisted, mut sent, mut led) = (0, 0, 0);
    for seed in 0..seeds {
        match std::panic::catch_unwind(|| run(seed)) {
            Ok((p, s, l)) => {
                persisted += p;
                sent += s;
                led += u64::from(l);
            }
            Err(panic) => {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("seed {seed}: {text}"));
            }
        }
    }
    eprintln!(
        "{seeds} seeds: {persisted} storage operations written, {sent} messages sent, {led} replicas led"
    );
    assert!(failures.is_empty(), "{} of {seeds} seeds panicked:\n{}", failures.len(), failures.join("\n"));
}

#[test]
#[ignore]
fn replay_one() {
    let seed = std::env::var("PAXOS_HOSTILE_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    run(seed);
}
