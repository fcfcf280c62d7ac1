//! `paxos-cli bench`: concurrent clients proposing fixed-size values; prints throughput,
//! latency percentiles, errors, and the cluster's fsyncs per chosen value.

use anyhow::Context;
use futures::future::join_all;
use paxos_client::client::{Client, ClientOptions};
use paxos_client::wire::StatusReport;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub clients: usize,
    pub value_bytes: usize,
    /// Proposals in flight per client connection.
    pub window: usize,
    pub duration: Duration,
    /// Stop after this many proposals in total instead of after `duration`.
    pub count: Option<u64>,
}

#[derive(Debug, Default)]
struct ClientResult {
    latencies_us: Vec<u64>,
    errors: u64,
    last_error: Option<String>,
    /// An error no retry can fix (see `ClientError::is_final`): the run stops at the first.
    final_error: Option<String>,
}

impl ClientResult {
    fn merge(&mut self, other: ClientResult) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        self.last_error = other.last_error.or(self.last_error.take());
        self.final_error = self.final_error.take().or(other.final_error);
    }
}

/// The leader's status (fsync and apply counters), if some endpoint answers.
async fn leader_status(options: &ClientOptions) -> Option<StatusReport> {
    for endpoint in &options.endpoints {
        let mut one = ClientOptions::new(vec![endpoint.clone()], options.security.clone());
        one.cluster = options.cluster.clone();
        one.timeout = Duration::from_secs(2);
        if let Ok(status) = Client::new(one).ok()?.status().await {
            if status.role == paxos_core::RoleName::Leader {
                return Some(status);
            }
            if let Some(addr) = status.leader.and_then(|l| status.members.iter().find(|m| m.id == l)) {
                let mut leader = ClientOptions::new(vec![addr.addr.clone()], options.security.clone());
                leader.cluster = options.cluster.clone();
                leader.timeout = Duration::from_secs(2);
                if let Ok(status) = Client::new(leader).ok()?.status().await {
                    return Some(status);
                }
            }
        }
    }
    None
}

fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// What every lane of every client shares: how many proposals are done and when to stop.
#[derive(Debug, Clone)]
struct RunState {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
    /// `BenchOptions::count`: with it the run ends on the count, not on the deadline.
    total: Option<u64>,
}

/// The figures a run reports, in the units it prints them in.
#[derive(Debug)]
struct Figures {
    writes: usize,
    elapsed_secs: f64,
    writes_per_second: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    errors: u64,
    last_error: Option<String>,
    fsyncs_per_chosen_value: Option<f64>,
    values_per_fsync: Option<f64>,
}

pub async fn run(options: ClientOptions, bench: BenchOptions, json_output: bool) -> anyhow::Result<()> {
    let before = leader_status(&options).await.context("no leader reachable to benchmark")?;
    let (result, elapsed) = measure(&options, &bench, json_output).await?;
    if let Some(error) = result.final_error {
        anyhow::bail!("stopped at the first error no retry can fix: {error}");
    }
    let after = leader_status(&options).await;
    let figures = Figures::new(result, elapsed, &before, after.as_ref());
    if json_output {
        print_json(&bench, &figures);
    } else {
        print_text(&bench, &figures);
    }
    Ok(())
}

/// Runs the clients until `bench.count` proposals are done or `bench.duration` has passed, with
/// a progress bar unless the output is JSON. Returns the clients' results merged, latencies
/// sorted, and the time the run took.
async fn measure(
    options: &ClientOptions,
    bench: &BenchOptions,
    json_output: bool,
) -> anyhow::Result<(ClientResult, Duration)> {
    let progress = progress_bar(bench, json_output);
    let started = Instant::now();
    let run_state = RunState {
        done: Arc::new(AtomicU64::new(0)),
        stop: Arc::new(AtomicBool::new(false)),
        deadline: started + bench.duration,
        total: bench.count,
    };
    let tasks = spawn_clients(options, bench, &run_state)?;
    let ticker = spawn_ticker(progress.clone(), run_state.clone(), started);
    let results = join_all(tasks).await;
    run_state.stop.store(true, Ordering::Relaxed);
    ticker.abort();
    progress.finish_and_clear();
    let elapsed = started.elapsed();
    let mut merged = ClientResult::default();
    for result in results {
        merged.merge(result.context("a client task failed")?);
    }
    merged.latencies_us.sort_unstable();
    Ok((merged, elapsed))
}

/// A bar counting proposals (with `--count`) or seconds; hidden when the output is JSON.
fn progress_bar(bench: &BenchOptions, json_output: bool) -> indicatif::ProgressBar {
    let progress = if json_output {
        indicatif::ProgressBar::hidden()
    } else {
        match bench.count {
            Some(count) => indicatif::ProgressBar::new(count),
            None => indicatif::ProgressBar::new(bench.duration.as_secs().max(1)),
        }
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress
}

/// One task per client, each with its own connection.
fn spawn_clients(
    options: &ClientOptions,
    bench: &BenchOptions,
    run_state: &RunState,
) -> anyhow::Result<Vec<JoinHandle<ClientResult>>> {
    let mut tasks = Vec::new();
    for _ in 0..bench.clients {
        let client = Client::new(options.clone())?;
        let value = vec![b'x'; bench.value_bytes];
        let window = bench.window.max(1);
        tasks.push(tokio::spawn(run_client(client, value, window, run_state.clone())));
    }
    Ok(tasks)
}

async fn run_client(client: Client, value: Vec<u8>, window: usize, run_state: RunState) -> ClientResult {
    let mut result = ClientResult::default();
    // `window` proposals in flight on this client's connection.
    let lanes = (0..window).map(|_| run_lane(client.clone(), value.clone(), run_state.clone()));
    for lane in join_all(lanes).await {
        result.merge(lane);
    }
    result
}

/// Proposes `value` one proposal after another until the run is over.
async fn run_lane(client: Client, value: Vec<u8>, run_state: RunState) -> ClientResult {
    let mut lane = ClientResult::default();
    loop {
        if run_state.stop.load(Ordering::Relaxed)
            || Instant::now() >= run_state.deadline && run_state.total.is_none()
        {
            break;
        }
        if let Some(total) = run_state.total {
            if run_state.done.fetch_add(1, Ordering::Relaxed) >= total {
                break;
            }
        }
        let begin = Instant::now();
        match client.propose(value.clone()).await {
            Ok(_) => {
                lane.latencies_us.push(begin.elapsed().as_micros() as u64);
                if run_state.total.is_none() {
                    run_state.done.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(error) if error.is_final() => {
                lane.final_error = Some(error.to_string());
                run_state.stop.store(true, Ordering::Relaxed);
                break;
            }
            Err(error) => {
                lane.errors += 1;
                lane.last_error = Some(error.to_string());
            }
        }
    }
    lane
}

/// Updates the progress bar (proposals with `--count`, else seconds) until aborted.
fn spawn_ticker(progress: indicatif::ProgressBar, run_state: RunState, started: Instant) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let finished = run_state.done.load(Ordering::Relaxed);
            match run_state.total {
                Some(total) => progress.set_position(finished.min(total)),
                None => {
                    progress.set_position(started.elapsed().as_secs());
                    progress.set_message(format!("{finished} proposals"));
                }
            }
        }
    })
}

/// The leader's fsyncs per chosen value and values per fsync over the run, if the same leader
/// answered before and after and chose values in between.
fn fsync_figures(before: &StatusReport, after: Option<&StatusReport>) -> (Option<f64>, Option<f64>) {
    match after {
        Some(after)
            if after.node == before.node && after.applied_since_start > before.applied_since_start =>
        {
            let fsyncs = after.fsyncs.saturating_sub(before.fsyncs) as f64;
            let applied = (after.applied_since_start - before.applied_since_start) as f64;
            (Some(fsyncs / applied), (fsyncs > 0.0).then(|| applied / fsyncs))
        }
        _ => (None, None),
    }
}

impl Figures {
    /// `result.latencies_us` must be sorted.
    fn new(
        result: ClientResult,
        elapsed: Duration,
        before: &StatusReport,
        after: Option<&StatusReport>,
    ) -> Figures {
        let (fsyncs_per_chosen_value, values_per_fsync) = fsync_figures(before, after);
        let latencies = &result.latencies_us;
        let ms = |us: u64| us as f64 / 1000.0;
        Figures {
            writes: latencies.len(),
            elapsed_secs: elapsed.as_secs_f64(),
            writes_per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50_ms: ms(percentile(latencies, 0.50)),
            p90_ms: ms(percentile(latencies, 0.90)),
            p99_ms: ms(percentile(latencies, 0.99)),
            max_ms: ms(latencies.last().copied().unwrap_or(0)),
            errors: result.errors,
            last_error: result.last_error,
            fsyncs_per_chosen_value,
            values_per_fsync,
        }
    }
}

fn print_json(bench: &BenchOptions, figures: &Figures) {
    let report = json!({
        "clients": bench.clients,
        "window": bench.window,
        "value_bytes": bench.value_bytes,
        "seconds": figures.elapsed_secs,
        "writes": figures.writes,
        "writes_per_second": figures.writes_per_second,
        "latency_ms": {
            "p50": figures.p50_ms,
            "p90": figures.p90_ms,
            "p99": figures.p99_ms,
            "max": figures.max_ms,
        },
        "errors": figures.errors,
        "last_error": figures.last_error,
        "leader_fsyncs_per_chosen_value": figures.fsyncs_per_chosen_value,
        "leader_values_per_fsync": figures.values_per_fsync,
    });
    println!("{report}");
}

fn print_text(bench: &BenchOptions, figures: &Figures) {
    println!(
        "{} writes in {:.1} s from {} clients (window {}), {} B values",
        figures.writes, figures.elapsed_secs, bench.clients, bench.window, bench.value_bytes
    );
    println!("throughput: {:.0} writes/s", figures.writes_per_second);
    println!(
        "latency:    p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        figures.p50_ms, figures.p90_ms, figures.p99_ms, figures.max_ms
    );
    let last_error = figures.last_error.as_ref().map(|e| format!(" (last: {e})")).unwrap_or_default();
    println!("errors:     {}{last_error}", figures.errors);
    match (figures.fsyncs_per_chosen_value, figures.values_per_fsync) {
        (Some(f), Some(b)) => {
            println!("leader:     {f:.3} fsyncs per chosen value ({b:.1} values per fsync)")
        }
        _ => println!("leader:     fsync figures unavailable (the leader changed during the run)"),
    }
}
