//! Liveness under static partial faults: a topology held still long enough to settle, with a
//! steady probe load, measured against the same cluster healthy.
//!
//! Each hold reports the ticks from the fault to the first commit, the leader changes during
//! the hold, and commits per tick against the healthy rate just before. A hold fails the run
//! when its topology leaves a connected majority (every pair of its members hears the other)
//! that holds a quorum of the voting members and a member that may lead, and yet nothing is
//! committed within `FIRST_COMMIT_TIMEOUTS_MAX` election timeouts, or leadership changes more
//! than `LEADER_CHANGES_MAX` times.

use super::Simulation;
use paxos_core::{NodeId, Proposal, ProposalError, RequestId, Slot};
use std::collections::{BTreeMap, BTreeSet};

/// "Within a few election timeouts": a leader that can no longer hear a quorum steps down after
/// two (check quorum), its followers stop counting it live one later and their timers fire
/// within two, a pre-vote, a phase 1 and a phase 2 take a round trip each (under an election
/// timeout together, see `Simulation::config`), and members that lost the leader together may
/// split their votes once or twice, each split costing up to two timeouts (seen once in 17,000
/// swarm seeds at 8.3 timeouts: a leader cut off one way from three of seven, then a split).
pub const FIRST_COMMIT_TIMEOUTS_MAX: u64 = 10;
pub const LEADER_CHANGES_MAX: u64 = 2;
/// How long a topology is held, and the healthy run before it, in election timeouts: twice
/// the first-commit bound, so that a hold also sees whether commits go on once they resumed
/// (and, the mutant runner running the whole suite once per mutant, no longer).
/// `PAXOS_LIVENESS_HOLD_TIMEOUTS=N` holds longer.
const HOLD_TIMEOUTS: u64 = 20;
const BASELINE_TIMEOUTS: u64 = 5;
/// Probes outstanding at once, shared out over the nodes of the connected quorum (clients at
/// every member of it, so that a probe stuck at one, forwarded over a link that loses it, does
/// not hold back the others). A steady load, not a saturating one: with the swarm's tiny pages
/// a member that does not vote (a proposer) catches up a page per round trip, and a heavier
/// load would leave it behind for good, which is a test of catch-up bandwidth, not of elections.
const PROBE_LOAD: usize = 4;
/// The client index that marks a probe's registration nonce (see `Simulation::on_reply`).
pub const PROBE_INDEX: u64 = 0xFFFF_FFFF;

/// A static partial fault, placed around the leader in place when the hold starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TopologyKind {
    /// One member hears nobody; its own messages still arrive (a broken receive path).
    Deaf,
    /// The reverse: one member hears everybody, nobody hears it.
    Mute,
    /// The leader hears only a bridge member, which everyone else hears (openraft #2080).
    Bridge,
    /// L - B - C: the leader and one member cannot hear each other, both hear the rest.
    Chain,
    /// The leader and one follower are cut off from the rest, both ways.
    QuorumLoss,
    /// The link between the leader and one follower is cut and restored, again and again.
    Flapping,
    /// Each directed link is cut with a chance of one in four.
    RandomOneWay,
    /// The leader removes itself and stops the moment it has applied the removal (as an
    /// operator stops a removed member), and another voter crashes at once; both stay down
    /// for the hold. The survivors may be a majority only of the configuration just chosen.
    LeaderRemovedThenCrash,
}

impl TopologyKind {
    pub const ALL: [TopologyKind; 8] = [
        TopologyKind::Deaf,
        TopologyKind::Mute,
        TopologyKind::Bridge,
        TopologyKind::Chain,
        TopologyKind::QuorumLoss,
        TopologyKind::Flapping,
        TopologyKind::RandomOneWay,
        TopologyKind::LeaderRemovedThenCrash,
    ];
}

/// What one hold measured.
#[derive(Clone, Debug)]
pub struct HoldReport {
    /// The topology leaves a connected quorum with a member that may lead.
    pub expect_progress: bool,
    pub first_commit_ticks: Option<u64>,
    /// The longest run of ticks without a commit after the first one.
    pub commit_gap_ticks_max: u64,
    pub leader_changes: u64,
    pub commits: u64,
    pub hold_ticks: u64,
    pub healthy_commits: u64,
    pub healthy_ticks: u64,
    pub election_timeout_ticks: u64,
}

impl HoldReport {
    /// Commits per tick over the hold against the healthy rate, in per mille.
    pub fn rate_per_mille(&self) -> u64 {
        if self.healthy_commits == 0 {
            return 0;
        }
        self.commits * self.healthy_ticks * 1000 / (self.healthy_commits * self.hold_ticks)
    }
}

/// Holds of one kind, added up (the swarm's totals print them).
#[derive(Clone, Debug, Default)]
pub struct TopologyTotals {
    pub holds: u64,
    pub expected_progress: u64,
    /// In election timeouts, as tenths: 25 is 2.5 timeouts.
    pub first_commit_tenths_max: u64,
    pub first_commit_tenths_sum: u64,
    /// The longest stall after the first commit, in tenths of an election timeout.
    pub commit_gap_tenths_max: u64,
    pub leader_changes_max: u64,
    pub leader_changes_sum: u64,
    pub rate_per_mille_min: Option<u64>,
    pub rate_per_mille_sum: u64,
}

impl TopologyTotals {
    pub fn add_report(&mut self, report: &HoldReport) {
        self.holds += 1;
        if !report.expect_progress {
            return;
        }
        self.expected_progress += 1;
        let tenths = report.first_commit_ticks.unwrap_or(0) * 10 / report.election_timeout_ticks.max(1);
        self.first_commit_tenths_max = self.first_commit_tenths_max.max(tenths);
        self.first_commit_tenths_sum += tenths;
        let gap = report.commit_gap_ticks_max * 10 / report.election_timeout_ticks.max(1);
        self.commit_gap_tenths_max = self.commit_gap_tenths_max.max(gap);
        self.leader_changes_max = self.leader_changes_max.max(report.leader_changes);
        self.leader_changes_sum += report.leader_changes;
        let rate = report.rate_per_mille();
        self.rate_per_mille_min = Some(self.rate_per_mille_min.map_or(rate, |min| min.min(rate)));
        self.rate_per_mille_sum += rate;
    }

    pub fn add(&mut self, other: &TopologyTotals) {
        self.holds += other.holds;
        self.expected_progress += other.expected_progress;
        self.first_commit_tenths_max = self.first_commit_tenths_max.max(other.first_commit_tenths_max);
        self.first_commit_tenths_sum += other.first_commit_tenths_sum;
        self.commit_gap_tenths_max = self.commit_gap_tenths_max.max(other.commit_gap_tenths_max);
        self.leader_changes_max = self.leader_changes_max.max(other.leader_changes_max);
        self.leader_changes_sum += other.leader_changes_sum;
        self.rate_per_mille_min = match (self.rate_per_mille_min, other.rate_per_mille_min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.rate_per_mille_sum += other.rate_per_mille_sum;
    }

    /// One line: first commit (mean and max, in election timeouts), leader changes (mean,
    /// max), commit rate against healthy (mean, min).
    pub fn summary(&self) -> String {
        let n = self.expected_progress.max(1);
        format!(
            "{} holds ({} with a connected quorum): first commit {:.1}/{:.1} timeouts (mean/max), longest stall {:.1}, leader changes {:.2}/{}, rate {}%/{}% of healthy (mean/min)",
            self.holds,
            self.expected_progress,
            self.first_commit_tenths_sum as f64 / 10.0 / n as f64,
            self.first_commit_tenths_max as f64 / 10.0,
            self.commit_gap_tenths_max as f64 / 10.0,
            self.leader_changes_sum as f64 / n as f64,
            self.leader_changes_max,
            self.rate_per_mille_sum / 10 / n,
            self.rate_per_mille_min.unwrap_or(0) / 10,
        )
    }
}

/// The probe load: registrations (they need no session), a few outstanding at once.
#[derive(Default)]
pub struct Probes {
    next: u64,
    /// nonce -> (node asked, tick sent)
    outstanding: BTreeMap<u64, (NodeId, u64)>,
    /// (tick answered, slot, tick sent) of every probe chosen.
    pub acknowledged: Vec<(u64, Slot, u64)>,
}

/// The directed links a topology cuts; a flapping link is listed apart (cut half the time).
struct Cuts {
    links: BTreeSet<(NodeId, NodeId)>,
    flapping: Option<((NodeId, NodeId), u64)>,
}

impl Simulation {
    /// Settles, measures the healthy rate, holds `kind` around the leader, measures, checks,
    /// and lifts the fault.
    pub(super) fn hold_partial_fault(&mut self, kind: TopologyKind) -> Result<HoldReport, String> {
        let timeout = self.election_timeout_ticks();
        // A leader first (the run has converged: one is there or comes within a few timeouts).
        let settle_deadline = self.now + 20 * timeout;
        while self.leader().is_none() {
            if self.now >= settle_deadline {
                return Err(format!("liveness: no leader before the {kind:?} hold: {}", self.progress()));
            }
            self.step()?;
        }
        let everyone: Vec<NodeId> = self.live_members();
        let baseline_ticks = BASELINE_TIMEOUTS * timeout;
        let acked_before = self.probes.acknowledged.len();
        for _ in 0..baseline_ticks {
            self.step()?;
            self.run_probes(&everyone);
        }
        let healthy_commits = (self.probes.acknowledged.len() - acked_before) as u64;

        let Some(leader) = self.leader() else {
            return Err(format!("liveness: the leader left during the healthy run: {}", self.progress()));
        };
        let (everyone, stopped) = if kind == TopologyKind::LeaderRemovedThenCrash {
            let stopped = self.remove_leader_then_crash(leader)?;
            (self.live_members(), stopped)
        } else {
            (everyone, Vec::new())
        };
        let cuts = self.draw_cuts(kind, leader, &everyone);
        let majority = self.connected_quorum(&everyone, &cuts, leader);
        let expect_progress = majority.is_some();
        let probe_nodes = majority.clone().unwrap_or_else(|| everyone.clone());
        self.network.set_static_cuts(cuts.links.clone());

        let start = self.now;
        if self.trace_from.is_some() {
            eprintln!(
                "t{start}: {kind:?} held around leader {leader}: cuts {:?}, flapping {:?}",
                cuts.links, cuts.flapping
            );
        }
        let applied_at_start = self.max_applied();
        // A member that may lead but is behind (a proposer learns by catch-up only) pages
        // through what it lacks in phase 1, a page per round trip, before it can lead: with the
        // swarm's tiny pages that takes longer than any election. The bound allows for it.
        let catch_up_allowance_ticks = self.catch_up_allowance_ticks(&probe_nodes, applied_at_start);
        let acked_at_start = self.probes.acknowledged.len();
        let mut leaderships: BTreeSet<(NodeId, paxos_core::Ballot)> =
            self.leaderships().into_iter().collect();
        let mut leader_changes = 0;
        let hold_timeouts = std::env::var("PAXOS_LIVENESS_HOLD_TIMEOUTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(HOLD_TIMEOUTS);
        let hold_ticks = hold_timeouts * timeout;
        let mut first_commit_ticks = None;
        let mut last_commit_tick = None;
        let mut commit_gap_ticks_max = 0;
        for tick in 0..hold_ticks {
            if let Some(((from, to), period)) = cuts.flapping {
                let mut links = cuts.links.clone();
                if (tick / period) % 2 == 0 {
                    links.insert((from, to));
                    links.insert((to, from));
                }
                self.network.set_static_cuts(links);
            }
            self.step()?;
            self.run_probes(&probe_nodes);
            for leadership in self.leaderships() {
                if leaderships.insert(leadership) {
                    leader_changes += 1;
                }
            }
            // A commit of the hold: a probe proposed during it (one in flight when the fault
            // struck may still be chosen by the leader in place, which says nothing of recovery).
            let committed_now = self.probes.acknowledged[acked_at_start..]
                .iter()
                .any(|(at, slot, sent)| *at == self.now && *sent >= start && *slot >= applied_at_start);
            if committed_now {
                if first_commit_ticks.is_none() {
                    first_commit_ticks = Some(self.now - start);
                }
                if let Some(last) = last_commit_tick {
                    commit_gap_ticks_max = commit_gap_ticks_max.max(self.now - last);
                }
                last_commit_tick = Some(self.now);
            }
        }
        if let Some(last) = last_commit_tick {
            commit_gap_ticks_max = commit_gap_ticks_max.max(self.now - last);
        }
        let commits = (self.probes.acknowledged.len() - acked_at_start) as u64;
        self.network.set_static_cuts(BTreeSet::new());
        self.probes.outstanding.clear();
        // Back now, not at the next step: the caller sizes its convergence deadline by how far
        // the running members are behind, and these two are furthest (seed 1400: two members
        // two hundred one-entry pages behind, given the time of the others).
        for id in &stopped {
            if self.nodes.get(id).is_some_and(|node| node.replica.is_none()) {
                self.restart(*id);
            }
        }

        let report = HoldReport {
            expect_progress,
            first_commit_ticks,
            commit_gap_ticks_max,
            leader_changes,
            commits,
            hold_ticks,
            healthy_commits,
            healthy_ticks: baseline_ticks,
            election_timeout_ticks: timeout,
        };
        // `PAXOS_LIVENESS_REPORT_ONLY=1` measures without judging (to compare with other code).
        if expect_progress && std::env::var_os("PAXOS_LIVENESS_REPORT_ONLY").is_none() {
            let bound = FIRST_COMMIT_TIMEOUTS_MAX * timeout;
            let first_bound = bound + catch_up_allowance_ticks;
            if first_commit_ticks.is_none_or(|ticks| ticks > first_bound) {
                return Err(format!(
                    "liveness: {kind:?} around leader {leader} (cuts {:?}, flapping {:?}) leaves the connected quorum {majority:?}, but the first commit took {first_commit_ticks:?} ticks (bound {bound}, and {catch_up_allowance_ticks} to catch up): {}",
                    cuts.links,
                    cuts.flapping,
                    self.progress()
                ));
            }
            if commit_gap_ticks_max > bound {
                return Err(format!(
                    "liveness: {kind:?} around leader {leader} (cuts {:?}, flapping {:?}): commits stopped for {commit_gap_ticks_max} ticks after the first (bound {bound}): {}",
                    cuts.links,
                    cuts.flapping,
                    self.progress()
                ));
            }
            if leader_changes > LEADER_CHANGES_MAX {
                return Err(format!(
                    "liveness: {kind:?} around leader {leader} (cuts {:?}, flapping {:?}): {leader_changes} leader changes in {hold_ticks} ticks: {leaderships:?}",
                    cuts.links, cuts.flapping
                ));
            }
        }
        Ok(report)
    }

    /// `LeaderRemovedThenCrash`: asks `leader` to remove itself, runs until it has applied the
    /// removal, then crashes it and another voter of the new configuration, neither to restart
    /// before the hold ends. The nodes stopped (none if the removal was refused or did not go
    /// through in time: the hold then measures the cluster as it is).
    fn remove_leader_then_crash(&mut self, leader: NodeId) -> Result<Vec<NodeId>, String> {
        let request_id = self.next_operator_request();
        let Some(replica) = self.nodes.get_mut(&leader).and_then(|n| n.replica.as_mut()) else {
            return Ok(Vec::new());
        };
        replica.change_membership(request_id, paxos_core::MembershipChange::Remove { id: leader });
        let deadline = self.now + 20 * self.election_timeout_ticks();
        loop {
            self.step()?;
            let Some(replica) = self.nodes[&leader].replica.as_ref() else {
                return Ok(Vec::new());
            };
            if replica.membership().get(leader).is_none() {
                break;
            }
            if self.now >= deadline {
                return Ok(Vec::new());
            }
        }
        // What it sent as it applied the removal is on the network; it stops now.
        self.crash(leader);
        let voters: Vec<NodeId> = self
            .live_members()
            .into_iter()
            .filter(|id| *id != leader && self.checker.latest_config().votes(*id))
            .collect();
        let mut stopped = vec![leader];
        if !voters.is_empty() {
            let victim = voters[self.rng.range(0, voters.len() as u64) as usize];
            self.crash(victim);
            stopped.push(victim);
        }
        for id in &stopped {
            if let Some(node) = self.nodes.get_mut(id) {
                node.restart_at = None;
            }
        }
        if self.trace_from.is_some() {
            eprintln!("t{}: leader {leader} removed itself; stopped {stopped:?}", self.now);
        }
        Ok(stopped)
    }

    /// Ticks for the member of `quorum` that may lead and is furthest behind to page through
    /// what it lacks: a page per round trip. 0 when the leader in
    /// place is in the quorum (no one needs to take over).
    fn catch_up_allowance_ticks(&self, quorum: &[NodeId], applied_max: Slot) -> u64 {
        let latest = self.checker.latest_config();
        if self.leader().is_some_and(|leader| quorum.contains(&leader)) {
            return 0;
        }
        // A page's round trip: the link both ways, and the acceptor's write (its Promise speaks
        // for its disk, so it leaves only once a slow disk is done; seed 11372: thirteen pages
        // through a disk of up to 7 ticks a write took 167 ticks).
        let faults = &self.scenario.faults;
        let round_trip_ticks = 2 * faults.delay_ticks_max + faults.write_delay_ticks_max;
        quorum
            .iter()
            .filter(|id| latest.may_lead(**id))
            .filter_map(|id| self.nodes[id].replica.as_ref())
            .map(|replica| {
                let lag = applied_max.saturating_sub(replica.applied_upto());
                // The swarm's tiny byte limits make pages of one entry.
                let config = replica.config();
                let page = if config.message_bytes_max < 4096 {
                    1
                } else {
                    config.entries_per_message_max.max(1) as u64
                };
                lag.div_ceil(page) * round_trip_ticks
            })
            .max()
            .unwrap_or(0)
    }

    /// Every leadership in place now: (leader, ballot).
    fn leaderships(&self) -> Vec<(NodeId, paxos_core::Ballot)> {
        self.nodes
            .iter()
            .filter_map(|(id, node)| {
                let status = node.replica.as_ref()?.status();
                let ballot = status.own_ballot?;
                (status.role == paxos_core::RoleName::Leader).then_some((*id, ballot))
            })
            .collect()
    }

    fn max_applied(&self) -> Slot {
        self.nodes.values().filter_map(|n| n.replica.as_ref()).map(|r| r.applied_upto()).max().unwrap_or(0)
    }

    /// Running members of the latest configuration, with the incarnation it admits.
    fn live_members(&self) -> Vec<NodeId> {
        let latest = self.checker.latest_config();
        self.nodes
            .iter()
            .filter(|(id, node)| {
                node.replica.is_some()
                    && latest
                        .get(**id)
                        .is_some_and(|m| m.incarnation == 0 || m.incarnation == node.incarnation)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    fn draw_cuts(&mut self, kind: TopologyKind, leader: NodeId, everyone: &[NodeId]) -> Cuts {
        let mut links = BTreeSet::new();
        let mut flapping = None;
        let others: Vec<NodeId> = everyone.iter().copied().filter(|id| *id != leader).collect();
        let pick = |sim: &mut Simulation, from: &[NodeId]| from[sim.rng.range(0, from.len() as u64) as usize];
        let all: Vec<NodeId> = self.members.clone();
        match kind {
            TopologyKind::Deaf | TopologyKind::Mute => {
                // Usually a follower (the case that deposed leaders), sometimes the leader.
                let victim =
                    if others.is_empty() || self.rng.chance(1, 4) { leader } else { pick(self, &others) };
                for other in all.iter().copied().filter(|id| *id != victim) {
                    links.insert(if kind == TopologyKind::Deaf { (other, victim) } else { (victim, other) });
                }
            }
            TopologyKind::Bridge | TopologyKind::QuorumLoss if !others.is_empty() => {
                let partner = pick(self, &others);
                let rest: Vec<NodeId> =
                    all.iter().copied().filter(|id| *id != leader && *id != partner).collect();
                for other in rest {
                    links.insert((leader, other));
                    links.insert((other, leader));
                    if kind == TopologyKind::QuorumLoss {
                        links.insert((partner, other));
                        links.insert((other, partner));
                    }
                }
            }
            TopologyKind::Chain if !others.is_empty() => {
                let far = pick(self, &others);
                links.insert((leader, far));
                links.insert((far, leader));
            }
            TopologyKind::Flapping if !others.is_empty() => {
                let follower = pick(self, &others);
                // Up and down for at least two round trips at a time (a link up for less than a
                // round trip carries no exchange at all: that is a cut, not a flap), and down for
                // less than an election timeout (as the 300 ms against 500 ms): a link
                // down for longer is a partition each time, and a leader whose only quorum runs
                // over it rightly steps down (check quorum), so leadership may move each time.
                // A page's round trip: the link both ways, and the acceptor's write (its Promise speaks
                // for its disk, so it leaves only once a slow disk is done; seed 11372: thirteen pages
                // through a disk of up to 7 ticks a write took 167 ticks).
                let faults = &self.scenario.faults;
                let round_trip_ticks = 2 * faults.delay_ticks_max + faults.write_delay_ticks_max;
                let period_max = self.election_timeout_ticks().max(2 * round_trip_ticks + 1);
                let period = self.rng.range(2 * round_trip_ticks, period_max);
                flapping = Some(((leader, follower), period));
            }
            TopologyKind::RandomOneWay => {
                for from in &all {
                    for to in &all {
                        if from != to && self.rng.chance(1, 4) {
                            links.insert((*from, *to));
                        }
                    }
                }
            }
            _ => {}
        }
        Cuts { links, flapping }
    }

    /// The largest set of running members in which every pair hears each other both ways
    /// (a flapping link counts as cut), if it holds a quorum of the voting members of the
    /// latest configuration and a member that may lead; a set with the leader in place before
    /// any without it (its clients need no new leader, and members that hear it keep it).
    fn connected_quorum(&self, everyone: &[NodeId], cuts: &Cuts, leader: NodeId) -> Option<Vec<NodeId>> {
        let latest = self.checker.latest_config().clone();
        let cut = |a: NodeId, b: NodeId| {
            cuts.links.contains(&(a, b))
                || cuts.flapping.is_some_and(|((x, y), _)| (x, y) == (a, b) || (y, x) == (a, b))
        };
        let mut best: Option<Vec<NodeId>> = None;
        for mask in 1u32..(1 << everyone.len()) {
            let set: Vec<NodeId> = everyone
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, id)| *id)
                .collect();
            let connected = set.iter().all(|a| set.iter().all(|b| a == b || (!cut(*a, *b) && !cut(*b, *a))));
            let voters = set.iter().filter(|id| latest.votes(**id)).count();
            let leads = set.iter().any(|id| latest.may_lead(*id));
            // The leader in place first, whenever its side holds a quorum: a member that hears
            // it refuses to elect another (stickiness), so a larger set without it that shares
            // such a member cannot elect, by design (seed 6957: voters 3, 4 and 6 among three
            // proposers, a bridge 6 that hears leader 4 and everyone else; {4, 6} is a quorum
            // and commits, {1, 2, 3, 5, 6} is larger and cannot). Then the largest.
            let better = |best: &Vec<NodeId>| {
                let (with_leader, best_with_leader) = (set.contains(&leader), best.contains(&leader));
                if with_leader != best_with_leader {
                    return with_leader;
                }
                best.len() < set.len()
            };
            if connected && voters >= latest.quorum() && leads && best.as_ref().is_none_or(better) {
                best = Some(set);
            }
        }
        best
    }

    /// Keeps `PROBE_LOAD` probes outstanding, shared out over the nodes of `through` (each new
    /// one to a node with the fewest outstanding: the same load healthy and during a hold,
    /// however many nodes share it); one unanswered for a client timeout, or refused, is
    /// dropped (another takes its place).
    fn run_probes(&mut self, through: &[NodeId]) {
        let timeout = super::CLIENT_TIMEOUT_TICKS.max(6 * self.scenario.faults.delay_ticks_max);
        let now = self.now;
        self.probes.outstanding.retain(|_, (_, sent)| now.saturating_sub(*sent) < timeout);
        while self.probes.outstanding.len() < PROBE_LOAD && !through.is_empty() {
            let load = |node: &NodeId| self.probes.outstanding.values().filter(|(at, _)| at == node).count();
            let Some(node) = through.iter().copied().min_by_key(|node| load(node)) else {
                return;
            };
            self.probes.next += 1;
            let nonce = (PROBE_INDEX << 32) | self.probes.next;
            self.probes.outstanding.insert(nonce, (node, now));
            if let Some(replica) = self.nodes.get_mut(&node).and_then(|n| n.replica.as_mut()) {
                let floor_slot = replica.applied_upto();
                let proposal =
                    Proposal::register(nonce, [0; 16], floor_slot, format!("p{nonce:x}").into_bytes());
                self.checker.on_register(nonce, &proposal.payload);
                replica.propose(proposal);
            }
        }
    }

    /// A probe was answered (`Simulation::on_reply` routes it here).
    pub(super) fn on_probe_reply(
        &mut self,
        request_id: RequestId,
        outcome: Result<Slot, ProposalError>,
    ) -> Result<(), String> {
        let nonce = request_id.seq;
        match outcome {
            Ok(slot) => {
                self.checker.on_registered(nonce, slot)?;
                if let Some((_, sent)) = self.probes.outstanding.remove(&nonce) {
                    self.probes.acknowledged.push((self.now, slot, sent));
                }
            }
            Err(_) => {
                self.probes.outstanding.remove(&nonce);
            }
        }
        Ok(())
    }
}
