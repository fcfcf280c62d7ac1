//! The simulated operator: changes the configuration while the faults go on (adds members,
//! removes them, wipes a member's disk and replaces it), retrying through whichever node
//! leads, as `paxos-cli member` does.

use super::{SimNode, Simulation};
use paxos_core::{
    ChangeError, MemStorage, MemberRole, Membership, MembershipChange, NodeId, ProposalError, RequestId, Slot,
};
use std::collections::VecDeque;

/// The client id of the operator's requests (no session has it: sessions are slots).
pub const OPERATOR_CLIENT_ID: u64 = u64::MAX - 1;
/// A change with no answer after this long is asked again (its leader may have died).
const OPERATOR_TIMEOUT_TICKS: u64 = 300;
/// Nodes a run may grow to.
const NODES_MAX: u64 = 9;

#[derive(Clone, Debug)]
pub enum Op {
    Add { id: NodeId, role: MemberRole },
    Remove { id: NodeId },
    Replace { id: NodeId },
    SetRole { id: NodeId, role: MemberRole },
}

impl Op {
    fn change(&self) -> MembershipChange {
        match self {
            Op::Add { id, role } => {
                MembershipChange::Add { id: *id, address: format!("sim:{id}"), role: *role }
            }
            Op::Remove { id } => MembershipChange::Remove { id: *id },
            Op::Replace { id } => MembershipChange::Replace { id: *id },
            Op::SetRole { id, role } => MembershipChange::SetRole { id: *id, role: *role },
        }
    }
}

/// `config` once every learner waiting for a promotion has its role.
fn promoted(config: &Membership) -> Membership {
    let mut promoted = config.clone();
    for member in promoted.members.values_mut() {
        if let Some(role) = member.promote_to.take() {
            member.role = role;
        }
    }
    promoted
}

#[derive(Default)]
pub struct Operator {
    queue: VecDeque<Op>,
    /// The changes asked for: (seq, op, tick asked). Usually one; sometimes a second operator
    /// asks for another at the same time (the leader must refuse it until the first is applied).
    in_flight: Vec<(u64, Op, u64)>,
    next_seq: u64,
    /// The leader crashes at this tick (a crash in the middle of a change).
    crash_leader_at: Option<u64>,
}

impl Operator {
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight.is_empty()
    }
}

impl Simulation {
    /// Sends the next change to the leader, every few ticks, one at a time.
    pub(super) fn run_operator(&mut self) {
        if self.operator.crash_leader_at.is_some_and(|tick| tick <= self.now) {
            self.operator.crash_leader_at = None;
            if let Some(leader) = self.leader() {
                self.crash(leader);
            }
        }
        let now = self.now;
        let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.operator.in_flight)
            .into_iter()
            .partition(|(_, _, asked)| now.saturating_sub(*asked) >= OPERATOR_TIMEOUT_TICKS);
        self.operator.in_flight = waiting;
        for (_, op, _) in expired {
            self.operator.queue.push_front(op);
        }
        if !self.operator.in_flight.is_empty() || self.now % 5 != 0 {
            return;
        }
        let Some(leader) = self.leader() else {
            return;
        };
        // Now and then two operators at once: the second change must wait for the first.
        let concurrent = if self.rng.chance(1, 4) { 2 } else { 1 };
        for _ in 0..concurrent {
            let Some(op) = self.operator.queue.pop_front() else {
                return;
            };
            if self.is_done(&op) {
                // An answer lost with its leader: the change went through all the same.
                continue;
            }
            self.operator.next_seq += 1;
            let seq = self.operator.next_seq;
            let request_id = RequestId { client_id: OPERATOR_CLIENT_ID, seq };
            self.operator.in_flight.push((seq, op.clone(), self.now));
            if !self.healed && self.rng.chance(self.scenario.faults.crash_mid_change_per_mille, 1000) {
                self.operator.crash_leader_at = Some(self.now + self.rng.range(0, 12));
            }
            let Some(replica) = self.nodes.get_mut(&leader).and_then(|n| n.replica.as_mut()) else {
                return;
            };
            replica.change_membership(request_id, op.change());
        }
    }

    /// A request id for a change asked outside the operator's queue (its answer is ignored).
    pub(super) fn next_operator_request(&mut self) -> RequestId {
        self.operator.next_seq += 1;
        RequestId { client_id: OPERATOR_CLIENT_ID, seq: self.operator.next_seq }
    }

    pub(super) fn on_operator_reply(&mut self, request_id: RequestId, outcome: Result<Slot, ProposalError>) {
        let Some(index) = self.operator.in_flight.iter().position(|(seq, _, _)| *seq == request_id.seq)
        else {
            return;
        };
        let (_, op, _) = self.operator.in_flight.remove(index);
        match outcome {
            Ok(_) => match op {
                Op::Add { .. } => self.stats.members_added += 1,
                Op::Remove { .. } => self.stats.members_removed += 1,
                Op::Replace { .. } => self.stats.members_replaced += 1,
                Op::SetRole { .. } => self.stats.roles_changed += 1,
            },
            Err(ProposalError::ChangeRefused(
                ChangeError::NotHeardFrom(_) | ChangeError::SameIncarnation { .. },
            )) => {
                // The wiped node has not restarted (or spoken to the leader) yet.
                self.operator.queue.push_back(op);
            }
            Err(error) if error.is_retryable() => self.operator.queue.push_back(op),
            // Refused for good (done already, or no longer valid): an operator reads and moves on.
            Err(_) => {}
        }
    }

    /// A new data directory. Runs that start bound model a cluster whose binding was made
    /// before slot 0 (not in the log), so a new disk knows that binding, as every disk did.
    fn empty_disk(&self) -> MemStorage {
        let initial = self.checker.initial_config();
        MemStorage { membership: initial.is_bound().then(|| initial.clone()), ..MemStorage::default() }
    }

    /// Whether the latest configuration applied anywhere already reflects `op`.
    fn is_done(&self, op: &Op) -> bool {
        let latest = self.checker.latest_config();
        match op {
            Op::Add { id, .. } => latest.contains(*id),
            Op::Remove { id } => !latest.contains(*id),
            Op::Replace { id } => {
                latest.get(*id).is_none_or(|member| member.incarnation == self.nodes[id].incarnation)
            }
            Op::SetRole { id, role } => {
                latest.get(*id).is_none_or(|member| member.role == *role || member.promote_to == Some(*role))
            }
        }
    }

    /// Whether `config` (and `config` once its learners are promoted) keeps the cluster live
    /// with the nodes in `lost` gone (dead, or wiped): a majority of its voting members alive
    /// with the disks it admits, and one of them or a proposer able to lead. The run checks
    /// liveness after healing, so the faults and the operator keep this between them.
    pub(super) fn viable(&self, config: &Membership, lost: &[NodeId]) -> bool {
        let able = |config: &Membership, id: &NodeId| {
            !lost.contains(id)
                && self.nodes.get(id).is_some_and(|n| !n.dead && config.admits(*id, n.incarnation))
        };
        [config.clone(), promoted(config)].iter().all(|config| {
            let voting: Vec<NodeId> = config.voting().collect();
            let live = voting.iter().filter(|id| able(config, id)).count();
            let leader = config.members.keys().any(|id| config.may_lead(*id) && able(config, id));
            !voting.is_empty() && live > voting.len() / 2 && leader
        })
    }

    /// Whether the configuration after `change` stays viable with `lost` gone (see `viable`),
    /// now and once the learners waiting for promotion are promoted (the leader promotes on its
    /// own, with the incarnation it last heard, maybe just before a disk is lost).
    fn viable_after(&self, latest: &Membership, change: MembershipChange, lost: &[NodeId]) -> bool {
        let seen = self.nodes.iter().map(|(id, n)| (*id, n.incarnation)).collect();
        latest.after(&change, &seen).is_ok_and(|next| self.viable(&next, lost))
    }

    /// Whether `id` may die for good (see `viable`): under the latest configuration applied
    /// anywhere, and under the one each running member has applied. A member that has not
    /// applied the latest change is governed by the one before, and learns the change only
    /// from a majority of that one (swarm seed 3333: node 2 removed, the removal applied on
    /// node 5 alone, then node 5 died for good; the others kept the old configuration, of
    /// whose four voters two were dead, and could never learn the entry that removed node 2).
    ///
    /// A member that is down counts with what its disk holds (see `in_force`).
    pub(super) fn may_die_for_good(&self, id: NodeId) -> bool {
        let latest = self.checker.latest_config();
        self.viable(latest, &[id])
            && self.in_force(latest).iter().all(|(_, config)| self.viable(config, &[id]))
    }

    /// The applied prefix and the configuration of every member of `latest` that is not dead
    /// for good: its replica's, or for one that is down, what its disk holds and it will restart
    /// with. An operator counts a member that is down as behind: it learns later changes only
    /// through a leader (swarm seeds 5104, 5149: the leader, a proposer, was wiped while the
    /// other proposer was down; it came back as the learner its disk said it was, the only
    /// leader able to promote it was gone, and the cluster never had a leader again).
    fn in_force(&self, latest: &Membership) -> Vec<(Slot, Membership)> {
        let initial = self.checker.initial_config();
        latest
            .members
            .keys()
            .filter_map(|id| self.nodes.get(id).filter(|n| !n.dead && latest.admits(*id, n.incarnation)))
            .map(|node| match &node.replica {
                Some(replica) => (replica.applied_upto(), replica.membership().clone()),
                None => (
                    node.storage.applied_upto,
                    node.storage.membership.clone().unwrap_or_else(|| initial.clone()),
                ),
            })
            .collect()
    }

    pub(super) fn leader(&self) -> Option<NodeId> {
        self.nodes.iter().find(|(_, n)| n.replica.as_ref().is_some_and(|r| r.is_leader())).map(|(id, _)| *id)
    }

    /// Plans one change against the latest configuration applied anywhere.
    pub(super) fn plan_reconfiguration(&mut self) {
        if !self.operator.is_idle() {
            return;
        }
        let latest = self.checker.latest_config().clone();
        // An operator waits until every running member has applied the last change before the
        // next one (`member list` shows it): until then the configuration before it is what a
        // new leader must learn it through, and a wipe or removal planned against the new one
        // could take that one's majority.
        let settled = latest
            .chosen_at
            .is_none_or(|slot| self.in_force(&latest).iter().all(|(applied_upto, _)| *applied_upto > slot));
        if !settled {
            return;
        }
        if !latest.is_bound() {
            // During the bootstrap, a disk can be lost too: the binding entry may name the old
            // incarnation (if it had voted for it) or the new one.
            self.plan_one_change(&latest, false, 2);
            return;
        }
        // Members that die for good take a minority of the voters; a wipe or the removal of a
        // live member on top could take the majority, and then no change can ever be chosen:
        // such runs only add members and remove dead ones.
        let permanent = self.scenario.faults.permanent_failures > 0;
        let kind = self.rng.range(0, 3);
        self.plan_one_change(&latest, permanent, kind);
        // Sometimes a second operator adds a member at the same time (an addition keeps every
        // liveness assumption the first change was planned with). Not once the run has all the
        // nodes it may have: `plan_one_change` then takes kind 0 for a wipe, and a wipe planned
        // against the configuration before the first change can take the majority it leaves
        // (swarm seed 13729: node 8 removed from [2, 8, 9] and node 2 wiped at once).
        if self.rng.chance(1, 4) && (self.members.len() as u64) < NODES_MAX {
            self.plan_one_change(&latest, permanent, 0);
        }
    }

    fn plan_one_change(&mut self, latest: &paxos_core::Membership, permanent: bool, kind: u64) {
        let dead = |id: &NodeId| self.nodes.get(id).is_none_or(|n| n.dead);
        match kind {
            _ if permanent && self.rng.chance(1, 2) => {
                if let Some(id) = latest.members.keys().copied().find(|id| {
                    dead(id) && self.viable_after(latest, MembershipChange::Remove { id: *id }, &[])
                }) {
                    self.operator.queue.push_back(Op::Remove { id });
                }
            }
            _ if permanent => {}
            0 if (self.members.len() as u64) < NODES_MAX => {
                let id = self.members.iter().max().copied().unwrap_or(0) + 1;
                let node = SimNode {
                    replica: None,
                    incarnation: self.rng.next_u64() | 1,
                    join_existing: true,
                    storage: self.empty_disk(),
                    volatile: self.empty_disk(),
                    unsynced: Vec::new(),
                    writing: Default::default(),
                    disk_stalled_until: 0,
                    restart_at: Some(self.now + 1),
                    dead: false,
                    paused_until: None,
                };
                self.nodes.insert(id, node);
                self.members.push(id);
                let role = if self.rng.chance(1, 4) {
                    MemberRole::Learner
                } else if self.scenario.roles.is_empty() {
                    MemberRole::Voter
                } else {
                    MemberRole::ALL[self.rng.range(0, 3) as usize]
                };
                self.operator.queue.push_back(Op::Add { id, role });
            }
            1 if !self.scenario.roles.is_empty() && self.rng.chance(1, 2) => {
                // Another role for a member (a voter becomes an acceptor or a proposer, ...).
                let ids: Vec<NodeId> = latest.members.keys().copied().collect();
                let id = ids[self.rng.range(0, ids.len() as u64) as usize];
                let role = MemberRole::ALL[self.rng.range(0, 4) as usize];
                if self.viable_after(latest, MembershipChange::SetRole { id, role }, &[]) {
                    self.operator.queue.push_back(Op::SetRole { id, role });
                }
            }
            1 => {
                // A dead member first (what operators remove); else any member whose removal
                // leaves the cluster viable.
                let candidates: Vec<NodeId> = latest
                    .members
                    .keys()
                    .copied()
                    .filter(|id| self.viable_after(latest, MembershipChange::Remove { id: *id }, &[]))
                    .collect();
                let pick = candidates.iter().copied().find(|id| dead(id)).or_else(|| {
                    (!candidates.is_empty())
                        .then(|| candidates[self.rng.range(0, candidates.len() as u64) as usize])
                });
                if let Some(id) = pick {
                    self.operator.queue.push_back(Op::Remove { id });
                }
            }
            _ => {
                // A disk lost: the node restarts empty with a new incarnation, half the time
                // claiming a brand-new cluster (the dangerous restart).
                let live: Vec<NodeId> = latest
                    .members
                    .keys()
                    .copied()
                    .filter(|id| !dead(id) && self.may_die_for_good(*id))
                    .collect();
                if live.is_empty() {
                    return;
                }
                let id = live[self.rng.range(0, live.len() as u64) as usize];
                if self.nodes[&id].replica.is_some() {
                    self.crash(id);
                }
                let incarnation = self.rng.next_u64() | 1;
                // A node the bootstrap did not list must say it joins an existing cluster; during
                // the bootstrap a member restarts with its old command line (one started as
                // joining an existing cluster would never vote for the binding entry, which
                // needs every member: a bootstrap an operator must start over).
                let join_existing = if latest.is_bound() {
                    self.rng.chance(1, 2) || !self.bootstrap_members.contains(&id)
                } else {
                    false
                };
                let empty = self.empty_disk();
                let node = self.nodes.get_mut(&id).expect("member runs");
                node.storage = empty.clone();
                node.volatile = empty;
                node.unsynced.clear();
                node.writing.clear();
                node.incarnation = incarnation;
                node.join_existing = join_existing;
                node.restart_at = Some(self.now + 1 + self.rng.range(0, 100));
                self.stats.disks_wiped += 1;
                self.operator.queue.push_back(Op::Replace { id });
            }
        }
    }
}
