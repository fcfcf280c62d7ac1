//! What each subcommand does.

use crate::output;
use crate::{Cli, Command, Encoding};
use anyhow::{bail, Context};
use futures::StreamExt;
use paxos_client::client::Client;
use paxos_client::wire::ReadConsistency;
use std::io::Write;
use tokio::io::AsyncBufReadExt;

pub async fn run(cli: &Cli) -> anyhow::Result<()> {
    if let Command::Demo { dir, stop, topology } = &cli.command {
        return if *stop { crate::demo::stop(dir) } else { crate::demo::run(dir, *topology).await };
    }
    if let Command::Certs { nodes, no_clients, overwrite } = &cli.command {
        return certs(cli, nodes, !no_clients, *overwrite);
    }
    if let Command::Bench { clients, window, value_bytes, duration_secs, count } = &cli.command {
        let bench = crate::bench::BenchOptions {
            clients: (*clients).max(1),
            value_bytes: *value_bytes,
            window: *window,
            duration: std::time::Duration::from_secs(*duration_secs),
            count: *count,
        };
        return crate::bench::run(cli.options()?, bench, cli.json).await;
    }
    let client = Client::new(cli.options()?)?;
    let stdout = std::io::stdout();
    match &cli.command {
        Command::Propose { value, stdin: false, file, encoding, .. } => {
            let value = match (value, file) {
                (Some(value), None) => decode(value.as_bytes(), *encoding).context("VALUE")?,
                (None, Some(path)) => {
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
                }
                _ => bail!("give a VALUE, --file PATH or --stdin"),
            };
            let slot = client.propose(value).await?;
            let mut out = stdout.lock();
            if cli.json {
                writeln!(out, "{}", output::slot_json(slot))?;
            } else {
                writeln!(out, "{slot}")?;
            }
        }
        Command::Propose { stdin: true, window, encoding, .. } => {
            propose_stdin(&client, *window, *encoding, cli.json).await?
        }
        Command::History { from, follow: true, encoding, serializable, .. } => {
            follow_history(&client, *from, *encoding, consistency(*serializable), cli.json).await?
        }
        Command::History { from, limit, encoding, follow: false, serializable } => {
            history(&client, *from, *limit, *encoding, consistency(*serializable), cli.json).await?
        }
        Command::Status { all: true } => {
            let rows = member_statuses(cli, &client).await?;
            let mut out = stdout.lock();
            if cli.json {
                writeln!(out, "{}", output::cluster_status_json(&rows))?;
            } else {
                write!(out, "{}", output::cluster_status_text(&rows))?;
            }
        }
        Command::Status { all: false } => {
            let status = client.status().await?;
            let mut out = stdout.lock();
            if cli.json {
                writeln!(out, "{}", output::status_json(&status))?;
            } else {
                write!(out, "{}", output::status_text(&status))?;
            }
        }
        Command::Health { lag_max_slots, member_timeout_ms } => {
            let timeout = std::time::Duration::from_millis(*member_timeout_ms);
            let members = crate::health::check(&client, &cli.options()?, timeout, *lag_max_slots).await?;
            {
                let mut out = stdout.lock();
                if cli.json {
                    writeln!(out, "{}", crate::health::json(&members))?;
                } else {
                    write!(out, "{}", crate::health::text(&members))?;
                }
            }
            let unhealthy = members.iter().filter(|m| !m.healthy()).count();
            if unhealthy > 0 {
                bail!("{unhealthy} of {} members unhealthy", members.len());
            }
        }
        Command::Demo { .. } | Command::Bench { .. } | Command::Certs { .. } => unreachable!("handled above"),
        Command::Member(command) => crate::member::run(cli, &client, command, cli.json).await?,
        Command::Leader(crate::LeaderCommand::Transfer { id }) => {
            let report = client.transfer_leader(*id).await?;
            let mut out = stdout.lock();
            if cli.json {
                writeln!(out, "{}", output::transfer_json(&report))?;
            } else {
                writeln!(out, "{}", output::transfer_text(&report))?;
            }
        }
        Command::Gc { truncate_below, force } => {
            let report = client.gc(*truncate_below, *force).await?;
            // The leader truncated; the others follow from its heartbeats a moment later, and
            // a person reading a follower right now would still see the old entries.
            let followed = match truncate_below {
                Some(cut) => Some(members_following(cli, &client, report.history_start.max(*cut)).await?),
                None => None,
            };
            let mut out = stdout.lock();
            if cli.json {
                writeln!(out, "{}", output::gc_json(&report, followed.as_ref()))?;
            } else {
                write!(out, "{}", output::gc_text(&report, followed.as_ref()))?;
            }
        }
    }
    Ok(())
}

/// Streams standard input through one pipelined connection; prints slots in input order as
/// they are answered. Stops at the first failure (after printing what succeeded before it).
async fn propose_stdin(client: &Client, window: usize, encoding: Encoding, json: bool) -> anyhow::Result<()> {
    let read_error = std::cell::RefCell::new(None);
    // Lines of bytes, not of text: a value is any bytes but a newline.
    let lines = tokio::io::BufReader::new(tokio::io::stdin()).split(b'\n');
    let mut line_number = 0u64;
    let values = futures::stream::unfold(lines, |mut lines| {
        line_number += 1;
        let line_number = line_number;
        let read_error = &read_error;
        async move {
            let error = match lines.next_segment().await {
                Ok(Some(mut line)) => {
                    // A CRLF line ends before its CR, as text tools read it (so does a last
                    // line ending in CR without a newline).
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    match decode(&line, encoding) {
                        Ok(value) => return Some((value, lines)),
                        Err(error) => anyhow::anyhow!("line {line_number}: {error}"),
                    }
                }
                Ok(None) => return None,
                Err(error) => anyhow::anyhow!("reading standard input: {error}"),
            };
            *read_error.borrow_mut() = Some(error);
            None
        }
    });
    let mut results = std::pin::pin!(client.propose_stream(values, window));
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut line = 0u64;
    loop {
        // Lines go out as soon as no further answer is ready: a script reading acknowledgements
        // as they arrive sees each one then, not at exit, while a fast stream still writes in
        // large blocks.
        let next = match futures::FutureExt::now_or_never(results.next()) {
            Some(next) => next,
            None => {
                out.flush()?;
                results.next().await
            }
        };
        let Some(result) = next else { break };
        line += 1;
        let slot = result.with_context(|| format!("line {line}"))?;
        if json {
            writeln!(out, "{}", output::slot_json(slot))?;
        } else {
            writeln!(out, "{slot}")?;
        }
    }
    out.flush()?;
    if let Some(error) = read_error.borrow_mut().take() {
        return Err(error);
    }
    Ok(())
}

/// A value as given on the command line or a line of input.
fn decode(bytes: &[u8], encoding: Encoding) -> anyhow::Result<Vec<u8>> {
    match encoding {
        Encoding::Text => Ok(bytes.to_vec()),
        Encoding::Base64 => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(bytes.trim_ascii()).context("not valid base64")
        }
    }
}

fn certs(cli: &Cli, nodes: &[u64], clients: bool, overwrite: bool) -> anyhow::Result<()> {
    let request = paxos_client::certs::IssueRequest {
        cluster: cli.cluster.clone(),
        nodes: nodes.to_vec(),
        client: clients,
        admin: clients,
        overwrite,
    };
    let issued = paxos_client::certs::issue(&cli.certs_dir, &request)?;
    let mut out = std::io::stdout().lock();
    if cli.json {
        writeln!(out, "{}", output::certs_json(&cli.certs_dir, &issued))?;
    } else {
        write!(out, "{}", output::certs_text(&cli.certs_dir, &issued))?;
    }
    Ok(())
}

/// How long one member may take to answer `status --all`.
const MEMBER_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The status of the one member at `addr`, asked directly (not through the leader).
async fn member_status(
    cli: &Cli,
    addr: &str,
) -> anyhow::Result<Result<paxos_client::wire::StatusReport, String>> {
    let mut options = cli.options()?;
    options.endpoints = vec![addr.to_owned()];
    options.timeout = MEMBER_STATUS_TIMEOUT;
    Ok(Client::new(options)?.status().await.map_err(|error| error.to_string()))
}

/// Every member of the configuration the node asked holds, with its own status (`None`: it did
/// not answer, and why), asked all at once.
async fn member_statuses(cli: &Cli, client: &Client) -> anyhow::Result<Vec<output::MemberRow>> {
    let members = client.status().await?.members;
    let asks = members.into_iter().map(|member| async move {
        let status = member_status(cli, &member.addr).await?;
        anyhow::Ok(output::MemberRow { member, status })
    });
    futures::future::join_all(asks).await.into_iter().collect()
}

/// How long `gc --truncate-below` waits for every member to follow the cut.
const FOLLOW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Which members hold no history below `cut` (they followed the truncation) and which still do
/// or could not be asked, waiting up to `FOLLOW_TIMEOUT` for all to follow.
async fn members_following(cli: &Cli, client: &Client, cut: u64) -> anyhow::Result<output::Followed> {
    let members = client.status().await?.members;
    let deadline = std::time::Instant::now() + FOLLOW_TIMEOUT;
    loop {
        let mut followed = output::Followed::default();
        // All at once: members that are down cost one timeout, not one each.
        let asks = members.iter().map(|member| member_status(cli, &member.addr));
        for (member, answer) in members.iter().zip(futures::future::join_all(asks).await) {
            let start = answer?.ok().map(|status| status.history_start);
            match start {
                Some(start) if start >= cut => followed.followed.push(member.id),
                _ => followed.behind.push((member.id, start)),
            }
        }
        if followed.behind.is_empty() || std::time::Instant::now() >= deadline {
            return Ok(followed);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// How often `history --follow` asks again once it has printed everything applied.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// How long `history --follow` waits before asking again when no endpoint answered.
const FOLLOW_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// `history --follow`: pages from the slot after the last one printed, for ever. The client
/// moves to another endpoint when the one it reads from fails, and asking from `next` means
/// no slot is skipped or printed twice (every node holds the same value at a slot). An outage
/// of every endpoint is waited out (said once on stderr); a refusal ends it.
fn consistency(serializable: bool) -> ReadConsistency {
    if serializable {
        ReadConsistency::Serializable
    } else {
        ReadConsistency::Linearizable
    }
}

async fn follow_history(
    client: &Client,
    from: Option<u64>,
    encoding: Encoding,
    consistency: ReadConsistency,
    json: bool,
) -> anyhow::Result<()> {
    use paxos_client::client::ClientError;
    let mut next = from.unwrap_or(0);
    let mut started = false;
    let mut outage = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut out = std::io::stdout().lock();
    loop {
        let asked = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            page = client.history_with(next, paxos_client::wire::HISTORY_PAGE_ENTRIES_MAX, consistency) => page,
        };
        let page = match asked {
            Err(ClientError::Truncated { history_start, .. })
                if from.is_none() && !started && history_start > next =>
            {
                next = history_start;
                continue;
            }
            Err(error @ (ClientError::Unreachable(_) | ClientError::Timeout { .. })) => {
                if !outage {
                    eprintln!("paxos-cli: {error}; still following, from slot {next}");
                    outage = true;
                }
                tokio::select! {
                    _ = &mut ctrl_c => return Ok(()),
                    _ = tokio::time::sleep(FOLLOW_RETRY) => {}
                }
                continue;
            }
            page => page?,
        };
        started = true;
        outage = false;
        if let Some((first, _)) = page.entries.first() {
            if *first != next {
                bail!("asked the history from slot {next}, got it from slot {first}: refusing to skip");
            }
        }
        let mut text = String::new();
        if json {
            for entry in &page.entries {
                let line = output::history_json(std::slice::from_ref(entry), encoding);
                text.push_str(&format!("{}\n", line[0]));
            }
        } else {
            output::history_lines(&page, encoding, &mut text);
        }
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            // `history --follow | head`: the reader has had enough.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            result => result?,
        }
        if let Some((last, _)) = page.entries.last() {
            next = last + 1;
        }
        if page.entries.is_empty() || next >= page.applied_upto {
            tokio::select! {
                _ = &mut ctrl_c => return Ok(()),
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
            }
        }
    }
}

async fn history(
    client: &Client,
    from: Option<u64>,
    limit: Option<u64>,
    encoding: Encoding,
    consistency: ReadConsistency,
    json: bool,
) -> anyhow::Result<()> {
    let mut entries = Vec::new();
    let mut next = from.unwrap_or(0);
    let mut started = false;
    let mut remaining = limit.unwrap_or(u64::MAX);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    while remaining > 0 {
        let asked = remaining.min(paxos_client::wire::HISTORY_PAGE_ENTRIES_MAX);
        let page = match client.history_with(next, asked, consistency).await {
            // Without --from, the history starts where the node's does.
            Err(paxos_client::client::ClientError::Truncated { history_start, .. })
                if from.is_none() && !started && history_start > next =>
            {
                next = history_start;
                continue;
            }
            page => page?,
        };
        started = true;
        let Some((last, _)) = page.entries.last() else {
            break;
        };
        next = last + 1;
        remaining = remaining.saturating_sub(page.entries.len() as u64);
        if json {
            entries.extend(page.entries);
        } else {
            let mut text = String::new();
            output::history_lines(&page, encoding, &mut text);
            out.write_all(text.as_bytes())?;
        }
        if next >= page.applied_upto {
            break;
        }
    }
    if json {
        writeln!(out, "{}", output::history_json(&entries, encoding))?;
    }
    out.flush()?;
    Ok(())
}
