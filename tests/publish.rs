//! `POST /publish`: a backend's request body becomes one broadcast to every
//! open WebSocket client, exactly as sent, in order with everything else.
//!
//! Every "nothing was broadcast" check has two halves: the clients stay
//! silent for a while, and then a later valid publish is the very next
//! message each of them reads (a stray broadcast would have been fanned out
//! before the rejection was even answered, so it would come first).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    assert_each_receives, connect, connect_many, expect_eof, http_exchange, read_http_response,
    recv, recv_text, send_text, tcp, Client, HeraldProcess, HttpResponse, TestServer, PREFIX,
    TIMEOUT,
};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

const TOKEN: &str = "s3cret-token";

/// How long clients must stay silent after a rejected publish.
const QUIET: Duration = Duration::from_millis(200);

/// A server with publishing enabled, plus `extra` flags.
fn start(extra: &[&str]) -> TestServer {
    let mut flags = vec!["--publish-token", TOKEN];
    flags.extend_from_slice(extra);
    TestServer::start(&flags)
}

/// A `POST /publish` with `headers` (each ending in `\r\n`) and `body`,
/// which carries no `Content-Length` unless `headers` has one.
fn raw_post(headers: &str, body: &[u8]) -> Vec<u8> {
    let mut req =
        format!("POST /publish HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n").into_bytes();
    req.extend_from_slice(body);
    req
}

/// A complete, authorised publish of `body` with `content_type` (none if `None`).
fn publish_request(content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    let ctype = content_type.map_or(String::new(), |t| format!("Content-Type: {t}\r\n"));
    raw_post(
        &format!(
            "Authorization: Bearer {TOKEN}\r\n{ctype}Content-Length: {}\r\n",
            body.len()
        ),
        body,
    )
}

/// Publishes `text` on a fresh (kept-alive) connection; asserts 202 and
/// `recipients`.
fn publish(addr: SocketAddr, text: &str, recipients: usize) {
    let mut ka = KeepAlive::open(addr);
    ka.send(&publish_request(Some("text/plain"), text.as_bytes()));
    assert_accepted(&ka.response(), recipients, "keep-alive");
}

/// A 202 with `{"recipients":N}` and the expected `Connection` header.
fn assert_accepted(resp: &HttpResponse, recipients: usize, connection: &str) {
    assert_eq!(
        resp.status,
        202,
        "publish answered {} {:?}",
        resp.status_line,
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(resp.header("Content-Type"), Some("application/json"));
    let body = resp.text().trim();
    assert_eq!(body, format!("{{\"recipients\":{recipients}}}"), "202 body");
    assert_eq!(resp.header("Connection"), Some(connection));
}

/// Sends `request` on a fresh connection and expects `status`, then the
/// connection closed (the exchange reads until EOF, bounded by TIMEOUT).
fn expect_rejected(addr: SocketAddr, request: &[u8], status: u16, what: &str) -> HttpResponse {
    let resp = http_exchange(addr, request);
    assert_eq!(
        resp.status,
        status,
        "{what}: got {} {:?}",
        resp.status_line,
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(resp.header("Connection"), Some("close"), "{what}");
    resp
}

/// No message reaches any of `clients` within [`QUIET`]; then a fresh
/// publish is the next message each reads.
fn assert_nothing_was_broadcast(addr: SocketAddr, clients: &mut [Client]) {
    common::all_hear_nothing(clients, QUIET);
    publish(addr, "sentinel", clients.len());
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(recv_text(c), "sentinel", "client {i}: something came first");
    }
}

/// One HTTP/1.1 connection kept alive across requests.
struct KeepAlive {
    stream: TcpStream,
}

impl KeepAlive {
    fn open(addr: SocketAddr) -> Self {
        KeepAlive { stream: tcp(addr) }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write request");
    }

    /// Reads exactly one response, nothing past it.
    fn response(&mut self) -> HttpResponse {
        read_http_response(&mut self.stream, false)
    }
}

#[test]
fn a_publish_reaches_every_client_once_verbatim_and_counts_its_recipients() {
    let server = start(&[]);
    let addr = server.addr;
    let mut clients = connect_many(addr, 3);

    // Verbatim: no prefix, non-ASCII intact; with or without a charset or a type.
    let mut ka = KeepAlive::open(addr);
    let bodies = [
        (Some("text/plain"), "hello from the backend"),
        (Some("text/plain; charset=utf-8"), "héllo ✓"),
        (Some("TEXT/PLAIN"), "upper-case type"),
        (None, "no content type"),
    ];
    for (ctype, body) in bodies {
        ka.send(&publish_request(ctype, body.as_bytes()));
        assert_accepted(&ka.response(), 3, "keep-alive");
    }
    // A client message afterwards still carries the prefix, and comes after.
    send_text(&mut clients[1], "from a client");
    let mut want: Vec<String> = bodies.iter().map(|(_, b)| b.to_string()).collect();
    want.push(format!("{PREFIX}from a client"));
    assert_each_receives(&mut clients, &want);

    // The count follows the open clients: one leaves (close handshake done).
    let mut leaving = clients.pop().unwrap();
    leaving
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .expect("close");
    assert_eq!(common::drain(&mut leaving).1, common::Ending::Close(1000));
    ka.send(&publish_request(None, b"to two"));
    assert_accepted(&ka.response(), 2, "keep-alive");
    assert_each_receives(&mut clients, &["to two".to_string()]);
    drop(clients);

    // Nobody listening: still accepted, zero recipients.
    let mut ka = KeepAlive::open(addr);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        ka.send(&publish_request(None, b"to nobody"));
        let resp = ka.response();
        // The dropped clients' EOFs may still be in flight.
        if resp.text().trim() == r#"{"recipients":0}"# || Instant::now() > deadline {
            assert_accepted(&resp, 0, "keep-alive");
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn publishes_interleave_with_websocket_publishers_in_per_source_order() {
    const N: usize = 300;
    let server = start(&[]);
    let addr = server.addr;
    let listeners = connect_many(addr, 2);
    let publishers = connect_many(addr, 2);
    let start = Arc::new(Barrier::new(3));

    let ws_threads: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(p, mut ws)| {
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                for n in 0..N {
                    send_text(&mut ws, &format!("ws{p} {n}"));
                }
                ws
            })
        })
        .collect();
    let http_thread = {
        let start = start.clone();
        thread::spawn(move || {
            let mut ka = KeepAlive::open(addr);
            start.wait();
            for n in 0..N {
                ka.send(&publish_request(
                    Some("text/plain"),
                    format!("http {n}").as_bytes(),
                ));
                assert_accepted(&ka.response(), 4, "keep-alive");
            }
        })
    };
    let mut clients: Vec<Client> = ws_threads
        .into_iter()
        .map(|t| t.join().expect("WebSocket publisher"))
        .collect();
    http_thread.join().expect("HTTP publisher");
    clients.extend(listeners);

    for (i, c) in clients.iter_mut().enumerate() {
        let mut next = [0usize; 3]; // ws0, ws1, http
        for _ in 0..3 * N {
            let text = recv_text(c);
            let (source, n) = if let Some(rest) = text.strip_prefix(PREFIX) {
                let (who, n) = rest.split_once(' ').expect("ws message shape");
                let p: usize = who.strip_prefix("ws").unwrap().parse().unwrap();
                (p, n)
            } else if let Some(n) = text.strip_prefix("http ") {
                (2, n)
            } else {
                panic!("client {i}: unexpected message {text:?}");
            };
            let n: usize = n.parse().unwrap();
            assert_eq!(n, next[source], "client {i}: source {source} out of order");
            next[source] += 1;
        }
        assert_eq!(next, [N; 3], "client {i}");
    }
    // Exactly once: nothing left over before a fresh publish.
    assert_nothing_was_broadcast(addr, &mut clients);
}

#[test]
fn a_wrong_or_missing_token_is_401_and_nothing_is_broadcast() {
    let server = start(&[]);
    let addr = server.addr;
    let mut clients = connect_many(addr, 2);
    let body = "must not be broadcast";
    let len = body.len();
    let cases = [
        ("no Authorization".to_string(), String::new()),
        (
            "wrong token".into(),
            "Authorization: Bearer nope\r\n".into(),
        ),
        (
            "a prefix of the token".into(),
            format!("Authorization: Bearer {}\r\n", &TOKEN[..TOKEN.len() - 1]),
        ),
        (
            "the token and more".into(),
            format!("Authorization: Bearer {TOKEN}x\r\n"),
        ),
        ("empty token".into(), "Authorization: Bearer \r\n".into()),
        (
            "the token without a scheme".into(),
            format!("Authorization: {TOKEN}\r\n"),
        ),
        (
            "Basic scheme".into(),
            "Authorization: Basic dXNlcjpzM2NyZXQtdG9rZW4=\r\n".into(),
        ),
    ];
    for (what, auth) in &cases {
        let req = raw_post(
            &format!("{auth}Content-Type: text/plain\r\nContent-Length: {len}\r\n"),
            body.as_bytes(),
        );
        let resp = expect_rejected(addr, &req, 401, what);
        assert_eq!(resp.header("WWW-Authenticate"), Some("Bearer"), "{what}");
    }
    // The token is checked before the limits: an oversized unauthorised
    // request learns nothing about them.
    let req = raw_post("Content-Length: 999999999\r\n", b"");
    expect_rejected(addr, &req, 401, "oversized without a token");
    assert_nothing_was_broadcast(addr, &mut clients);
}

#[test]
fn an_oversized_body_is_413_and_the_connection_closed_unread() {
    let server = start(&["--max-message-size", "1KiB"]);
    let addr = server.addr;
    let mut clients = connect_many(addr, 2);

    // Only the head is sent: the answer must come without waiting for the
    // body, and the server closes (EOF within TIMEOUT).
    for len in [1025u64, 1 << 40] {
        let head = raw_post(
            &format!("Authorization: Bearer {TOKEN}\r\nContent-Length: {len}\r\n"),
            b"",
        );
        let mut s = tcp(addr);
        s.write_all(&head).unwrap();
        let t0 = Instant::now();
        let resp = read_http_response(&mut s, false);
        assert_eq!(
            resp.status, 413,
            "Content-Length {len}: {}",
            resp.status_line
        );
        assert_eq!(resp.header("Connection"), Some("close"));
        expect_eof(&mut s);
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "413 took {:?}",
            t0.elapsed()
        );
    }
    // The whole oversized body sent anyway, with keep-alive asked for.
    let big = vec![b'a'; 1025];
    let req = raw_post(
        &format!(
            "Authorization: Bearer {TOKEN}\r\nConnection: keep-alive\r\nContent-Length: 1025\r\n"
        ),
        &big,
    );
    expect_rejected(addr, &req, 413, "1025 bytes sent");
    assert_nothing_was_broadcast(addr, &mut clients);

    // Exactly the limit is fine.
    let edge = "b".repeat(1024);
    publish(addr, &edge, 2);
    assert_each_receives(&mut clients, &[edge]);
}

#[test]
fn length_method_type_and_encoding_errors_broadcast_nothing() {
    let server = start(&[]);
    let addr = server.addr;
    let mut clients = connect_many(addr, 2);
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "no Content-Length",
            raw_post(&format!("{auth}Content-Type: text/plain\r\n"), b"hello"),
            411,
        ),
        (
            "chunked",
            raw_post(
                &format!("{auth}Transfer-Encoding: chunked\r\n"),
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
            411,
        ),
        (
            "Content-Length not a number",
            raw_post(&format!("{auth}Content-Length: five\r\n"), b"hello"),
            400,
        ),
        (
            "negative Content-Length",
            raw_post(&format!("{auth}Content-Length: -5\r\n"), b"hello"),
            400,
        ),
        (
            "two Content-Lengths",
            raw_post(
                &format!("{auth}Content-Length: 5\r\nContent-Length: 5\r\n"),
                b"hello",
            ),
            400,
        ),
        (
            "application/json",
            raw_post(
                &format!("{auth}Content-Type: application/json\r\nContent-Length: 2\r\n"),
                b"{}",
            ),
            415,
        ),
        (
            "curl's default form type",
            raw_post(
                &format!(
                    "{auth}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 5\r\n"
                ),
                b"hello",
            ),
            415,
        ),
        (
            "text that is not UTF-8",
            raw_post(
                &format!("{auth}Content-Type: text/plain\r\nContent-Length: 4\r\n"),
                b"ab\xff\xfe",
            ),
            400,
        ),
    ];
    for (what, req, status) in &cases {
        expect_rejected(addr, req, *status, what);
    }
    for method in ["GET", "PUT", "DELETE"] {
        let req = format!(
            "{method} /publish HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\n\r\n"
        );
        let resp = expect_rejected(addr, req.as_bytes(), 405, method);
        assert_eq!(resp.header("Allow"), Some("POST"), "{method}");
    }
    assert_nothing_was_broadcast(addr, &mut clients);
}

#[test]
fn publish_is_404_unless_a_token_is_configured() {
    for flags in [&[][..], &["--publish-token", ""][..]] {
        let server = TestServer::start(flags);
        let mut client = connect(server.addr);
        expect_rejected(
            server.addr,
            &publish_request(Some("text/plain"), b"hi"),
            404,
            &format!("flags {flags:?}"),
        );
        // Nothing was broadcast: the next message is this client's own.
        send_text(&mut client, "own");
        assert_eq!(recv_text(&mut client), format!("{PREFIX}own"));
    }
}

#[test]
fn a_binary_publish_arrives_as_binary() {
    let server = start(&[]);
    let addr = server.addr;
    let mut clients = connect_many(addr, 3);
    let payload: Vec<u8> = (0..=255u8).cycle().take(4000).collect();
    let mut ka = KeepAlive::open(addr);
    for ctype in ["application/octet-stream", "Application/Octet-Stream; x=1"] {
        ka.send(&publish_request(Some(ctype), &payload));
        assert_accepted(&ka.response(), 3, "keep-alive");
    }
    for (i, c) in clients.iter_mut().enumerate() {
        for n in 0..2 {
            match recv(c) {
                Message::Binary(b) => assert_eq!(b.as_ref(), &payload[..], "client {i}, {n}"),
                other => panic!("client {i}: expected binary, got {other:?}"),
            }
        }
    }
}

/// A body close to `--max-message-size` sent with its head in one write,
/// as curl and most HTTP clients do.
#[test]
fn a_large_body_sent_with_its_head_in_one_write_is_published() {
    let server = start(&["--handshake-timeout", "2s"]);
    let addr = server.addr;
    let mut clients = connect_many(addr, 2);
    let body = "z".repeat(60 * 1024);
    let mut ka = KeepAlive::open(addr);
    ka.send(&publish_request(Some("text/plain"), body.as_bytes()));
    let resp = ka.response();
    assert_accepted(&resp, 2, "keep-alive");
    assert_each_receives(&mut clients, &[body]);
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_408_and_not_broadcast() {
    let server = start(&["--handshake-timeout", "300ms"]);
    let addr = server.addr;
    let mut clients = connect_many(addr, 2);
    let mut s = tcp(addr);
    s.write_all(&raw_post(
        &format!("Authorization: Bearer {TOKEN}\r\nContent-Length: 10\r\n"),
        b"abc",
    ))
    .unwrap();
    let resp = read_http_response(&mut s, false);
    assert_eq!(resp.status, 408, "{}", resp.status_line);
    expect_eof(&mut s);
    assert_nothing_was_broadcast(addr, &mut clients);
}

/// A publish that asks to close the connection afterwards (HTTP/1.1
/// `Connection: close`, or HTTP/1.0 without keep-alive) is still answered,
/// and then the connection is closed.
#[test]
fn a_publish_with_connection_close_is_answered_then_closed() {
    let server = start(&[]);
    let addr = server.addr;
    let mut clients = connect_many(addr, 2);
    for (version, extra, text) in [
        ("HTTP/1.1", "Connection: close\r\n", "closing 1.1"),
        ("HTTP/1.0", "", "closing 1.0"),
    ] {
        let req = format!(
            "POST /publish {version}\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\
             {extra}Content-Length: {}\r\n\r\n{text}",
            text.len()
        );
        let mut s = tcp(addr);
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        let got = std::io::Read::read_to_end(&mut s, &mut raw);
        // Broadcast first (this is checked before the answer, so that a
        // failure below says the message did go out).
        assert_each_receives(&mut clients, &[text.to_string()]);
        assert!(
            raw.starts_with(b"HTTP/1.1 202 "),
            "{version} {extra:?}: broadcast, but expected 202 then close, got {got:?} and {:?}",
            String::from_utf8_lossy(&raw)
        );
        let raw = String::from_utf8_lossy(&raw);
        assert!(raw.contains("\r\nConnection: close\r\n"), "{raw:?}");
        assert!(raw.ends_with("\r\n\r\n{\"recipients\":2}\n"), "{raw:?}");
    }
}

fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("seq {i}")).collect()
}

#[test]
fn keep_alive_1000_sequential_publishes_over_one_connection() {
    let server = start(&[]);
    let addr = server.addr;
    let mut clients = connect_many(addr, 2);
    let texts = numbered(1000);
    let mut ka = KeepAlive::open(addr);
    for t in &texts {
        ka.send(&publish_request(Some("text/plain"), t.as_bytes()));
        assert_accepted(&ka.response(), 2, "keep-alive");
    }
    assert_each_receives(&mut clients, &texts);
    assert_nothing_was_broadcast(addr, &mut clients);
}

#[test]
fn keep_alive_1000_pipelined_publishes_over_one_connection() {
    let server = start(&[]);
    let addr = server.addr;
    let mut clients = connect_many(addr, 2);
    let texts = numbered(1000);
    let batch: Vec<u8> = texts
        .iter()
        .flat_map(|t| publish_request(Some("text/plain"), t.as_bytes()))
        .collect();
    let mut ka = KeepAlive::open(addr);
    let mut writer = ka.stream.try_clone().unwrap();
    // Written from a thread, so that neither side can block the other.
    let sent = thread::spawn(move || writer.write_all(&batch));
    for n in 0..texts.len() {
        let resp = ka.response();
        assert_eq!(
            resp.status,
            202,
            "pipelined response {n}: {} {:?}",
            resp.status_line,
            String::from_utf8_lossy(&resp.body)
        );
        assert_accepted(&resp, 2, "keep-alive");
    }
    sent.join().unwrap().expect("write the pipelined batch");
    assert_each_receives(&mut clients, &texts);
    assert_nothing_was_broadcast(addr, &mut clients);
}

/// The `herald` binary with `HERALD_PUBLISH_TOKEN` set to `token`, or
/// removed from its environment so the runner's own cannot leak in.
fn start_with_token_env(token: Option<&str>) -> HeraldProcess {
    let builder = HeraldProcess::builder();
    match token {
        Some(t) => builder.env("HERALD_PUBLISH_TOKEN", t),
        None => builder.env_remove("HERALD_PUBLISH_TOKEN"),
    }
    .start()
}

#[test]
fn the_environment_variable_enables_publishing_in_the_binary() {
    let env_token = "from-the-environment";
    let herald = start_with_token_env(Some(env_token));
    let mut client = connect(herald.addr);
    let req = |token: &str| {
        format!(
            "POST /publish HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: text/plain\r\nContent-Length: 8\r\n\r\nfrom env"
        )
    };
    expect_rejected(herald.addr, req(TOKEN).as_bytes(), 401, "another token");
    let resp = http_exchange(herald.addr, req(env_token).as_bytes());
    assert_accepted(&resp, 1, "keep-alive");
    assert_eq!(recv_text(&mut client), "from env");
    let log = herald.kill().join("\n");
    assert!(log.contains("publish=on"), "start-up log: {log}");
    assert!(!log.contains(env_token), "the token is in the log: {log}");

    let herald = start_with_token_env(None);
    expect_rejected(herald.addr, req(env_token).as_bytes(), 404, "no token set");
}

#[test]
fn a_rejected_publish_pipelined_after_a_good_one_is_answered_after_its_202() {
    let server = start(&[]);
    let addr = server.addr;
    let mut clients = connect_many(addr, 2);
    // One write: a valid publish, then a text body that is not UTF-8.
    let mut both = publish_request(Some("text/plain"), b"kept");
    both.extend_from_slice(&publish_request(Some("text/plain"), b"\xff\xfe"));
    let mut s = tcp(addr);
    s.write_all(&both).unwrap();
    let mut raw = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut raw);
    let raw = String::from_utf8_lossy(&raw);
    assert_each_receives(&mut clients, &["kept".to_string()]);
    let accepted = raw.find("HTTP/1.1 202 ");
    let rejected = raw.find("HTTP/1.1 400 ");
    assert!(
        matches!((accepted, rejected), (Some(a), Some(r)) if a < r),
        "expected the 202 for the broadcast message, then the 400: {raw:?}"
    );
    assert_nothing_was_broadcast(addr, &mut clients);
}
