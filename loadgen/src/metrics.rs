//! What the server says it did, read from its Prometheus endpoint (`--server-metrics`):
//! how many socket writes its deliveries took.
//!
//! herald counts every `sendmsg` that carried frames in the histogram
//! [`FRAMES_PER_WRITE`] (`_count`: writes, `_sum`: frames they carried). loadgen reads it
//! at both ends of the measured window; a server without the endpoint or the metric
//! simply has no such figures, and the run goes on.

use crate::handshake::WsUrl;
use rustls::ClientConfig;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// herald's histogram of frames per write, over the writes that carried frames.
pub const FRAMES_PER_WRITE: &str = "herald_frames_per_write";
/// Where herald serves its metrics (its default `--metrics-path`).
pub const PATH: &str = "/metrics";
/// How long one scrape may take in all: it runs on the coordinator, between the window's
/// samples, so a server that never answers must not hold the run up.
const SCRAPE_LIMIT: Duration = Duration::from_secs(2);
/// The most bytes of an answer read (herald's page is a few kilobytes).
const MAX_ANSWER: usize = 4 << 20;

/// A histogram's running totals at one scrape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Totals {
    /// `_count`: observations so far.
    pub count: f64,
    /// `_sum`: their sum so far.
    pub sum: f64,
}

/// What [`FRAMES_PER_WRITE`] counted between two scrapes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerWrites {
    /// Writes that carried frames.
    pub writes: f64,
    /// Frames those writes carried.
    pub frames: f64,
}

impl ServerWrites {
    /// The difference between scrapes `start` and `end`; `None` when either is missing or
    /// the totals went down (the server restarted in between).
    pub fn between(start: Option<Totals>, end: Option<Totals>) -> Option<ServerWrites> {
        let (a, b) = (start?, end?);
        (b.count >= a.count && b.sum >= a.sum).then_some(ServerWrites {
            writes: b.count - a.count,
            frames: b.sum - a.sum,
        })
    }

    /// Frames per write, `None` without writes.
    pub fn frames_per_write(&self) -> Option<f64> {
        (self.writes > 0.0).then(|| self.frames / self.writes)
    }
}

/// [`FRAMES_PER_WRITE`]'s totals now, from the server at `url`'s address (over HTTPS for a
/// `wss://` URL, trusting what the run's `tls` trusts); `None` when it cannot be read or
/// lacks the metric.
pub fn frames_per_write(url: &WsUrl, tls: Option<&Arc<ClientConfig>>) -> Option<Totals> {
    histogram_totals(&scrape(url, tls)?, FRAMES_PER_WRITE)
}

/// [`FRAMES_PER_WRITE`]'s totals summed over the servers of `urls`, each address scraped
/// once (two URLs of one server must not count its writes twice); `None` unless every one
/// answers, since a sum missing a node would pass for the whole run's.
pub fn frames_per_write_summed(urls: &[WsUrl], tls: Option<&Arc<ClientConfig>>) -> Option<Totals> {
    let mut seen = Vec::new();
    let mut sum = Totals {
        count: 0.0,
        sum: 0.0,
    };
    for url in urls {
        if seen.contains(&url.addr) {
            continue;
        }
        seen.push(url.addr);
        let t = frames_per_write(url, tls)?;
        (sum.count, sum.sum) = (sum.count + t.count, sum.sum + t.sum);
    }
    (!seen.is_empty()).then_some(sum)
}

/// The body of `GET /metrics` from `url`'s address, over HTTP/1.1 (in TLS for a `wss://`
/// URL, with `tls`), loopback only (it is a benchmark's side channel, not a client).
/// `None` unless the answer is a whole `200`.
pub fn scrape(url: &WsUrl, tls: Option<&Arc<ClientConfig>>) -> Option<String> {
    if !url.addr.ip().is_loopback() {
        return None;
    }
    let deadline = Instant::now() + SCRAPE_LIMIT;
    let tcp = TcpStream::connect_timeout(&url.addr, SCRAPE_LIMIT).ok()?;
    tcp.set_write_timeout(Some(SCRAPE_LIMIT)).ok()?;
    // The read timeout is the socket's, shared by this handle and the one read through.
    let timeouts = tcp.try_clone().ok()?;
    match crate::tls::session(tls, url).ok()? {
        None => exchange(tcp, url, &timeouts, deadline),
        Some(session) => {
            // Blocking, so the session needs no limit of its own.
            let stream = rustls::StreamOwned::new(*session, tcp);
            exchange(stream, url, &timeouts, deadline)
        }
    }
}

/// Sends the request for [`PATH`] on `s` and reads the answer to its end or `deadline`.
fn exchange(
    mut s: impl Read + Write,
    url: &WsUrl,
    timeouts: &TcpStream,
    deadline: Instant,
) -> Option<String> {
    let request = format!(
        "GET {PATH} HTTP/1.1\r\nHost: {}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
        url.host
    );
    s.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        timeouts
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if answer.len() + n <= MAX_ANSWER => answer.extend_from_slice(&buf[..n]),
            Ok(_) => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    body_of_200(&answer).map(str::to_owned)
}

/// The body of a complete `200` answer with a `Content-Length` (or none, read to the
/// close); `None` for any other status, a chunked body or a short one.
fn body_of_200(answer: &[u8]) -> Option<&str> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = resp.parse(answer).ok()? else {
        return None;
    };
    if resp.code != Some(200) {
        return None;
    }
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    if header("transfer-encoding").is_some() {
        return None;
    }
    let body = &answer[head..];
    let body = match header("content-length") {
        Some(n) => body.get(..n.trim().parse::<usize>().ok()?)?,
        None => body,
    };
    std::str::from_utf8(body).ok()
}

/// `name`'s `_count` and `_sum` in a Prometheus or OpenMetrics text page, each summed over
/// its label sets; `None` unless both are there. Buckets, `_created`, comments and every
/// other metric are passed over.
pub fn histogram_totals(text: &str, name: &str) -> Option<Totals> {
    let (count, sum) = (format!("{name}_count"), format!("{name}_sum"));
    let (mut c, mut s) = (None, None);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some(v) = sample_value(line, &count) {
            *c.get_or_insert(0.0) += v;
        } else if let Some(v) = sample_value(line, &sum) {
            *s.get_or_insert(0.0) += v;
        }
    }
    Some(Totals { count: c?, sum: s? })
}

/// The value of `line` when it is a sample of exactly `metric` (`metric 12`,
/// `metric{a="b"} 12`, either maybe followed by a timestamp or an exemplar).
fn sample_value(line: &str, metric: &str) -> Option<f64> {
    let rest = line.strip_prefix(metric)?;
    let rest = match rest.as_bytes().first()? {
        b' ' => rest,
        b'{' => &rest[labels_end(rest)?..],
        _ => return None, // another metric whose name starts with this one
    };
    let v: f64 = rest.split_whitespace().next()?.parse().ok()?;
    v.is_finite().then_some(v)
}

/// Where the label set at the start of `s` ends (past its `}`): a `}` inside a quoted
/// label value does not end it.
fn labels_end(s: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, b) in s.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'}' if !quoted => return Some(i + 1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page as prometheus-client writes it, with neighbours whose names share a prefix.
    const PAGE: &str = "\
# HELP herald_frames_per_write Frames carried by one sendmsg.
# TYPE herald_frames_per_write histogram
herald_frames_per_write_sum 5120.0
herald_frames_per_write_count 40
herald_frames_per_write_bucket{le=\"1.0\"} 10
herald_frames_per_write_bucket{le=\"+Inf\"} 40
herald_frames_per_write_created 1.7e9
herald_frames_per_write_count_total 999
# HELP herald_deliveries_total Frames queued for recipients.
herald_deliveries_total 5120
# EOF
";

    #[test]
    fn reads_a_histograms_count_and_sum() {
        assert_eq!(
            histogram_totals(PAGE, FRAMES_PER_WRITE),
            Some(Totals {
                count: 40.0,
                sum: 5120.0
            })
        );
        assert_eq!(histogram_totals(PAGE, "herald_room_members"), None);
        assert_eq!(histogram_totals("", FRAMES_PER_WRITE), None);
        // One without the other is no figure.
        let no_sum = "herald_frames_per_write_count 3\n";
        assert_eq!(histogram_totals(no_sum, FRAMES_PER_WRITE), None);
    }

    #[test]
    fn sums_label_sets_and_skips_timestamps_and_exemplars() {
        let page = "m_count{shard=\"a}\\\"\"} 2 1700000000\n\
                    m_count{shard=\"b\"} 3 # {trace_id=\"x\"} 1.0\n\
                    m_sum{shard=\"a\"} 1e1\nm_sum{shard=\"b\"} 5\n\
                    m_sum NaN\nm_count{broken 7\n";
        assert_eq!(
            histogram_totals(page, "m"),
            Some(Totals {
                count: 5.0,
                sum: 15.0
            })
        );
    }

    #[test]
    fn differences_between_scrapes() {
        let t = |count, sum| Some(Totals { count, sum });
        let w = ServerWrites::between(t(40.0, 5120.0), t(140.0, 6120.0)).unwrap();
        assert_eq!(
            (w.writes, w.frames, w.frames_per_write()),
            (100.0, 1000.0, Some(10.0))
        );
        assert_eq!(ServerWrites::between(t(1.0, 1.0), None), None);
        assert_eq!(
            ServerWrites::between(t(9.0, 9.0), t(1.0, 1.0)),
            None,
            "restarted"
        );
        let idle = ServerWrites::between(t(4.0, 4.0), t(4.0, 4.0)).unwrap();
        assert_eq!(idle.frames_per_write(), None);
    }

    #[test]
    fn only_a_whole_200_has_a_body() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(body_of_200(ok), Some("hello"));
        assert_eq!(
            body_of_200(b"HTTP/1.1 200 OK\r\n\r\nto the close"),
            Some("to the close")
        );
        assert_eq!(
            body_of_200(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"),
            None
        );
        assert_eq!(
            body_of_200(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            None
        );
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(body_of_200(chunked), None);
        assert_eq!(body_of_200(b"HTTP/1.1 200 OK\r\n"), None);
    }

    /// A `/metrics` endpoint that answers [`PAGE`] to `scrapes` requests, then stops; its
    /// URL and the requests it got.
    fn endpoint(scrapes: usize) -> (WsUrl, std::thread::JoinHandle<Vec<String>>) {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url: WsUrl = format!("ws://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let server = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for _ in 0..scrapes {
                let (mut s, _) = listener.accept().unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    request.extend_from_slice(&buf[..n]);
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{PAGE}",
                    PAGE.len()
                );
                s.write_all(answer.as_bytes()).unwrap();
                requests.push(String::from_utf8(request).unwrap());
            }
            requests
        });
        (url, server)
    }

    #[test]
    fn sums_distinct_servers_once_each() {
        let (a, server_a) = endpoint(1);
        let (b, server_b) = endpoint(1);
        // Another spelling of a's address: scraped once.
        let a_again: WsUrl = format!("ws://localhost:{}/x", a.addr.port())
            .parse()
            .unwrap();
        let totals = frames_per_write_summed(&[a, b.clone(), a_again], None).unwrap();
        assert_eq!((totals.count, totals.sum), (80.0, 10240.0));
        assert_eq!(
            (
                server_a.join().unwrap().len(),
                server_b.join().unwrap().len()
            ),
            (1, 1)
        );
        // One node that does not answer (b has stopped) leaves the figure out.
        let (c, server_c) = endpoint(1);
        assert_eq!(frames_per_write_summed(&[c, b], None), None);
        server_c.join().unwrap();
    }

    #[test]
    fn scrapes_a_live_endpoint() {
        let (url, server) = endpoint(1);
        let totals = frames_per_write(&url, None).unwrap();
        assert_eq!((totals.count, totals.sum), (40.0, 5120.0));
        let request = server.join().unwrap().remove(0);
        assert!(
            request.starts_with("GET /metrics HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains(&format!("\r\nHost: {}\r\n", url.host)));
    }

    #[test]
    fn nothing_listening_is_no_figure() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(); // closed again: refused
        let url: WsUrl = format!("ws://127.0.0.1:{port}/").parse().unwrap();
        assert_eq!(frames_per_write(&url, None), None);
        let far: WsUrl = "ws://192.0.2.1:80/".parse().unwrap();
        assert_eq!(scrape(&far, None), None, "never off loopback");
    }
}
