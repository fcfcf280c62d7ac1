//! Seeded simulations of whole clusters under faults.
//!
//! `PAXOS_SIM_SEED=N cargo test -p paxos-core --test simulation` replays one seed (of both
//! mixes); `PAXOS_SIM_SEEDS=N` runs seeds 0..N of the original mix (default 300) and
//! `PAXOS_SWARM_SEEDS=N` of the swarm mix (default 4 times as many). A failure prints its seed.
//! `PAXOS_SWARM_FROM=N` starts the swarm mix at seed N; `PAXOS_SIM_PROGRESS=1` prints each
//! seed as it starts (to find one that never ends).
//! Replaying, `PAXOS_SIM_TRACE_FROM=TICK` prints every message delivered from a tick on and
//! `PAXOS_SIM_WATCH_SLOT=N` every apply and acknowledgement of slot N.

mod sim;

use paxos_core::{MemberRole, Rng};
use sim::liveness::{TopologyKind, TopologyTotals};
use sim::{small_limits, Faults, Scenario, Simulation, Stats};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

fn run_seed(seed: u64, scenario: Scenario) -> Result<Stats, String> {
    match catch_unwind(AssertUnwindSafe(|| Simulation::new(seed, scenario).run())) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panicked: {message}"))
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")))
}

fn random_scenario(seed: u64) -> Scenario {
    Scenario::random(&mut Rng::new(seed ^ 0x5eed))
}

fn swarm_scenario(seed: u64) -> Scenario {
    Scenario::swarm(&mut Rng::new(seed ^ 0x5a4d))
}

fn run_seeds(mix: &str, seeds: Vec<u64>, scenario: fn(u64) -> Scenario) {
    if seeds.len() == 1 {
        eprintln!("{mix} seed {}: {:?}", seeds[0], scenario(seeds[0]));
    }
    let started = std::time::Instant::now();
    let mut total = Stats::default();
    let mut failures = Vec::new();
    let progress = std::env::var_os("PAXOS_SIM_PROGRESS").is_some();
    for seed in &seeds {
        if progress {
            eprintln!("{mix} seed {seed}");
        }
        match run_seed(*seed, scenario(*seed)) {
            Ok(stats) => total.add(&stats),
            Err(error) => {
                eprintln!(
                    "{mix} seed {seed} FAILED: {error}\n  replay: PAXOS_SIM_SEED={seed} cargo test -p paxos-core --test simulation {mix}"
                );
                failures.push(*seed);
                if failures.len() >= 5 {
                    break;
                }
            }
        }
    }
    let partial_faults = std::mem::take(&mut total.partial_faults);
    eprintln!("{mix}: {} seeds in {:.1} s, totals {total:?}", seeds.len(), started.elapsed().as_secs_f64());
    for (kind, totals) in &partial_faults {
        eprintln!("{mix}: partial fault {kind:?}: {}", totals.summary());
    }
    assert!(failures.is_empty(), "{mix}: failing seeds: {failures:?}");
}

/// The original mix: clean partitions, every crashed node restarted before liveness is checked.
#[test]
fn random_clusters_under_faults_stay_safe_and_live() {
    let seeds: Vec<u64> = match env_u64("PAXOS_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("PAXOS_SIM_SEEDS").unwrap_or(300)).collect(),
    };
    run_seeds("random", seeds, random_scenario);
}

/// The swarm mix: per-seed fault mixes over 3, 5 and 7 nodes, one-way and non-transitive cuts,
/// slow links, members that never come back, truncation with a leader crash, request storms,
/// late retries and session eviction; liveness checked with only the survivors.
#[test]
fn swarm_clusters_under_faults_stay_safe_and_live() {
    let seeds: Vec<u64> = match env_u64("PAXOS_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let default = 4 * env_u64("PAXOS_SIM_SEEDS").unwrap_or(300);
            (env_u64("PAXOS_SWARM_FROM").unwrap_or(0)..env_u64("PAXOS_SWARM_SEEDS").unwrap_or(default))
                .collect()
        }
    };
    run_seeds("swarm", seeds, swarm_scenario);
}

/// Seeds that once found bugs, kept as regressions (each with what it found).
#[test]
fn regression_seeds() {
    for seed in REGRESSION_SEEDS {
        if let Err(error) = run_seed(*seed, random_scenario(*seed)) {
            panic!("regression seed {seed} failed: {error}");
        }
    }
    for seed in SWARM_REGRESSION_SEEDS {
        // As the seed was when it found its bug: leadership transfers came later, and would
        // change the run.
        let mut scenario = swarm_scenario(*seed);
        scenario.faults.transfer_per_mille = 0;
        scenario.faults.write_delay_ticks_max = 0;
        if let Err(error) = run_seed(*seed, scenario) {
            panic!("swarm regression seed {seed} failed: {error}");
        }
    }
    for seed in SWARM_TRANSFER_REGRESSION_SEEDS {
        // Slow disks came later still (writes under way while the node steps on).
        let mut scenario = swarm_scenario(*seed);
        scenario.faults.write_delay_ticks_max = 0;
        if let Err(error) = run_seed(*seed, scenario) {
            panic!("swarm regression seed {seed} failed: {error}");
        }
    }
    for seed in SWARM_DISK_REGRESSION_SEEDS {
        if let Err(error) = run_seed(*seed, swarm_scenario(*seed)) {
            panic!("swarm regression seed {seed} failed: {error}");
        }
    }
}

const REGRESSION_SEEDS: &[u64] = &[
    // A leader that installed a truncation snapshot and then learned only from Accepted
    // replies that followers were ahead never asked for catch-up: it stayed behind forever.
    929,
];

const SWARM_REGRESSION_SEEDS: &[u64] = &[
    // Reconfiguration shrank a cluster to one voter and learners. The leader chose a forwarded
    // proposal on its own vote and answered the learner that forwarded it before the batch
    // holding that vote was written; it crashed in between, and the slot was later chosen with
    // a configuration entry: an acknowledged value lost.
    3967,
    // A replica learned only from members its own configuration listed as voters: a learner
    // whose configuration was behind ignored the leader promoted since, and never caught up.
    76,
    // A learner (in its own view) ignored a Prepare in silence: the candidate, which counted it
    // as a voter, never learned that one of them was behind, and never won.
    60,
    // A voter whose configuration was behind refused a replaced member's new disk, and the
    // replaced member (whose newer configuration admits it) only recorded the refusal: neither
    // caught up. Now a refused node that knows a newer configuration says how far it is.
    2480,
    // A candidate whose configuration had promoted it Prepared a voter that still counted it a
    // learner and ignored the Prepare in silence: the voter never caught up.
    17551,
    // Three proposers that do not vote, four acceptors, one-entry pages and slow links: phase
    // 1 took longer than an election timeout, and the proposers, which got no Prepare to hold
    // them off (only voting members promise), pre-empted each other's campaigns for ever.
    423,
    // Linearizable reads (issue 26, item 11), found once the simulation numbered a node's reads
    // from 1 in each life, as the driver does: a read index answered to a node before it
    // restarted answered a new read with the same number after it, with an index below a value
    // acknowledged in between. A review found the same, and two more (read_index.rs).
    1388, 1588,
];

/// Swarm seeds found with leadership transfers on (kept with them).
const SWARM_TRANSFER_REGRESSION_SEEDS: &[u64] = &[
    // Not a bug of the protocol: the simulated operator, at the run's node limit, turned a
    // concurrent "add a member" into a disk wipe planned against the configuration before the
    // removal it ran beside, and left a two-voter configuration with one voter wiped: no
    // majority for ever, so no change could repair it. The transfers only moved the timing.
    13729,
    // Not a bug of the protocol either: a member died for good once the latest configuration
    // (applied on one node only) could spare it, though the others still ran the one before,
    // which could not. See `may_die_for_good`.
    3333,
    // The simulated operator again, its guards blind to a member that was down: the leading
    // proposer was wiped while the other proposer, just promoted from learner, was down and had
    // not applied its promotion; it came back a learner, and no member could lead again. Found
    // once answers left before the write (the timing moved). See `in_force` in operator.rs.
    5104, 5149,
    // Outside the default range: a duplicated or slow catch-up answer started a second chain
    // of requests (any answer from the peer ended the request outstanding), and chains added up
    // until over a million CatchUp/CatchUpEntries were in flight between two nodes. Requests are
    // numbered now, and only the answer to the one outstanding starts the next.
    7019283, 9002927, 9013726,
];

/// Swarm seeds found with slow disks on (writes under way while the node steps on), kept as
/// they are drawn now.
const SWARM_DISK_REGRESSION_SEEDS: &[u64] = &[
    // Not a bug of the protocol: the liveness bound's allowance for a proposer paging through
    // thirteen one-entry pages left out the acceptor's write on each round trip (its Promise
    // waits for a disk of up to 7 ticks a write).
    11372,
];

/// The teaching implementation's own test: 5 acceptors of which 2 are down, 2 nodes proposing,
/// 1000 values; all chosen once, histories equal. Then the 2 start and catch up.
#[test]
fn teaching_scenario_five_nodes_two_down_thousand_values() {
    let scenario = Scenario {
        nodes: 5,
        down_at_start: vec![4, 5],
        heal_down: true,
        clients: 2,
        requests_per_client: 500,
        client_window: 8,
        request_gap_ticks: 0,
        entry_nodes: vec![1, 2],
        fault_ticks: 3000,
        heal_ticks_max: 5000,
        faults: Faults { delay_ticks_max: 4, duplicate_per_mille: 20, ..Faults::none() },
        config_tweak: |_| {},
        small_table: None,
        tiny_messages: None,
        roles: Default::default(),
        partial_fault: None,
    };
    let stats = run_seed(1, scenario).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stats.acknowledged, 1000);
    assert!(stats.chosen_slots >= 1000);
}

/// The seed's topology with roles: 2 proposers that keep no acceptor state and 5 acceptors
/// that never lead, 2 acceptors down from the start, 1000 values through both proposers, with
/// crashes (the leading proposer among them), pauses and lossy links; the 2 acceptors start
/// at healing and catch up.
#[test]
fn seed_topology_two_proposers_five_acceptors_two_down() {
    let roles =
        (1..=7).map(|id| (id, if id <= 2 { MemberRole::Proposer } else { MemberRole::Acceptor })).collect();
    let scenario = Scenario {
        nodes: 7,
        down_at_start: vec![6, 7],
        heal_down: true,
        clients: 4,
        requests_per_client: 250,
        client_window: 8,
        request_gap_ticks: 2,
        entry_nodes: vec![1, 2],
        fault_ticks: 3000,
        heal_ticks_max: 8000,
        faults: Faults {
            delay_ticks_max: 4,
            duplicate_per_mille: 20,
            loss_per_mille: 20,
            crash_per_mille: 4,
            pause_per_mille: 2,
            ..Faults::none()
        },
        config_tweak: small_limits,
        small_table: None,
        tiny_messages: None,
        roles,
        partial_fault: None,
    };
    for seed in 1..=8 {
        let stats = run_seed(seed, scenario.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stats.acknowledged, 1000, "seed {seed}");
        assert!(stats.crashes > 0, "seed {seed}: no crash");
    }
}

/// Leadership transfers asked every ~40 ticks of a loaded cluster with no faults, to members
/// drawn at random: each one that starts hands over well within an election timeout (that is
/// what it is for), none is abandoned, and every value is chosen once.
#[test]
fn leadership_transfers_hand_over_within_an_election_timeout() {
    let mut completed = 0;
    for (seed, nodes) in [(1, 3), (2, 3), (3, 5), (4, 5), (5, 7)] {
        let scenario = Scenario {
            nodes,
            down_at_start: vec![],
            heal_down: true,
            clients: 4,
            requests_per_client: 100,
            client_window: 4,
            request_gap_ticks: 10,
            entry_nodes: vec![],
            fault_ticks: 1000,
            heal_ticks_max: 3000,
            faults: Faults { transfer_per_mille: 25, delay_ticks_max: 2, ..Faults::none() },
            config_tweak: small_limits,
            small_table: None,
            tiny_messages: None,
            roles: Default::default(),
            partial_fault: None,
        };
        let stats = run_seed(seed, scenario).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        eprintln!(
            "seed {seed}, {nodes} nodes: transfers asked {}, started {}, refused {}, completed {} (at most {} ticks), abandoned {}",
            stats.transfers_asked,
            stats.transfers_started,
            stats.transfers_refused,
            stats.transfers_completed,
            stats.transfer_ticks_max,
            stats.transfers_abandoned
        );
        assert_eq!(stats.acknowledged, 400, "seed {seed}");
        assert_eq!(stats.transfers_abandoned, 0, "seed {seed}");
        assert_eq!(stats.transfers_completed, stats.transfers_started, "seed {seed}");
        // The default election timeout is 10 ticks; an election waits 10 to 20 after the
        // leader's last word, a transfer a few round trips.
        assert!(
            stats.transfer_ticks_max < 10,
            "seed {seed}: a transfer took {} ticks",
            stats.transfer_ticks_max
        );
        completed += stats.transfers_completed;
    }
    assert!(completed >= 20, "only {completed} transfers completed: the test asks too few");
}

/// A three-node cluster with no faults chooses every value, in a handful of ticks each.
#[test]
fn fault_free_cluster_chooses_everything() {
    let scenario = Scenario {
        nodes: 3,
        down_at_start: vec![],
        heal_down: true,
        clients: 3,
        requests_per_client: 50,
        client_window: 4,
        request_gap_ticks: 0,
        entry_nodes: vec![],
        fault_ticks: 0,
        heal_ticks_max: 3000,
        faults: Faults::none(),
        config_tweak: |_| {},
        small_table: None,
        tiny_messages: None,
        roles: Default::default(),
        partial_fault: None,
    };
    let stats = run_seed(7, scenario).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stats.acknowledged, 150);
}

/// Static partial faults with no other fault (the swarm holds them after its faulty phase
/// too): a member that hears nobody and the reverse, a bridge, a chain, quorum loss, a flapping
/// link and random one-way cuts, around the leader of a loaded cluster of 3, 5 or 7 members.
/// Each hold checks that a connected quorum commits within a few election timeouts with at
/// most two leader changes (see `sim/liveness.rs`); the table of figures is printed.
#[test]
fn partial_faults_keep_one_leader_and_commit() {
    let mut table: BTreeMap<(TopologyKind, u64), TopologyTotals> = BTreeMap::new();
    let seeds = env_u64("PAXOS_PARTIAL_FAULT_SEEDS").unwrap_or(6);
    let mut holds_expected = 0;
    for kind in TopologyKind::ALL {
        // A removed leader and one more voter down leave a majority of the new configuration
        // that is none of the old one only when the old one had an even number of voters.
        let sizes: &[u64] = if kind == TopologyKind::LeaderRemovedThenCrash { &[4, 6] } else { &[3, 5, 7] };
        holds_expected += sizes.len() as u64 * seeds;
        for &nodes in sizes {
            for seed in 0..seeds {
                let scenario = Scenario {
                    nodes,
                    down_at_start: vec![],
                    heal_down: true,
                    clients: 2,
                    requests_per_client: 20,
                    client_window: 2,
                    request_gap_ticks: 5,
                    entry_nodes: vec![],
                    fault_ticks: 100,
                    heal_ticks_max: 3000,
                    faults: Faults { delay_ticks_max: 1 + seed % 4, ..Faults::none() },
                    config_tweak: small_limits,
                    small_table: None,
                    tiny_messages: None,
                    roles: Default::default(),
                    partial_fault: Some(kind),
                };
                let seed = seed + 1000 * nodes;
                // `PAXOS_PARTIAL_FAULT=Deaf:5005` replays one hold (with PAXOS_SIM_TRACE_FROM).
                if let Ok(only) = std::env::var("PAXOS_PARTIAL_FAULT") {
                    if only != format!("{kind:?}:{seed}") {
                        continue;
                    }
                }
                let stats = run_seed(seed, scenario).unwrap_or_else(|e| panic!("{kind:?}, seed {seed}: {e}"));
                for totals in stats.partial_faults.values() {
                    table.entry((kind, nodes)).or_default().add(totals);
                }
            }
        }
    }
    for ((kind, nodes), totals) in &table {
        eprintln!("{kind:?}, {nodes} nodes: {}", totals.summary());
    }
    let holds: u64 = table.values().map(|totals| totals.holds).sum();
    if std::env::var_os("PAXOS_PARTIAL_FAULT").is_none() {
        assert_eq!(holds, holds_expected, "every scenario held its fault");
    }
}
