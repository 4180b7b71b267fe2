//! What a worker counted, mergeable into the run's totals.

use crate::control::new_histogram;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;

/// Counters and histograms of one worker (or, merged, of the run).
#[derive(Debug, Clone)]
pub struct Stats {
    /// Delivery latency from the intended send time, ns, for messages meant to be sent in
    /// the measured window.
    pub latency: Histogram<u64>,
    /// How late loadgen sent each open-loop message after its intended time, ns (plus
    /// one): its own scheduling delay, already inside the latencies above.
    pub send_lag: Histogram<u64>,
    /// Handshake latency (from `connect()` to a checked 101), ns.
    pub handshake: Histogram<u64>,
    /// Distinct deliveries (duplicates excluded), warm-up and drain included.
    pub delivered: u64,
    /// Deliveries received inside the measured window.
    pub in_window: u64,
    /// Deliveries of a sequence number the receiver already had.
    pub duplicates: u64,
    /// Deliveries that arrived after a later message of the same publisher.
    pub reordered: u64,
    /// Messages never delivered to a receiver that was open when they were published.
    pub lost: u64,
    /// Frames or messages that are not what the scenario sends (bad framing, prefix,
    /// stamp, publisher or size).
    pub malformed: u64,
    /// Messages published.
    pub published: u64,
    /// Pings answered.
    pub pings: u64,
    /// Connections that completed the handshake.
    pub connected: u64,
    /// Connections that never opened, by reason.
    pub failures: BTreeMap<String, u64>,
    /// Open connections lost before the end, by reason.
    pub drops: BTreeMap<String, u64>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            latency: new_histogram(),
            handshake: new_histogram(),
            send_lag: new_histogram(),
            delivered: 0,
            in_window: 0,
            duplicates: 0,
            reordered: 0,
            lost: 0,
            malformed: 0,
            published: 0,
            pings: 0,
            connected: 0,
            failures: BTreeMap::new(),
            drops: BTreeMap::new(),
        }
    }
}

impl Stats {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        self.latency.add(&other.latency).expect("same bounds");
        self.handshake.add(&other.handshake).expect("same bounds");
        self.send_lag.add(&other.send_lag).expect("same bounds");
        self.delivered += other.delivered;
        self.in_window += other.in_window;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.lost += other.lost;
        self.malformed += other.malformed;
        self.published += other.published;
        self.pings += other.pings;
        self.connected += other.connected;
        for (k, v) in &other.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.drops {
            *self.drops.entry(k.clone()).or_default() += v;
        }
    }

    /// Connections that never opened.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Open connections lost before the end.
    pub fn dropped(&self) -> u64 {
        self.drops.values().sum()
    }
}
