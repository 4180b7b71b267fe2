//! The cross-receiver order check: every receiver of a room must have seen its publishers'
//! messages in the same interleaving.
//!
//! A server that fans a room out from one place (herald's single event loop, or one Redis
//! channel per room feeding several nodes) gives all the room's receivers one order. The
//! per-(receiver, publisher) trackers cannot see a break of it: each publisher's messages
//! may still arrive in sequence at every receiver while two publishers' messages arrive
//! interleaved one way at some receivers and the other way at others.
//!
//! Each receiver folds every first delivery, as (publisher, sequence number), into a
//! running 64-bit fingerprint ([`Interleaving`]): one multiply-and-shift mix per delivery,
//! nothing allocated. When the run ends, the fingerprints are grouped by room ([`Orders`]),
//! and every receiver whose fingerprint is not its room's most common one is an
//! **order mismatch**.
//!
//! # Which receivers are compared
//!
//! Two receivers' orders can only be compared over the same set of messages, so a receiver
//! takes part only when it had *exactly* every message its room's publishers published,
//! `0..published` of each and nothing beyond (see [`Orders::add`]). That leaves out, without
//! a false mismatch:
//!
//! - a receiver that lost messages, or did not have them all when the run ended (a drain
//!   that timed out): loss is counted as `lost`;
//! - a receiver that opened after publishing began (loadgen starts publishing once every
//!   connection is open or failed, so only when `--connect-phase-timeout` ran out): it
//!   missed the first messages, which counts as lost too;
//! - a receiver that the server dropped before the end: it missed the rest.
//!
//! A receiver that got one publisher's messages out of sequence is left out too: that is
//! counted as `reordered`, and this check is about the interleaving of publishers whose
//! own sequences are intact, so that one fault shows in one counter. Duplicates do not
//! enter the fingerprint (they are counted as `duplicated`), and neither do deliveries from
//! another room (`misrouted`) or malformed ones. A room with no publisher has nothing to
//! compare.
//!
//! The fingerprints travel with the rest of a shard's counts, so with `--procs` the
//! receivers of a room are compared across all processes, not just within one.

use crate::track::{Seen, SeqTracker};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// A receiver's running fingerprint of the order of the messages it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interleaving {
    hash: u64,
    /// Some publisher's messages came out of sequence: not compared.
    reordered: bool,
}

impl Default for Interleaving {
    fn default() -> Interleaving {
        Interleaving {
            hash: 0x243f_6a88_85a3_08d3,
            reordered: false,
        }
    }
}

impl Interleaving {
    /// Folds in the delivery of `publisher`'s message `seq`, which its tracker saw as
    /// `seen`.
    ///
    /// `(publisher << 40) ^ seq` names the message uniquely while `seq < 2^40` (a trillion
    /// messages per publisher); the mix is a bijection, so two sequences that differ in one
    /// step collide only by chance (about 2^-64).
    #[inline]
    pub fn push(&mut self, publisher: u32, seq: u64, seen: Seen) {
        match seen {
            Seen::Duplicate => return,
            Seen::Reordered => self.reordered = true,
            Seen::InOrder | Seen::Ahead => {}
        }
        self.hash = mix(self.hash ^ ((publisher as u64) << 40) ^ seq);
    }
}

/// MurmurHash3's 64-bit finaliser: every input bit reaches every output bit.
#[inline]
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The fingerprints of the receivers compared, by room: room → fingerprint → receivers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Orders(BTreeMap<u32, BTreeMap<u64, u64>>);

impl Orders {
    /// Counts in a receiver of `room` whose `trackers` (one per publisher of its room, in
    /// order) and `order` are final, when it takes part: every tracker had exactly the
    /// numbers `0..n`, `n` being what `published` gives for its publisher, each publisher's
    /// in sequence. Returns whether it took part.
    pub fn add(
        &mut self,
        room: u32,
        order: Interleaving,
        trackers: &[SeqTracker],
        published: impl IntoIterator<Item = u64>,
    ) -> bool {
        let mut published = published.into_iter();
        let complete = !order.reordered
            && !trackers.is_empty()
            && trackers
                .iter()
                .all(|t| published.next().is_some_and(|n| t.has_exactly(n)));
        if complete {
            *self
                .0
                .entry(room)
                .or_default()
                .entry(order.hash)
                .or_default() += 1;
        }
        complete
    }

    /// Adds `other`'s receivers (another thread's or process's) into `self`.
    pub fn merge(&mut self, other: &Orders) {
        for (room, groups) in &other.0 {
            let mine = self.0.entry(*room).or_default();
            for (hash, n) in groups {
                *mine.entry(*hash).or_default() += n;
            }
        }
    }

    /// Receivers compared.
    pub fn compared(&self) -> u64 {
        self.0.values().flat_map(BTreeMap::values).sum()
    }

    /// Receivers compared whose order is not their room's most common one.
    pub fn mismatched(&self) -> u64 {
        self.0
            .values()
            .map(|groups| {
                let most = groups.values().copied().max().unwrap_or(0);
                groups.values().sum::<u64>() - most
            })
            .sum()
    }

    /// As JSON: `[[room, fingerprint, receivers], ...]`.
    pub fn to_value(&self) -> Value {
        let rows: Vec<[u64; 3]> = self
            .0
            .iter()
            .flat_map(|(room, groups)| groups.iter().map(|(h, n)| [*room as u64, *h, *n]))
            .collect();
        json!(rows)
    }

    /// The inverse of [`Orders::to_value`].
    pub fn from_value(v: &Value) -> Option<Orders> {
        let mut out = Orders::default();
        for row in v.as_array()? {
            let (room, hash, n) = (row.get(0)?.as_u64()?, row.get(1)?.as_u64()?, row.get(2)?);
            let groups = out.0.entry(u32::try_from(room).ok()?).or_default();
            *groups.entry(hash).or_default() += n.as_u64()?;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver of one room: its trackers (one per publisher) and its fingerprint, fed
    /// as the worker feeds them.
    struct Receiver {
        trackers: Vec<SeqTracker>,
        order: Interleaving,
    }

    impl Receiver {
        fn new(publishers: usize) -> Receiver {
            Receiver {
                trackers: vec![SeqTracker::default(); publishers],
                order: Interleaving::default(),
            }
        }

        fn got(mut self, deliveries: &[(u32, u64)]) -> Receiver {
            for &(p, seq) in deliveries {
                let seen = self.trackers[p as usize].observe(seq);
                self.order.push(p, seq, seen);
            }
            self
        }
    }

    /// Compares `receivers` of one room whose publishers published `published`.
    fn compare(receivers: &[Receiver], published: &[u64]) -> Orders {
        let mut orders = Orders::default();
        for r in receivers {
            orders.add(0, r.order, &r.trackers, published.iter().copied());
        }
        orders
    }

    const AB: [(u32, u64); 4] = [(0, 0), (1, 0), (0, 1), (1, 1)];
    const BA: [(u32, u64); 4] = [(1, 0), (0, 0), (0, 1), (1, 1)];

    #[test]
    fn identical_sequences_match() {
        let rs: Vec<Receiver> = (0..3).map(|_| Receiver::new(2).got(&AB)).collect();
        let orders = compare(&rs, &[2, 2]);
        assert_eq!((orders.compared(), orders.mismatched()), (3, 0));
    }

    #[test]
    fn another_interleaving_is_a_mismatch() {
        // Each receiver has both publishers' messages in sequence; only the interleaving
        // of publisher 0's first and publisher 1's first differs.
        let rs = [
            Receiver::new(2).got(&AB),
            Receiver::new(2).got(&AB),
            Receiver::new(2).got(&BA),
        ];
        let orders = compare(&rs, &[2, 2]);
        assert_eq!((orders.compared(), orders.mismatched()), (3, 1));
        // Two against two: one side is the mismatch.
        let rs = [
            Receiver::new(2).got(&AB),
            Receiver::new(2).got(&BA),
            Receiver::new(2).got(&AB),
            Receiver::new(2).got(&BA),
        ];
        assert_eq!(compare(&rs, &[2, 2]).mismatched(), 2);
    }

    #[test]
    fn receivers_of_other_sets_are_left_out() {
        let full = Receiver::new(2).got(&AB);
        // Lost publisher 1's first message: its order over the rest would differ.
        let lossy = Receiver::new(2).got(&[(0, 0), (0, 1), (1, 1)]);
        // Stopped early (dropped, or the drain ran out).
        let early = Receiver::new(2).got(&AB[..3]);
        // Opened late: missed the first messages.
        let late = Receiver::new(2).got(&[(0, 1), (1, 1)]);
        // Got a message past what was published (a publisher cut back after an error).
        let beyond = Receiver::new(2).got(&[(1, 0), (0, 0), (0, 1), (1, 1), (1, 2)]);
        // Got publisher 0's messages swapped: counted as reordered, not compared.
        let swapped = Receiver::new(2).got(&[(0, 1), (1, 0), (0, 0), (1, 1)]);
        let orders = compare(&[full, lossy, early, late, beyond, swapped], &[2, 2]);
        assert_eq!((orders.compared(), orders.mismatched()), (1, 0));
    }

    #[test]
    fn duplicates_do_not_change_the_order() {
        let a = Receiver::new(2).got(&AB);
        let b = Receiver::new(2).got(&[(0, 0), (0, 0), (1, 0), (0, 1), (1, 0), (1, 1)]);
        let orders = compare(&[a, b], &[2, 2]);
        assert_eq!((orders.compared(), orders.mismatched()), (2, 0));
    }

    #[test]
    fn rooms_are_compared_apart_and_merge_across_workers() {
        // Room 0's receivers and room 1's see different messages: no mismatch between
        // rooms, one within room 1, and merging two workers' halves changes nothing.
        let (mut one, mut other) = (Orders::default(), Orders::default());
        let r0 = Receiver::new(1).got(&[(0, 0), (0, 1)]);
        let r1a = Receiver::new(2).got(&AB);
        let r1b = Receiver::new(2).got(&BA);
        one.add(0, r0.order, &r0.trackers, [2]);
        one.add(1, r1a.order, &r1a.trackers, [2, 2]);
        other.add(1, r1a.order, &r1a.trackers, [2, 2]);
        other.add(1, r1b.order, &r1b.trackers, [2, 2]);
        one.merge(&other);
        assert_eq!((one.compared(), one.mismatched()), (4, 1));
        assert_eq!(Orders::from_value(&one.to_value()), Some(one));
        assert_eq!(Orders::from_value(&json!([[0, 1]])), None);
    }

    #[test]
    fn a_room_without_publishers_is_not_compared() {
        let mut orders = Orders::default();
        assert!(!orders.add(0, Interleaving::default(), &[], []));
        assert_eq!(orders.compared(), 0);
    }
}
