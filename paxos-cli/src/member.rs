//! `paxos-cli member`: show and change the configuration.

use crate::{Cli, MemberCommand};
use anyhow::{bail, Context};
use paxos_client::client::{Client, ClientError};
use paxos_client::wire::StatusReport;
use paxos_core::{ChangeError, MemberRole, MembershipChange, NodeId, ProposalError, Slot};
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};

const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long a new member's address has to answer a status request.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn run(cli: &Cli, client: &Client, command: &MemberCommand, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        MemberCommand::List => {
            let status = client.status().await?;
            let progress = leader_progress(cli, &status).await?;
            if json {
                writeln!(out, "{}", list_json(&status, &progress))?;
            } else {
                write!(out, "{}", list_text(&status, &progress))?;
            }
        }
        MemberCommand::Add { member, role, learner, no_wait, wait_ms } => {
            let (id, address) = parse_member(member)?;
            let role = if *learner { MemberRole::Learner } else { *role };
            let change = MembershipChange::Add { id, address: address.clone(), role };
            let slot = client.change_membership(change).await?;
            let start = start_command(cli, &client.status().await?, id, &address);
            let wait = (role != MemberRole::Learner && !*no_wait).then(|| Duration::from_millis(*wait_ms));
            let outcome = settle(cli, client, id, &address, role, wait, json).await?;
            report(&mut out, json, "added", id, slot, role, &outcome, Some(&start))?;
            outcome.check(id, role)?;
        }
        MemberCommand::Remove { id } => {
            let slot = client.change_membership(MembershipChange::Remove { id: *id }).await?;
            let (applied, remaining) = applied_by_remaining(cli, client, *id, slot).await?;
            if json {
                let line = json!({
                    "id": id, "removed_at": slot, "applied_by": applied, "remaining_members": remaining,
                });
                writeln!(out, "{line}")?;
            } else {
                writeln!(
                    out,
                    "node {id} removed by the configuration at slot {slot} (applied by {applied} of the {remaining} remaining members)"
                )?;
                if applied * 2 <= remaining {
                    eprintln!(
                        "warning: only {applied} of the {remaining} remaining members have applied the removal yet; \
                         stopping node {id} now and losing one more member may leave no majority that knows it"
                    );
                }
            }
        }
        MemberCommand::Role { id, role } => {
            let slot = client.change_membership(MembershipChange::SetRole { id: *id, role: *role }).await?;
            if json {
                writeln!(out, "{}", json!({ "id": id, "role": role, "changed_at": slot }))?;
            } else {
                let article = if *role == MemberRole::Acceptor { "an" } else { "a" };
                writeln!(out, "node {id} is {article} {role} since the configuration at slot {slot}")?;
            }
        }
        MemberCommand::Replace { id, no_wait, wait_ms } => {
            let before = client.status().await?;
            let role = before
                .members
                .iter()
                .find(|m| m.id == *id)
                .map(|m| m.promote_to.unwrap_or(m.role))
                .unwrap_or(MemberRole::Voter);
            let address =
                before.members.iter().find(|m| m.id == *id).map(|m| m.addr.clone()).unwrap_or_default();
            let slot = replace_once_restarted(client, *id, json).await?;
            let wait = (role != MemberRole::Learner && !*no_wait).then(|| Duration::from_millis(*wait_ms));
            let outcome = settle(cli, client, *id, &address, role, wait, json).await?;
            report(&mut out, json, "replaced", *id, slot, role, &outcome, None)?;
            outcome.check(*id, role)?;
        }
    }
    drop(out);
    warn_if_weak(client, json).await;
    Ok(())
}

/// After a change, says on stderr why the configuration is weak, if it is (legal, but a
/// failure would stop the cluster).
async fn warn_if_weak(client: &Client, json: bool) {
    if json {
        return;
    }
    if let Ok(status) = client.status().await {
        for warning in &status.warnings {
            eprintln!("warning: {warning}");
        }
    }
}

fn parse_member(member: &str) -> anyhow::Result<(NodeId, String)> {
    let Some((id, address)) = member.split_once('=') else {
        bail!("{member:?} is not of the form ID=HOST:PORT");
    };
    let id: NodeId = id.trim().parse().with_context(|| format!("{id:?} is not a node id"))?;
    if id == 0 {
        bail!("node id 0 is reserved; ids start at 1");
    }
    let address = address.trim();
    if address.parse::<std::net::SocketAddr>().is_err() && !address.contains(':') {
        bail!("{address:?} is not a HOST:PORT address");
    }
    Ok((id, address.to_owned()))
}

/// How long `member remove` waits for the remaining members to apply the removal.
const REMOVAL_APPLIED_WAIT: Duration = Duration::from_secs(5);

/// How many of the members that remain after removing `removed` have applied the removal
/// chosen at `slot` (asked directly), waiting up to `REMOVAL_APPLIED_WAIT` for a majority of
/// them, and how many remain. A removal only the departing leader knows is chosen is fragile:
/// the others hold the old configuration, in which one more failure may leave no majority.
async fn applied_by_remaining(
    cli: &Cli,
    client: &Client,
    removed: NodeId,
    slot: Slot,
) -> anyhow::Result<(usize, usize)> {
    let members: Vec<String> =
        client.status().await?.members.into_iter().filter(|m| m.id != removed).map(|m| m.addr).collect();
    let deadline = Instant::now() + REMOVAL_APPLIED_WAIT;
    loop {
        let mut asks = Vec::new();
        for address in &members {
            let mut options = cli.options()?;
            options.endpoints = vec![address.clone()];
            options.timeout = PROBE_TIMEOUT;
            options.prefer_leader = false;
            let member_client = Client::new(options)?;
            asks.push(
                async move { member_client.status().await.is_ok_and(|status| status.applied_upto > slot) },
            );
        }
        let applied = futures::future::join_all(asks).await.into_iter().filter(|applied| *applied).count();
        if applied * 2 > members.len() || Instant::now() >= deadline {
            return Ok((applied, members.len()));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// How long `member replace` waits for the member to restart with its new data directory and
/// speak to the leader (the leader knows only the incarnation it last heard from it).
const RESTART_WAIT: Duration = Duration::from_secs(10);

/// `member replace`: asks for the change until the leader has heard the member's new data
/// directory. Asked right after the member restarted empty, the leader may still know only
/// the old incarnation (`SameIncarnation`) or none (`NotHeardFrom`): the member has not
/// dialled it yet. Any other refusal, or the same one after `RESTART_WAIT`, is final.
async fn replace_once_restarted(client: &Client, id: NodeId, json: bool) -> anyhow::Result<Slot> {
    let deadline = Instant::now() + RESTART_WAIT;
    let mut said = false;
    loop {
        match client.change_membership(MembershipChange::Replace { id }).await {
            Err(ClientError::Refused(ProposalError::ChangeRefused(
                ChangeError::SameIncarnation { .. } | ChangeError::NotHeardFrom(_),
            ))) if Instant::now() < deadline => {
                if !said && !json {
                    eprintln!("waiting for node {id} to present its new data directory to the leader...");
                    said = true;
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            outcome => return Ok(outcome?),
        }
    }
}

/// How a member added (or replaced) stands once `member add` stops watching it.
#[derive(Debug)]
struct Outcome {
    /// The configuration that gave it its role, if that happened while watching.
    promoted_at: Option<Slot>,
    /// Whether it was watched for the promotion at all (not for a learner, nor with --no-wait).
    waited: bool,
    /// Why its address did not answer, the last time it was asked (`None`: it answered).
    silent: Option<String>,
}

impl Outcome {
    /// An error when what was asked did not happen: the member is not yet what it was added as.
    fn check(&self, id: NodeId, role: MemberRole) -> anyhow::Result<()> {
        if !self.waited || self.promoted_at.is_some() {
            return Ok(());
        }
        let why = match &self.silent {
            Some(_) => "nothing answers at its address: start it (see above)".to_owned(),
            None => "it answers but has not caught up yet; watch `paxos-cli member list`".to_owned(),
        };
        bail!("node {id} is not {} yet, still a learner: {why}", role.with_article())
    }
}

/// Asks the new member's address for its status: `None` when it answers, or why it did not.
async fn probe(cli: &Cli, address: &str) -> anyhow::Result<Option<String>> {
    let mut options = cli.options()?;
    options.endpoints = vec![address.to_owned()];
    options.timeout = PROBE_TIMEOUT;
    options.prefer_leader = false;
    Ok(Client::new(options)?.status().await.err().map(|error| error.to_string()))
}

/// Watches the member after the change: whether its address answers, and (with `wait`) until
/// the node asked lists it with its `role`, or the wait ends. Says once on stderr when nothing
/// answers at its address, since a member nobody started can never be promoted.
async fn settle(
    cli: &Cli,
    client: &Client,
    id: NodeId,
    address: &str,
    role: MemberRole,
    wait: Option<Duration>,
    json: bool,
) -> anyhow::Result<Outcome> {
    let mut silent = probe(cli, address).await?;
    let mut said_silent = false;
    let say_silent = |silent: &Option<String>, said: &mut bool| {
        if let (Some(error), false, false) = (silent, *said, json) {
            eprintln!("nothing answers at {address} ({error}): node {id} must be started there");
            *said = true;
        }
    };
    say_silent(&silent, &mut said_silent);
    let Some(wait) = wait else {
        return Ok(Outcome { promoted_at: None, waited: false, silent });
    };
    if !json {
        eprintln!(
            "node {id} is a learner; waiting up to {:.0} s until it has caught up and the leader promotes it to {role}...",
            wait.as_secs_f64()
        );
    }
    let deadline = Instant::now() + wait;
    loop {
        let status = client.status().await?;
        if let Some(member) = status.members.iter().find(|m| m.id == id) {
            if member.role == role && member.promote_to.is_none() {
                return Ok(Outcome {
                    promoted_at: status.configuration_chosen_at,
                    waited: true,
                    silent: None,
                });
            }
        }
        if Instant::now() >= deadline {
            return Ok(Outcome { promoted_at: None, waited: true, silent });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        if silent.is_some() {
            silent = probe(cli, address).await?;
            say_silent(&silent, &mut said_silent);
        }
    }
}

/// The `paxos-node` command line that starts member `id` at `address` into the cluster as the
/// node asked knows it (every member's address, as `etcdctl member add` prints
/// `ETCD_INITIAL_CLUSTER`).
fn start_command(cli: &Cli, status: &StatusReport, id: NodeId, address: &str) -> String {
    let mut peers: Vec<(NodeId, &str)> = status.members.iter().map(|m| (m.id, m.addr.as_str())).collect();
    if !peers.iter().any(|(peer, _)| *peer == id) {
        peers.push((id, address));
    }
    peers.sort_unstable();
    let peers: Vec<String> = peers.iter().map(|(peer, addr)| format!("--peer {peer}={addr}")).collect();
    format!(
        "paxos-node --id {id} --listen {address} --initial-cluster-state existing {} --data-dir data-{id} --certs {}",
        peers.join(" "),
        cli.certs_dir.join(format!("node-{id}")).display()
    )
}

#[allow(clippy::too_many_arguments)]
fn report(
    out: &mut impl Write,
    json: bool,
    what: &str,
    id: NodeId,
    slot: Slot,
    role: MemberRole,
    outcome: &Outcome,
    start: Option<&str>,
) -> anyhow::Result<()> {
    let promoted_at = outcome.promoted_at;
    if json {
        let now =
            if promoted_at.is_some() || role == MemberRole::Learner { role } else { MemberRole::Learner };
        let line = json!({
            "id": id, "changed_at": slot, "role": now, "promote_to": role, "promoted_at": promoted_at,
            // The field of earlier versions, for scripts that read it.
            "voter_at": promoted_at.filter(|_| role == MemberRole::Voter),
            "answers": outcome.silent.is_none(),
            "start_command": start,
        });
        writeln!(out, "{line}")?;
        return Ok(());
    }
    writeln!(out, "node {id} {what} as a learner by the configuration at slot {slot}")?;
    if let Some(start) = start {
        let answers =
            if outcome.silent.is_none() { "it answers; it was started with" } else { "start it with" };
        writeln!(out, "{answers} (a certificate of this cluster: paxos-cli certs --nodes {id}):\n  {start}")?;
    }
    let does = match role {
        MemberRole::Voter => "votes and may lead",
        MemberRole::Acceptor => "votes (an acceptor: never leads)",
        MemberRole::Proposer => "may lead (a proposer: never votes)",
        MemberRole::Learner => "",
    };
    match promoted_at {
        Some(at) => writeln!(out, "node {id} caught up and {does} since the configuration at slot {at}")?,
        None if role == MemberRole::Learner => {
            writeln!(out, "node {id} stays a learner: it receives the history, never votes or leads")?
        }
        None if !outcome.waited => writeln!(
            out,
            "node {id} becomes {} once it has caught up (watch `paxos-cli member list`)",
            role.with_article()
        )?,
        // Not promoted within the wait: `Outcome::check` says so on stderr and exits 1.
        None => {}
    }
    Ok(())
}

/// Each member's applied prefix as the leader knows it (it hears every member at each
/// heartbeat), and whose figures they are; a follower's own figures are only what it last
/// heard, often nothing. Falls back to the node asked when no leader answers.
#[derive(Debug)]
struct Progress {
    /// The node whose figures these are.
    from: NodeId,
    from_leader: bool,
    applied_upto: std::collections::BTreeMap<NodeId, Slot>,
}

async fn leader_progress(cli: &Cli, asked: &StatusReport) -> anyhow::Result<Progress> {
    let own = |status: &StatusReport, from_leader: bool| {
        let mut applied_upto: std::collections::BTreeMap<NodeId, Slot> =
            status.members.iter().filter_map(|m| Some((m.id, m.applied_upto?))).collect();
        // A node knows its own progress exactly.
        applied_upto.insert(status.node, status.applied_upto);
        Progress { from: status.node, from_leader, applied_upto }
    };
    let leader = asked.leader.and_then(|id| asked.members.iter().find(|m| m.id == id));
    match leader {
        Some(leader) if leader.id != asked.node => {
            if probe(cli, &leader.addr).await?.is_none() {
                let mut options = cli.options()?;
                options.endpoints = vec![leader.addr.clone()];
                options.timeout = PROBE_TIMEOUT;
                if let Ok(status) = Client::new(options)?.status().await {
                    if status.leader == Some(status.node) {
                        return Ok(own(&status, true));
                    }
                }
            }
            Ok(own(asked, false))
        }
        Some(_) => Ok(own(asked, true)),
        None => Ok(own(asked, false)),
    }
}

fn list_json(status: &StatusReport, progress: &Progress) -> serde_json::Value {
    json!({
        "node": status.node,
        "leader": status.leader,
        "configuration_chosen_at": status.configuration_chosen_at,
        "progress_from": progress.from,
        "progress_from_leader": progress.from_leader,
        "members": status.members.iter().map(|m| json!({
            "id": m.id,
            "address": m.addr,
            "role": m.role,
            "promote_to": m.promote_to,
            "incarnation": crate::output::incarnation_text(m.incarnation),
            "applied_upto": progress.applied_upto.get(&m.id),
        })).collect::<Vec<_>>(),
        "warnings": status.warnings,
        "problems": status.problems,
    })
}

fn list_text(status: &StatusReport, progress: &Progress) -> String {
    let chosen_at = match status.configuration_chosen_at {
        Some(slot) => format!("chosen at slot {slot}"),
        None => "bootstrap (from --peer), not bound yet".into(),
    };
    let mut out = format!("configuration {chosen_at}, as node {} holds it\n", status.node);
    let whose = match (progress.from_leader, progress.from == status.node) {
        (true, true) => "this node's, the leader's".to_owned(),
        (true, false) => format!("as the leader (node {}) knows it", progress.from),
        (false, _) => "as this node last heard it (no leader answered): may be stale".to_owned(),
    };
    out.push_str(&format!("APPLIED: {whose}\n"));
    out.push_str("ID  ADDRESS                ROLE             INCARNATION       APPLIED  NOTE\n");
    for member in &status.members {
        let role = match member.promote_to {
            Some(role) => format!("learner→{role}"),
            None => member.role.to_string(),
        };
        let incarnation =
            crate::output::incarnation_text(member.incarnation).unwrap_or_else(|| "-".to_owned());
        let applied = progress.applied_upto.get(&member.id).map_or("?".to_owned(), |u| u.to_string());
        let mut notes = Vec::new();
        if status.leader == Some(member.id) {
            notes.push("leader");
        }
        if member.id == status.node {
            notes.push("this node");
        }
        out.push_str(&format!(
            "{:<3} {:<22} {:<16} {:<17} {:<8} {}\n",
            member.id,
            member.addr,
            role,
            incarnation,
            applied,
            notes.join(", ")
        ));
    }
    if status.members.iter().any(|m| m.promote_to.is_some()) {
        out.push_str("learner→ROLE: promoted to ROLE once caught up\n");
    }
    for warning in &status.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    for problem in &status.problems {
        out.push_str(&format!("problem: {problem}\n"));
    }
    out
}
