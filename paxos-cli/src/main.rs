//! `paxos-cli`: propose values, read the history, show status and collect garbage, for people
//! and for scripts (`--json` everywhere, meaningful exit codes).

mod bench;
mod commands;
mod demo;
mod output;

use clap::{Parser, Subcommand};
use std::time::Duration;

/// Command-line client of a paxos cluster.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// A node to talk to, HOST:PORT; repeat for several (tried in turn).
    #[arg(
        long = "endpoint",
        global = true,
        env = "PAXOS_ENDPOINTS",
        value_delimiter = ',',
        value_name = "ADDR"
    )]
    pub endpoints: Vec<String>,

    /// Print one machine-readable JSON document on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    /// Cluster name the nodes were started with.
    #[arg(long, global = true, env = "PAXOS_CLUSTER", default_value = paxos_node::config::DEFAULT_CLUSTER)]
    pub cluster: String,

    /// Give up on an operation (with all its retries) after this many milliseconds.
    #[arg(long, global = true, env = "PAXOS_TIMEOUT_MS", default_value_t = 10_000)]
    pub timeout_ms: u64,

    /// Largest value to send, in bytes: the nodes' --value-bytes-max (refused before sending).
    #[arg(long, global = true, env = "PAXOS_VALUE_BYTES_MAX", default_value_t = paxos_core::Config::VALUE_BYTES_MAX_DEFAULT)]
    pub value_bytes_max: usize,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Propose a value (or, with --stdin, one value per input line); prints the chosen slot.
    Propose {
        /// The value, as UTF-8 text.
        #[arg(required_unless_present = "stdin", conflicts_with = "stdin")]
        value: Option<String>,
        /// Read one value per line from standard input and pipeline them over one connection;
        /// prints one slot per line, in input order.
        #[arg(long)]
        stdin: bool,
        /// Proposals in flight at once with --stdin.
        #[arg(long, default_value_t = 256)]
        window: usize,
    },
    /// Print the chosen history of the node asked: "SLOT<TAB>VALUE" lines (a no-op has no value).
    History {
        /// First slot to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Print at most this many slots (default: up to the end of the chosen prefix).
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Show the node's id, the leader, the ballot, watermarks and members.
    Status,
    /// Collect accepted records of chosen slots; optionally truncate history below a slot.
    Gc {
        /// Drop history below this slot (refused while a member has not chosen past it).
        #[arg(long)]
        truncate_below: Option<u64>,
        /// Truncate even if a member is behind (it will catch up from a snapshot).
        #[arg(long, requires = "truncate_below")]
        force: bool,
    },
    /// Measure the cluster: concurrent clients proposing fixed-size values; prints writes/s,
    /// latency percentiles, errors and the leader's fsyncs per chosen value.
    Bench {
        /// Concurrent clients, each on its own connection.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Proposals in flight per client connection.
        #[arg(long, default_value_t = 1)]
        window: usize,
        /// Size of each value in bytes.
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// Run for this many seconds...
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// ...or stop after this many proposals in total.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Start a local 3-node cluster of real paxos-node processes, show it working (proposals,
    /// a kill -9 and a restart, histories compared) and leave it running.
    Demo {
        /// Folder for the nodes' data directories, logs and pids (replaced if it exists).
        #[arg(long, default_value = "paxos-demo")]
        dir: std::path::PathBuf,
        /// Stop the demo cluster running in --dir instead.
        #[arg(long)]
        stop: bool,
    },
}

impl Cli {
    pub fn options(&self) -> paxos_node::client::ClientOptions {
        let endpoints = if self.endpoints.is_empty() {
            vec!["127.0.0.1:7401".to_owned()]
        } else {
            self.endpoints.clone()
        };
        paxos_node::client::ClientOptions {
            endpoints,
            cluster: self.cluster.clone(),
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
            // propose and bench go to the leader directly; history and status answer from the
            // node asked.
            prefer_leader: matches!(self.command, Command::Propose { .. } | Command::Bench { .. }),
            value_bytes_max: self.value_bytes_max,
        }
    }
}

#[tokio::main]
async fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => error.exit(), // --help, --version
        Err(error) => {
            // One line, like every other failure; `--help` has the details.
            let text = error.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            eprintln!("paxos-cli: {first} (see paxos-cli --help)");
            std::process::exit(2);
        }
    };
    if let Err(error) = commands::run(&cli).await {
        // One line saying what is wrong; scripts check the exit code.
        let text = format!("{error:#}").replace('\n', " ");
        eprintln!("paxos-cli: {text}");
        std::process::exit(1);
    }
}
