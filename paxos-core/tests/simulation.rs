//! Seeded simulations of whole clusters under faults.
//!
//! `PAXOS_SIM_SEED=N cargo test -p paxos-core --test simulation` replays one seed;
//! `PAXOS_SIM_SEEDS=N` runs seeds 0..N (default 300). A failure prints its seed.

mod sim;

use paxos_core::Rng;
use sim::{Faults, Scenario, Simulation, Stats};
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

#[test]
fn random_clusters_under_faults_stay_safe_and_live() {
    let seeds: Vec<u64> = match env_u64("PAXOS_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("PAXOS_SIM_SEEDS").unwrap_or(300)).collect(),
    };
    let mut total = Stats::default();
    let mut failures = Vec::new();
    for seed in &seeds {
        match run_seed(*seed, random_scenario(*seed)) {
            Ok(stats) => {
                total.ticks += stats.ticks;
                total.messages_delivered += stats.messages_delivered;
                total.crashes += stats.crashes;
                total.partitions += stats.partitions;
                total.acknowledged += stats.acknowledged;
                total.chosen_slots += stats.chosen_slots;
                total.snapshot_truncations += stats.snapshot_truncations;
                total.snapshot_installs += stats.snapshot_installs;
            }
            Err(error) => {
                eprintln!("seed {seed} FAILED: {error}\n  replay: PAXOS_SIM_SEED={seed} cargo test -p paxos-core --test simulation");
                failures.push(*seed);
                if failures.len() >= 5 {
                    break;
                }
            }
        }
    }
    eprintln!("simulation: {} seeds, totals {total:?}", seeds.len());
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
}

/// Seeds that once found bugs, kept as regressions (each with what it found).
#[test]
fn regression_seeds() {
    for seed in REGRESSION_SEEDS {
        if let Err(error) = run_seed(*seed, random_scenario(*seed)) {
            panic!("regression seed {seed} failed: {error}");
        }
    }
}

const REGRESSION_SEEDS: &[u64] = &[
    // A leader that installed a truncation snapshot and then learned only from Accepted
    // replies that followers were ahead never asked for catch-up: it stayed behind forever.
    929,
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
    };
    let stats = run_seed(1, scenario).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stats.acknowledged, 1000);
    assert!(stats.chosen_slots >= 1000);
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
    };
    let stats = run_seed(7, scenario).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stats.acknowledged, 150);
}
