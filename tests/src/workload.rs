//! A workload recorder and a checker for the log, in the style of a linearizability history:
//! every operation with its invocation and completion time and its outcome.
//!
//! The checker's rules:
//! - every acknowledged proposal is at its acknowledged slot on every node;
//! - no value is chosen twice (values are unique per operation);
//! - the histories of all nodes are identical (over the range each still holds);
//! - real-time order: a proposal acknowledged before another one was invoked has a lower slot;
//! - an operation whose outcome the client never saw is either chosen once or absent.

use paxos_core::Slot;
use paxos_node::client::Client;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One node's history: (slot, value), a no-op as `None`.
pub type History = Vec<(Slot, Option<Vec<u8>>)>;
/// Every node's history.
pub type Histories = BTreeMap<u64, History>;

/// One proposal and what its client saw.
#[derive(Clone, Debug)]
pub struct Operation {
    pub value: String,
    pub invoked: Instant,
    pub completed: Option<Instant>,
    /// `Some(slot)` if acknowledged; `None` if failed or unknown (may or may not be chosen).
    pub slot: Option<Slot>,
    pub error: Option<String>,
}

/// Collects operations from many concurrent clients.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    operations: Arc<Mutex<Vec<Operation>>>,
}

impl Recorder {
    /// Proposes `value` through `client` and records what happened.
    pub async fn propose(&self, client: &Client, value: String) -> Option<Slot> {
        let invoked = Instant::now();
        let result = client.propose(value.clone().into_bytes()).await;
        let completed = Instant::now();
        let (slot, error) = match result {
            Ok(slot) => (Some(slot), None),
            Err(error) => (None, Some(error.to_string())),
        };
        let operation = Operation { value, invoked, completed: Some(completed), slot, error };
        self.operations.lock().expect("recorder lock").push(operation);
        slot
    }

    /// Records an operation made elsewhere (e.g. through the paxos-cli binary).
    pub fn record(&self, operation: Operation) {
        self.operations.lock().expect("recorder lock").push(operation);
    }

    pub fn operations(&self) -> Vec<Operation> {
        self.operations.lock().expect("recorder lock").clone()
    }

    pub fn acknowledged(&self) -> usize {
        self.operations().iter().filter(|o| o.slot.is_some()).count()
    }

    /// Waits (at most `timeout`) until at least `count` operations are acknowledged; panics
    /// otherwise.
    pub async fn wait_acknowledged(&self, count: usize, timeout: Duration) {
        crate::wait_until(&format!("{count} acknowledged proposals"), timeout, || async {
            Ok((self.acknowledged() >= count).then_some(()))
        })
        .await
        .expect("progress");
    }
}

/// What the checker found; `anomalies` must be empty.
#[derive(Debug, Default)]
pub struct Report {
    pub operations: usize,
    pub acknowledged: usize,
    pub failed_or_unknown: usize,
    pub unknown_but_chosen: usize,
    pub slots: usize,
    pub anomalies: Vec<String>,
}

impl Report {
    pub fn assert_clean(&self) {
        assert!(self.anomalies.is_empty(), "history anomalies: {:#?}", self.anomalies);
    }
}

/// Checks the recorded operations against the histories of the nodes (`node id -> entries`).
pub fn check(operations: &[Operation], histories: &Histories) -> Report {
    let mut report = Report { operations: operations.len(), ..Report::default() };
    // Identical histories over the common range.
    let mut agreed: BTreeMap<Slot, Option<Vec<u8>>> = BTreeMap::new();
    for (node, history) in histories {
        for (slot, value) in history {
            match agreed.get(slot) {
                Some(existing) if existing != value => report.anomalies.push(format!(
                    "node {node} holds {:?} at slot {slot}, another node {:?}",
                    value.as_deref().map(String::from_utf8_lossy),
                    existing.as_deref().map(String::from_utf8_lossy)
                )),
                Some(_) => {}
                None => {
                    agreed.insert(*slot, value.clone());
                }
            }
        }
    }
    let lengths: BTreeMap<u64, Option<Slot>> =
        histories.iter().map(|(node, h)| (*node, h.last().map(|(slot, _)| slot + 1))).collect();
    if lengths.values().collect::<std::collections::BTreeSet<_>>().len() > 1 {
        report.anomalies.push(format!("histories end at different slots: {lengths:?}"));
    }
    report.slots = agreed.len();
    // No value twice.
    let mut where_chosen: HashMap<&[u8], Slot> = HashMap::new();
    for (slot, value) in &agreed {
        if let Some(value) = value {
            if let Some(other) = where_chosen.insert(value, *slot) {
                report.anomalies.push(format!(
                    "{:?} chosen twice: slots {other} and {slot}",
                    String::from_utf8_lossy(value)
                ));
            }
        }
    }
    for operation in operations {
        let chosen_at = where_chosen.get(operation.value.as_bytes()).copied();
        match operation.slot {
            Some(slot) => {
                report.acknowledged += 1;
                for (node, history) in histories {
                    let held = history.binary_search_by_key(&slot, |(s, _)| *s).ok().map(|i| &history[i].1);
                    let truncated = history.first().is_some_and(|(first, _)| *first > slot);
                    if !truncated && held.and_then(|v| v.as_deref()) != Some(operation.value.as_bytes()) {
                        report.anomalies.push(format!(
                            "{:?} acknowledged at slot {slot}, node {node} holds {:?}",
                            operation.value,
                            held.map(|v| v.as_deref().map(String::from_utf8_lossy))
                        ));
                    }
                }
                if chosen_at.is_some_and(|at| at != slot) {
                    report.anomalies.push(format!(
                        "{:?} acknowledged at {slot} but chosen at {chosen_at:?}",
                        operation.value
                    ));
                }
            }
            None => {
                report.failed_or_unknown += 1;
                if chosen_at.is_some() {
                    report.unknown_but_chosen += 1;
                }
            }
        }
    }
    // Real-time order: sort acknowledged operations by completion; every operation invoked after
    // a completion must land above the highest slot completed before it was invoked.
    let mut acknowledged: Vec<&Operation> = operations.iter().filter(|o| o.slot.is_some()).collect();
    acknowledged.sort_by_key(|o| o.completed);
    let mut by_invocation: Vec<&Operation> = acknowledged.clone();
    by_invocation.sort_by_key(|o| o.invoked);
    let mut completed_index = 0;
    let mut highest_before: Option<(Slot, &str)> = None;
    for operation in by_invocation {
        while completed_index < acknowledged.len()
            && acknowledged[completed_index].completed < Some(operation.invoked)
        {
            let done = acknowledged[completed_index];
            let slot = done.slot.unwrap_or_default();
            if highest_before.is_none_or(|(s, _)| slot > s) {
                highest_before = Some((slot, &done.value));
            }
            completed_index += 1;
        }
        if let (Some((before, before_value)), Some(slot)) = (highest_before, operation.slot) {
            if slot <= before {
                report.anomalies.push(format!(
                    "real-time order: {:?} acknowledged at {before} before {:?} was invoked, which got slot {slot}",
                    before_value, operation.value
                ));
            }
        }
    }
    report
}

/// Runs `clients` concurrent streams of `per_client` proposals each, labelled by `tag`, over
/// clients made by `make_client`.
pub async fn run_clients(
    recorder: &Recorder,
    make_client: impl Fn(usize) -> Client,
    clients: usize,
    per_client: usize,
    tag: &str,
    pause: Duration,
) {
    let mut tasks = Vec::new();
    for index in 0..clients {
        let client = make_client(index);
        let recorder = recorder.clone();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            for seq in 0..per_client {
                recorder.propose(&client, format!("{tag}-c{index}-{seq}")).await;
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
}
