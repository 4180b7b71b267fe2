//! Hostile HTTP on the WebSocket port: garbage, malformed and oversized
//! heads, header floods, absurd `Content-Length`, bytes pushed before the
//! 101, a head trickled in byte by byte. Each gets its exact status and
//! reason (or a close), and nothing else changes: a WebSocket client
//! connected before the abuse keeps receiving, and herald is left holding
//! no connection but that client's.

mod common;

use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    connect, eventually, http_exchange, metric, read_head, recv_text, sample, scrape, send_text,
    status_of, tcp, upgrade_request, Client, TestServer, PREFIX, TIMEOUT,
};

/// A server and a WebSocket client connected before any abuse.
struct Watched {
    // Dropped first, so the server's shutdown does not wait for its reply.
    bystander: Client,
    server: TestServer,
    /// The statuses of the rejections so far.
    rejected: Vec<u16>,
}

impl Watched {
    fn start(flags: &[&str]) -> Self {
        let server = TestServer::start(flags);
        let bystander = connect(server.addr);
        Watched {
            server,
            bystander,
            rejected: Vec::new(),
        }
    }

    /// Sends `request` on its own connection and checks the error response:
    /// the status, exactly `reason` as its one-line body, `Connection:
    /// close`, and the server closing the connection after it.
    fn expect(&mut self, request: &[u8], status: u16, reason: &str) {
        let resp = http_exchange(self.server.addr, request);
        let shown = String::from_utf8_lossy(&request[..request.len().min(120)]);
        assert_eq!(resp.status, status, "{shown:?}: {resp:?}");
        assert_eq!(resp.text(), format!("{reason}\n"), "{shown:?}");
        assert_eq!(resp.header("Connection"), Some("close"), "{shown:?}");
        self.rejected.push(status);
    }

    /// The bystander still gets broadcasts; herald counted every rejection
    /// and holds no connection but the bystander's (and the scrape's).
    fn assert_undisturbed(mut self) {
        send_text(&mut self.bystander, "still here");
        assert_eq!(
            recv_text(&mut self.bystander),
            format!("{PREFIX}still here")
        );
        let addr = self.server.addr;
        eventually(
            TIMEOUT,
            "herald lets go of the rejected connections",
            || (metric(addr, "herald_connections_open") == 2).then_some(()),
        );
        let exposition = scrape(addr);
        assert_eq!(sample(&exposition, "herald_websockets_open"), 1);
        let mut statuses = self.rejected.clone();
        statuses.dedup();
        for status in statuses {
            let want = self.rejected.iter().filter(|&&s| s == status).count() as u64;
            let series = format!("herald_handshakes_rejected_total{{status=\"{status}\"}}");
            assert_eq!(sample(&exposition, &series), want, "{series}");
        }
    }
}

#[test]
fn garbage_and_malformed_heads_get_400_at_once() {
    // A long handshake timeout: an answer that waited for it would fail
    // the test on the client's read timeout instead.
    let mut w = Watched::start(&["--handshake-timeout", "60s"]);
    let malformed: &[&[u8]] = &[
        // A TLS ClientHello on the plain port.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xd2\x9f",
        b"\x00\x00\x00\x00\r\n\r\n",
        b"\xff\xfe\xfd garbage \x80\x81\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1 trailing\r\nHost: x\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET / HTTQ/1.1\r\nHost: x\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"G\xc3\x89T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nH\xc3\xb6st: x\r\n\r\n",
        b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\x00y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n folded: continuation\r\n\r\n",
    ];
    for req in malformed {
        w.expect(req, 400, "malformed request head");
    }
    w.expect(b"GET / HTTP/1.1\r\n\r\n", 400, "missing Host header");
    w.assert_undisturbed();
}

#[test]
fn absurd_or_repeated_content_length_and_bodies_on_get_are_400() {
    let mut w = Watched::start(&[]);
    for value in [
        "18446744073709551616",
        "99999999999999999999999999",
        "-1",
        "0x10",
        "1e3",
        "5 5",
        "",
        // What lenient parsers read as 5 or 0, and a proxy may not.
        "+5",
        "005",
        "00",
        "\u{a0}5",
        "5\u{3000}",
        "\u{ff15}",
    ] {
        let req = format!("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n");
        w.expect(req.as_bytes(), 400, "invalid Content-Length");
    }
    // Two lengths, the classic request-smuggling ambiguity, even when equal.
    for (a, b) in [("0", "5"), ("0", "0")] {
        let req = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: {a}\r\ncontent-length: {b}\r\n\r\n"
        );
        w.expect(req.as_bytes(), 400, "repeated Content-Length");
    }
    let bodies: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody",
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
    ];
    for req in bodies {
        w.expect(req, 400, "a GET request has no body");
    }
    let upgrade_with_body = upgrade_request("13", "Content-Length: 5\r\n") + "hello";
    w.expect(
        upgrade_with_body.as_bytes(),
        400,
        "a GET request has no body",
    );
    w.assert_undisturbed();
}

#[test]
fn a_repeated_host_origin_or_websocket_header_is_400() {
    let mut w = Watched::start(&["--allow-origin", "*.good.org"]);
    w.expect(
        b"GET / HTTP/1.1\r\nHost: x\r\nhost: y\r\n\r\n",
        400,
        "repeated Host",
    );
    // Extra lines for an upgrade that already carries one Host, one key
    // and one version, and no Origin.
    let repeated = [
        ("Host: localhost\r\n", "repeated Host"),
        (
            "Origin: https://a.good.org\r\norigin: https://a.good.org\r\n",
            "repeated Origin",
        ),
        (
            "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
            "repeated Sec-WebSocket-Key",
        ),
        (
            "Sec-WebSocket-Version: 13\r\n",
            "repeated Sec-WebSocket-Version",
        ),
    ];
    for (extra, reason) in repeated {
        w.expect(upgrade_request("13", extra).as_bytes(), 400, reason);
    }
    w.assert_undisturbed();
}

#[test]
fn oversized_heads_and_header_floods_are_431_without_waiting_for_the_end() {
    let mut w = Watched::start(&["--handshake-timeout", "60s"]);
    // A request line that never ends: answered once 8 KiB are in.
    let endless = format!("GET /{}", "a".repeat(9000));
    w.expect(endless.as_bytes(), 431, "request head too large");
    // Many small headers adding up past 8 KiB, still within 64 headers.
    let padded: String = (0..40)
        .map(|i| format!("X-Pad-{i}: {}\r\n", "p".repeat(220)))
        .collect();
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\n{padded}\r\n");
    w.expect(req.as_bytes(), 431, "request head too large");

    // 64 headers are served; the 65th is one too many.
    let headers =
        |n: usize| -> String { (1..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>() };
    let sixty_four = format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", headers(64));
    assert_eq!(
        http_exchange(w.server.addr, sixty_four.as_bytes()).status,
        200
    );
    let sixty_five = format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", headers(65));
    w.expect(sixty_five.as_bytes(), 431, "too many headers");
    // The same flood on an upgrade.
    let upgrade_flood = upgrade_request("13", &headers(62));
    w.expect(upgrade_flood.as_bytes(), 431, "too many headers");
    w.assert_undisturbed();
}

#[test]
fn bytes_pushed_before_the_101_get_400_and_no_upgrade() {
    let mut w = Watched::start(&[]);
    let head = upgrade_request("13", "");
    // A masked text frame, a second request, plain junk: all in the same
    // write as the head, so herald sees them before it could answer.
    let frame = common::masked_frame(0x81, b"too early");
    let tails: [&[u8]; 3] = [&frame, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"x"];
    for tail in tails {
        let mut req = head.clone().into_bytes();
        req.extend_from_slice(tail);
        w.expect(&req, 400, "data sent before the handshake completed");
    }
    w.assert_undisturbed();
}

#[test]
fn a_head_trickled_in_byte_by_byte_is_cut_off_at_the_handshake_timeout() {
    // Every byte arrives in time for the next, but the deadline is for the
    // whole head: the trickle does not extend it.
    let timeout = Duration::from_secs(2);
    let w = Watched::start(&["--handshake-timeout", "2s"]);
    let mut s = tcp(w.server.addr);
    let started = Instant::now();
    let mut writer = s.try_clone().unwrap();
    let head = upgrade_request("13", "");
    let trickle = thread::spawn(move || {
        // At most the head, one byte every 100 ms, until herald hangs up.
        for b in head.bytes() {
            if writer.write_all(&[b]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    let (response, _) = read_head(&mut s).expect("a response to the trickle");
    let waited = started.elapsed();
    assert_eq!(status_of(&response), 408, "{response}");
    assert!(
        waited >= timeout - Duration::from_millis(100) && waited < timeout * 2,
        "408 after {waited:?} with a {timeout:?} timeout"
    );
    drop(s);
    trickle.join().unwrap();
    let series = "herald_connections_closed_total{reason=\"timeout\"}";
    assert_eq!(metric(w.server.addr, series), 1);
    w.assert_undisturbed();
}

#[test]
fn after_a_rejection_whatever_else_the_client_sends_is_ignored() {
    let mut w = Watched::start(&[]);
    // A rejected request followed by half a megabyte more: the answer is
    // the same one line, and the connection ends.
    let mut req = b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'z', 512 * 1024));
    w.expect(&req, 404, "no such path");
    w.assert_undisturbed();
}

#[test]
fn a_rejected_client_that_never_closes_is_dropped_at_the_close_timeout() {
    let server = common::TestServer::start(&["--close-timeout", "300ms"]);
    let addr = server.addr;
    let mut stuck = common::tcp(addr);
    stuck.write_all(b"garbage\r\n\r\n").unwrap();
    let (head, _) = read_head(&mut stuck).unwrap();
    assert_eq!(status_of(&head), 400, "{head}");
    // It keeps its end open and says nothing: herald waits --close-timeout
    // for its EOF, then drops it (the default, 3 s, would outlast this).
    let started = Instant::now();
    eventually(
        Duration::from_secs(2),
        "the silent client is dropped",
        || {
            // The scrape's own connection is the one left open.
            (metric(addr, "herald_connections_open") == 1).then_some(())
        },
    );
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "dropped before its timeout"
    );
    assert_eq!(
        metric(addr, "herald_connections_closed_total{reason=\"rejected\"}"),
        1
    );
    drop(stuck);
}

#[test]
fn a_tiny_queue_limit_or_a_huge_prefix_slows_reading_but_never_stops_it() {
    // The batch's room per read (a quarter of the limit over what a byte of
    // input can become) is below one minimal frame here; herald once read
    // nothing at all, spinning.
    let prefix = "p".repeat(2000);
    for flags in [
        vec!["--max-queued-bytes", "100"],
        vec!["--max-queued-bytes", "64KiB", "--prefix", prefix.as_str()],
    ] {
        let server = common::TestServer::start(&flags);
        let r = common::http_exchange(server.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200, "{flags:?}: {r:?}");
        let mut ws = common::connect(server.addr);
        common::send_text(&mut ws, "still relayed");
        let got = common::recv_text(&mut ws);
        assert!(got.ends_with("still relayed"), "{flags:?}: {got}");
    }
}
