//! What each subcommand does.

use crate::output;
use crate::{Cli, Command};
use anyhow::{bail, Context};
use futures::StreamExt;
use paxos_node::client::Client;
use std::io::Write;
use tokio::io::AsyncBufReadExt;

pub async fn run(cli: &Cli) -> anyhow::Result<()> {
    if let Command::Demo { dir, stop } = &cli.command {
        return if *stop { crate::demo::stop(dir) } else { crate::demo::run(dir).await };
    }
    if let Command::Bench { clients, window, value_bytes, duration_secs, count } = &cli.command {
        let bench = crate::bench::BenchOptions {
            clients: (*clients).max(1),
            value_bytes: *value_bytes,
            window: *window,
            duration: std::time::Duration::from_secs(*duration_secs),
            count: *count,
        };
        return crate::bench::run(cli.options(), bench, cli.json).await;
    }
    let client = Client::new(cli.options())?;
    let stdout = std::io::stdout();
    match &cli.command {
        Command::Propose { value: Some(value), stdin: false, .. } => {
            let slot = client.propose(value.clone().into_bytes()).await?;
            let mut out = stdout.lock();
            if cli.json {
                writeln!(out, "{}", output::slot_json(slot))?;
            } else {
                writeln!(out, "{slot}")?;
            }
        }
        Command::Propose { stdin: true, window, .. } => propose_stdin(&client, *window, cli.json).await?,
        Command::Propose { .. } => bail!("give a VALUE or --stdin"),
        Command::History { from, limit } => history(&client, *from, *limit, cli.json).await?,
        Command::Status => {
            let status = client.status().await?;
            let mut out = stdout.lock();
            if cli.json {
                writeln!(out, "{}", output::status_json(&status))?;
            } else {
                write!(out, "{}", output::status_text(&status))?;
            }
        }
        Command::Demo { .. } | Command::Bench { .. } => unreachable!("handled above"),
        Command::Gc { truncate_below, force } => {
            let report = client.gc(*truncate_below, *force).await?;
            let mut out = stdout.lock();
            if cli.json {
                writeln!(out, "{}", output::gc_json(&report))?;
            } else {
                write!(out, "{}", output::gc_text(&report))?;
            }
        }
    }
    Ok(())
}

/// Streams standard input through one pipelined connection; prints slots in input order as
/// they are answered. Stops at the first failure (after printing what succeeded before it).
async fn propose_stdin(client: &Client, window: usize, json: bool) -> anyhow::Result<()> {
    let read_error = std::cell::RefCell::new(None);
    let lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let values = futures::stream::unfold(lines, |mut lines| async {
        match lines.next_line().await {
            Ok(Some(line)) => Some((line.into_bytes(), lines)),
            Ok(None) => None,
            Err(error) => {
                *read_error.borrow_mut() = Some(error);
                None
            }
        }
    });
    let mut results = std::pin::pin!(client.propose_stream(values, window));
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut line = 0u64;
    while let Some(result) = results.next().await {
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
        bail!("reading standard input: {error}");
    }
    Ok(())
}

async fn history(client: &Client, from: u64, limit: Option<u64>, json: bool) -> anyhow::Result<()> {
    let mut entries = Vec::new();
    let mut next = from;
    let mut remaining = limit.unwrap_or(u64::MAX);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    while remaining > 0 {
        let page = client.history(next, remaining.min(paxos_node::wire::HISTORY_PAGE_ENTRIES_MAX)).await?;
        let Some((last, _)) = page.entries.last() else {
            break;
        };
        next = last + 1;
        remaining = remaining.saturating_sub(page.entries.len() as u64);
        if json {
            entries.extend(page.entries);
        } else {
            let mut text = String::new();
            output::history_lines(&page, &mut text);
            out.write_all(text.as_bytes())?;
        }
        if next >= page.applied_upto {
            break;
        }
    }
    if json {
        writeln!(out, "{}", output::history_json(&entries))?;
    }
    out.flush()?;
    Ok(())
}
