//! `paxos-node`: one member of a Multi-Paxos cluster. See `paxos-node --help`.

use anyhow::{bail, Context};
use clap::Parser;
use paxos_node::{NodeConfig, NodeHandle};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A durable Multi-Paxos node. With no flags it runs a single-member cluster on 127.0.0.1:7401
/// with its data in ./paxos-data-1.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long, env = "PAXOS_NODE_ID", default_value_t = 1)]
    id: u64,

    /// Address to accept peers and clients on.
    #[arg(long, env = "PAXOS_LISTEN", default_value = "127.0.0.1:7401")]
    listen: SocketAddr,

    /// A member of the cluster as ID=HOST:PORT; repeat once per member, this node included.
    /// Default: this node alone, at its --listen address.
    #[arg(long = "peer", env = "PAXOS_PEERS", value_delimiter = ',', value_name = "ID=ADDR")]
    peers: Vec<String>,

    /// Directory of this node's RocksDB database. Created on first start, then bound to this
    /// node id and cluster. Default: ./paxos-data-<ID>.
    #[arg(long, env = "PAXOS_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// Cluster name; nodes and clients of other clusters are refused.
    #[arg(long, env = "PAXOS_CLUSTER", default_value = paxos_node::config::DEFAULT_CLUSTER)]
    cluster: String,

    /// Length of one protocol tick, in milliseconds.
    #[arg(long, env = "PAXOS_TICK_MS", default_value_t = 20)]
    tick_ms: u64,

    /// The leader sends a heartbeat every this many ticks.
    #[arg(long, env = "PAXOS_HEARTBEAT_TICKS", default_value_t = 5)]
    heartbeat_ticks: u64,

    /// A follower that hears no leader for this many ticks (plus random jitter of up to as
    /// many again) starts an election.
    #[arg(long, env = "PAXOS_ELECTION_TICKS", default_value_t = 25)]
    election_ticks: u64,

    /// Largest value accepted, in bytes.
    #[arg(long, env = "PAXOS_VALUE_BYTES_MAX", default_value_t = 1 << 20)]
    value_bytes_max: usize,
}

fn parse_peers(args: &Args) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut members = BTreeMap::new();
    if args.peers.is_empty() {
        members.insert(args.id, args.listen.to_string());
        return Ok(members);
    }
    for peer in &args.peers {
        let Some((id, addr)) = peer.split_once('=') else {
            bail!("--peer {peer:?} is not of the form ID=HOST:PORT");
        };
        let id: u64 =
            id.trim().parse().with_context(|| format!("--peer {peer:?}: {id:?} is not a node id"))?;
        if addr.trim().is_empty() {
            bail!("--peer {peer:?} has no address");
        }
        if members.insert(id, addr.trim().to_owned()).is_some() {
            bail!("--peer gives node {id} twice");
        }
    }
    Ok(members)
}

async fn shutdown_signal() -> anyhow::Result<&'static str> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => { result?; Ok("SIGINT") }
        _ = terminate.recv() => Ok("SIGTERM"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let members = parse_peers(&args)?;
    let config = NodeConfig {
        id: args.id,
        listen: args.listen,
        data_dir: args.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("paxos-data-{}", args.id))),
        members,
        cluster: args.cluster.clone(),
        tick: Duration::from_millis(args.tick_ms.max(1)),
        heartbeat_interval_ticks: args.heartbeat_ticks,
        election_timeout_ticks: args.election_ticks,
        value_bytes_max: args.value_bytes_max,
    };
    let mut node = NodeHandle::start(config).await.context("paxos-node cannot start")?;
    tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!("{}: shutting down", signal?);
            node.shutdown().await.context("paxos-node stopped with an error")?;
        }
        result = node.wait() => {
            // The driver stops on its own only on a fatal storage error or a broken invariant
            // (a panic): either way the process exits non-zero.
            result.context("paxos-node stopped")?;
        }
    }
    Ok(())
}
