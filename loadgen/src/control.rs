//! What the coordinating thread and the workers share: the phase of the run, its clock
//! marks, and counters the coordinator watches.

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::*};
use std::sync::{Arc, Mutex, OnceLock};

/// The phases of a run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Workers open their connections.
    Connect = 0,
    /// The scenario runs (publishers publish between `start_ns` and `end_ns`).
    Run = 1,
    /// Publishing is over; deliveries still in flight are collected.
    Drain = 2,
    /// Workers close their connections and return their results.
    Close = 3,
}

/// State shared by a run's threads.
#[derive(Debug)]
pub struct Control {
    phase: AtomicU8,
    /// When publishing starts (`clock::now_ns`).
    pub start_ns: AtomicU64,
    /// When the measured window starts (after the warm-up).
    pub measure_ns: AtomicU64,
    /// When publishing and the measured window end.
    pub end_ns: AtomicU64,
    /// Connections that completed the handshake.
    pub connected: AtomicU64,
    /// Connections that never opened.
    pub failed: AtomicU64,
    /// Why the first connection that never opened failed: what loadgen says when none
    /// opened.
    pub first_failure: OnceLock<String>,
    /// Open connections that closed or broke before the `Close` phase.
    pub dropped: AtomicU64,
    /// Open receivers of each room (one entry without rooms): the drain's expectation.
    pub members: Vec<AtomicU64>,
    /// Messages sent so far by each publisher.
    pub published: Vec<AtomicU64>,
    /// Distinct deliveries so far, over all receivers.
    pub distinct: AtomicU64,
    /// Latencies since the coordinator last took them (the live line).
    pub live: Mutex<Histogram<u64>>,
    wakers: Mutex<Vec<Arc<mio::Waker>>>,
}

/// A histogram of nanoseconds from 1 ns to one hour at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds")
}

impl Control {
    /// Shared state for a run with `publishers` publishers and `rooms` rooms (at least 1).
    pub fn new(publishers: u32, rooms: u32) -> Control {
        Control {
            phase: AtomicU8::new(Phase::Connect as u8),
            start_ns: AtomicU64::new(u64::MAX),
            measure_ns: AtomicU64::new(u64::MAX),
            end_ns: AtomicU64::new(u64::MAX),
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_failure: OnceLock::new(),
            dropped: AtomicU64::new(0),
            members: (0..rooms.max(1)).map(|_| AtomicU64::new(0)).collect(),
            published: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
            distinct: AtomicU64::new(0),
            live: Mutex::new(new_histogram()),
            wakers: Mutex::new(Vec::new()),
        }
    }

    /// The current phase.
    #[inline]
    pub fn phase(&self) -> Phase {
        match self.phase.load(Acquire) {
            0 => Phase::Connect,
            1 => Phase::Run,
            2 => Phase::Drain,
            _ => Phase::Close,
        }
    }

    /// Moves to `phase` and wakes every worker so none sleeps through it.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Release);
        for w in self.wakers.lock().expect("wakers").iter() {
            let _ = w.wake();
        }
    }

    /// Registers a worker's waker for [`Control::set_phase`].
    pub fn add_waker(&self, waker: Arc<mio::Waker>) {
        self.wakers.lock().expect("wakers").push(waker);
    }

    /// Distinct deliveries the open receivers should get of what was published so far:
    /// publisher `j`'s messages once per open receiver of room `j % rooms`.
    pub fn expected_deliveries(&self) -> u64 {
        let rooms = self.members.len();
        self.published
            .iter()
            .enumerate()
            .map(|(j, p)| p.load(Relaxed) * self.members[j % rooms].load(Relaxed))
            .sum()
    }

    /// Total messages published so far.
    pub fn published_total(&self) -> u64 {
        self.published.iter().map(|p| p.load(Relaxed)).sum()
    }
}
