//! `paxos-cli member`: show and change the configuration.

use crate::MemberCommand;
use anyhow::{bail, Context};
use paxos_core::{MemberRole, MembershipChange, NodeId, Slot};
use paxos_client::client::Client;
use paxos_client::wire::StatusReport;
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};

/// How long `member add` and `member replace` wait for the promotion: catching up a long
/// history takes a while, and the change itself is done already when this runs out.
const PROMOTION_WAIT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(200);

pub async fn run(client: &Client, command: &MemberCommand, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        MemberCommand::List => {
            let status = client.status().await?;
            if json {
                writeln!(out, "{}", list_json(&status))?;
            } else {
                write!(out, "{}", list_text(&status))?;
            }
        }
        MemberCommand::Add { member, role, learner, no_wait } => {
            let (id, address) = parse_member(member)?;
            let role = if *learner { MemberRole::Learner } else { *role };
            let change = MembershipChange::Add { id, address: address.clone(), role };
            let slot = client.change_membership(change).await?;
            let promoted_at = if role == MemberRole::Learner || *no_wait {
                None
            } else {
                wait_for_promotion(client, id, role, json).await?
            };
            report(&mut out, json, "added", id, slot, role, promoted_at)?;
        }
        MemberCommand::Remove { id } => {
            let slot = client.change_membership(MembershipChange::Remove { id: *id }).await?;
            if json {
                writeln!(out, "{}", json!({ "id": id, "removed_at": slot }))?;
            } else {
                writeln!(out, "node {id} removed by the configuration at slot {slot}")?;
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
        MemberCommand::Replace { id, no_wait } => {
            let before = client.status().await?;
            let role = before
                .members
                .iter()
                .find(|m| m.id == *id)
                .map(|m| m.promote_to.unwrap_or(m.role))
                .unwrap_or(MemberRole::Voter);
            let slot = client.change_membership(MembershipChange::Replace { id: *id }).await?;
            let promoted_at = if *no_wait || role == MemberRole::Learner {
                None
            } else {
                wait_for_promotion(client, *id, role, json).await?
            };
            report(&mut out, json, "replaced", *id, slot, role, promoted_at)?;
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

/// Waits until the node asked lists `id` as a `role`; the slot of that configuration, or
/// `None` if it is still a learner when the wait ends.
async fn wait_for_promotion(
    client: &Client,
    id: NodeId,
    role: MemberRole,
    json: bool,
) -> anyhow::Result<Option<Slot>> {
    if !json {
        eprintln!(
            "node {id} is a learner; waiting until it has caught up and the leader promotes it to {role}..."
        );
    }
    let deadline = Instant::now() + PROMOTION_WAIT;
    while Instant::now() < deadline {
        let status = client.status().await?;
        if let Some(member) = status.members.iter().find(|m| m.id == id) {
            if member.role == role && member.promote_to.is_none() {
                return Ok(status.configuration_chosen_at);
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Ok(None)
}

fn report(
    out: &mut impl Write,
    json: bool,
    what: &str,
    id: NodeId,
    slot: Slot,
    role: MemberRole,
    promoted_at: Option<Slot>,
) -> anyhow::Result<()> {
    if json {
        let now = if promoted_at.is_some() { role } else { MemberRole::Learner };
        let line = json!({
            "id": id, "changed_at": slot, "role": now, "promote_to": role, "promoted_at": promoted_at,
            // The field of earlier versions, for scripts that read it.
            "voter_at": promoted_at.filter(|_| role == MemberRole::Voter),
        });
        writeln!(out, "{line}")?;
        return Ok(());
    }
    writeln!(out, "node {id} {what} as a learner by the configuration at slot {slot}")?;
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
        None => writeln!(
            out,
            "node {id} is not {} yet: the leader promotes it once it has caught up (watch `paxos-cli member list`)",
            role.with_article()
        )?,
    }
    Ok(())
}

fn list_json(status: &StatusReport) -> serde_json::Value {
    json!({
        "node": status.node,
        "leader": status.leader,
        "configuration_chosen_at": status.configuration_chosen_at,
        "members": status.members.iter().map(|m| json!({
            "id": m.id,
            "addr": m.addr,
            "role": m.role,
            "promote_to": m.promote_to,
            "incarnation": format!("{:016x}", m.incarnation),
            "applied_upto": m.applied_upto,
        })).collect::<Vec<_>>(),
        "warnings": status.warnings,
        "problems": status.problems,
    })
}

fn list_text(status: &StatusReport) -> String {
    let chosen_at = match status.configuration_chosen_at {
        Some(slot) => format!("chosen at slot {slot}"),
        None => "bootstrap (from --peer), not bound yet".into(),
    };
    let mut out = format!("configuration {chosen_at}, as node {} holds it\n", status.node);
    out.push_str("ID  ADDRESS                ROLE             INCARNATION       APPLIED  NOTE\n");
    for member in &status.members {
        let role = match member.promote_to {
            Some(role) => format!("learner→{role}"),
            None => member.role.to_string(),
        };
        let incarnation =
            if member.incarnation == 0 { "-".to_owned() } else { format!("{:016x}", member.incarnation) };
        let applied = member.applied_upto.map_or("?".to_owned(), |u| u.to_string());
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
