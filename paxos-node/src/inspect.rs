//! `paxos-node inspect`: what a data directory holds, for a person (text) or a script (JSON),
//! read without starting a node and without changing a byte (see `Storage::inspect`).

use crate::storage::Inspection;
use paxos_core::Membership;
use serde_json::{json, Value};

fn range_text(range: Option<(u64, u64)>) -> String {
    range.map_or_else(|| "none".to_owned(), |(first, last)| format!("slots {first}..={last}"))
}

fn members_json(membership: &Membership) -> Value {
    let members: Vec<Value> = membership
        .members
        .iter()
        .map(|(id, member)| {
            json!({
                "id": id,
                "address": member.address,
                "role": member.role.to_string(),
                // As every paxos-cli command prints it: null for a member not bound yet.
                "incarnation": (member.incarnation != 0).then(|| format!("{:016x}", member.incarnation)),
                "promote_to": member.promote_to.map(|role| role.to_string()),
            })
        })
        .collect();
    json!({ "chosen_at": membership.chosen_at, "members": members })
}

pub fn json(inspection: &Inspection) -> Value {
    let range = |range: Option<(u64, u64)>| range.map(|(first, last)| json!({"first": first, "last": last}));
    json!({
        "path": inspection.path.display().to_string(),
        "cluster": inspection.cluster,
        "node": inspection.node,
        "incarnation": inspection.incarnation.map(|i| format!("{i:016x}")),
        "role": inspection.role.map(|role| role.to_string()),
        "promised": format!("{}.{}", inspection.promised.round, inspection.promised.node),
        "accepted_records": inspection.accepted_records,
        "accepted_slots": range(inspection.accepted_range),
        "applied_upto": inspection.applied_upto,
        "history_start": inspection.history_start,
        "history_entries": inspection.history_entries,
        "history_slots": range(inspection.history_range),
        "request_records": inspection.request_records,
        "sessions": inspection.sessions,
        "configuration": inspection.membership.as_ref().map(members_json),
        "records_checked": inspection.records_checked,
    })
}

pub fn text(inspection: &Inspection) -> String {
    let unknown = || "not written yet".to_owned();
    let mut out = format!(
        "data directory {}\nidentity: node {} of cluster {}, incarnation {}, first started as {}\n\
         promised ballot: {}.{}\naccepted records: {} ({})\napplied up to: {}\n\
         history: {} entries ({}), starts at {}{}\nduplicate table: {} records, {} sessions\n",
        inspection.path.display(),
        inspection.node.map_or_else(unknown, |n| n.to_string()),
        inspection.cluster.as_ref().map_or_else(unknown, |c| format!("{c:?}")),
        inspection.incarnation.map_or_else(unknown, |i| format!("{i:016x}")),
        inspection.role.map_or_else(|| "voter (not recorded)".to_owned(), |r| r.to_string()),
        inspection.promised.round,
        inspection.promised.node,
        inspection.accepted_records,
        range_text(inspection.accepted_range),
        inspection.applied_upto,
        inspection.history_entries,
        range_text(inspection.history_range),
        inspection.history_start,
        if inspection.history_start > 0 { " (truncated below it)" } else { "" },
        inspection.request_records,
        inspection.sessions,
    );
    match &inspection.membership {
        None => out.push_str("configuration: the bootstrap one (from the --peer flags), not bound yet\n"),
        Some(membership) => {
            let at =
                membership.chosen_at.map_or_else(|| "bootstrap".to_owned(), |slot| format!("slot {slot}"));
            out.push_str(&format!("configuration (chosen at {at}):\n"));
            for (id, member) in &membership.members {
                let promote = member.promote_to.map(|role| format!(" (becomes {role})")).unwrap_or_default();
                let incarnation = match member.incarnation {
                    0 => "- (not bound yet)".to_owned(),
                    incarnation => format!("{incarnation:016x}"),
                };
                out.push_str(&format!(
                    "  {id} {} {}{promote}, incarnation {incarnation}\n",
                    member.address, member.role
                ));
            }
        }
    }
    if let Some(checked) = inspection.records_checked {
        out.push_str(&format!("verified: every record's checksum is good ({checked} records)\n"));
    }
    out
}
