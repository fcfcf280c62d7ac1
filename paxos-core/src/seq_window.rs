//! The request seqs one session has applied most recently, with the slot and payload digest of
//! each: the part of the request table every applied value looks up and extends.

use crate::types::{Digest, Slot};
use serde::de::Deserializer;
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// A session's applied request seqs, ordered by seq, each with the slot it was applied at and
/// its payload's digest.
///
/// Why not a `BTreeMap`: every applied request looks its seq up and inserts it, and a session's
/// seqs arrive almost always in increasing order, so a sorted deque answers the common case
/// (a seq above all held) from its back and inserts there, and drops its oldest from the front,
/// without walking a tree whose nodes are cold by the time the session's next request comes.
/// A seq out of order (a client with several requests in flight) is found by binary search and
/// inserted in place: the window is bounded by the table's `seqs_per_client_max`.
///
/// # Invariant
/// `entries` is strictly increasing by seq (asserted on every insert in place). The encoding is
/// the one a `BTreeMap<u64, (Slot, Digest)>` has (a map from seq to slot and digest), so
/// snapshots and messages that carry a table do not change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SeqWindow {
    entries: VecDeque<(u64, Slot, Digest)>,
}

impl SeqWindow {
    /// The slot and digest `seq` was applied with, if the window holds it.
    pub(crate) fn get(&self, seq: u64) -> Option<(Slot, Digest)> {
        match self.entries.back() {
            None => None,
            Some(&(highest, _, _)) if seq > highest => None,
            Some(&(highest, slot, digest)) if seq == highest => Some((slot, digest)),
            Some(_) => {
                let index = self.entries.binary_search_by_key(&seq, |(held, _, _)| *held).ok()?;
                let (_, slot, digest) = self.entries[index];
                Some((slot, digest))
            }
        }
    }

    /// Records `seq` as applied at `slot` with `digest`, replacing what was held for it.
    pub(crate) fn insert(&mut self, seq: u64, slot: Slot, digest: Digest) {
        match self.entries.back() {
            Some(&(highest, _, _)) if seq <= highest => {
                match self.entries.binary_search_by_key(&seq, |(held, _, _)| *held) {
                    Ok(index) => self.entries[index] = (seq, slot, digest),
                    Err(index) => self.entries.insert(index, (seq, slot, digest)),
                }
                debug_assert!(self.entries.iter().zip(self.entries.iter().skip(1)).all(|(a, b)| a.0 < b.0));
            }
            _ => self.entries.push_back((seq, slot, digest)),
        }
    }

    /// Removes and returns the lowest seq held.
    pub(crate) fn pop_lowest(&mut self) -> Option<u64> {
        self.entries.pop_front().map(|(seq, _, _)| seq)
    }

    /// The lowest seq held.
    pub(crate) fn lowest(&self) -> Option<u64> {
        self.entries.front().map(|(seq, _, _)| *seq)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every seq held with its slot and digest, in increasing seq order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, Slot, Digest)> + '_ {
        self.entries.iter().copied()
    }
}

impl Serialize for SeqWindow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.entries.iter().map(|(seq, slot, digest)| (seq, (slot, digest))))
    }
}

impl<'de> Deserialize<'de> for SeqWindow {
    /// Decodes a map from seq to slot and digest: whatever order it came in, the window is
    /// sorted (a peer's snapshot is input like any other).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<u64, (Slot, Digest)>::deserialize(deserializer)?;
        Ok(SeqWindow { entries: map.into_iter().map(|(seq, (slot, digest))| (seq, slot, digest)).collect() })
    }
}

#[cfg(test)]
mod tests {
    use super::SeqWindow;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64, u64),
        PopLowest,
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        // Mostly increasing seqs, as clients send them, with some out of order and repeated.
        let op = prop_oneof![
            6 => (0u64..4, 0u64..1000).prop_map(|(step, slot)| Op::Insert(step, slot)),
            2 => (0u64..64, 0u64..1000).prop_map(|(seq, slot)| Op::Insert(seq | 1 << 40, slot)),
            1 => Just(Op::PopLowest),
        ];
        proptest::collection::vec(op, 0..200)
    }

    proptest! {
        /// The window answers exactly as the ordered map it replaced, and encodes the same bytes.
        #[test]
        fn the_window_behaves_as_an_ordered_map(ops in ops()) {
            let mut window = SeqWindow::default();
            let mut model = BTreeMap::<u64, (u64, [u8; 16])>::new();
            let mut next = 1u64;
            for op in ops {
                match op {
                    Op::Insert(seq, slot) => {
                        // A marked seq is an arbitrary one below `next`; otherwise step up.
                        let seq = if seq & 1 << 40 != 0 { (seq & 0xff) % next } else { next + seq };
                        next = next.max(seq + 1);
                        let digest = [slot as u8; 16];
                        window.insert(seq, slot, digest);
                        model.insert(seq, (slot, digest));
                    }
                    Op::PopLowest => prop_assert_eq!(window.pop_lowest(), model.pop_first().map(|(seq, _)| seq)),
                }
                prop_assert_eq!(window.len(), model.len());
                prop_assert_eq!(window.lowest(), model.keys().next().copied());
                for probe in 0..next + 2 {
                    prop_assert_eq!(window.get(probe), model.get(&probe).copied());
                }
            }
            let held: Vec<_> = window.iter().collect();
            let expected: Vec<_> = model.iter().map(|(seq, (slot, digest))| (*seq, *slot, *digest)).collect();
            prop_assert_eq!(held, expected);
            let config = bincode::config::standard();
            let encoded = bincode::serde::encode_to_vec(&window, config).expect("encode the window");
            prop_assert_eq!(&encoded, &bincode::serde::encode_to_vec(&model, config).expect("encode the map"));
            let (decoded, _): (SeqWindow, usize) = bincode::serde::decode_from_slice(&encoded, config).expect("decode");
            prop_assert_eq!(decoded, window);
        }
    }
}
