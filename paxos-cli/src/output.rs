//! Human and JSON renderings of every answer. JSON shapes are part of the interface.

use paxos_node::wire::{GcReport, HistoryPage, StatusReport};
use serde_json::{json, Value};

/// Values are bytes; the CLI shows them as UTF-8 text (invalid sequences replaced).
pub fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

pub fn slot_json(slot: u64) -> Value {
    json!({ "slot": slot })
}

pub fn history_json(entries: &[(u64, Option<Vec<u8>>)]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|(slot, value)| json!({ "slot": slot, "value": value.as_deref().map(text) }))
            .collect(),
    )
}

pub fn history_lines(page: &HistoryPage, out: &mut String) {
    for (slot, value) in &page.entries {
        out.push_str(&format!("{slot}\t{}\n", value.as_deref().map(text).unwrap_or_default()));
    }
}

pub fn status_json(status: &StatusReport) -> Value {
    let fsyncs_per_value =
        (status.applied_since_start > 0).then(|| status.fsyncs as f64 / status.applied_since_start as f64);
    json!({
        "node": status.node,
        "cluster": status.cluster_id,
        "role": status.role,
        "leader": status.leader,
        "ballot": { "round": status.ballot.round, "node": status.ballot.node },
        "applied_upto": status.applied_upto,
        "history_start": status.history_start,
        "accepted_records": status.accepted_records,
        "sessions": status.sessions,
        "stale_accepts_refused": status.stale_accepts_refused,
        "rejected_messages": status.rejected_messages,
        "superseded_leaderships": status.superseded_leaderships,
        "members": status.members.iter().map(|m| json!({
            "id": m.id, "addr": m.addr, "applied_upto": m.applied_upto,
        })).collect::<Vec<_>>(),
        "fsyncs": status.fsyncs,
        "applied_since_start": status.applied_since_start,
        "proposals_since_start": status.proposals_since_start,
        "fsyncs_per_applied_value": fsyncs_per_value,
    })
}

pub fn status_text(status: &StatusReport) -> String {
    let leader = status.leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into());
    let mut out = format!(
        "node {} ({}) of cluster {:?}\nleader: {leader}\nballot: {}.{}\napplied up to: {} (history starts at {})\naccepted records: {}\nclient sessions: {}\nstale accepts refused: {}, leaderships superseded: {}, peer messages rejected: {}\nmembers:\n",
        status.node,
        status.role,
        status.cluster_id,
        status.ballot.round,
        status.ballot.node,
        status.applied_upto,
        status.history_start,
        status.accepted_records,
        status.sessions,
        status.stale_accepts_refused,
        status.superseded_leaderships,
        status.rejected_messages,
    );
    for member in &status.members {
        let upto = member.applied_upto.map(|u| u.to_string()).unwrap_or_else(|| "?".into());
        out.push_str(&format!("  {} {} applied up to {upto}\n", member.id, member.addr));
    }
    out
}

pub fn gc_json(report: &GcReport) -> Value {
    json!({
        "accepted_records_removed": report.accepted_records_removed,
        "history_entries_removed": report.history_entries_removed,
        "history_start": report.history_start,
        "applied_upto": report.applied_upto,
    })
}

pub fn gc_text(report: &GcReport) -> String {
    format!(
        "removed {} accepted records and {} history entries; history starts at {}, applied up to {}\n",
        report.accepted_records_removed,
        report.history_entries_removed,
        report.history_start,
        report.applied_upto
    )
}
