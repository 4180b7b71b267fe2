//! Graceful shutdown: every client gets close 1001, the server waits for
//! the replies (or `--shutdown-timeout`), and the binary exits 0 on SIGTERM
//! and SIGINT.

mod common;

use std::time::{Duration, Instant};

use common::{
    connect, connect_many, read_until_close, recv_text, send_text, tcp, Client, HeraldProcess,
    TestServer, PREFIX,
};

/// Makes sure every client is open (each receives a broadcast) before the
/// shutdown starts.
fn all_open(clients: &mut [Client]) {
    send_text(&mut clients[0], "ready?");
    for c in clients.iter_mut() {
        assert_eq!(recv_text(c), format!("{PREFIX}ready?"));
    }
}

#[test]
fn shutdown_sends_1001_to_every_client_and_returns_once_they_answer() {
    // A long timeout: returning well before it proves herald waited for
    // the close replies, not for the clock.
    let server = TestServer::start(&["--shutdown-timeout", "30s"]);
    let mut clients = connect_many(server.addr, 3);
    all_open(&mut clients);

    server.trigger_shutdown();
    let started = Instant::now();
    // Each client hangs up once the handshake is done, as a real one does.
    for (i, mut c) in clients.into_iter().enumerate() {
        assert_eq!(read_until_close(&mut c), 1001, "client {i}");
    }
    server
        .wait_stopped(Duration::from_secs(10))
        .expect("run returned an error");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn shutdown_gives_up_on_a_client_that_never_answers_after_the_timeout() {
    let server = TestServer::start(&["--shutdown-timeout", "500ms"]);
    // Upgraded, then silent: it never reads, so never answers the close.
    let silent = connect(server.addr);
    let mut other = connect(server.addr);
    send_text(&mut other, "hi");
    assert_eq!(recv_text(&mut other), format!("{PREFIX}hi"));

    let started = Instant::now();
    server.trigger_shutdown();
    assert_eq!(read_until_close(&mut other), 1001);
    server
        .wait_stopped(Duration::from_secs(5))
        .expect("run returned an error");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "returned after {took:?} though a client never answered"
    );
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    drop(silent);
}

#[test]
fn shutdown_answers_a_pending_http_request_with_503() {
    let server = TestServer::start(&["--shutdown-timeout", "5s"]);
    // The server has this connection once a WebSocket opened after it is
    // served: connections are accepted in order.
    let mut half = tcp(server.addr);
    std::io::Write::write_all(&mut half, b"GET / HTTP/1.1\r\n").unwrap();
    let mut ws = connect(server.addr);
    send_text(&mut ws, "x");
    assert_eq!(recv_text(&mut ws), format!("{PREFIX}x"));

    server.trigger_shutdown();
    let resp = common::read_http_response(&mut half, false);
    assert_eq!(resp.status, 503, "{resp:?}");
    common::expect_eof(&mut half);
    drop(half);
    assert_eq!(read_until_close(&mut ws), 1001);
    drop(ws);
    server
        .wait_stopped(Duration::from_secs(10))
        .expect("run returned an error");
}

#[test]
fn shutdown_closes_an_idle_http_connection_without_a_word() {
    // A browser opens spare connections before it has requests for them. One
    // told 503 unasked would take that 503 as the answer to the request it
    // sends next (chromium did, after a restart): an idle connection is just
    // closed.
    let server = TestServer::start(&["--shutdown-timeout", "5s"]);
    let mut idle = tcp(server.addr);
    let mut ws = connect(server.addr);
    send_text(&mut ws, "x");
    assert_eq!(recv_text(&mut ws), format!("{PREFIX}x"));

    server.trigger_shutdown();
    common::expect_eof(&mut idle);
    assert_eq!(read_until_close(&mut ws), 1001);
    drop(ws);
    server
        .wait_stopped(Duration::from_secs(10))
        .expect("run returned an error");
}

/// The binary on a signal: every client gets 1001, and it exits 0.
fn binary_shuts_down_on(signal: i32) {
    let mut herald = HeraldProcess::start(&["--shutdown-timeout", "10s"]);
    let mut clients = connect_many(herald.addr, 3);
    all_open(&mut clients);

    herald.signal(signal);
    // Each client hangs up once the handshake is done, as a real one does.
    for (i, mut c) in clients.into_iter().enumerate() {
        assert_eq!(read_until_close(&mut c), 1001, "client {i}");
    }
    let status = herald.wait(Duration::from_secs(5));
    assert!(status.success(), "herald exited with {status:?}");
}

#[test]
fn sigterm_gives_every_client_1001_and_the_binary_exits_0() {
    binary_shuts_down_on(libc::SIGTERM);
}

#[test]
fn sigint_gives_every_client_1001_and_the_binary_exits_0() {
    binary_shuts_down_on(libc::SIGINT);
}
