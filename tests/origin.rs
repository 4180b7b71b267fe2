//! The Origin guard against cross-site WebSocket hijacking:
//! `--allow-origin` (repeatable: an exact origin, a host, or `*.domain`)
//! lets the listed browser origins upgrade and answers every other one
//! with 403; a request without `Origin` (not a browser) is let in unless
//! `--require-origin`. The guard is on the upgrade: the page itself is
//! served to anyone.

mod common;

use common::{
    http_exchange, recv_text, request_status, send_text, upgrade_request, TestServer, PREFIX,
};
use tungstenite::client::IntoClientRequest;
use tungstenite::HandshakeError;

const ALLOWED: [&str; 6] = [
    "--allow-origin",
    "https://chat.example.com",
    "--allow-origin",
    "*.good.org",
    "--allow-origin",
    "localhost",
];

/// The status an upgrade with `origin` (none if `None`) gets.
fn upgrade_status(server: &TestServer, origin: Option<&[u8]>) -> u16 {
    let mut req = upgrade_request("13", "").into_bytes();
    if let Some(o) = origin {
        // Before the blank line that ends the head.
        req.truncate(req.len() - 2);
        req.extend_from_slice(b"Origin: ");
        req.extend_from_slice(o);
        req.extend_from_slice(b"\r\n\r\n");
    }
    request_status(server.addr, &req).0
}

/// Checks that each origin gets `status`.
fn each_gets(server: &TestServer, origins: &[&str], status: u16) {
    for origin in origins {
        let got = upgrade_status(server, Some(origin.as_bytes()));
        assert_eq!(got, status, "Origin: {origin}");
    }
}

#[test]
fn listed_origins_upgrade_and_every_other_origin_gets_403() {
    let server = TestServer::start(&ALLOWED);
    each_gets(
        &server,
        &[
            // The exact origin, in any case.
            "https://chat.example.com",
            "HTTPS://CHAT.EXAMPLE.COM",
            // Any subdomain of good.org, any depth, scheme or port.
            "https://a.good.org",
            "http://a.b.good.org:8443",
            "https://A.Good.Org",
            // Optional whitespace around the value is not part of it.
            " https://a.good.org\t",
            // The host pattern, whatever the scheme or port.
            "http://localhost",
            "http://localhost:8080",
            "https://localhost",
        ],
        101,
    );
    each_gets(
        &server,
        &[
            // The exact origin with another scheme or port is another origin.
            "http://chat.example.com",
            "https://chat.example.com:8443",
            "https://evil.example.com",
            "https://example.com",
            // The suffix pattern needs a label and a dot before good.org.
            "https://good.org",
            "https://evilgood.org",
            "https://good.org.evil.com",
            "https://a.good.org.evil.com",
            "https://localhost.evil.com",
            "null",
            "",
            "file://",
            // Not origins, though the raw text ends with an allowed host.
            "https://evil.com?.good.org",
            "https://evil.com#.good.org",
            "https://evil.com/.good.org",
            "https://evil.com@a.good.org",
            "https://a.good.org/",
            "https://a.good.org/path",
            "https://a.good.org:0",
            "https://a.good.org:65536",
            "https://a.good.org:",
            "https ://a.good.org",
            "https://a.good.org:80 80",
            "http://localhost.:8080",
        ],
        403,
    );
    // Not even UTF-8.
    assert_eq!(upgrade_status(&server, Some(b"https://\xff.good.org")), 403);
    // No Origin: not a browser, let in.
    assert_eq!(upgrade_status(&server, None), 101);
}

#[test]
fn two_origin_headers_are_400_whatever_the_patterns() {
    let two = "Origin: https://a.good.org\r\nOrigin: https://evil.example.com\r\n";
    for flags in [&ALLOWED[..], &[]] {
        let server = TestServer::start(flags);
        for origins in [two, "Origin: null\r\norigin: null\r\n"] {
            let resp = http_exchange(server.addr, upgrade_request("13", origins).as_bytes());
            assert_eq!(resp.status, 400, "{flags:?} {origins:?}: {resp:?}");
            assert_eq!(resp.text(), "repeated Origin\n");
        }
    }
}

#[test]
fn the_403_is_a_one_line_reason_and_the_connection_closes() {
    let server = TestServer::start(&ALLOWED);
    let req = upgrade_request("13", "Origin: https://evil.example.com\r\n");
    let resp = http_exchange(server.addr, req.as_bytes());
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(resp.text(), "origin not allowed\n");
    assert_eq!(resp.header("Connection"), Some("close"));
    assert_eq!(
        resp.header("Content-Type"),
        Some("text/plain; charset=utf-8")
    );
}

#[test]
fn require_origin_turns_away_requests_without_one() {
    let mut flags = ALLOWED.to_vec();
    flags.push("--require-origin");
    let server = TestServer::start(&flags);
    assert_eq!(upgrade_status(&server, None), 403);
    let resp = http_exchange(server.addr, upgrade_request("13", "").as_bytes());
    assert_eq!(resp.text(), "an Origin header is required\n");
    each_gets(&server, &["https://x.good.org"], 101);
    each_gets(&server, &["https://evil.example.com"], 403);
}

#[test]
fn without_allow_origin_every_origin_is_let_in() {
    let server = TestServer::start(&[]);
    each_gets(
        &server,
        &["https://anything.example", "null", "http://localhost:1"],
        101,
    );
}

#[test]
fn an_allowed_browser_origin_gets_a_working_websocket() {
    let server = TestServer::start(&ALLOWED);
    // A tungstenite client sending `Origin` as a browser would: the
    // WebSocket, or the status it was refused with.
    let connect_from = |origin: &str| {
        let mut req = format!("ws://{}/", server.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Origin", origin.parse().expect("header value"));
        match tungstenite::client(req, common::tcp(server.addr)) {
            Ok((ws, _)) => Ok(ws),
            Err(HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                Err(resp.status().as_u16())
            }
            Err(e) => panic!("handshake from {origin}: {e}"),
        }
    };
    let mut ws = connect_from("https://chat.example.com").expect("allowed origin");
    send_text(&mut ws, "hello from the page");
    assert_eq!(recv_text(&mut ws), format!("{PREFIX}hello from the page"));
    assert_eq!(connect_from("https://evil.example.com").err(), Some(403));
}

#[test]
fn the_page_itself_is_served_whatever_the_origin() {
    let server = TestServer::start(&ALLOWED);
    let resp = http_exchange(
        server.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example.com\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
}
