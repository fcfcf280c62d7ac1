//! What a replica notes about the membership beyond the configuration in force (which the
//! learner holds): the incarnation each member last presented, the members told that their
//! incarnation is refused, the members that refuse this one, the members that hold another
//! log, and whether the configuration changed since the replica last settled it.

use crate::membership::{Incarnation, Membership};
use crate::types::{NodeId, Slot};
use std::collections::BTreeMap;

/// The membership bookkeeping of one replica.
///
/// Every field changes through a method here: a reader of this file sees every rule that
/// writes them. None of it is durable: it is learned again from the messages after a restart.
#[derive(Debug, Default)]
pub(crate) struct MembershipNotes {
    /// The incarnation each member presented in its last message.
    seen_incarnations: BTreeMap<NodeId, Incarnation>,
    /// Members whose incarnation the configuration does not admit, and when each was last told.
    refused_incarnations: BTreeMap<NodeId, (Incarnation, u64)>,
    /// Members that refuse this replica's incarnation: the incarnation they admit, and the
    /// slot of the configuration they judge by.
    refused_by: BTreeMap<NodeId, (Option<Incarnation>, Slot)>,
    /// Members that hold another log than this replica's (another cluster's bootstrap).
    foreign_logs: BTreeMap<NodeId, u64>,
    /// The configuration in force changed (an entry applied, a snapshot installed) and the
    /// replica has not settled its candidacy or leadership since.
    changed: bool,
}

impl MembershipNotes {
    /// `from` presented `incarnation`; whether it presented another one before (its former
    /// incarnation's progress says nothing of this one).
    pub(crate) fn note_incarnation(&mut self, from: NodeId, incarnation: Incarnation) -> bool {
        self.seen_incarnations.insert(from, incarnation).is_some_and(|before| before != incarnation)
    }

    /// The incarnation each member last presented.
    pub(crate) fn seen_incarnations(&self) -> &BTreeMap<NodeId, Incarnation> {
        &self.seen_incarnations
    }

    /// `from`'s `incarnation` is refused: whether to tell it now (at most once per
    /// `quiet_ticks`), noting the telling if so.
    pub(crate) fn tell_refusal(
        &mut self,
        from: NodeId,
        incarnation: Incarnation,
        now: u64,
        quiet_ticks: u64,
    ) -> bool {
        let last_told = self.refused_incarnations.get(&from).map(|(_, tick)| *tick);
        if last_told.is_some_and(|tick| now.saturating_sub(tick) < quiet_ticks) {
            return false;
        }
        self.refused_incarnations.insert(from, (incarnation, now));
        true
    }

    /// Members whose incarnation is refused, with that incarnation.
    pub(crate) fn refused_incarnations(&self) -> BTreeMap<NodeId, Incarnation> {
        self.refused_incarnations.iter().map(|(id, (incarnation, _))| (*id, *incarnation)).collect()
    }

    /// `from` refuses this replica's incarnation: it admits `admitted` as of `chosen_at`.
    pub(crate) fn note_refused_by(&mut self, from: NodeId, admitted: Option<Incarnation>, chosen_at: Slot) {
        self.refused_by.insert(from, (admitted, chosen_at));
    }

    /// Members that refuse this replica's incarnation.
    pub(crate) fn refused_by(&self) -> &BTreeMap<NodeId, (Option<Incarnation>, Slot)> {
        &self.refused_by
    }

    /// `from` holds log `theirs`, not this replica's.
    pub(crate) fn note_foreign_log(&mut self, from: NodeId, theirs: u64) {
        self.foreign_logs.insert(from, theirs);
    }

    /// Members that hold another log.
    pub(crate) fn foreign_logs(&self) -> &BTreeMap<NodeId, u64> {
        &self.foreign_logs
    }

    /// The configuration in force changed.
    pub(crate) fn mark_changed(&mut self) {
        self.changed = true;
    }

    /// Whether the configuration changed since it was last settled.
    pub(crate) fn changed(&self) -> bool {
        self.changed
    }

    /// Settles a change of the configuration, if there was one: forgets refusals the new
    /// configuration answers (this replica admitted again; members replaced since). Whether
    /// there was a change to settle.
    pub(crate) fn settle(
        &mut self,
        membership: &Membership,
        own_id: NodeId,
        own_incarnation: Incarnation,
    ) -> bool {
        if !std::mem::take(&mut self.changed) {
            return false;
        }
        if membership.get(own_id).is_some_and(|m| m.incarnation == own_incarnation) {
            self.refused_by.clear();
        }
        // A member replaced since: its new incarnation is the admitted one now.
        self.refused_incarnations.retain(|id, (incarnation, _)| !membership.admits(*id, *incarnation));
        true
    }
}
