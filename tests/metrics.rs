//! `GET /metrics`: the exposition parses as OpenMetrics with a real parser
//! (the `openmetrics-parser` crate), and every counter and gauge moves with
//! traffic by exactly what that traffic should add.
//!
//! Every scrape is a connection of its own (`Connection: close`), which
//! herald counts too: the [`Scraper`] keeps track of how many it made so
//! the expected figures stay exact.
//!
//! About the parser: `prometheus-parse` reads this exposition but not as
//! OpenMetrics (a counter family `x` whose sample is `x_total` comes out
//! untyped, `# UNIT` and `# EOF` are skipped unchecked). `openmetrics-parser`
//! validates OpenMetrics strictly, with one bug: it rejects a `# UNIT` line on
//! a histogram, which the OpenMetrics spec allows (only info and stateset
//! families must have no unit). [`parse`] therefore checks that one line
//! itself and removes it before handing the text to the parser.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    close_politely, connect, drain, parse_head, parse_response, read_head_exact, read_until_close,
    recv_text, send_raw, send_text, tcp, unmasked_frame, upgrade_request, Client, Ending,
    HttpResponse, TestServer, PREFIX, TIMEOUT,
};
use openmetrics_parser::openmetrics::parse_openmetrics;
use openmetrics_parser::{
    HistogramValue, MetricFamily, MetricsExposition, OpenMetricsType, OpenMetricsValue,
};
use tungstenite::Message;

type Families = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The histogram's unit line, which `openmetrics-parser` wrongly rejects.
const HISTOGRAM_UNIT_LINE: &str = "# UNIT herald_loop_iteration_seconds seconds\n";

/// One parsed scrape.
struct Scrape {
    families: Families,
    text: String,
    /// Bytes of the whole HTTP response, head included: what herald wrote
    /// for this scrape (counted in the *next* scrape's bytes written).
    response_len: usize,
}

/// Parses an exposition, failing the test with the parser's message.
fn parse(text: &str) -> Families {
    assert!(
        text.ends_with("# EOF\n"),
        "an OpenMetrics exposition ends with `# EOF`:\n{text}"
    );
    assert_eq!(
        text.matches(HISTOGRAM_UNIT_LINE).count(),
        1,
        "the iteration histogram must declare its unit once:\n{text}"
    );
    let without = text.replace(HISTOGRAM_UNIT_LINE, "");
    parse_openmetrics(&without)
        .unwrap_or_else(|e| panic!("the exposition is not valid OpenMetrics: {e}\n{text}"))
}

impl Scrape {
    fn family(&self, name: &str) -> &MetricFamily<OpenMetricsType, OpenMetricsValue> {
        self.families.families.get(name).unwrap_or_else(|| {
            panic!(
                "no metric family {name:?} in the exposition:\n{}",
                self.text
            )
        })
    }

    /// The value of an unlabelled counter.
    fn counter(&self, name: &str) -> u64 {
        let f = self.family(name);
        assert_eq!(f.family_type, OpenMetricsType::Counter, "{name}");
        let samples: Vec<_> = f.iter_samples().collect();
        assert_eq!(samples.len(), 1, "{name} has {} samples", samples.len());
        counter_value(&samples[0].value, name)
    }

    /// The value of `name{label="value"}`; a family with no sample at all
    /// (prometheus-client leaves out a labelled family until its first
    /// sample) and a missing label value read as 0.
    fn counter_with(&self, name: &str, label: &str, value: &str) -> u64 {
        let Some(f) = self.families.families.get(name) else {
            return 0;
        };
        assert_eq!(f.family_type, OpenMetricsType::Counter, "{name}");
        f.iter_samples()
            .find(|s| {
                s.get_labelset()
                    .expect("labelset")
                    .get_label_value(label)
                    .is_some_and(|v| v == value)
            })
            .map_or(0, |s| counter_value(&s.value, name))
    }

    /// Every `label` value of a labelled counter and its count.
    fn counters_by(&self, name: &str, label: &str) -> BTreeMap<String, u64> {
        let Some(f) = self.families.families.get(name) else {
            return BTreeMap::new();
        };
        assert_eq!(f.family_type, OpenMetricsType::Counter, "{name}");
        f.iter_samples()
            .map(|s| {
                let labels = s.get_labelset().expect("labelset");
                let v = labels
                    .get_label_value(label)
                    .unwrap_or_else(|| panic!("{name} sample without label {label}"));
                (v.to_owned(), counter_value(&s.value, name))
            })
            .collect()
    }

    fn gauge(&self, name: &str) -> i64 {
        let f = self.family(name);
        assert_eq!(f.family_type, OpenMetricsType::Gauge, "{name}");
        let samples: Vec<_> = f.iter_samples().collect();
        assert_eq!(samples.len(), 1, "{name}");
        match &samples[0].value {
            OpenMetricsValue::Gauge(n) => n
                .as_i64()
                .unwrap_or_else(|| panic!("{name} is not an integer: {n:?}")),
            other => panic!("{name} is not a gauge value: {other:?}"),
        }
    }

    fn histogram(&self, name: &str) -> HistogramValue {
        let f = self.family(name);
        assert_eq!(f.family_type, OpenMetricsType::Histogram, "{name}");
        let samples: Vec<_> = f.iter_samples().collect();
        assert_eq!(samples.len(), 1, "{name}");
        match &samples[0].value {
            OpenMetricsValue::Histogram(h) => h.clone(),
            other => panic!("{name} is not a histogram value: {other:?}"),
        }
    }

    fn closed(&self, reason: &str) -> u64 {
        self.counter_with("herald_connections_closed", "reason", reason)
    }

    fn rejected(&self, status: u16) -> u64 {
        self.counter_with("herald_handshakes_rejected", "status", &status.to_string())
    }
}

fn counter_value(v: &OpenMetricsValue, name: &str) -> u64 {
    match v {
        OpenMetricsValue::Counter(c) => {
            let n = c
                .value
                .as_i64()
                .unwrap_or_else(|| panic!("{name} is not an integer: {:?}", c.value));
            u64::try_from(n).unwrap_or_else(|_| panic!("{name} is negative: {n}"))
        }
        other => panic!("{name} is not a counter value: {other:?}"),
    }
}

/// Sends one request on a fresh connection and reads one response: until
/// herald closes the connection if the request says `Connection: close`,
/// else the head and `Content-Length` bytes of body (none for HEAD), after
/// which the client hangs up. Returns the response and its length in bytes.
fn exchange(addr: SocketAddr, request: &str) -> (HttpResponse, usize) {
    let mut s = tcp(addr);
    s.write_all(request.as_bytes()).expect("write request");
    let to_eof = request
        .to_ascii_lowercase()
        .contains("\r\nconnection: close\r\n");
    if to_eof {
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("reading the response to {request:?}: {e}"));
        return (parse_response(&raw), raw.len());
    }
    let head =
        read_head_exact(&mut s).unwrap_or_else(|e| panic!("no response head to {request:?}: {e}"));
    let mut response = parse_head(&head);
    if !request.starts_with("HEAD ") {
        let len: usize = response
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Content-Length in {response:?}"));
        response.body = vec![0; len];
        s.read_exact(&mut response.body)
            .unwrap_or_else(|e| panic!("reading a {len}-byte body: {e}"));
    }
    let len = head.len() + 4 + response.body.len();
    (response, len)
}

/// A GET for `path` on a kept-alive connection: how Prometheus scrapes.
/// The client hangs up after the response (a normal close for herald).
fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")
}

/// Scrapes one server, counting its scrapes.
struct Scraper {
    addr: SocketAddr,
    path: &'static str,
    /// Scrapes answered 200 so far.
    scrapes: u64,
    /// Scrapes turned away with 503 (at `--max-connections`).
    turned_away: u64,
}

impl Scraper {
    fn new(server: &TestServer) -> Self {
        Self::at(server.addr, "/metrics")
    }

    fn at(addr: SocketAddr, path: &'static str) -> Self {
        Scraper {
            addr,
            path,
            scrapes: 0,
            turned_away: 0,
        }
    }

    /// One scrape, which must succeed.
    fn scrape(&mut self) -> Scrape {
        let (resp, response_len) = exchange(self.addr, &get(self.path));
        assert_eq!(
            resp.status,
            200,
            "GET {}: {} {:?}",
            self.path,
            resp.status_line,
            String::from_utf8_lossy(&resp.body)
        );
        assert_eq!(resp.header("content-type"), Some(CONTENT_TYPE));
        self.scrapes += 1;
        let text = resp.text().to_owned();
        Scrape {
            families: parse(&text),
            text,
            response_len,
        }
    }

    /// Scrapes until `ok` holds of a scrape (at most [`TIMEOUT`]) and
    /// returns that scrape; `ok` gets the scraper too, for its counts.
    /// A scrape turned away with 503 is counted and retried.
    fn until(&mut self, what: &str, ok: impl Fn(&Scrape, &Scraper) -> bool) -> Scrape {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (resp, response_len) = exchange(self.addr, &get(self.path));
            if resp.status == 503 {
                self.turned_away += 1;
            } else {
                assert_eq!(resp.status, 200, "GET {}: {}", self.path, resp.status_line);
                self.scrapes += 1;
                let text = resp.text().to_owned();
                let s = Scrape {
                    families: parse(&text),
                    text,
                    response_len,
                };
                if ok(&s, self) {
                    return s;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "timed out after {TIMEOUT:?} waiting for {what}; last exposition:\n{}",
                        s.text
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: every scrape was turned away with 503"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The bytes of one unmasked server-to-client text frame carrying `payload`.
fn text_frame_len(payload: &str) -> u64 {
    let n = payload.len();
    let header = match n {
        0..=125 => 2,
        126..=0xffff => 4,
        _ => 10,
    };
    (header + n) as u64
}

#[test]
fn exposition_is_openmetrics_with_every_family_herald_documents() {
    let server = TestServer::start(&[]);
    let mut scraper = Scraper::new(&server);
    let s = scraper.scrape();

    let types = [
        ("herald_connections_accepted", OpenMetricsType::Counter),
        ("herald_connections_open", OpenMetricsType::Gauge),
        ("herald_websockets_open", OpenMetricsType::Gauge),
        ("herald_upgrades", OpenMetricsType::Counter),
        ("herald_connections_closed", OpenMetricsType::Counter),
        ("herald_messages_received", OpenMetricsType::Counter),
        ("herald_broadcasts", OpenMetricsType::Counter),
        ("herald_deliveries", OpenMetricsType::Counter),
        ("herald_written_bytes", OpenMetricsType::Counter),
        ("herald_queued_bytes", OpenMetricsType::Gauge),
        ("herald_queued_high_water_bytes", OpenMetricsType::Gauge),
        ("herald_slow_consumers", OpenMetricsType::Counter),
        ("herald_over_limit", OpenMetricsType::Counter),
        ("herald_loop_iterations", OpenMetricsType::Counter),
        ("herald_loop_iteration_seconds", OpenMetricsType::Histogram),
        ("herald_frames_per_write", OpenMetricsType::Histogram),
    ];
    for (name, ty) in types {
        let f = s.family(name);
        assert_eq!(f.family_type, ty, "type of {name}");
        assert!(!f.help.is_empty(), "{name} has no HELP");
    }
    for name in [
        "herald_written_bytes",
        "herald_queued_bytes",
        "herald_queued_high_water_bytes",
    ] {
        assert_eq!(s.family(name).unit, "bytes", "unit of {name}");
    }

    // Every close reason the issue names is exported from the start, at 0.
    let closed = s.counters_by("herald_connections_closed", "reason");
    for reason in ["normal", "error", "slow_consumer", "idle", "limit"] {
        assert_eq!(closed.get(reason), Some(&0), "closed{{reason={reason:?}}}");
    }

    // Nothing has happened yet but this scrape.
    assert_eq!(s.counter("herald_connections_accepted"), 1);
    assert_eq!(s.gauge("herald_connections_open"), 1);
    assert_eq!(s.gauge("herald_websockets_open"), 0);
    assert_eq!(s.counter("herald_messages_received"), 0);
    assert_eq!(s.counter("herald_broadcasts"), 0);
    assert_eq!(s.counter("herald_deliveries"), 0);
    assert_eq!(s.counter("herald_written_bytes"), 0);
    assert_eq!(s.gauge("herald_queued_bytes"), 0);

    // The histogram is well formed: increasing bounds ending at +Inf,
    // cumulative counts, +Inf == count, one observation per iteration.
    let h = s.histogram("herald_loop_iteration_seconds");
    let iterations = s.counter("herald_loop_iterations");
    assert!(iterations > 0, "the loop has run");
    assert_eq!(h.count, Some(iterations), "one observation per iteration");
    let last = h.buckets.last().expect("buckets");
    assert!(last.upper_bound.is_infinite(), "last bucket is +Inf");
    assert_eq!(last.count.as_i64(), Some(iterations as i64));
    for w in h.buckets.windows(2) {
        assert!(w[0].upper_bound < w[1].upper_bound, "{:?}", h.buckets);
        assert!(
            w[0].count.as_f64() <= w[1].count.as_f64(),
            "{:?}",
            h.buckets
        );
    }
    assert!(h.buckets.len() >= 5, "{} buckets", h.buckets.len());
    assert!(h.sum.expect("_sum").as_f64() > 0.0);

    // HEAD answers the same head without the body.
    let (resp, _) = exchange(
        server.addr,
        "HEAD /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some(CONTENT_TYPE));
    assert!(
        resp.body.is_empty(),
        "HEAD sent a body of {}",
        resp.body.len()
    );
}

/// A scraper (or curl) that asks for `Connection: close`, or speaks
/// HTTP/1.0, gets the exposition before herald closes the connection.
#[test]
fn metrics_answer_a_request_that_closes_the_connection() {
    let server = TestServer::start(&[]);
    for request in [
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        "GET /metrics HTTP/1.0\r\n\r\n",
    ] {
        let mut s = tcp(server.addr);
        s.write_all(request.as_bytes()).expect("write request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read to EOF");
        let text = String::from_utf8_lossy(&raw);
        assert!(
            text.starts_with("HTTP/1.1 200 "),
            "{request:?} was answered with {text:?} (empty: herald closed the \
             connection without a response)"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

#[test]
fn traffic_moves_connection_message_delivery_and_byte_counters() {
    let server = TestServer::start(&[]);
    let mut scraper = Scraper::new(&server);
    let m0 = scraper.scrape();
    let iterations0 = m0.counter("herald_loop_iterations");

    let mut clients: Vec<Client> = (0..3).map(|_| connect(server.addr)).collect();
    let m1 = scraper.until("3 open WebSockets", |s, _| {
        s.gauge("herald_websockets_open") == 3
    });
    // Accepted: every scrape so far (this one included) and 3 clients.
    assert_eq!(
        m1.counter("herald_connections_accepted"),
        scraper.scrapes + 3
    );
    assert_eq!(m1.counter("herald_upgrades"), 3);
    assert!(
        m1.gauge("herald_connections_open") >= 4,
        "3 clients and the scrape"
    );

    // Two messages from two senders, each to all three clients.
    let messages = ["hello", "a second, longer message"];
    send_text(&mut clients[0], messages[0]);
    for c in clients.iter_mut() {
        assert_eq!(recv_text(c), format!("{PREFIX}{}", messages[0]));
    }
    send_text(&mut clients[1], messages[1]);
    for c in clients.iter_mut() {
        assert_eq!(recv_text(c), format!("{PREFIX}{}", messages[1]));
    }
    // Every frame has been read, so written: one scrape sees it all.
    let m2 = scraper.scrape();
    assert_eq!(m2.counter("herald_messages_received"), 2);
    assert_eq!(m2.counter("herald_broadcasts"), 2);
    assert_eq!(
        m2.counter("herald_deliveries"),
        2 * 3,
        "deliveries = broadcasts x recipients"
    );
    // Bytes written since m1: m1's own response and the six frames.
    let frames: u64 = messages
        .iter()
        .map(|m| 3 * text_frame_len(&format!("{PREFIX}{m}")))
        .sum();
    assert_eq!(
        m2.counter("herald_written_bytes") - m1.counter("herald_written_bytes"),
        m1.response_len as u64 + frames,
        "bytes written between two scrapes"
    );
    assert_eq!(m2.gauge("herald_queued_bytes"), 0, "everything was flushed");
    // Each message was read back by every client before the next was sent:
    // six writes of one frame each.
    let w = m2.histogram("herald_frames_per_write");
    assert_eq!(w.count, Some(6), "{}", m2.text);
    assert_eq!(w.sum.expect("_sum").as_f64(), 6.0);
    assert_eq!(w.buckets[0].upper_bound, 1.0);
    assert_eq!(w.buckets[0].count.as_i64(), Some(6));
    assert!(m2.counter("herald_loop_iterations") > iterations0);
    let h = m2.histogram("herald_loop_iteration_seconds");
    assert_eq!(h.count, Some(m2.counter("herald_loop_iterations")));

    // One client leaves with the close handshake: a normal close. Every
    // finished scrape (all but the one in flight) is a normal close too.
    assert!(m2.closed("normal") < scraper.scrapes, "{}", m2.text);
    close_politely(clients.pop().expect("client"));
    let m3 = scraper.until("the client's normal close", |s, sc| {
        s.gauge("herald_websockets_open") == 2 && s.closed("normal") == (sc.scrapes - 1) + 1
    });
    assert_eq!(m3.closed("error"), 0);
    assert_eq!(m3.closed("peer_gone"), 0);

    // The next broadcast reaches the two left.
    send_text(&mut clients[0], "third");
    for c in clients.iter_mut() {
        assert_eq!(recv_text(c), format!("{PREFIX}third"));
    }
    let m4 = scraper.scrape();
    assert_eq!(m4.counter("herald_messages_received"), 3);
    assert_eq!(m4.counter("herald_broadcasts"), 3);
    assert_eq!(m4.counter("herald_deliveries"), 6 + 2);
    let w = m4.histogram("herald_frames_per_write");
    assert_eq!((w.count, w.sum.map(|s| s.as_f64())), (Some(8), Some(8.0)));
    assert!(m4.counter("herald_written_bytes") > m3.counter("herald_written_bytes"));
    assert_eq!(
        m4.counter("herald_connections_accepted"),
        scraper.scrapes + 3,
        "no connection was accepted that the test did not make"
    );
    for c in clients {
        close_politely(c);
    }
}

#[test]
fn rejected_handshakes_are_counted_by_status() {
    let server = TestServer::start(&[]);
    let mut scraper = Scraper::new(&server);
    let m0 = scraper.scrape();
    assert_eq!(m0.rejected(404), 0);
    assert_eq!(m0.rejected(426), 0);

    let (not_found, _) = exchange(
        server.addr,
        "GET /no-such-page HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(not_found.status, 404);
    let (old_version, _) = exchange(server.addr, &upgrade_request("12", ""));
    assert_eq!(old_version.status, 426);
    assert_eq!(old_version.header("sec-websocket-version"), Some("13"));
    let (second_404, _) = exchange(server.addr, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(second_404.status, 404);

    let m1 = scraper.until("both rejected connections closed", |s, _| {
        s.closed("rejected") == 3
    });
    let rejected = m1.counters_by("herald_handshakes_rejected", "status");
    assert_eq!(
        rejected,
        BTreeMap::from([("404".to_owned(), 2), ("426".to_owned(), 1)]),
        "rejections by status"
    );
    assert_eq!(m1.counter("herald_upgrades"), 0);
    assert_eq!(
        m1.counter("herald_connections_accepted"),
        scraper.scrapes + 3
    );
}

#[test]
fn protocol_errors_are_closed_with_reason_error() {
    // herald reads nothing after a protocol error, so the client's close
    // reply goes unseen and herald hangs up at --close-timeout: the default
    // 3 s would only slow the test down.
    let server = TestServer::start(&["--close-timeout", "200ms"]);
    let mut scraper = Scraper::new(&server);
    let mut ws = connect(server.addr);
    // A client must mask its frames: this one is a protocol error (1002).
    send_raw(&mut ws, &unmasked_frame(0x81, b"unmasked"));
    assert_eq!(read_until_close(&mut ws), 1002);
    let m = scraper.until("closed{reason=error} == 1", |s, _| s.closed("error") == 1);
    assert_eq!(m.gauge("herald_websockets_open"), 0);
    assert_eq!(m.counter("herald_messages_received"), 0);
    assert_eq!(m.closed("idle"), 0);
}

#[test]
fn silent_clients_are_closed_with_reason_idle() {
    let server = TestServer::start(&["--idle-timeout", "1s", "--ping-interval", "0"]);
    let mut scraper = Scraper::new(&server);
    let mut ws = connect(server.addr);
    // Silent, so herald closes it with 1001 (tungstenite answers the close
    // while reading). herald counts idleness in whole seconds, so the close
    // comes 0-2 s after the last input; the reason proves which timer fired.
    assert_eq!(read_until_close(&mut ws), 1001);
    let m = scraper.until("closed{reason=idle} == 1", |s, _| s.closed("idle") == 1);
    assert_eq!(m.gauge("herald_websockets_open"), 0);
    assert_eq!(m.closed("error"), 0);
}

#[test]
fn connections_past_the_limit_are_counted_as_limit_and_503() {
    let server = TestServer::start(&["--max-connections", "2"]);
    let mut scraper = Scraper::new(&server);
    let m0 = scraper.scrape();
    assert_eq!(m0.counter("herald_over_limit"), 0);

    let a = connect(server.addr);
    let b = connect(server.addr);
    let (turned_away, _) = exchange(server.addr, &upgrade_request("13", ""));
    assert_eq!(turned_away.status, 503, "{}", turned_away.status_line);
    // Make room for the scrapes: one client leaves.
    close_politely(b);
    // Scrapes that come while the slot is still taken get 503 too, and
    // count; the scraper keeps their number.
    let m = scraper.until("the limit counters", |s, sc| {
        s.closed("limit") == 1 + sc.turned_away
    });
    assert_eq!(m.counter("herald_over_limit"), 1 + scraper.turned_away);
    assert_eq!(m.rejected(503), 1 + scraper.turned_away);
    assert_eq!(m.gauge("herald_websockets_open"), 1);
    drop(a);
}

#[test]
fn queued_bytes_gauges_and_slow_consumers_follow_a_stalled_client() {
    // A small send buffer makes herald queue early; the stalled client is
    // dropped once it passes 1 MiB.
    let server = TestServer::start(&[
        "--send-buffer",
        "4KiB",
        "--max-queued-bytes",
        "1MiB",
        "--ping-interval",
        "0",
        // The stalled client reads its backlog and answers the close within
        // milliseconds of the drop; the default 3 s would only be waited out.
        "--close-timeout",
        "1s",
    ]);
    let mut scraper = Scraper::new(&server);
    let mut stalled = connect(server.addr); // never reads until the end
    let mut sender = connect(server.addr);
    let m0 = scraper.until("2 open WebSockets", |s, _| {
        s.gauge("herald_websockets_open") == 2
    });
    assert_eq!(m0.gauge("herald_queued_bytes"), 0);
    assert_eq!(m0.gauge("herald_queued_high_water_bytes"), 0);

    let chunk = "x".repeat(32 * 1024);
    let echo = format!("{PREFIX}{chunk}");
    let mut sent = 0u64;
    let mut most_queued = 0i64;
    // Up to 8 MiB: far past what the kernel buffers and the 1 MiB limit hold.
    let slow = loop {
        assert!(
            sent < 256,
            "sent {sent} messages of 32 KiB and the stalled client was never dropped"
        );
        send_text(&mut sender, &chunk);
        assert_eq!(recv_text(&mut sender), echo, "the sender's own copy");
        sent += 1;
        let s = scraper.scrape();
        let queued = s.gauge("herald_queued_bytes");
        let high = s.gauge("herald_queued_high_water_bytes");
        assert!(
            high >= queued,
            "high-water mark {high} below the bytes queued now {queued}"
        );
        assert!(
            queued <= 1 << 20,
            "{queued} bytes queued past the 1 MiB limit"
        );
        most_queued = most_queued.max(queued);
        if s.counter("herald_slow_consumers") > 0 {
            break s;
        }
    };
    assert!(
        most_queued >= 64 * 1024,
        "the stalled client's queue was never seen to grow (at most {most_queued} bytes)"
    );
    assert_eq!(slow.counter("herald_slow_consumers"), 1);
    assert_eq!(slow.counter("herald_messages_received"), sent);
    assert_eq!(slow.counter("herald_broadcasts"), sent);
    // Every broadcast before the drop went to both; none after it.
    assert_eq!(slow.counter("herald_deliveries"), 2 * sent - 1);

    // The stalled client reads at last: what it got, then close 1008.
    let (got, ending) = drain(&mut stalled);
    assert_eq!(ending, Ending::Close(1008), "after {} messages", got.len());
    assert!(got
        .iter()
        .all(|m| matches!(m, Message::Text(t) if t.as_str() == echo)));
    let m = scraper.until("the slow consumer closed and its queue gone", |s, _| {
        s.closed("slow_consumer") == 1 && s.gauge("herald_queued_bytes") == 0
    });
    assert_eq!(m.gauge("herald_websockets_open"), 1);
    assert!(
        m.gauge("herald_queued_high_water_bytes") >= most_queued,
        "the high-water mark fell"
    );
    close_politely(sender);
}

#[test]
fn metrics_path_moves_the_endpoint() {
    let server = TestServer::start(&["--metrics-path", "/m"]);
    let mut scraper = Scraper::at(server.addr, "/m");
    let s = scraper.scrape();
    assert_eq!(s.counter("herald_connections_accepted"), 1);
    let (old, _) = exchange(server.addr, &get("/metrics"));
    assert_eq!(old.status, 404, "the default path still answers");
    let s = scraper.scrape();
    assert_eq!(s.rejected(404), 1);
}

#[test]
fn empty_metrics_path_disables_the_endpoint() {
    let server = TestServer::start(&["--metrics-path", ""]);
    let (resp, _) = exchange(server.addr, &get("/metrics"));
    assert_eq!(resp.status, 404, "{}", resp.status_line);
    assert!(!resp.text().contains("# TYPE"), "{}", resp.text());
    // The server itself is fine.
    let (page, _) = exchange(server.addr, &get("/"));
    assert_eq!(page.status, 200);
    let (health, _) = exchange(server.addr, &get("/healthz"));
    assert_eq!(health.status, 200);
}
