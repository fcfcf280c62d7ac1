//! Drives etcd with N concurrent clients (each its own connection, one put in flight), fixed-size
//! values, for a fixed time; prints one JSON line with writes/s and latency percentiles, in the
//! same shape as `paxos-cli bench --json`.

use clap::Parser;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
}

fn percentile(sorted: &[u64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration_secs);
    let mut tasks = Vec::new();
    for client_index in 0..args.clients {
        let endpoints = args.endpoints.clone();
        let value = vec![b'x'; args.value_bytes];
        tasks.push(tokio::spawn(async move {
            let mut client = etcd_client::Client::connect(endpoints, None).await?;
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let key = format!("bench/{client_index}/{seq}");
                seq += 1;
                let begin = Instant::now();
                match client.put(key, value.clone(), None).await {
                    Ok(_) => latencies.push(begin.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            Ok::<_, anyhow::Error>((latencies, errors))
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mut l, e) = task.await??;
        latencies.append(&mut l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let report = serde_json::json!({
        "clients": args.clients,
        "value_bytes": args.value_bytes,
        "seconds": elapsed,
        "writes": latencies.len(),
        "writes_per_second": latencies.len() as f64 / elapsed,
        "latency_ms": {
            "p50": percentile(&latencies, 0.50),
            "p90": percentile(&latencies, 0.90),
            "p99": percentile(&latencies, 0.99),
            "max": latencies.last().map_or(0.0, |l| *l as f64 / 1000.0),
        },
        "errors": errors,
    });
    println!("{report}");
    Ok(())
}
