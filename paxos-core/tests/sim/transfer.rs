//! The simulated operator's leadership transfers (`paxos-cli leader transfer`): asked of the
//! leader in place (or of a node that only believes it leads), for a member drawn at random:
//! often one that can take over, sometimes one down, paused, cut off, a learner or an acceptor
//! (each must be refused or abandoned), while every other fault goes on.

use super::Simulation;
use paxos_core::{NodeId, TransferStart};

/// A transfer that started, until its target leads (or it is given up on).
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    pub target: NodeId,
    pub asked_tick: u64,
}

impl Simulation {
    /// Asks some node that believes it leads to hand over to a random member.
    pub(super) fn inject_transfer(&mut self) {
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, node)| node.replica.as_ref().is_some_and(|replica| replica.is_leader()))
            .map(|(id, _)| *id)
            .collect();
        if leaders.is_empty() {
            return;
        }
        // With a stale leader about (a paused one that resumed), either may be asked.
        let leader = leaders[self.rng.range(0, leaders.len() as u64) as usize];
        let target = self.random_member_or_stranger();
        self.stats.transfers_asked += 1;
        let Some(replica) = self.nodes.get_mut(&leader).and_then(|node| node.replica.as_mut()) else {
            return;
        };
        match replica.transfer_leadership(target) {
            Ok(TransferStart::Started) => {
                self.stats.transfers_started += 1;
                self.transfers.push(Transfer { target, asked_tick: self.now });
            }
            Ok(TransferStart::AlreadyLeader) => {}
            Err(_) => self.stats.transfers_refused += 1,
        }
    }

    /// Counts the transfers whose target now leads, with the ticks each took.
    pub(super) fn watch_transfers(&mut self) {
        let now = self.now;
        let giving_up_ticks = 4 * self.election_timeout_ticks();
        let mut still = Vec::new();
        for transfer in std::mem::take(&mut self.transfers) {
            let leads = self
                .nodes
                .get(&transfer.target)
                .and_then(|n| n.replica.as_ref())
                .is_some_and(|r| r.is_leader());
            let ticks = now - transfer.asked_tick;
            if leads {
                self.stats.transfers_completed += 1;
                self.stats.transfer_ticks_max = self.stats.transfer_ticks_max.max(ticks);
            } else if ticks <= giving_up_ticks {
                still.push(transfer);
            }
        }
        self.transfers = still;
    }

    /// The election timeout the nodes run with (the same for all).
    pub(super) fn election_timeout_ticks(&self) -> u64 {
        let replica = self.nodes.values().find_map(|node| node.replica.as_ref());
        replica.map_or(10, |replica| replica.config().election_timeout_ticks)
    }

    /// A member at random, or now and then an id no member has.
    fn random_member_or_stranger(&mut self) -> NodeId {
        if self.rng.chance(1, 20) {
            return self.members.len() as u64 + 100;
        }
        self.members[self.rng.range(0, self.members.len() as u64) as usize]
    }
}
