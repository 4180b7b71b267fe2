//! One clock for every timestamp loadgen takes: `CLOCK_MONOTONIC` in nanoseconds.
//!
//! Intended send times travel inside messages and are compared with receive times taken
//! on another thread (or in another loadgen process on the same machine), so the clock
//! must be system-wide, not a per-process `Instant` origin.

/// Nanoseconds of `CLOCK_MONOTONIC` (a vDSO call, about 20 ns).
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds per second.
pub const SEC: u64 = 1_000_000_000;

/// Nanoseconds per millisecond.
pub const MS: u64 = 1_000_000;
