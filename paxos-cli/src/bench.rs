//! `paxos-cli bench`: concurrent clients proposing fixed-size values; prints throughput,
//! latency percentiles, errors, and the cluster's fsyncs per chosen value.

use anyhow::Context;
use futures::future::join_all;
use paxos_node::client::{Client, ClientOptions};
use paxos_node::wire::StatusReport;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
}

/// The leader's status (fsync and apply counters), if some endpoint answers.
async fn leader_status(options: &ClientOptions) -> Option<StatusReport> {
    for endpoint in &options.endpoints {
        let mut one = ClientOptions::new(vec![endpoint.clone()]);
        one.cluster = options.cluster.clone();
        one.timeout = Duration::from_secs(2);
        if let Ok(status) = Client::new(one).ok()?.status().await {
            if status.role == paxos_core::RoleName::Leader {
                return Some(status);
            }
            if let Some(addr) = status.leader.and_then(|l| status.members.iter().find(|m| m.id == l)) {
                let mut leader = ClientOptions::new(vec![addr.addr.clone()]);
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

pub async fn run(options: ClientOptions, bench: BenchOptions, json_output: bool) -> anyhow::Result<()> {
    let before = leader_status(&options).await.context("no leader reachable to benchmark")?;
    let total = bench.count;
    let progress = if json_output {
        indicatif::ProgressBar::hidden()
    } else {
        match total {
            Some(count) => indicatif::ProgressBar::new(count),
            None => indicatif::ProgressBar::new(bench.duration.as_secs().max(1)),
        }
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + bench.duration;
    let mut tasks = Vec::new();
    for _ in 0..bench.clients {
        let client = Client::new(options.clone())?;
        let done = done.clone();
        let stop = stop.clone();
        let value = vec![b'x'; bench.value_bytes];
        let window = bench.window.max(1);
        tasks.push(tokio::spawn(async move {
            let mut result = ClientResult::default();
            // `window` proposals in flight on this client's connection.
            let lanes = (0..window).map(|_| {
                let client = client.clone();
                let done = done.clone();
                let stop = stop.clone();
                let value = value.clone();
                async move {
                    let mut lane = ClientResult::default();
                    loop {
                        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline && total.is_none() {
                            break;
                        }
                        if let Some(total) = total {
                            if done.fetch_add(1, Ordering::Relaxed) >= total {
                                break;
                            }
                        }
                        let begin = Instant::now();
                        match client.propose(value.clone()).await {
                            Ok(_) => {
                                lane.latencies_us.push(begin.elapsed().as_micros() as u64);
                                if total.is_none() {
                                    done.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(error) => {
                                lane.errors += 1;
                                lane.last_error = Some(error.to_string());
                            }
                        }
                    }
                    lane
                }
            });
            for lane in join_all(lanes).await {
                result.latencies_us.extend(lane.latencies_us);
                result.errors += lane.errors;
                result.last_error = lane.last_error.or(result.last_error);
            }
            result
        }));
    }
    // Progress: count (or seconds) until every client finishes.
    let ticker = {
        let progress = progress.clone();
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let finished = done.load(Ordering::Relaxed);
                match total {
                    Some(total) => progress.set_position(finished.min(total)),
                    None => {
                        progress.set_position(started.elapsed().as_secs());
                        progress.set_message(format!("{finished} proposals"));
                    }
                }
            }
        })
    };
    let results = join_all(tasks).await;
    stop.store(true, Ordering::Relaxed);
    ticker.abort();
    progress.finish_and_clear();
    let elapsed = started.elapsed();
    let mut latencies = Vec::new();
    let (mut errors, mut last_error) = (0, None);
    for result in results {
        let result = result.context("a client task failed")?;
        latencies.extend(result.latencies_us);
        errors += result.errors;
        last_error = result.last_error.or(last_error);
    }
    latencies.sort_unstable();
    let after = leader_status(&options).await;
    let (fsyncs_per_value, batch_average) = match &after {
        Some(after)
            if after.node == before.node && after.applied_since_start > before.applied_since_start =>
        {
            let fsyncs = after.fsyncs.saturating_sub(before.fsyncs) as f64;
            let applied = (after.applied_since_start - before.applied_since_start) as f64;
            (Some(fsyncs / applied), (fsyncs > 0.0).then(|| applied / fsyncs))
        }
        _ => (None, None),
    };
    let writes_per_second = latencies.len() as f64 / elapsed.as_secs_f64();
    let ms = |us: u64| us as f64 / 1000.0;
    let report = json!({
        "clients": bench.clients,
        "window": bench.window,
        "value_bytes": bench.value_bytes,
        "seconds": elapsed.as_secs_f64(),
        "writes": latencies.len(),
        "writes_per_second": writes_per_second,
        "latency_ms": {
            "p50": ms(percentile(&latencies, 0.50)),
            "p90": ms(percentile(&latencies, 0.90)),
            "p99": ms(percentile(&latencies, 0.99)),
            "max": ms(latencies.last().copied().unwrap_or(0)),
        },
        "errors": errors,
        "last_error": last_error,
        "leader_fsyncs_per_chosen_value": fsyncs_per_value,
        "leader_values_per_fsync": batch_average,
    });
    if json_output {
        println!("{report}");
    } else {
        println!(
            "{} writes in {:.1} s from {} clients (window {}), {} B values",
            latencies.len(),
            elapsed.as_secs_f64(),
            bench.clients,
            bench.window,
            bench.value_bytes
        );
        println!("throughput: {writes_per_second:.0} writes/s");
        println!(
            "latency:    p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.90)),
            ms(percentile(&latencies, 0.99)),
            ms(latencies.last().copied().unwrap_or(0))
        );
        println!("errors:     {errors}{}", last_error.map(|e| format!(" (last: {e})")).unwrap_or_default());
        match (fsyncs_per_value, batch_average) {
            (Some(f), Some(b)) => {
                println!("leader:     {f:.3} fsyncs per chosen value ({b:.1} values per fsync)")
            }
            _ => println!("leader:     fsync figures unavailable (the leader changed during the run)"),
        }
    }
    Ok(())
}
