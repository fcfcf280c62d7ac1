//! Who the members are, what each may do, and which incarnation of each the cluster admits.
//!
//! The configuration is part of the chosen history: a [`Value::Config`](crate::Value::Config)
//! entry at slot `c` holds the whole next [`Membership`], and it governs every slot above `c`
//! (never `c` itself, and never before it is chosen). The rules that make a change safe while
//! leaders crash and messages are late are in `reconfiguration.rs` and `phase_one.rs`
//! (`# Correctness` of `Replica::propose_membership` and `phase_one_values`); this file holds
//! the data and the one check every replica applies in the same way:
//! [`Membership::check_successor`].

use crate::types::{NodeId, Slot};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A random number a data directory gets when it is created, never changed afterwards. A
/// member that lost its disk comes back with a new one, which is how the cluster tells it from
/// the member that made promises and cast votes before.
pub type Incarnation = u64;

/// What a member does. Every member learns the chosen history; the role says whether it
/// also votes (is an acceptor, counted in quorums) and whether it may lead (is a proposer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// Proposer, acceptor and learner: counted in quorums, may lead.
    #[default]
    Voter,
    /// Votes and keeps promises and accepted values durably; never leads (a witness).
    Acceptor,
    /// May lead and proposes; keeps no acceptor state and is never counted in a quorum.
    Proposer,
    /// Receives the history; never votes, never leads.
    Learner,
}

impl MemberRole {
    pub const ALL: [MemberRole; 4] =
        [MemberRole::Voter, MemberRole::Acceptor, MemberRole::Proposer, MemberRole::Learner];

    /// Whether a member of this role is an acceptor: promises, accepts, counts in quorums.
    pub fn votes(self) -> bool {
        matches!(self, MemberRole::Voter | MemberRole::Acceptor)
    }

    /// Whether a member of this role stands for election.
    pub fn may_lead(self) -> bool {
        matches!(self, MemberRole::Voter | MemberRole::Proposer)
    }
}

impl fmt::Display for MemberRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemberRole::Voter => "voter",
            MemberRole::Acceptor => "acceptor",
            MemberRole::Proposer => "proposer",
            MemberRole::Learner => "learner",
        })
    }
}

impl MemberRole {
    /// The role with its article, for sentences: "an acceptor", "a voter".
    pub fn with_article(self) -> String {
        match self {
            MemberRole::Acceptor => format!("an {self}"),
            _ => format!("a {self}"),
        }
    }
}

impl std::str::FromStr for MemberRole {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        MemberRole::ALL
            .into_iter()
            .find(|role| role.to_string() == text)
            .ok_or_else(|| format!("unknown role {text:?}: one of voter, acceptor, proposer, learner"))
    }
}

/// One member of a configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Where peers and clients reach it (opaque to the core).
    pub address: String,
    /// The incarnation whose votes count and that may lead. `0` means not bound yet: every
    /// member of the bootstrap configuration, and a learner added before it ever connected. A
    /// member of a chosen configuration that votes or may lead is always bound.
    pub incarnation: Incarnation,
    pub role: MemberRole,
    /// The role a learner gets once it has caught up (`member add --role`, and `member
    /// replace` of a member that voted or led); the leader promotes it.
    pub promote_to: Option<MemberRole>,
}

/// The configuration of the cluster at some point of the history.
///
/// # Correctness
/// - A chosen configuration (`chosen_at` is `Some`) binds every member that votes or may lead
///   to one incarnation, and only that incarnation's votes count, and only it may lead.
/// - The bootstrap configuration (`chosen_at` is `None`, built from the `--peer` flags) binds
///   nobody: it needs the vote of every voter (whatever incarnation) to choose anything, and
///   the only entry its leaders propose is the one that binds every voter (see
///   [`Membership::quorum`]). So nothing is ever chosen with the vote of an incarnation the
///   cluster does not remember, and a member that lost its disk can vote again only after the
///   log admits its new incarnation. While unbound, a member's role is the one it announces
///   (`--role`, carried by every envelope): the binding entry fixes them.
/// - "Voting members" are the voters and the acceptors; quorums are majorities of them.
///   Proposers and learners never count.
/// - Two configurations one after the other differ by at most one voting member (an `(id,
///   incarnation)` pair added or removed): any majority of one meets any majority of the other.
///   Proposers and learners come and go freely: they hold no votes.
/// - Some member may lead (a voter or a proposer), or nothing could ever be chosen again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    pub members: BTreeMap<NodeId, Member>,
    /// The slot of the entry that made this configuration; `None` for the bootstrap one.
    pub chosen_at: Option<Slot>,
    /// Which log this is: the incarnation of the leader that bound the bootstrap, copied into
    /// every later configuration (0 while unbound). Histories of different logs never mix: a
    /// node wiped and restarted as a brand-new single-member cluster starts a log of its own,
    /// and must not take the old cluster's entries after its own (see `Replica::same_log`).
    pub log_id: u64,
}

/// Why a configuration cannot follow another.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum ChangeError {
    #[error("a configuration needs at least one member that votes (a voter or an acceptor)")]
    NoVoter,
    #[error("a configuration needs a member that may lead (a voter or a proposer): no leader could ever be elected")]
    NoLeader,
    #[error("node id 0 is reserved")]
    ReservedId,
    #[error("member {0} votes or may lead but has no incarnation bound")]
    Unbound(NodeId),
    #[error("a change may add or remove one voting member at a time (this one changes {0})")]
    TooManyVoters(usize),
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
    #[error("node {0} is a member already")]
    AlreadyAMember(NodeId),
    #[error("node {0} has not been heard from since it started: start it first (with --initial-cluster-state existing)")]
    NotHeardFrom(NodeId),
    #[error("node {id} presents incarnation {incarnation:016x}, the one already admitted: nothing to replace (if it lost its disk, it has not spoken to the leader since it restarted)")]
    SameIncarnation { id: NodeId, incarnation: Incarnation },
    #[error("changing member {0} would leave no member that votes")]
    LastVoter(NodeId),
    #[error("node {id} is {} already", role.with_article())]
    SameRole { id: NodeId, role: MemberRole },
    #[error("address {0:?} is not a host:port")]
    BadAddress(String),
    #[error("the configuration belongs to log {found:x}, not {expected:x}")]
    OtherLog { expected: u64, found: u64 },
}

impl Membership {
    /// The bootstrap configuration: every listed member a voter until it announces another
    /// role, none bound.
    pub fn bootstrap(members: &[NodeId], addresses: &BTreeMap<NodeId, String>) -> Membership {
        let members = members
            .iter()
            .map(|id| {
                let address = addresses.get(id).cloned().unwrap_or_default();
                (*id, Member { address, incarnation: 0, role: MemberRole::Voter, promote_to: None })
            })
            .collect();
        Membership { members, chosen_at: None, log_id: 0 }
    }

    /// A configuration as if the binding entry had been chosen before slot 0, with
    /// `incarnation(id)` for every member: for tests and simulations that start from a bound
    /// cluster.
    pub fn bound(members: &[NodeId], incarnation: impl Fn(NodeId) -> Incarnation) -> Membership {
        let mut membership = Membership::bootstrap(members, &BTreeMap::new());
        for (id, member) in membership.members.iter_mut() {
            member.incarnation = incarnation(*id);
        }
        membership.chosen_at = Some(0);
        membership.log_id = 1;
        membership
    }

    pub fn is_bound(&self) -> bool {
        self.chosen_at.is_some()
    }

    pub fn get(&self, id: NodeId) -> Option<&Member> {
        self.members.get(&id)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.members.contains_key(&id)
    }

    /// Whether `id` is a voting member (a voter or an acceptor).
    pub fn votes(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| m.role.votes())
    }

    /// Whether `id` may stand for election (a voter or a proposer).
    pub fn may_lead(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| m.role.may_lead())
    }

    /// The voting members: voters and acceptors.
    pub fn voting(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().filter(|(_, m)| m.role.votes()).map(|(id, _)| *id)
    }

    pub fn voting_count(&self) -> usize {
        self.voting().count()
    }

    /// Members whose incarnation must be bound: they vote or may lead.
    pub fn bound_roles(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().filter(|(_, m)| m.role.votes() || m.role.may_lead()).map(|(id, _)| *id)
    }

    /// How many voting members may fail with the cluster still choosing (0 below three).
    pub fn failures_tolerated(&self) -> usize {
        self.voting_count().saturating_sub(1) / 2
    }

    /// Votes that choose a value: a majority of the voting members, or every one of them while
    /// the configuration is the bootstrap one.
    ///
    /// # Correctness
    /// Unanimity is what makes the bootstrap safe without knowing incarnations: whatever the
    /// bootstrap configuration chose, every voter accepted, so every later majority reports it
    /// in phase 1 although one voter may have lost its disk since. A majority of voters still
    /// suffices for phase 1 (it meets every unanimous set).
    pub fn quorum(&self) -> usize {
        let voters = self.voting_count();
        if self.is_bound() {
            voters / 2 + 1
        } else {
            voters
        }
    }

    /// A majority of the voting members: what phase 1 needs.
    pub fn majority(&self) -> usize {
        self.voting_count() / 2 + 1
    }

    /// Whether `incarnation` of `id` is the one this configuration knows (or none is bound).
    pub fn admits(&self, id: NodeId, incarnation: Incarnation) -> bool {
        self.members.get(&id).is_some_and(|m| m.incarnation == 0 || m.incarnation == incarnation)
    }

    /// Whether a vote of `incarnation` of `id` counts.
    pub fn counts_vote(&self, id: NodeId, incarnation: Incarnation) -> bool {
        self.votes(id) && self.admits(id, incarnation)
    }

    /// Whether `incarnation` of `id` may lead.
    pub fn admits_leader(&self, id: NodeId, incarnation: Incarnation) -> bool {
        self.may_lead(id) && self.admits(id, incarnation)
    }

    /// A member that announces `role` while the configuration is unbound gets it (the binding
    /// entry fixes roles). Returns whether anything changed.
    pub fn announce_role(&mut self, id: NodeId, role: MemberRole) -> bool {
        if self.is_bound() {
            return false;
        }
        match self.members.get_mut(&id) {
            Some(member) if member.role != role => {
                member.role = role;
                true
            }
            _ => false,
        }
    }

    /// Checks that `next` may follow this configuration (the same check on every replica, so
    /// an entry that fails it is applied as a no-op everywhere).
    pub fn check_successor(&self, next: &Membership) -> Result<(), ChangeError> {
        if next.voting_count() == 0 {
            return Err(ChangeError::NoVoter);
        }
        if !next.members.values().any(|member| member.role.may_lead()) {
            return Err(ChangeError::NoLeader);
        }
        if next.members.contains_key(&0) {
            return Err(ChangeError::ReservedId);
        }
        if let Some(id) = next.bound_roles().find(|id| next.members[id].incarnation == 0) {
            return Err(ChangeError::Unbound(id));
        }
        if !self.is_bound() {
            // Whatever binds first: the bootstrap configuration comes from each node's own
            // flags (a node joining later lists other members than the bootstrap did), so
            // judging the entry by it would let nodes apply the same entry differently. What
            // the bootstrap leader proposed was accepted by every voter it knew, and every
            // later configuration is checked against this one.
            return if next.log_id == 0 {
                Err(ChangeError::OtherLog { expected: 1, found: 0 })
            } else {
                Ok(())
            };
        }
        if next.log_id != self.log_id {
            return Err(ChangeError::OtherLog { expected: self.log_id, found: next.log_id });
        }
        let voters = |m: &Membership| -> Vec<(NodeId, Incarnation)> {
            m.voting().map(|id| (id, m.members[&id].incarnation)).collect()
        };
        let (before, after) = (voters(self), voters(next));
        let changed = before.iter().filter(|v| !after.contains(v)).count()
            + after.iter().filter(|v| !before.contains(v)).count();
        if changed > 1 {
            return Err(ChangeError::TooManyVoters(changed));
        }
        Ok(())
    }

    /// The configuration after applying `change`, which must pass [`Membership::check_successor`].
    /// `seen` is the incarnation each member last presented to the leader.
    pub fn after(
        &self,
        change: &MembershipChange,
        seen: &BTreeMap<NodeId, Incarnation>,
    ) -> Result<Membership, ChangeError> {
        let mut next = Membership { members: self.members.clone(), chosen_at: None, log_id: self.log_id };
        match change {
            MembershipChange::Add { id, address, role } => {
                if self.contains(*id) {
                    return Err(ChangeError::AlreadyAMember(*id));
                }
                if *id == 0 {
                    return Err(ChangeError::ReservedId);
                }
                if !address.contains(':') {
                    return Err(ChangeError::BadAddress(address.clone()));
                }
                let member = Member {
                    address: address.clone(),
                    incarnation: 0,
                    role: MemberRole::Learner,
                    promote_to: (*role != MemberRole::Learner).then_some(*role),
                };
                next.members.insert(*id, member);
            }
            MembershipChange::Remove { id } => {
                if next.members.remove(id).is_none() {
                    return Err(ChangeError::NotAMember(*id));
                }
                if next.voting_count() == 0 {
                    return Err(ChangeError::LastVoter(*id));
                }
            }
            MembershipChange::Replace { id } => {
                let member = next.members.get_mut(id).ok_or(ChangeError::NotAMember(*id))?;
                let incarnation = *seen.get(id).ok_or(ChangeError::NotHeardFrom(*id))?;
                if incarnation == member.incarnation {
                    return Err(ChangeError::SameIncarnation { id: *id, incarnation });
                }
                // Out as a voting member, in as a learner with the new incarnation: one voting
                // member less, and the promotion later is one more. (A proposer goes the same
                // way, so that it leads only once it has caught up.)
                if member.role != MemberRole::Learner {
                    member.promote_to = Some(member.role);
                }
                member.role = MemberRole::Learner;
                member.incarnation = incarnation;
                if next.voting_count() == 0 {
                    return Err(ChangeError::LastVoter(*id));
                }
            }
            MembershipChange::Promote { id, incarnation } => {
                let member = next.members.get_mut(id).ok_or(ChangeError::NotAMember(*id))?;
                member.role = member.promote_to.take().unwrap_or(MemberRole::Voter);
                member.incarnation = *incarnation;
            }
            MembershipChange::SetRole { id, role } => {
                let member = next.members.get_mut(id).ok_or(ChangeError::NotAMember(*id))?;
                if member.role == *role {
                    return Err(ChangeError::SameRole { id: *id, role: *role });
                }
                if member.incarnation == 0 && (role.votes() || role.may_lead()) {
                    // Never heard from: it becomes that role once caught up.
                    member.promote_to = Some(*role);
                } else {
                    member.role = *role;
                    member.promote_to = None;
                }
                if next.voting_count() == 0 {
                    return Err(ChangeError::LastVoter(*id));
                }
            }
            MembershipChange::Bind { incarnations, log_id } => {
                // The roles are the ones the members announced (`announce_role`), already in
                // this unbound configuration.
                next.log_id = *log_id;
                for (id, member) in next.members.iter_mut() {
                    if let Some(incarnation) = incarnations.get(id) {
                        member.incarnation = *incarnation;
                    }
                }
            }
        }
        self.check_successor(&next)?;
        Ok(next)
    }

    /// Learners waiting to be promoted.
    pub fn promotable(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| m.role == MemberRole::Learner && m.promote_to.is_some())
            .map(|(id, _)| *id)
    }

    /// Voting members once every learner waiting for a promotion has it.
    pub fn voting_once_promoted(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| m.role.votes() || m.promote_to.is_some_and(MemberRole::votes))
            .map(|(id, _)| *id)
    }

    /// Why this configuration is weak though legal, if it is: what an operator should be
    /// told when it is made.
    pub fn weakness(&self) -> Option<String> {
        let voting = self.voting_count();
        if voting < 3 {
            return Some(format!(
                "only {voting} voting member{} (voters and acceptors): the cluster stops choosing if any of them fails; three or more tolerate a failure",
                if voting == 1 { "" } else { "s" }
            ));
        }
        let leaders = self.members.values().filter(|member| member.role.may_lead()).count();
        if leaders == 1 {
            return Some(
                "only one member may lead (a voter or a proposer): while it is down nothing is chosen"
                    .to_string(),
            );
        }
        None
    }
}

/// A change an operator (or the leader itself) asks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MembershipChange {
    /// A new member, first a learner; promoted to `role` once caught up.
    Add {
        id: NodeId,
        address: String,
        role: MemberRole,
    },
    Remove {
        id: NodeId,
    },
    /// Admit the incarnation `id` presents now (after losing its disk) as a learner, and
    /// promote it to its old role once caught up.
    Replace {
        id: NodeId,
    },
    /// Give a member another role. Changing whether it votes is one voting member in or out.
    SetRole {
        id: NodeId,
        role: MemberRole,
    },
    /// (leader) A caught-up learner gets its `promote_to` role, bound to `incarnation`.
    Promote {
        id: NodeId,
        incarnation: Incarnation,
    },
    /// (leader) The bootstrap configuration's members get their incarnations (and keep the
    /// roles they announced), and the log its id.
    Bind {
        incarnations: BTreeMap<NodeId, Incarnation>,
        log_id: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(pairs: &[(NodeId, Incarnation)]) -> BTreeMap<NodeId, Incarnation> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn the_bootstrap_needs_every_voter_and_a_chosen_configuration_a_majority() {
        let bootstrap = Membership::bootstrap(&[1, 2, 3], &BTreeMap::new());
        assert_eq!(bootstrap.quorum(), 3);
        assert_eq!(bootstrap.majority(), 2);
        assert!(bootstrap.counts_vote(2, 99));
        let bound = Membership::bound(&[1, 2, 3], |id| id * 10);
        assert_eq!(bound.quorum(), 2);
        assert!(bound.counts_vote(2, 20));
        assert!(!bound.counts_vote(2, 21), "a new incarnation's vote does not count");
    }

    #[test]
    fn only_a_binding_may_follow_the_bootstrap() {
        let bootstrap = Membership::bootstrap(&[1, 2, 3], &BTreeMap::new());
        let all = seen(&[(1, 11), (2, 22), (3, 33)]);
        let bound = bootstrap
            .after(&MembershipChange::Bind { incarnations: all, log_id: 11 }, &BTreeMap::new())
            .expect("test data");
        assert!(bootstrap.check_successor(&bound).is_ok());
        let partial = seen(&[(1, 11), (2, 22)]);
        assert_eq!(
            bootstrap.after(&MembershipChange::Bind { incarnations: partial, log_id: 11 }, &BTreeMap::new()),
            Err(ChangeError::Unbound(3))
        );
        // A node's bootstrap configuration is its own flags: the first binding is taken as it
        // comes, so that every node applies it alike whatever its flags say.
        let mut grown = bound.clone();
        grown.members.insert(4, grown.members[&1].clone());
        assert!(Membership::bootstrap(&[1, 2], &BTreeMap::new()).check_successor(&grown).is_ok());
    }

    #[test]
    fn a_change_moves_at_most_one_voter() {
        let bound = Membership::bound(&[1, 2, 3], |id| id);
        let mut two_out = bound.clone();
        two_out.members.remove(&2);
        two_out.members.remove(&3);
        assert_eq!(bound.check_successor(&two_out), Err(ChangeError::TooManyVoters(2)));
        // A new incarnation as a voter at once is two changes: the old one out, the new one in.
        let mut swapped = bound.clone();
        swapped.members.get_mut(&2).expect("test data").incarnation = 7;
        assert_eq!(bound.check_successor(&swapped), Err(ChangeError::TooManyVoters(2)));
        let mut replaced =
            bound.after(&MembershipChange::Replace { id: 2 }, &seen(&[(2, 7)])).expect("test data");
        replaced.chosen_at = Some(5);
        assert_eq!(replaced.get(2).expect("test data").role, MemberRole::Learner);
        assert_eq!(replaced.quorum(), 2);
        let promoted = replaced
            .after(&MembershipChange::Promote { id: 2, incarnation: 7 }, &BTreeMap::new())
            .expect("test data");
        assert!(promoted.counts_vote(2, 7));
    }

    #[test]
    fn quorums_count_the_voting_members_and_someone_must_be_able_to_lead() {
        let mut seed = Membership::bound(&[1, 2, 3, 4, 5, 6, 7], |id| id);
        for id in 1..=7 {
            seed.members.get_mut(&id).expect("test data").role =
                if id <= 2 { MemberRole::Proposer } else { MemberRole::Acceptor };
        }
        assert_eq!((seed.voting_count(), seed.quorum(), seed.majority()), (5, 3, 3));
        assert!(seed.weakness().is_none());
        let one_leader = seed
            .after(&MembershipChange::SetRole { id: 1, role: MemberRole::Acceptor }, &BTreeMap::new())
            .expect("one proposer stays");
        assert_eq!(one_leader.voting_count(), 6, "an acceptor more");
        assert!(one_leader.weakness().is_some_and(|w| w.contains("only one member may lead")));
        assert_eq!(
            one_leader
                .after(&MembershipChange::SetRole { id: 2, role: MemberRole::Acceptor }, &BTreeMap::new()),
            Err(ChangeError::NoLeader)
        );
        assert_eq!(
            one_leader.after(&MembershipChange::Remove { id: 2 }, &BTreeMap::new()),
            Err(ChangeError::NoLeader)
        );
        // A replaced proposer waits as a learner and is promoted back to proposer.
        let replaced = seed
            .after(&MembershipChange::Replace { id: 2 }, &seen(&[(2, 99)]))
            .expect("the other proposer stays");
        assert_eq!(
            replaced.get(2).map(|m| (m.role, m.promote_to)),
            Some((MemberRole::Learner, Some(MemberRole::Proposer)))
        );
        let promoted = replaced
            .after(&MembershipChange::Promote { id: 2, incarnation: 99 }, &BTreeMap::new())
            .expect("promotion");
        assert_eq!(promoted.get(2).map(|m| m.role), Some(MemberRole::Proposer));
        assert!(!promoted.counts_vote(2, 99) && promoted.admits_leader(2, 99));
        // Two voting members: legal, and warned about.
        let small = Membership::bound(&[1, 2], |id| id);
        assert!(small.weakness().is_some_and(|w| w.contains("only 2 voting members")));
    }

    #[test]
    fn replace_needs_a_new_incarnation_heard_from_the_node() {
        let bound = Membership::bound(&[1, 2, 3], |id| id);
        let replace = MembershipChange::Replace { id: 2 };
        assert_eq!(bound.after(&replace, &BTreeMap::new()), Err(ChangeError::NotHeardFrom(2)));
        assert_eq!(
            bound.after(&replace, &seen(&[(2, 2)])),
            Err(ChangeError::SameIncarnation { id: 2, incarnation: 2 })
        );
    }
}
