//! The HTTP front door on the WebSocket port: the chat page, every error
//! status with its key headers, and the handshake deadline.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{
    expect_eof, http_exchange, read_http_response, tcp, upgrade_request, HttpResponse, TestServer,
};

/// Checks an error response: status, a one-line plain-text reason, and
/// `Connection: close` (the helper already saw the server close it).
fn assert_error(resp: &HttpResponse, status: u16, reason_contains: &str) {
    assert_eq!(resp.status, status, "{resp:?}");
    assert!(
        resp.status_line.starts_with(&format!("HTTP/1.1 {status} ")),
        "{resp:?}"
    );
    assert_eq!(resp.header("Connection"), Some("close"), "{resp:?}");
    assert_eq!(
        resp.header("Content-Length"),
        Some(resp.body.len().to_string().as_str()),
        "{resp:?}"
    );
    let text = resp.text();
    assert!(
        text.ends_with('\n') && text.matches('\n').count() == 1,
        "the reason is not one line: {text:?}"
    );
    assert!(
        text.contains(reason_contains),
        "reason {text:?} should mention {reason_contains:?}"
    );
}

#[test]
fn get_root_serves_the_chat_page() {
    let server = TestServer::start(&[]);
    let resp = http_exchange(
        server.addr,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: text/html\r\n\r\n",
    );
    assert_eq!(resp.status_line, "HTTP/1.1 200 OK");
    assert_eq!(
        resp.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        resp.header("Content-Length"),
        Some(herald::http::CHAT_PAGE.len().to_string().as_str())
    );
    assert_eq!(resp.text(), herald::http::CHAT_PAGE);
    // The page joins the host it was loaded from.
    assert!(resp.text().contains("location.host"), "{}", resp.text());

    // A query string does not change the path.
    let resp = http_exchange(server.addr, b"GET /?room=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(resp.status, 200);
}

#[test]
fn the_page_connection_is_kept_alive_until_the_client_asks_to_close() {
    let server = TestServer::start(&[]);
    let mut s = tcp(server.addr);
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let resp = read_http_response(&mut s, false);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("Connection"), Some("keep-alive"));
        assert_eq!(resp.text(), herald::http::CHAT_PAGE);
    }
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let resp = read_http_response(&mut s, false);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("Connection"), Some("close"));
    expect_eof(&mut s);
}

#[test]
fn head_root_has_the_headers_but_no_body() {
    let server = TestServer::start(&[]);
    let resp = http_exchange(server.addr, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    assert!(resp.body.is_empty(), "{resp:?}");
}

#[test]
fn a_head_sent_in_pieces_is_still_answered() {
    let server = TestServer::start(&[]);
    let mut s = tcp(server.addr);
    s.write_all(b"GET / HTT").unwrap();
    // An incomplete head gets no answer: the server waits for the rest.
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut byte = [0u8; 1];
    match s.read(&mut byte) {
        Err(e) if common::is_timeout(&e) => {}
        other => panic!("an incomplete head was answered: {other:?}"),
    }
    s.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    s.write_all(b"P/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_http_response(&mut s, false).status, 200);
}

#[test]
fn unknown_path_is_404() {
    let server = TestServer::start(&[]);
    let resp = http_exchange(server.addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_error(&resp, 404, "path");
    // An upgrade on another path is refused the same way.
    let req = upgrade_request("13", "").replacen("GET / ", "GET /chat ", 1);
    assert_error(&http_exchange(server.addr, req.as_bytes()), 404, "path");
}

#[test]
fn wrong_method_is_405_with_allow() {
    let server = TestServer::start(&[]);
    for method in ["POST", "PUT", "DELETE"] {
        let req = format!("{method} / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        let resp = http_exchange(server.addr, req.as_bytes());
        assert_error(&resp, 405, "GET");
        let allow = resp.header("Allow").expect("405 without Allow");
        assert!(allow.contains("GET"), "Allow: {allow}");
    }
}

#[test]
fn malformed_requests_are_400_with_a_one_line_reason() {
    let server = TestServer::start(&[]);
    let cases: &[(&[u8], &str)] = &[
        (b"GARBAGE\r\n\r\n", "malformed"),
        (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", "malformed"),
        (b"GET / HTTP/1.1\r\n\r\n", "Host"),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            "body",
        ),
    ];
    for (req, reason) in cases {
        let resp = http_exchange(server.addr, req);
        assert_error(&resp, 400, reason);
    }

    // Upgrades with bad headers.
    let no_key =
        upgrade_request("13", "").replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
    assert_error(&http_exchange(server.addr, no_key.as_bytes()), 400, "Key");
    let bad_key = upgrade_request("13", "").replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
    assert_error(&http_exchange(server.addr, bad_key.as_bytes()), 400, "Key");
    let no_version = upgrade_request("13", "").replace("Sec-WebSocket-Version: 13\r\n", "");
    assert_error(
        &http_exchange(server.addr, no_version.as_bytes()),
        400,
        "Version",
    );
    let not_websocket = upgrade_request("13", "").replace("Upgrade: websocket", "Upgrade: h2c");
    assert_error(
        &http_exchange(server.addr, not_websocket.as_bytes()),
        400,
        "Upgrade",
    );
}

#[test]
fn websocket_version_other_than_13_is_426_naming_13() {
    let server = TestServer::start(&[]);
    for version in ["8", "12", "14"] {
        let resp = http_exchange(server.addr, upgrade_request(version, "").as_bytes());
        assert_error(&resp, 426, "13");
        assert_eq!(resp.header("Sec-WebSocket-Version"), Some("13"), "{resp:?}");
    }
}

#[test]
fn a_head_over_8_kib_is_431() {
    let server = TestServer::start(&[]);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    assert_error(&http_exchange(server.addr, big.as_bytes()), 431, "large");

    // Just under the limit is fine.
    let fits = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(7 * 1024)
    );
    assert_eq!(http_exchange(server.addr, fits.as_bytes()).status, 200);
}

#[test]
fn a_head_not_complete_within_the_handshake_timeout_gets_408_and_is_closed() {
    let timeout = Duration::from_secs(1);
    let server = TestServer::start(&["--handshake-timeout", "1s"]);
    let started = Instant::now();
    let mut s = tcp(server.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: loc").unwrap();

    let resp = read_http_response(&mut s, false);
    expect_eof(&mut s);
    let elapsed = started.elapsed();
    assert_error(&resp, 408, "time");
    assert!(
        elapsed >= timeout - Duration::from_millis(50),
        "answered after {elapsed:?}, before the {timeout:?} deadline"
    );
    assert!(
        elapsed <= timeout + Duration::from_secs(1),
        "closed after {elapsed:?}, more than 1 s past the {timeout:?} deadline"
    );
}
