//! Sequence tracking for one (receiver, publisher) pair: what was delivered, duplicated,
//! reordered, and what is still missing.

/// Tracks the sequence numbers one receiver saw from one publisher (which numbers from 0).
///
/// Holds the next expected number and the gaps below it as half-open ranges, so a
/// tracker that only ever sees messages in order never allocates.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    /// One past the highest sequence number seen.
    next: u64,
    /// Missing numbers below `next`, as sorted, disjoint `[start, end)` ranges.
    gaps: Vec<(u64, u64)>,
}

/// What one delivery was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next expected number.
    InOrder,
    /// Ahead of the next expected number: the ones skipped are (for now) missing.
    Ahead,
    /// A number that was missing: it came after a later one.
    Reordered,
    /// A number already seen.
    Duplicate,
}

impl SeqTracker {
    /// Records the delivery of `seq`.
    #[inline]
    pub fn observe(&mut self, seq: u64) -> Seen {
        if seq == self.next {
            self.next += 1;
            return Seen::InOrder;
        }
        if seq > self.next {
            self.gaps.push((self.next, seq));
            self.next = seq + 1;
            return Seen::Ahead;
        }
        // Below `next`: either fills a gap or was seen before.
        let i = self.gaps.partition_point(|&(_, end)| end <= seq);
        match self.gaps.get(i).copied() {
            Some((start, end)) if start <= seq => {
                match (seq == start, seq + 1 == end) {
                    (true, true) => {
                        self.gaps.remove(i);
                    }
                    (true, false) => self.gaps[i].0 = seq + 1,
                    (false, true) => self.gaps[i].1 = seq,
                    (false, false) => {
                        self.gaps[i].1 = seq;
                        self.gaps.insert(i + 1, (seq + 1, end));
                    }
                }
                Seen::Reordered
            }
            _ => Seen::Duplicate,
        }
    }

    /// How many of the numbers `0..published` were never delivered.
    pub fn missing(&self, published: u64) -> u64 {
        let gaps: u64 = self.gaps.iter().map(|&(s, e)| e - s).sum();
        gaps + published.saturating_sub(self.next)
    }

    /// Whether exactly the numbers `0..published` were delivered: none missing, none beyond.
    pub fn has_exactly(&self, published: u64) -> bool {
        self.next == published && self.gaps.is_empty()
    }

    /// Number of distinct sequence numbers delivered so far.
    pub fn distinct(&self) -> u64 {
        self.next - self.gaps.iter().map(|&(s, e)| e - s).sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_allocates_nothing_and_misses_only_the_tail() {
        let mut t = SeqTracker::default();
        for s in 0..100 {
            assert_eq!(t.observe(s), Seen::InOrder);
        }
        assert_eq!(t.gaps.capacity(), 0);
        assert_eq!(t.missing(100), 0);
        assert_eq!(t.missing(103), 3);
        assert_eq!(t.distinct(), 100);
        assert!(t.has_exactly(100));
        assert!(!t.has_exactly(99) && !t.has_exactly(101));
    }

    #[test]
    fn swaps_drops_and_duplicates() {
        let mut t = SeqTracker::default();
        let seen: Vec<Seen> = [0, 2, 1, 1, 5, 9, 7, 6, 8, 3]
            .iter()
            .map(|&s| t.observe(s))
            .collect();
        use Seen::*;
        assert_eq!(
            seen,
            [
                InOrder, Ahead, Reordered, Duplicate, Ahead, Ahead, Reordered, Reordered,
                Reordered, Reordered
            ]
        );
        // Seen: 0,1,2,3,5,6,7,8,9 — 4 never came.
        assert_eq!(t.missing(10), 1);
        assert_eq!(t.distinct(), 9);
        assert!(!t.has_exactly(10), "4 is missing");
        assert_eq!(t.observe(4), Reordered);
        assert_eq!(t.observe(4), Duplicate);
        assert_eq!((t.missing(10), t.gaps.len()), (0, 0));
        assert!(t.has_exactly(10));
    }
}
