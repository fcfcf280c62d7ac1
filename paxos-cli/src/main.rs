//! `paxos-cli`: propose values, read the history, show status and collect garbage, for people
//! and for scripts (`--json` everywhere, meaningful exit codes).

mod bench;
mod commands;
mod demo;
mod health;
mod member;
mod output;

use anyhow::Context;
use clap::{Parser, Subcommand};
use paxos_client::tls::{CertFiles, Security, Tls};
use paxos_core::MemberRole;
use std::path::PathBuf;
use std::sync::Arc;
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
    #[arg(long, global = true, env = "PAXOS_CLUSTER", default_value = paxos_client::DEFAULT_CLUSTER)]
    pub cluster: String,

    /// Give up on an operation (with all its retries) after this many milliseconds.
    #[arg(long, global = true, env = "PAXOS_TIMEOUT_MS", default_value_t = 10_000)]
    pub timeout_ms: u64,

    /// Directory of the cluster's certificates (`paxos-cli certs` creates it): one directory
    /// per identity (ca/, node-N/, client/, admin/).
    #[arg(long, global = true, env = "PAXOS_CERTS_DIR", default_value = "paxos-certs")]
    pub certs_dir: PathBuf,

    /// Whose certificate to present, as CERTS_DIR/NAME/: `client` may propose and read,
    /// `admin` may also collect garbage, change members and move the leader. Default: admin for
    /// those, client otherwise.
    #[arg(long, global = true, env = "PAXOS_IDENTITY", value_name = "NAME")]
    pub identity: Option<String>,

    /// The certificate directory to present (ca.pem, cert.pem, key.pem), instead of
    /// CERTS_DIR/IDENTITY/: the one directory a client's machine was given.
    #[arg(long, global = true, env = "PAXOS_CERTS", value_name = "DIR")]
    pub certs: Option<PathBuf>,

    /// Talk plaintext, to nodes started with --insecure-plaintext (no authentication, no
    /// encryption).
    #[arg(long, global = true, env = "PAXOS_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,

    /// Largest value to send, in bytes: the nodes' --value-bytes-max (refused before sending).
    #[arg(long, global = true, env = "PAXOS_VALUE_BYTES_MAX", default_value_t = paxos_core::Config::VALUE_BYTES_MAX_DEFAULT)]
    pub value_bytes_max: usize,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum LeaderCommand {
    /// Hand leadership to member ID at once
    ///
    /// Without waiting out an election timeout: the leader stops proposing, brings ID up to date and tells it to campaign at once (before taking the
    /// leader's machine down, say). Waits until ID leads. Refused if ID is down, cut off, or a
    /// member that cannot lead (an acceptor or a learner). Needs the admin certificate.
    Transfer {
        /// The member to lead (a voter or a proposer).
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Every member with its address, role, incarnation and progress (from the node asked).
    List,
    /// Add a member, ID=HOST:PORT
    ///
    /// It joins as a learner, catches up, and the leader promotes
    /// it to its role (--role, voter by default). Prints the `paxos-node` command that starts
    /// it (--initial-cluster-state existing, every member's --peer; it needs a node certificate
    /// of this cluster: `paxos-cli certs --nodes ID`) and says when nothing answers at its
    /// address. Exits 1 if it is not yet a ROLE when the wait ends.
    Add {
        /// The new member, as ID=HOST:PORT.
        #[arg(value_name = "ID=ADDR")]
        member: String,
        /// voter (votes, may lead), acceptor (votes, never leads), proposer (may lead, never
        /// counted in a quorum, keeps no acceptor state) or learner (only receives the history).
        #[arg(long, default_value = "voter", value_parser = parse_role)]
        role: MemberRole,
        /// The same as --role learner.
        #[arg(long, conflicts_with = "role")]
        learner: bool,
        /// Return once the entry adding it is chosen, without waiting for the promotion.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the promotion (catching up a long history takes a while).
        #[arg(long, default_value_t = 60_000)]
        wait_ms: u64,
    },
    /// Remove a member
    ///
    /// The leader too: it steps down once the change is applied.
    Remove { id: u64 },
    /// Give member ID another role
    ///
    /// Voter, acceptor, proposer or learner. Refused if no
    /// member could lead or none could vote afterwards; a change of whether it votes moves one
    /// voting member, like an addition or a removal.
    Role {
        id: u64,
        #[arg(value_parser = parse_role)]
        role: MemberRole,
    },
    /// Admit a member's new data directory
    ///
    /// The one member ID runs with now (after it lost its disk and was
    /// restarted empty): its old votes no longer count, it catches up as a learner and is
    /// promoted back to voter.
    Replace {
        id: u64,
        /// Return once the entry is chosen, without waiting for the promotion.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the promotion.
        #[arg(long, default_value_t = 60_000)]
        wait_ms: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Propose a value; print its slot
    ///
    /// Or, with --stdin, one value per input line; with --file, a file's bytes. Prints the
    /// chosen slot of each.
    Propose {
        /// The value: text, or base64 with --encoding base64.
        #[arg(required_unless_present_any = ["stdin", "file"], conflicts_with_all = ["stdin", "file"])]
        value: Option<String>,
        /// Read one value per line from standard input (any bytes but a newline, and a CR that
        /// ends a line is dropped; base64 with --encoding base64) and pipeline them over one connection; prints one slot per line,
        /// in input order.
        #[arg(long, conflicts_with = "file")]
        stdin: bool,
        /// Propose the whole content of PATH as one value, byte for byte.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// How VALUE and standard input lines are written.
        #[arg(long, value_enum, default_value_t = Encoding::Text)]
        encoding: Encoding,
        /// Proposals in flight at once with --stdin.
        #[arg(long, default_value_t = 256)]
        window: usize,
    },
    /// Print the chosen history
    ///
    /// Linearizable: it holds every value acknowledged before the command started, whichever
    /// node answers (the node confirms the leader's commit point first, like `etcdctl get`);
    /// --serializable reads the node's own applied prefix instead. "SLOT<TAB>VALUE" lines (a
    /// no-op has no value). Text output escapes backslashes, control characters (\n, \t, \u{..}) and bytes that
    /// are not UTF-8 (\xNN), so every value stays on its line; --encoding base64 prints base64.
    /// With --json, a value that is not UTF-8 comes as "value_base64".
    History {
        /// How values are printed: escaped text, or base64.
        #[arg(long, value_enum, default_value_t = Encoding::Text)]
        encoding: Encoding,
        /// First slot to print (default: the first slot the node still holds; asking below
        /// a truncation is an error).
        #[arg(long)]
        from: Option<u64>,
        /// Print at most this many slots (default: up to the end of the chosen prefix).
        #[arg(long, conflicts_with = "follow")]
        limit: Option<u64>,
        /// Keep printing entries as they are applied, like `tail -f` (with --json, one object
        /// per line). If the node asked goes away, another endpoint takes over from the slot
        /// after the last one printed; Ctrl-C stops.
        #[arg(long)]
        follow: bool,
        /// Read the node's own applied prefix, at once and without a leader: it may miss
        /// values acknowledged a moment ago (a follower hears the commit point a heartbeat
        /// later).
        #[arg(long)]
        serializable: bool,
    },
    /// Show the node's id, the leader, the ballot, watermarks and members.
    Status {
        /// Ask every member of the configuration the node holds and print one table: id,
        /// address, role, leader, ballot, applied prefix, history start, lag behind the most
        /// advanced member, reachable or not.
        #[arg(long)]
        all: bool,
    },
    /// Check that every member is up, led, admitted and keeping up
    ///
    /// Asks each member of the configuration directly; one line per member. Exits 1 when a
    /// member does not answer, knows no leader, reports a problem (not admitted, a foreign
    /// log, a member that lost its disk) or is more than --lag-max-slots behind.
    Health {
        /// Slots a member may be behind the most advanced one and still be healthy.
        #[arg(long, default_value_t = 1000)]
        lag_max_slots: u64,
        /// How long each member has to answer.
        #[arg(long, default_value_t = 2000)]
        member_timeout_ms: u64,
    },
    /// Show or change the members
    ///
    /// The configuration: who the members are, their roles, and which data directory (incarnation) of each the cluster admits. Changes go through the leader, one
    /// at a time, as entries of the log; they need the admin certificate.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Move leadership to a chosen member.
    #[command(subcommand)]
    Leader(LeaderCommand),
    /// Collect garbage; optionally truncate the history
    ///
    /// Collects accepted records of chosen slots; --truncate-below cuts the history below a
    /// slot.
    Gc {
        /// Drop history below this slot (refused while a member has not chosen past it).
        #[arg(long)]
        truncate_below: Option<u64>,
        /// Truncate even if a member is behind (it will catch up from a snapshot).
        #[arg(long, requires = "truncate_below")]
        force: bool,
    },
    /// Measure the cluster's writes/s and latency
    ///
    /// Concurrent clients proposing fixed-size values; prints writes/s, latency percentiles, errors and the leader's fsyncs per chosen value.
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
    /// Create the CA and one certificate directory per identity
    ///
    /// The cluster's certificate authority in CERTS_DIR/ca/ (unless it has one), and from it one self-contained directory per identity: CERTS_DIR/node-ID/ for each --nodes
    /// id, client/ and admin/ (each ca.pem, cert.pem, key.pem). Hand each process its own
    /// directory only. Directories and keys are readable by their owner only; existing
    /// identities are kept unless --overwrite.
    Certs {
        /// Node ids to issue certificates for, e.g. 1,2,3.
        #[arg(long, value_delimiter = ',', value_name = "ID")]
        nodes: Vec<u64>,
        /// Do not issue client/ and admin/.
        #[arg(long)]
        no_clients: bool,
        /// Replace certificates that exist already (the CA is always kept).
        #[arg(long)]
        overwrite: bool,
    },
    /// Start a local cluster and show it working
    ///
    /// Three real paxos-node processes: proposals, a kill -9 and a restart, histories
    /// compared; the cluster keeps running.
    Demo {
        /// Folder for the nodes' data directories, logs and pids (replaced if it exists).
        #[arg(long, default_value = "paxos-demo")]
        dir: std::path::PathBuf,
        /// `three`: 3 voters; a leader is killed and restarted. `seed`: 2 proposers and 5
        /// acceptors (roles apart); 2 acceptors are killed, 1000 values go through both
        /// proposers, the acceptors come back.
        #[arg(long, value_enum, default_value = "three")]
        topology: demo::Topology,
        /// Stop the demo cluster running in --dir instead.
        #[arg(long)]
        stop: bool,
    },
}

/// How values are written on the command line and printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// As text (printed with escapes where needed).
    Text,
    /// Standard base64, with padding.
    Base64,
}

impl Cli {
    /// TLS with the certificate of `--identity` (admin for gc), or plaintext if asked.
    pub fn security(&self) -> anyhow::Result<Security> {
        if self.insecure_plaintext {
            return Ok(Security::InsecurePlaintext);
        }
        let admin = matches!(
            self.command,
            Command::Gc { .. }
                | Command::Leader(_)
                | Command::Member(
                    MemberCommand::Add { .. }
                        | MemberCommand::Remove { .. }
                        | MemberCommand::Replace { .. }
                        | MemberCommand::Role { .. }
                )
        );
        let default = if admin { "admin" } else { "client" };
        let identity = self.identity.as_deref().unwrap_or(default);
        let dir = self.certs.clone().unwrap_or_else(|| self.certs_dir.join(identity));
        let files = CertFiles::identity(&dir);
        let tls = Tls::for_client(&files, &self.cluster).with_context(|| {
            format!(
                "no usable {identity} certificate in {} (create one with `paxos-cli certs`, point --certs-dir at the cluster's or --certs at the identity's directory, or --insecure-plaintext for nodes without TLS)",
                dir.display()
            )
        })?;
        Ok(Security::Tls(Arc::new(tls)))
    }

    pub fn options(&self) -> anyhow::Result<paxos_client::client::ClientOptions> {
        let endpoints = if self.endpoints.is_empty() {
            vec!["127.0.0.1:7401".to_owned()]
        } else {
            self.endpoints.clone()
        };
        Ok(paxos_client::client::ClientOptions {
            endpoints,
            security: self.security()?,
            cluster: self.cluster.clone(),
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
            // propose and bench go to the leader directly; history and status answer from the
            // node asked.
            prefer_leader: matches!(self.command, Command::Propose { .. } | Command::Bench { .. }),
            value_bytes_max: self.value_bytes_max,
        })
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

fn parse_role(text: &str) -> Result<MemberRole, String> {
    text.parse()
}
