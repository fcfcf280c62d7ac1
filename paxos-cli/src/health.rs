//! `paxos-cli health`: is every member up, following a leader, admitted and keeping up? One
//! line per member and an exit status a script or a probe can act on (as
//! `etcdctl endpoint health`).

use crate::output;
use paxos_client::client::{Client, ClientError, ClientOptions};
use paxos_client::wire::{MemberInfo, StatusReport};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How often a member that knows no leader is asked again within the member timeout.
const LEADERLESS_POLL: Duration = Duration::from_millis(100);

/// What `health` found out about one member.
#[derive(Debug)]
pub struct MemberHealth {
    pub member: MemberInfo,
    /// Its own status, or why it did not give one.
    pub status: Result<StatusReport, String>,
    /// How long its answer took.
    pub took: Duration,
    /// Slots it is behind the most advanced member that answered.
    pub lag_slots: Option<u64>,
    /// Why it is unhealthy; empty when it is healthy.
    pub reasons: Vec<String>,
}

impl MemberHealth {
    pub fn healthy(&self) -> bool {
        self.reasons.is_empty()
    }
}

/// Asks every member of the configuration (as the node `client` reaches holds it) for its own
/// status, all at once, and judges each: unhealthy when it does not answer within `timeout`,
/// knows no leader for all of `timeout`, reports a problem that needs an operator (not admitted, a foreign log, a
/// member that lost its disk), or is more than `lag_slots_max` behind the most advanced member.
pub async fn check(
    client: &Client,
    options: &ClientOptions,
    timeout: Duration,
    lag_slots_max: u64,
) -> anyhow::Result<Vec<MemberHealth>> {
    let members = client.status().await?.members;
    let mut asks = Vec::new();
    for member in members {
        // Each member asked on its own connection: not through the leader, not redirected.
        let mut one = options.clone();
        one.endpoints = vec![member.addr.clone()];
        one.timeout = timeout;
        one.prefer_leader = false;
        let member_client = Client::new(one)?;
        asks.push(async move {
            let begin = Instant::now();
            loop {
                let status = member_client.status().await.map_err(|error| match error {
                    // "does not answer: 127.0.0.1:7403: Connection refused", not "does not
                    // answer (no endpoint reachable (...))": there is one endpoint here.
                    ClientError::Unreachable(why) => why,
                    error => error.to_string(),
                });
                // An election takes a few hundred milliseconds: a member that knows no leader
                // is asked again until `timeout` has passed, so only a lasting loss counts.
                let leaderless = status.as_ref().is_ok_and(|s| s.leader.is_none());
                if !leaderless || begin.elapsed() >= timeout {
                    return (member, status, begin.elapsed());
                }
                tokio::time::sleep(LEADERLESS_POLL).await;
            }
        });
    }
    let answers = futures::future::join_all(asks).await;
    let ahead =
        answers.iter().filter_map(|(_, status, _)| status.as_ref().ok()).map(|s| s.applied_upto).max();
    Ok(answers
        .into_iter()
        .map(|(member, status, took)| {
            let mut reasons = Vec::new();
            let mut lag_slots = None;
            match &status {
                Err(error) => reasons.push(format!("does not answer: {error}")),
                Ok(report) => {
                    if report.leader.is_none() {
                        reasons.push("knows no leader".to_owned());
                    }
                    reasons.extend(report.problems.iter().cloned());
                    let lag = ahead.unwrap_or(report.applied_upto).saturating_sub(report.applied_upto);
                    if lag > lag_slots_max {
                        reasons.push(format!(
                            "{lag} slots behind the most advanced member (the limit is {lag_slots_max})"
                        ));
                    }
                    lag_slots = Some(lag);
                }
            }
            MemberHealth { member, status, took, lag_slots, reasons }
        })
        .collect())
}

pub fn text(members: &[MemberHealth]) -> String {
    let mut out = String::new();
    for health in members {
        let who = format!("{} (node {})", health.member.addr, health.member.id);
        let took_ms = health.took.as_secs_f64() * 1000.0;
        let line = match (&health.status, health.healthy()) {
            (Ok(status), true) => format!(
                "{who} is healthy: leader {}, applied up to slot {}, took {took_ms:.1} ms",
                output::leader_words(status.leader),
                status.applied_upto
            ),
            _ => format!("{who} is unhealthy: {}", health.reasons.join("; ")),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

pub fn json(members: &[MemberHealth]) -> Value {
    let rows: Vec<Value> = members
        .iter()
        .map(|health| {
            let status = health.status.as_ref().ok();
            json!({
                "id": health.member.id,
                "address": health.member.addr,
                "healthy": health.healthy(),
                "reachable": status.is_some(),
                "leader": status.and_then(|s| s.leader),
                "applied_upto": status.map(|s| s.applied_upto),
                "lag_slots": health.lag_slots,
                "took_ms": health.took.as_secs_f64() * 1000.0,
                "reasons": health.reasons,
            })
        })
        .collect();
    json!({ "healthy": members.iter().all(MemberHealth::healthy), "members": rows })
}
