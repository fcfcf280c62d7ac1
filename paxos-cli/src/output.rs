//! Human and JSON renderings of every answer. JSON shapes are part of the interface.

use crate::Encoding;
use base64::Engine;
use paxos_client::certs::Issued;
use paxos_client::wire::{GcReport, HistoryPage, StatusReport, TransferReport};
use serde_json::{json, Value};
use std::fmt::Write;
use std::path::Path;

/// A value as one line of text, losing nothing: UTF-8 as it is, except backslashes (`\\`) and
/// control characters (`\n`, `\t`, `\r`, `\u{1b}`), which would break the line or fake another;
/// bytes that are not UTF-8 as `\xNN`.
pub fn escaped(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for chunk in value.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                // Control characters, and the invisible ones that can reorder or hide text in
                // a terminal: bidirectional controls, zero-width characters, line and
                // paragraph separators.
                c if c.is_control()
                    || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}') =>
                {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

pub fn base64(value: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(value)
}

pub fn slot_json(slot: u64) -> Value {
    json!({ "slot": slot })
}

/// `{"slot", "value"}` with the value as a string when it is UTF-8 (null for a no-op), or
/// `{"slot", "value_base64"}` when it is not, or always with `--encoding base64`: never lossy.
pub fn history_json(entries: &[(u64, Option<Vec<u8>>)], encoding: Encoding) -> Value {
    let entry = |slot: &u64, value: &Option<Vec<u8>>| match value {
        None => json!({ "slot": slot, "value": null }),
        Some(bytes) => match (encoding, std::str::from_utf8(bytes)) {
            (Encoding::Text, Ok(text)) => json!({ "slot": slot, "value": text }),
            _ => json!({ "slot": slot, "value_base64": base64(bytes) }),
        },
    };
    Value::Array(entries.iter().map(|(slot, value)| entry(slot, value)).collect())
}

pub fn history_lines(page: &HistoryPage, encoding: Encoding, out: &mut String) {
    for (slot, value) in &page.entries {
        let value = match (value, encoding) {
            (None, _) => String::new(),
            (Some(bytes), Encoding::Text) => escaped(bytes),
            (Some(bytes), Encoding::Base64) => base64(bytes),
        };
        let _ = writeln!(out, "{slot}\t{value}");
    }
}

/// An incarnation as every command prints it: 16 hex digits, or `null` (JSON) and `-` (text)
/// when the member is not bound to a data directory yet (a learner, or a member not yet heard).
pub fn incarnation_text(incarnation: paxos_core::Incarnation) -> Option<String> {
    (incarnation != 0).then(|| format!("{incarnation:016x}"))
}

/// A ballot as every command prints it, text and JSON alike: "ROUND.NODE".
pub fn ballot_text(ballot: paxos_core::Ballot) -> String {
    format!("{}.{}", ballot.round, ballot.node)
}

/// A leader as a sentence names it: "node 3", or "none".
pub fn leader_words(leader: Option<u64>) -> String {
    leader.map_or_else(|| "none".to_owned(), |id| format!("node {id}"))
}

pub fn status_json(status: &StatusReport) -> Value {
    let fsyncs_per_value =
        (status.applied_since_start > 0).then(|| status.fsyncs as f64 / status.applied_since_start as f64);
    json!({
        "node": status.node,
        "cluster": status.cluster_id,
        "role": status.role,
        "leader": status.leader,
        "ballot": ballot_text(status.ballot),
        "applied_upto": status.applied_upto,
        "history_start": status.history_start,
        "accepted_records": status.accepted_records,
        "sessions": status.sessions,
        "stale_accepts_refused": status.stale_accepts_refused,
        "rejected_messages": status.rejected_messages,
        "superseded_leaderships": status.superseded_leaderships,
        "members": status.members.iter().map(|m| json!({
            "id": m.id, "address": m.addr, "applied_upto": m.applied_upto, "role": m.role,
            "incarnation": incarnation_text(m.incarnation), "promote_to": m.promote_to,
        })).collect::<Vec<_>>(),
        "configuration_chosen_at": status.configuration_chosen_at,
        "incarnation": format!("{:016x}", status.incarnation),
        // Not known while the configuration is only the --peer flags' (a brand-new cluster before
        // its binding entry, or a wiped node that has yet to hear the cluster's).
        "can_vote": status.configuration_chosen_at.map(|_| status.can_vote),
        "can_lead": status.configuration_chosen_at.map(|_| status.can_lead),
        "member_role": status.members.iter().find(|m| m.id == status.node).map(|m| m.role),
        "started_as": status.started_as,
        "warnings": status.warnings,
        "problems": status.problems,
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
        let promote =
            member.promote_to.map(|role| format!(", becomes {role} once caught up")).unwrap_or_default();
        out.push_str(&format!(
            "  {} {} {}{promote}, applied up to {upto}\n",
            member.id, member.addr, member.role
        ));
    }
    let own_role = status.members.iter().find(|m| m.id == status.node).map(|m| m.role);
    match own_role {
        Some(role) if status.configuration_chosen_at.is_none() => out.push_str(&format!(
            "this node's role: {role} by its --peer flags; whether it votes or may lead is not known yet \
             (until it hears the cluster's configuration, or the bootstrap entry is chosen)\n"
        )),
        Some(role) => out.push_str(&format!(
            "this node's role: {role} ({}, {})\n",
            if status.can_vote { "votes" } else { "does not vote" },
            if status.can_lead { "may lead" } else { "never leads" }
        )),
        None => out.push_str("this node is not a member of the configuration it holds\n"),
    }
    if status.configuration_chosen_at.is_some()
        && !status.can_vote
        && own_role.is_some_and(|role| role.votes())
    {
        out.push_str("this node does not vote: a data directory the configuration does not admit, or a joining node that has yet to learn the configuration\n");
    }
    for warning in &status.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    for problem in &status.problems {
        out.push_str(&format!("problem: {problem}\n"));
    }
    out
}

/// One member for `status --all`: what the configuration says of it, and its own status.
#[derive(Debug)]
pub struct MemberRow {
    pub member: paxos_client::wire::MemberInfo,
    pub status: Result<StatusReport, String>,
}

/// How far each reachable member is behind the most advanced one.
fn lags(rows: &[MemberRow]) -> Vec<Option<u64>> {
    let ahead = rows.iter().filter_map(|row| row.status.as_ref().ok()).map(|s| s.applied_upto).max();
    rows.iter().map(|row| Some(ahead? - row.status.as_ref().ok()?.applied_upto)).collect()
}

pub fn cluster_status_json(rows: &[MemberRow]) -> Value {
    let members: Vec<Value> = rows
        .iter()
        .zip(lags(rows))
        .map(|(row, lag)| match &row.status {
            Ok(status) => json!({
                "id": row.member.id,
                "address": row.member.addr,
                "role": row.member.role.to_string(),
                "reachable": true,
                "leader": status.leader,
                "is_leader": status.leader == Some(row.member.id),
                "ballot": ballot_text(status.ballot),
                "applied_upto": status.applied_upto,
                "history_start": status.history_start,
                "lag_slots": lag,
                "can_vote": status.configuration_chosen_at.map(|_| status.can_vote),
            }),
            Err(error) => json!({
                "id": row.member.id,
                "address": row.member.addr,
                "role": row.member.role.to_string(),
                "reachable": false,
                "error": error,
            }),
        })
        .collect();
    json!({ "members": members })
}

pub fn cluster_status_text(rows: &[MemberRow]) -> String {
    let mut table = vec![[
        "ID",
        "ADDRESS",
        "ROLE",
        "IS LEADER",
        "LEADER",
        "BALLOT",
        "APPLIED",
        "HISTORY START",
        "LAG",
        "REACHABLE",
    ]
    .map(String::from)
    .to_vec()];
    for (row, lag) in rows.iter().zip(lags(rows)) {
        let mut line = vec![row.member.id.to_string(), row.member.addr.clone(), row.member.role.to_string()];
        match &row.status {
            Ok(status) => {
                // Two columns, each one kind of value: whether this member leads, and the id of
                // the leader it knows (itself included).
                let is_leader = if status.leader == Some(row.member.id) { "yes" } else { "no" };
                let leader = status.leader.map_or_else(|| "none".to_owned(), |leader| leader.to_string());
                line.extend([
                    is_leader.to_owned(),
                    leader,
                    ballot_text(status.ballot),
                    status.applied_upto.to_string(),
                    status.history_start.to_string(),
                    lag.map(|l| l.to_string()).unwrap_or_default(),
                    "yes".to_owned(),
                ]);
            }
            Err(error) => {
                line.extend(["-", "-", "-", "-", "-", "-"].map(String::from));
                line.push(format!("no: {error}"));
            }
        }
        table.push(line);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|column| table.iter().map(|line| line[column].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for line in &table {
        let cells: Vec<String> =
            line.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// After a truncation: the members that dropped the history below the cut, and the others
/// (with their history start, `None` if they could not be asked).
#[derive(Debug, Default)]
pub struct Followed {
    pub followed: Vec<u64>,
    pub behind: Vec<(u64, Option<u64>)>,
}

pub fn transfer_json(report: &TransferReport) -> Value {
    json!({"from": report.from, "to": report.to, "took_ms": report.took_ms})
}

pub fn transfer_text(report: &TransferReport) -> String {
    if report.from == report.to {
        format!("node {} leads already", report.to)
    } else {
        format!("leadership moved from node {} to node {} in {} ms", report.from, report.to, report.took_ms)
    }
}

pub fn gc_json(report: &GcReport, followed: Option<&Followed>) -> Value {
    let mut value = json!({
        "accepted_records_removed": report.accepted_records_removed,
        "history_entries_removed": report.history_entries_removed,
        "history_start": report.history_start,
        "applied_upto": report.applied_upto,
    });
    if let Some(followed) = followed {
        value["members_followed"] = json!(followed.followed);
        value["members_not_followed"] = json!(followed
            .behind
            .iter()
            .map(|(id, start)| json!({"id": id, "history_start": start}))
            .collect::<Vec<_>>());
    }
    value
}

pub fn gc_text(report: &GcReport, followed: Option<&Followed>) -> String {
    let mut text = format!(
        "removed {} accepted records and {} history entries; history starts at {}, applied up to {}\n",
        report.accepted_records_removed,
        report.history_entries_removed,
        report.history_start,
        report.applied_upto
    );
    if let Some(followed) = followed {
        if followed.behind.is_empty() {
            text.push_str(&format!("every member has truncated below {}\n", report.history_start));
        } else {
            let behind: Vec<String> = followed
                .behind
                .iter()
                .map(|(id, start)| match start {
                    Some(start) => format!("node {id} (history starts at {start})"),
                    None => format!("node {id} (not reachable)"),
                })
                .collect();
            text.push_str(&format!(
                "not followed yet: {}; members follow from the leader's heartbeats, one that is down when it returns\n",
                behind.join(", ")
            ));
        }
    }
    text
}

pub fn certs_json(dir: &Path, issued: &Issued) -> Value {
    json!({
        "dir": dir.display().to_string(),
        "ca_created": issued.ca_created,
        "written": issued.written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "kept": issued.kept.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
    })
}

pub fn certs_text(dir: &Path, issued: &Issued) -> String {
    let mut out = String::new();
    let ca = dir.join("ca");
    if issued.ca_created {
        let _ = writeln!(
            out,
            "created a new CA in {}/ (keep it on no machine that runs a node or a client: its key can issue members)",
            ca.display()
        );
    } else {
        let _ = writeln!(out, "issued by the existing CA in {}/", ca.display());
    }
    for path in &issued.written {
        if *path != ca {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let whom = match name.as_str() {
                "client" => "clients (propose, read)".to_owned(),
                "admin" => "operators (gc, members, leader transfer)".to_owned(),
                node => format!("{node} only"),
            };
            let _ = writeln!(out, "wrote {}/ (ca.pem, cert.pem, key.pem): hand it to {whom}", path.display());
        }
    }
    for path in &issued.kept {
        let _ = writeln!(out, "kept {}/ (exists; --overwrite replaces it)", path.display());
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_truncation_names_the_members_that_have_not_followed() {
        let report = GcReport {
            accepted_records_removed: 3,
            history_entries_removed: 100,
            history_start: 100,
            applied_upto: 511,
        };
        let followed = Followed { followed: vec![1, 2], behind: vec![(3, Some(0)), (4, None)] };
        let text = gc_text(&report, Some(&followed));
        assert!(
            text.ends_with("not followed yet: node 3 (history starts at 0), node 4 (not reachable); members follow from the leader's heartbeats, one that is down when it returns\n"),
            "{text}"
        );
        let json = gc_json(&report, Some(&followed));
        assert_eq!(json["members_followed"], json!([1, 2]));
        assert_eq!(
            json["members_not_followed"],
            json!([{"id": 3, "history_start": 0}, {"id": 4, "history_start": null}])
        );
        assert!(gc_json(&report, None).get("members_followed").is_none(), "plain gc says nothing of members");
    }
    use super::*;

    #[test]
    fn escaping_keeps_every_value_on_one_line_and_loses_nothing() {
        assert_eq!(escaped(b"plain text, \xc3\xa9t\xc3\xa9"), "plain text, \u{e9}t\u{e9}");
        assert_eq!(escaped(b"two\nlines\t\\"), "two\\nlines\\t\\\\");
        assert_eq!(escaped(b"\x00\x1b[31m"), "\\u{0}\\u{1b}[31m");
        assert_eq!(escaped(&[0xff, b'a', 0xc3]), "\\xffa\\xc3");
        assert_eq!(escaped("a\u{202e}b\u{2028}".as_bytes()), "a\\u{202e}b\\u{2028}");
        // A value that looks like an escape is told apart by its escaped backslash.
        assert_ne!(escaped(b"\\n"), escaped(b"\n"));
    }

    #[test]
    fn json_is_lossless() {
        let entries = vec![(1, Some(b"text".to_vec())), (2, Some(vec![0xff, 0])), (3, None)];
        let json = history_json(&entries, Encoding::Text);
        assert_eq!(json[0]["value"], "text");
        assert_eq!(json[1]["value_base64"], "/wA=");
        assert!(json[1].get("value").is_none());
        assert!(json[2]["value"].is_null());
        assert_eq!(history_json(&entries, Encoding::Base64)[0]["value_base64"], "dGV4dA==");
    }
}
