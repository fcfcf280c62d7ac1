//! `paxos-cli member`: show and change the configuration.

use crate::MemberCommand;
use anyhow::{bail, Context};
use paxos_core::{MemberRole, MembershipChange, NodeId, Slot};
use paxos_node::client::Client;
use paxos_node::wire::StatusReport;
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};

/// How long `member add` and `member replace` wait for the promotion to voter: catching up a
/// long history takes a while, and the change itself is done already when this runs out.
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
        MemberCommand::Add { member, learner, no_wait } => {
            let (id, address) = parse_member(member)?;
            let change = MembershipChange::Add { id, address: address.clone(), learner: *learner };
            let slot = client.change_membership(change).await?;
            let voter_at = if *learner || *no_wait { None } else { wait_for_voter(client, id, json).await? };
            report(&mut out, json, "added", id, slot, *learner, voter_at)?;
        }
        MemberCommand::Remove { id } => {
            let slot = client.change_membership(MembershipChange::Remove { id: *id }).await?;
            if json {
                writeln!(out, "{}", json!({ "id": id, "removed_at": slot }))?;
            } else {
                writeln!(out, "node {id} removed by the configuration at slot {slot}")?;
            }
        }
        MemberCommand::Replace { id, no_wait } => {
            let slot = client.change_membership(MembershipChange::Replace { id: *id }).await?;
            let voter_at = if *no_wait { None } else { wait_for_voter(client, *id, json).await? };
            report(&mut out, json, "replaced", *id, slot, false, voter_at)?;
        }
    }
    Ok(())
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

/// Waits until the node asked lists `id` as a voter; the slot of that configuration, or
/// `None` if it is still a learner when the wait ends.
async fn wait_for_voter(client: &Client, id: NodeId, json: bool) -> anyhow::Result<Option<Slot>> {
    if !json {
        eprintln!(
            "node {id} is a learner; waiting until it has caught up and the leader promotes it to voter..."
        );
    }
    let deadline = Instant::now() + PROMOTION_WAIT;
    while Instant::now() < deadline {
        let status = client.status().await?;
        if let Some(member) = status.members.iter().find(|m| m.id == id) {
            if member.role == MemberRole::Voter && !member.promote {
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
    learner: bool,
    voter_at: Option<Slot>,
) -> anyhow::Result<()> {
    if json {
        let role = if voter_at.is_some() { "voter" } else { "learner" };
        writeln!(out, "{}", json!({ "id": id, "changed_at": slot, "role": role, "voter_at": voter_at }))?;
        return Ok(());
    }
    writeln!(out, "node {id} {what} as a learner by the configuration at slot {slot}")?;
    match voter_at {
        Some(voter_at) => writeln!(out, "node {id} caught up and votes since the configuration at slot {voter_at}")?,
        None if learner => writeln!(out, "node {id} stays a learner: it receives the history, never votes")?,
        None => writeln!(
            out,
            "node {id} is not a voter yet: the leader promotes it once it has caught up (watch `paxos-cli member list`)"
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
            "promote": m.promote,
            "incarnation": format!("{:016x}", m.incarnation),
            "applied_upto": m.applied_upto,
        })).collect::<Vec<_>>(),
        "problems": status.problems,
    })
}

fn list_text(status: &StatusReport) -> String {
    let chosen_at = match status.configuration_chosen_at {
        Some(slot) => format!("chosen at slot {slot}"),
        None => "bootstrap (from --peer), not bound yet".into(),
    };
    let mut out = format!("configuration {chosen_at}, as node {} holds it\n", status.node);
    out.push_str("ID  ADDRESS                ROLE      INCARNATION       APPLIED  NOTE\n");
    for member in &status.members {
        let role = if member.promote { "learner*" } else { &member.role.to_string() };
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
            "{:<3} {:<22} {:<9} {:<17} {:<8} {}\n",
            member.id,
            member.addr,
            role,
            incarnation,
            applied,
            notes.join(", ")
        ));
    }
    if status.members.iter().any(|m| m.promote) {
        out.push_str("* promoted to voter once caught up\n");
    }
    for problem in &status.problems {
        out.push_str(&format!("problem: {problem}\n"));
    }
    out
}
