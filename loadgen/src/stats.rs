//! What a worker counted, mergeable into the run's totals.

use crate::control::new_histogram;
use crate::order::Orders;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
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
    /// Each receiver's median latency over its deliveries in `latency`, ns, one value per
    /// receiver that had any: taken from its [`LogHistogram`](crate::loghist::LogHistogram),
    /// so each is within 1/16 of the exact median.
    pub client_p50: Histogram<u64>,
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
    /// Deliveries from a publisher of another room (with `--rooms`): the server routed
    /// them where they do not belong.
    pub misrouted: u64,
    /// The order each receiver that had exactly its room's messages saw them in, by room
    /// (see [`crate::order`]).
    pub orders: Orders,
    /// Deliveries the receivers that connected should have had: for each, what every
    /// publisher of its room published.
    pub expected: u64,
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
    /// Publishes over HTTP answered `202` with a recipient count.
    pub publish_answers: u64,
    /// The fewest and the most recipients those answers reported (`u64::MAX`, 0: none).
    pub recipients: (u64, u64),
    /// Publishes over HTTP that failed, by reason: any other answer, or none.
    pub publish_errors: BTreeMap<String, u64>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            latency: new_histogram(),
            handshake: new_histogram(),
            send_lag: new_histogram(),
            client_p50: new_histogram(),
            delivered: 0,
            in_window: 0,
            duplicates: 0,
            reordered: 0,
            lost: 0,
            malformed: 0,
            misrouted: 0,
            orders: Orders::default(),
            expected: 0,
            published: 0,
            pings: 0,
            connected: 0,
            failures: BTreeMap::new(),
            drops: BTreeMap::new(),
            publish_answers: 0,
            recipients: (u64::MAX, 0),
            publish_errors: BTreeMap::new(),
        }
    }
}

impl Stats {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        self.latency.add(&other.latency).expect("same bounds");
        self.handshake.add(&other.handshake).expect("same bounds");
        self.send_lag.add(&other.send_lag).expect("same bounds");
        self.client_p50.add(&other.client_p50).expect("same bounds");
        self.delivered += other.delivered;
        self.in_window += other.in_window;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.lost += other.lost;
        self.malformed += other.malformed;
        self.misrouted += other.misrouted;
        self.orders.merge(&other.orders);
        self.expected += other.expected;
        self.published += other.published;
        self.pings += other.pings;
        self.connected += other.connected;
        for (k, v) in &other.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.drops {
            *self.drops.entry(k.clone()).or_default() += v;
        }
        self.publish_answers += other.publish_answers;
        self.recipients = (
            self.recipients.0.min(other.recipients.0),
            self.recipients.1.max(other.recipients.1),
        );
        for (k, v) in &other.publish_errors {
            *self.publish_errors.entry(k.clone()).or_default() += v;
        }
    }

    /// Counts one failed publish.
    pub fn publish_error(&mut self, reason: impl Into<String>, n: u64) {
        if n > 0 {
            *self.publish_errors.entry(reason.into()).or_default() += n;
        }
    }

    /// Publishes that failed.
    pub fn publish_failed(&self) -> u64 {
        self.publish_errors.values().sum()
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

/// A histogram as `[[value, count], ...]`, exact (values are bucket values).
fn histogram_to_value(h: &Histogram<u64>) -> Value {
    let pairs: Vec<[u64; 2]> = h
        .iter_recorded()
        .map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect();
    json!(pairs)
}

fn histogram_from_value(v: &Value) -> Option<Histogram<u64>> {
    let mut h = new_histogram();
    for pair in v.as_array()? {
        let (value, count) = (pair.get(0)?.as_u64()?, pair.get(1)?.as_u64()?);
        h.record_n(value, count).ok()?;
    }
    Some(h)
}

impl Stats {
    /// Everything counted, as JSON (how a shard process hands its results to its parent).
    pub fn to_value(&self) -> Value {
        json!({
            "latency": histogram_to_value(&self.latency),
            "send_lag": histogram_to_value(&self.send_lag),
            "handshake": histogram_to_value(&self.handshake),
            "client_p50": histogram_to_value(&self.client_p50),
            "counts": [self.delivered, self.in_window, self.duplicates, self.reordered,
                       self.lost, self.malformed, self.published, self.pings, self.connected,
                       self.misrouted, self.expected],
            "failures": self.failures,
            "drops": self.drops,
            "publish": [self.publish_answers, self.recipients.0, self.recipients.1],
            "publish_errors": self.publish_errors,
            "orders": self.orders.to_value(),
        })
    }

    /// The inverse of [`Stats::to_value`]; `None` when `v` is not its output.
    pub fn from_value(v: &Value) -> Option<Stats> {
        let counts: Vec<u64> = v["counts"]
            .as_array()?
            .iter()
            .map(Value::as_u64)
            .collect::<Option<_>>()?;
        let [delivered, in_window, duplicates, reordered, lost, malformed, published, pings, connected, misrouted, expected] =
            counts[..]
        else {
            return None;
        };
        let map = |v: &Value| -> Option<BTreeMap<String, u64>> {
            v.as_object()?
                .iter()
                .map(|(k, n)| Some((k.clone(), n.as_u64()?)))
                .collect()
        };
        let publish: Vec<u64> = v["publish"]
            .as_array()?
            .iter()
            .map(Value::as_u64)
            .collect::<Option<_>>()?;
        let [publish_answers, fewest, most] = publish[..] else {
            return None;
        };
        Some(Stats {
            latency: histogram_from_value(&v["latency"])?,
            send_lag: histogram_from_value(&v["send_lag"])?,
            handshake: histogram_from_value(&v["handshake"])?,
            client_p50: histogram_from_value(&v["client_p50"])?,
            delivered,
            in_window,
            duplicates,
            reordered,
            lost,
            malformed,
            misrouted,
            orders: Orders::from_value(&v["orders"])?,
            expected,
            published,
            pings,
            connected,
            failures: map(&v["failures"])?,
            drops: map(&v["drops"])?,
            publish_answers,
            recipients: (fewest, most),
            publish_errors: map(&v["publish_errors"])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let mut s = Stats::default();
        for v in [1u64, 999, 1_000_001, 77_000_000_000] {
            s.latency.record_n(v, v % 7 + 1).unwrap();
        }
        s.handshake.record(123_456).unwrap();
        s.client_p50.record_n(2_000_000, 3).unwrap();
        (s.delivered, s.lost, s.connected, s.pings) = (10, 2, 3, 4);
        (s.misrouted, s.expected) = (5, 12);
        s.failures.insert("connect: timed out".into(), 5);
        s.drops.insert("closed by server".into(), 1);
        (s.publish_answers, s.recipients) = (7, (998, 1000));
        s.publish_error("publish: HTTP 401", 1);
        let order = crate::order::Interleaving::default();
        let full = crate::track::SeqTracker::default();
        s.orders.add(3, order, &[full], [0]);
        assert_eq!(s.orders.compared(), 1);
        let back = Stats::from_value(&s.to_value()).unwrap();
        assert_eq!(back.latency, s.latency);
        assert_eq!(back.handshake, s.handshake);
        assert_eq!(back.client_p50, s.client_p50);
        assert_eq!(back.send_lag.len(), 0);
        assert_eq!(
            (back.delivered, back.lost, back.connected, back.pings),
            (10, 2, 3, 4)
        );
        assert_eq!((back.misrouted, back.expected), (5, 12));
        assert_eq!((back.failures, back.drops), (s.failures, s.drops));
        assert_eq!((back.publish_answers, back.recipients), (7, (998, 1000)));
        assert_eq!(back.publish_errors, s.publish_errors);
        assert_eq!(back.orders, s.orders);
        assert!(Stats::from_value(&json!({"counts": [1, 2]})).is_none());
    }
}
