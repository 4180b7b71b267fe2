//! The Prometheus exposition of herald's counters, rendered by
//! `prometheus-client` when `/metrics` is scraped.
//!
//! The loop counts in plain integers (`Stats`), per event or per broadcast,
//! never per recipient; a scrape copies them into a fresh registry. Only the
//! iteration-time histogram lives across scrapes.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::stats::{CloseReason, Stats, WriteTally, WRITE_BUCKETS};

/// [`WriteTally`] as a Prometheus histogram: its buckets are counted by the
/// loop in plain integers, so they are encoded here as they are, without a
/// `Histogram` (whose `observe` takes a lock) on the write path.
#[derive(Debug)]
struct WritesHistogram {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl WritesHistogram {
    fn new(t: &WriteTally) -> Self {
        let mut buckets: Vec<(f64, u64)> = (0..WRITE_BUCKETS - 1)
            .map(|i| ((1u64 << i) as f64, t.buckets[i]))
            .collect();
        buckets.push((f64::INFINITY, t.buckets[WRITE_BUCKETS - 1]));
        WritesHistogram {
            sum: t.frames as f64,
            count: t.writes,
            buckets,
        }
    }
}

impl EncodeMetric for WritesHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Content type of the exposition (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A histogram of publish-to-echo times over the bus, 50 µs to about 13 s.
pub fn echo_histogram() -> Histogram {
    Histogram::new(exponential_buckets(50e-6, 2.0, 19))
}

/// The bus's state at scrape time (`--redis`).
#[derive(Debug, Clone, Copy)]
pub struct BusGauges<'a> {
    /// Whether it is up.
    pub up: bool,
    /// Bytes held for Redis.
    pub buffered: usize,
    /// Publish-to-echo times of this node's messages.
    pub echo: &'a Histogram,
}

/// A histogram of loop iteration times, 1 µs to about 4 s.
pub fn iteration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-6, 4.0, 12))
}

/// Gauges read off the connections at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    /// Open connections of any kind.
    pub connections: usize,
    /// Open WebSockets.
    pub websockets: usize,
    /// Bytes queued across all connections now.
    pub queued_bytes: usize,
    /// Rooms with members now (the lobby included when it has some).
    pub rooms: usize,
}

type Labels = Vec<(&'static str, String)>;

fn counter_family(values: impl IntoIterator<Item = (Labels, u64)>) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    for (labels, v) in values {
        family.get_or_create(&labels).inc_by(v);
    }
    family
}

/// Renders the exposition.
pub fn render(
    stats: &Stats,
    gauges: Gauges,
    room_sizes: &[usize],
    iterations: &Histogram,
    bus: Option<BusGauges<'_>>,
) -> String {
    let mut r = Registry::with_prefix("herald");
    let c = |v: u64| ConstCounter::new(v);
    let g = |v: usize| ConstGauge::new(v as i64);
    r.register(
        "connections_accepted",
        "Connections accepted",
        c(stats.accepted),
    );
    r.register(
        "connections_open",
        "Open connections (HTTP and WebSocket)",
        g(gauges.connections),
    );
    r.register(
        "websockets_open",
        "Open WebSocket connections",
        g(gauges.websockets),
    );
    r.register(
        "upgrades",
        "WebSocket handshakes completed",
        c(stats.upgrades),
    );
    r.register(
        "connections_closed",
        "Connections closed, by reason",
        counter_family(CloseReason::ALL.iter().map(|r| {
            (
                vec![("reason", r.name().to_string())],
                stats.closed[*r as usize],
            )
        })),
    );
    r.register(
        "handshakes_rejected",
        "HTTP requests answered with an error status, by status",
        counter_family(
            stats
                .rejected
                .iter()
                .map(|(s, n)| (vec![("status", s.to_string())], *n)),
        ),
    );
    r.register(
        "messages_received",
        "Messages received from clients",
        c(stats.messages_in),
    );
    r.register("broadcasts", "Broadcasts fanned out", c(stats.broadcasts));
    r.register(
        "deliveries",
        "Frames queued for recipients by fan-out",
        c(stats.deliveries),
    );
    r.register(
        "publishes",
        "Messages published through POST /publish",
        c(stats.publishes),
    );
    r.register(
        "feed_lines",
        "Lines broadcast from --feed",
        c(stats.feed_lines),
    );
    r.register_with_unit(
        "written",
        "Bytes written to sockets",
        Unit::Bytes,
        c(stats.bytes_written),
    );
    r.register_with_unit(
        "queued",
        "Bytes queued for clients now",
        Unit::Bytes,
        g(gauges.queued_bytes),
    );
    r.register_with_unit(
        "queued_high_water",
        "Most bytes queued across all clients at once",
        Unit::Bytes,
        g(stats.queued_high_water),
    );
    r.register(
        "slow_consumers",
        "Clients past --max-queued-bytes",
        c(stats.slow_consumers),
    );
    r.register(
        "messages_dropped",
        "Messages dropped for slow clients (--slow-consumer drop)",
        c(stats.dropped_messages),
    );
    r.register("rooms", "Rooms with members now", g(gauges.rooms));
    r.register(
        "room_joins",
        "WebSockets that joined a room (the lobby included)",
        c(stats.room_joins),
    );
    r.register(
        "room_leaves",
        "WebSockets that left their room",
        c(stats.room_leaves),
    );
    // Sizes, not names: a label per room would be unbounded.
    let sizes = Histogram::new(exponential_buckets(1.0, 4.0, 9));
    for &n in room_sizes {
        sizes.observe(n as f64);
    }
    r.register(
        "room_members",
        "Members per room with members, at scrape time",
        sizes,
    );
    r.register(
        "client_throttled",
        "Reads deferred because a client was past --client-rate or --client-bandwidth",
        c(stats.throttled),
    );
    r.register(
        "tls_handshakes",
        "TLS handshakes completed (--tls-cert)",
        c(stats.tls_handshakes),
    );
    r.register(
        "tls_failures",
        "TLS sessions ended by a protocol error (failed handshake, corrupt record), an alert sent",
        c(stats.tls_failures),
    );
    r.register(
        "over_limit",
        "Connections turned away at the connection or descriptor limit",
        c(stats.over_limit),
    );
    r.register(
        "frames_per_write",
        "Broadcast messages each write (sendmsg) completed, over the writes that carried any broadcast bytes: _count is the writes, _sum the messages",
        WritesHistogram::new(&stats.writes),
    );
    r.register(
        "loop_iterations",
        "Event loop iterations",
        c(stats.iterations),
    );
    r.register_with_unit(
        "loop_iteration",
        "Time spent handling one loop iteration's events",
        Unit::Seconds,
        iterations.clone(),
    );
    if let Some(bus) = bus {
        register_bus(&mut r, stats, bus);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

/// The bus's metrics: only with `--redis`, so a single process shows none.
fn register_bus(r: &mut Registry, stats: &Stats, bus: BusGauges<'_>) {
    let c = |v: u64| ConstCounter::new(v);
    r.register(
        "bus_up",
        "1 while the Redis bus is up (every room subscribed), else 0",
        ConstGauge::new(i64::from(bus.up)),
    );
    r.register(
        "bus_reconnects",
        "Times the bus came back after being down",
        c(stats.bus_reconnects),
    );
    r.register(
        "bus_publishes",
        "Messages this node published to the bus",
        c(stats.bus_publishes),
    );
    r.register(
        "bus_received",
        "Messages received from the bus",
        c(stats.bus_received),
    );
    r.register_with_unit(
        "bus_sent",
        "Bytes written to Redis",
        Unit::Bytes,
        c(stats.bus_sent_bytes),
    );
    r.register_with_unit(
        "bus_received",
        "Bytes read from Redis",
        Unit::Bytes,
        c(stats.bus_received_bytes),
    );
    r.register(
        "bus_gaps",
        "Messages missing from a publishing node's sequence",
        c(stats.bus_gaps),
    );
    r.register(
        "bus_duplicates",
        "Copies of messages already delivered (published again after a reconnect), dropped",
        c(stats.bus_duplicates),
    );
    r.register(
        "bus_malformed",
        "Bus messages this version cannot read, dropped",
        c(stats.bus_malformed),
    );
    r.register(
        "bus_undelivered",
        "Messages refused because the bus was down or --bus-buffer full",
        c(stats.bus_undelivered),
    );
    r.register_with_unit(
        "bus_buffered",
        "Bytes of publishes held for Redis now",
        Unit::Bytes,
        ConstGauge::new(bus.buffered as i64),
    );
    r.register_with_unit(
        "bus_echo",
        "Time from publishing one of this node's messages to receiving it back",
        Unit::Seconds,
        bus.echo.clone(),
    );
}
