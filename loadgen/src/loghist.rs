//! A latency histogram small enough to keep one per connection: 19,000 HdrHistograms at
//! loadgen's bounds would take gigabytes, these take 15 MB.

/// Bits of a value after its leading one that pick the bucket within its octave.
const SUB_BITS: u32 = 3;
/// Buckets per octave.
const SUB: usize = 1 << SUB_BITS;
/// The first octave with buckets of its own: from 2^10 ns = 1.024 µs.
const LOW_OCTAVE: u32 = 10;
/// Octaves with buckets: up to 2^35 ns = 34.4 s.
const OCTAVES: u32 = 25;
/// The underflow bucket, the octaves' buckets, the overflow bucket.
const LEN: usize = 1 + OCTAVES as usize * SUB + 1;

/// Counts of nanosecond values in log-linear buckets: each octave from 1.024 µs to 34.4 s
/// split into 8 equal buckets (200 in all), one bucket below and one above; 808 bytes.
///
/// # Precision
///
/// A bucket is at most 1/8 as wide as its lower bound, and a quantile is reported as the
/// midpoint of the bucket holding the value of that rank (the `ceil(q × count)`-th smallest,
/// as HdrHistogram ranks), so between 1.024 µs and 34.4 s it is within 1/16 (6.25%) of that
/// value. Values below 1.024 µs are reported as 512 ns; values of 2^35 ns (34.4 s) or more
/// as 2^35 ns. Counts saturate at `u32::MAX`.
#[derive(Clone)]
pub struct LogHistogram {
    counts: [u32; LEN],
}

impl std::fmt::Debug for LogHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogHistogram({} values)", self.len())
    }
}

impl LogHistogram {
    /// An empty histogram, boxed: it lives in a connection, which it would quadruple.
    pub fn boxed() -> Box<LogHistogram> {
        Box::new(LogHistogram { counts: [0; LEN] })
    }

    /// Records one value, in nanoseconds.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        let c = &mut self.counts[index(ns)];
        *c = c.saturating_add(1);
    }

    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.counts.iter().map(|&c| u64::from(c)).sum()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|&c| c == 0)
    }

    /// The value at quantile `q` (0 to 1), in nanoseconds, within the precision above;
    /// `None` when empty.
    pub fn value_at_quantile(&self, q: f64) -> Option<u64> {
        let total = self.len();
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(midpoint(i));
            }
        }
        None
    }
}

/// The bucket of `ns`: its leading bit's position is the octave, the next 3 bits the
/// eighth of it, so no logarithm is computed per delivery.
#[inline]
fn index(ns: u64) -> usize {
    if ns < 1 << LOW_OCTAVE {
        return 0;
    }
    let octave = 63 - ns.leading_zeros();
    if octave >= LOW_OCTAVE + OCTAVES {
        return LEN - 1;
    }
    let sub = (ns >> (octave - SUB_BITS)) as usize & (SUB - 1);
    1 + (octave - LOW_OCTAVE) as usize * SUB + sub
}

/// The value bucket `i` reports, in nanoseconds.
fn midpoint(i: usize) -> u64 {
    match i {
        0 => 1 << (LOW_OCTAVE - 1),
        i if i == LEN - 1 => 1 << (LOW_OCTAVE + OCTAVES),
        i => {
            let octave = LOW_OCTAVE + ((i - 1) / SUB) as u32;
            let width = 1u64 << (octave - SUB_BITS);
            (1 << octave) + ((i - 1) % SUB) as u64 * width + width / 2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::new_histogram;
    use crate::rng::Rng;

    #[test]
    fn buckets_tile_the_range() {
        assert_eq!((index(0), index(1023), index(1024)), (0, 0, 1));
        assert_eq!((index(1024 + 127), index(1024 + 128)), (1, 2));
        assert_eq!((index((1 << 35) - 1), index(1 << 35)), (LEN - 2, LEN - 1));
        assert_eq!(index(u64::MAX), LEN - 1);
        // Every bucket's midpoint falls in that bucket.
        for i in 1..LEN - 1 {
            assert_eq!(index(midpoint(i)), i, "bucket {i}");
        }
        assert_eq!(std::mem::size_of::<LogHistogram>(), 808);
    }

    #[test]
    fn quantiles_match_hdrhistogram_within_a_sixteenth() {
        let mut rng = Rng::new(11);
        let uniform = |rng: &mut Rng| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        // Log-uniform over 2 µs to 20 s, and a narrow cluster around 3 ms, in various sizes.
        for (case, n) in [1usize, 2, 7, 100, 1_000, 50_000].into_iter().enumerate() {
            for cluster in [false, true] {
                let mut compact = LogHistogram::boxed();
                let mut hdr = new_histogram();
                for _ in 0..n {
                    let v = match cluster {
                        false => 2e3 * 1e7f64.powf(uniform(&mut rng)),
                        true => 3e6 * (0.9 + 0.2 * uniform(&mut rng)),
                    } as u64;
                    compact.record(v);
                    hdr.record(v).unwrap();
                }
                assert_eq!(compact.len(), n as u64);
                for q in [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0] {
                    let c = compact.value_at_quantile(q).unwrap() as f64;
                    // HdrHistogram's own answer is up to 1/1024 off the exact value.
                    let h = hdr.value_at_quantile(q) as f64;
                    let tolerance = h * (1.0 / 16.0 + 1.0 / 1024.0);
                    assert!(
                        (c - h).abs() <= tolerance,
                        "case {case}, n {n}, cluster {cluster}, q {q}: {c} vs {h}"
                    );
                }
            }
        }
    }

    #[test]
    fn outside_the_range_and_empty() {
        let mut h = LogHistogram::boxed();
        assert_eq!((h.value_at_quantile(0.5), h.is_empty()), (None, true));
        h.record(3);
        h.record(u64::MAX);
        assert_eq!(h.value_at_quantile(0.5), Some(512));
        assert_eq!(h.value_at_quantile(1.0), Some(1 << 35));
        assert_eq!(h.len(), 2);
    }
}
