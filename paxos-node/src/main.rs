//! `paxos-node`: one member of a Multi-Paxos cluster. See `paxos-node --help`.

/// jemalloc, not glibc's malloc, for Rust and (unprefixed) RocksDB's C++: after a load of large
/// values glibc kept every node at ~0.5 GiB for good (freed 1 MiB buffers stay in its arenas
/// once its mmap threshold has grown past them). jemalloc's background threads purge freed
/// pages after a second (`dirty_decay_ms:1000,muzzy_decay_ms:0`, set at build time in
/// `.cargo/config.toml`), whichever thread freed them. (mimalloc, tried first, kept a follower
/// at 200 MiB: pages freed by threads that then went idle stayed theirs.)
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use anyhow::{bail, Context};
use clap::Parser;
use paxos_node::certs::IssueRequest;
use paxos_node::config::ClusterState;
use paxos_node::connection::ReadTimeouts;
use paxos_node::tls::{CertFiles, Security, Tls};
use paxos_node::{NodeConfig, NodeHandle};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A durable Multi-Paxos node. With no flags it runs a single-member cluster on 127.0.0.1:7401
/// with its data in ./paxos-data-1, and certificates in ./paxos-certs (created if missing).
///
/// Links are mutual TLS: the node presents CERTS_DIR/node-<ID>.pem and trusts only
/// CERTS_DIR/ca.pem. Create them with `paxos-cli certs --nodes 1,2,3`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum InitialClusterState {
    New,
    Existing,
}

#[derive(clap::Subcommand, Debug)]
enum NodeCommand {
    /// Show what a data directory holds (identity, promised ballot, accepted records, applied
    /// prefix, history and truncation, duplicate table, configuration) without starting a
    /// node and without changing a byte. Works on a running node's directory too (read-only,
    /// as of the moment it is read).
    Inspect {
        /// The data directory (the node's --data-dir).
        #[arg(long)]
        data_dir: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// First check every record's checksum; exit 1 naming the first bad record.
        #[arg(long)]
        verify: bool,
    },
}

#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Option<NodeCommand>,

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

    /// `new`: this node takes part in the bootstrap of a brand-new cluster (the --peer list);
    /// the first configuration is chosen only once every listed member has answered, and binds
    /// each one's data directory. `existing`: this node joins a cluster that is running (after
    /// `paxos-cli member add`, or after losing its disk and `paxos-cli member replace`): it
    /// learns the history and never campaigns before it knows the cluster's configuration
    /// (the --peer list then only says where to find peers). Matters only for an
    /// empty data directory; afterwards the chosen configuration decides. A member restarted
    /// with an empty directory never votes under its old id until `member replace` admits the
    /// new directory, whichever state it is started with.
    #[arg(long, env = "PAXOS_INITIAL_CLUSTER_STATE", value_enum, default_value = "new")]
    initial_cluster_state: InitialClusterState,

    /// What this node does: `voter` (votes, may lead), `acceptor` (votes and keeps promises
    /// and accepted values durably, never leads: a witness), `proposer` (may lead, keeps no
    /// acceptor state, never counted in a quorum) or `learner` (only receives the history).
    /// Quorums are majorities of the voters and acceptors. Counts for the bootstrap of a
    /// brand-new cluster (every member announces its own); afterwards the configuration
    /// decides, and `paxos-cli member role ID ROLE` changes it.
    #[arg(long, env = "PAXOS_ROLE", default_value = "voter", value_parser = parse_role)]
    role: paxos_core::MemberRole,

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

    /// Directory of the cluster's certificates, as `paxos-cli certs` lays it out (one
    /// directory per identity); this node reads CERTS_DIR/node-<ID>/ unless --certs names its
    /// directory. A node alone in its cluster creates it (a new CA in CERTS_DIR/ca/, its own
    /// identity, client/ and admin/) if it does not exist.
    #[arg(long, env = "PAXOS_CERTS_DIR", default_value = "paxos-certs")]
    certs_dir: PathBuf,

    /// This node's own certificate directory (ca.pem, cert.pem, key.pem): what `paxos-cli certs`
    /// wrote as CERTS_DIR/node-<ID>/, copied to this node's machine alone.
    #[arg(long, env = "PAXOS_CERTS", value_name = "DIR")]
    certs: Option<PathBuf>,

    /// Run without TLS: no authentication, no encryption. Anyone who can reach the port can
    /// pose as a member or an admin, forge votes and delete history. For experiments only.
    #[arg(long, env = "PAXOS_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,

    /// A connection that sends nothing for this long is closed (clients reconnect on their own;
    /// peers send heartbeats far more often).
    #[arg(long, env = "PAXOS_IDLE_TIMEOUT_MS", default_value_t = paxos_node::config::DEFAULT_TIMEOUTS.idle.as_millis() as u64)]
    idle_timeout_ms: u64,

    /// A frame begun must arrive within this long, and a caller must read what it is sent within
    /// this long, or its connection is closed.
    #[arg(long, env = "PAXOS_FRAME_TIMEOUT_MS", default_value_t = paxos_node::config::DEFAULT_TIMEOUTS.frame.as_millis() as u64)]
    frame_timeout_ms: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP, no authentication: bind
    /// an address only your monitoring reaches, e.g. 127.0.0.1:9401). Not served by default.
    #[arg(long, env = "PAXOS_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

/// TLS from the certificates directory; a lone node creates one if there is none, so that
/// `paxos-node` with no flags keeps working.
fn security(args: &Args, members: &BTreeMap<u64, String>) -> anyhow::Result<Security> {
    if args.insecure_plaintext {
        tracing::warn!("--insecure-plaintext: links are neither authenticated nor encrypted");
        return Ok(Security::InsecurePlaintext);
    }
    let identity = args.certs.clone().unwrap_or_else(|| args.certs_dir.join(format!("node-{}", args.id)));
    let files = CertFiles::identity(&identity);
    if args.certs.is_none() && !args.certs_dir.exists() {
        if members.len() > 1 {
            bail!(
                "no certificates in {dir}: create them with `paxos-cli certs --certs-dir {dir} --cluster {cluster} --nodes {ids}` \
                 and give node N its own directory {dir}/node-N only (keep {dir}/ca and the other identities off its machine), or run with --insecure-plaintext",
                dir = args.certs_dir.display(),
                cluster = args.cluster,
                ids = members.keys().map(|id| id.to_string()).collect::<Vec<_>>().join(",")
            );
        }
        let request = IssueRequest {
            cluster: args.cluster.clone(),
            nodes: vec![args.id],
            client: true,
            admin: true,
            overwrite: false,
        };
        paxos_node::certs::issue(&args.certs_dir, &request)
            .with_context(|| format!("cannot create certificates in {}", args.certs_dir.display()))?;
        tracing::info!(
            "created a new CA and certificates in {} (clients use its client/ directory; admin/ for gc and membership)",
            args.certs_dir.display()
        );
    }
    let tls = Tls::for_node(&files, &args.cluster, args.id).with_context(|| {
        format!(
            "TLS: node {} has no usable certificate in {} (`paxos-cli certs --certs-dir {} --cluster {} --nodes {}` issues one)",
            args.id,
            identity.display(),
            args.certs_dir.display(),
            args.cluster,
            args.id
        )
    })?;
    Ok(Security::Tls(Arc::new(tls)))
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
        let addr = addr.trim();
        check_address(addr).with_context(|| format!("--peer {peer:?}"))?;
        if members.insert(id, addr.to_owned()).is_some() {
            bail!("--peer gives node {id} twice");
        }
    }
    Ok(members)
}

/// A member's address must be HOST:PORT (a name is resolved when the link connects, so a
/// member whose name does not resolve yet can still be listed). Anything else would start a
/// node that can never reach that member.
fn check_address(addr: &str) -> anyhow::Result<()> {
    if addr.parse::<SocketAddr>().is_ok_and(|socket| socket.port() > 0) {
        return Ok(()); // 127.0.0.1:7402, [::1]:7402
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        bail!("{addr:?} is not an address of the form HOST:PORT (e.g. 127.0.0.1:7402)");
    };
    if host.contains(':') || host.contains('[') || host.contains(']') {
        bail!(
            "{addr:?} is not an address of the form HOST:PORT (an IPv6 address needs brackets: [::1]:7402)"
        );
    }
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        bail!("{addr:?} has no valid host (the form is HOST:PORT, e.g. node1.example:7402)");
    }
    match port.parse::<u16>() {
        Ok(number) if number > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => bail!("{port:?} is not a port (1-65535)"),
    }
}

fn parse_role(text: &str) -> Result<paxos_core::MemberRole, String> {
    text.parse()
}

async fn shutdown_signal() -> anyhow::Result<&'static str> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => { result?; Ok("SIGINT") }
        _ = terminate.recv() => Ok("SIGTERM"),
    }
}

/// Expected errors (a bad flag, a directory in use or of another node, no space) print their
/// reason chain on one line and exit 1. Returning the error from `main` would print it with
/// `Debug`, which appends a backtrace whenever RUST_BACKTRACE is set, as it is for many Rust
/// users: backtraces are for bugs, and a bug panics (and still prints one).
fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("paxos-node: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // After the log lines, so the reason is the last thing on the terminal.
            // One line even if a message in the chain has several.
            eprintln!("paxos-node: {}", format!("{error:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if let Some(NodeCommand::Inspect { data_dir, json, verify }) = &args.command {
        let inspection = paxos_node::storage::Storage::inspect(data_dir, *verify)?;
        if *json {
            println!("{}", paxos_node::inspect::json(&inspection));
        } else {
            print!("{}", paxos_node::inspect::text(&inspection));
        }
        return Ok(());
    }
    let members = parse_peers(&args)?;
    let security = security(&args, &members)?;
    // The log holds every client's values: files and directories this process creates are
    // its user's only (the data directory is made 0700 at open, older files 0600).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let open_files_limit = paxos_node::limits::raise_open_files_limit().context("reading RLIMIT_NOFILE")?;
    let budget = paxos_node::limits::FileBudget::derive(open_files_limit).map_err(anyhow::Error::msg)?;
    tracing::info!(
        open_files_limit,
        client_connections_max = budget.client_connections_max,
        handshakes_max = budget.handshakes_max,
        rocksdb_open_files_max = paxos_node::storage::ROCKSDB_OPEN_FILES_MAX,
        "file descriptor budget"
    );
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
        security,
        timeouts: ReadTimeouts {
            idle: Duration::from_millis(args.idle_timeout_ms),
            frame: Duration::from_millis(args.frame_timeout_ms),
        },
        initial_cluster_state: match args.initial_cluster_state {
            InitialClusterState::New => ClusterState::New,
            InitialClusterState::Existing => ClusterState::Existing,
        },
        role: args.role,
        metrics_listen: args.metrics_listen,
        client_connections_max: budget.client_connections_max,
        handshakes_max: budget.handshakes_max,
    };
    let mut node = NodeHandle::start(config).await.context("cannot start")?;
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

#[cfg(test)]
mod tests {
    use super::check_address;

    #[test]
    fn member_addresses_must_be_host_and_port() {
        for good in ["127.0.0.1:7402", "[::1]:7402", "node1.example:7402", "localhost:1"] {
            assert!(check_address(good).is_ok(), "{good}");
        }
        let bad = [
            "bad",
            "::1",
            "fe80::1",
            "[::1",
            "[::1:7401",
            "[host]:7401",
            "http://h:80",
            "h:0",
            "h:+80",
            ":7402",
            "h:99999",
            "[::1]",
        ];
        for bad in bad {
            assert!(check_address(bad).is_err(), "{bad}");
        }
    }
}
