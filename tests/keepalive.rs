//! Keepalive and dead peers: `--ping-interval` pings a silent client,
//! `--idle-timeout` closes one silent past it with 1001 "idle timeout"
//! (a pong counts as activity), 0 disables either, and the handshake
//! deadline closes half-open upgrades (408) and connections that never
//! say anything.
//!
//! The silent clients are raw sockets, so nothing answers pings behind the
//! test's back. Deadlines are checked every 100 ms and idleness once a
//! second, so timings are asserted with that much slack.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{
    connect, masked_frame, metric, raw_websocket, read_frame, read_head, recv_text, send_text,
    status_of, tcp, upgrade_request, TestServer, PREFIX,
};
use tungstenite::Message;

/// Asserts that `elapsed` is at least `at` less `early` and before `late` passed it.
fn around(elapsed: Duration, at: Duration, early: Duration, late: Duration, what: &str) {
    assert!(
        elapsed + early >= at && elapsed <= at + late,
        "{what} after {elapsed:?}, expected about {at:?}"
    );
}

/// Seconds.
fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The series of connections closed for `reason`.
fn closed(reason: &str) -> String {
    format!("herald_connections_closed_total{{reason=\"{reason}\"}}")
}

#[test]
fn a_silent_client_is_pinged_once_per_silence() {
    let server = TestServer::start(&["--ping-interval", "2s", "--idle-timeout", "0"]);
    let mut s = raw_websocket(server.addr);
    let started = Instant::now();
    let ping = read_frame(&mut s).expect("a ping");
    assert_eq!((ping.first, ping.payload.len()), (0x89, 0), "{ping:?}");
    // Idleness is counted in whole seconds: 2 s of silence is seen between
    // 1 s and 2 s after the last byte, plus the sweep.
    around(started.elapsed(), secs(2.0), secs(1.1), secs(1.5), "ping");

    // Unanswered, it is not repeated.
    s.set_read_timeout(Some(secs(2.5))).unwrap();
    match read_frame(&mut s) {
        Err(e) if common::is_timeout(&e) => {}
        other => panic!("expected silence after an unanswered ping, got {other:?}"),
    }

    // Answered, the next comes after another interval of silence.
    s.write_all(&masked_frame(0x8A, b"")).unwrap();
    let answered = Instant::now();
    s.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    let again = read_frame(&mut s).expect("a second ping");
    assert_eq!(again.first, 0x89);
    around(
        answered.elapsed(),
        secs(2.0),
        secs(1.1),
        secs(1.5),
        "second ping",
    );
}

#[test]
fn an_active_client_is_not_pinged() {
    let server = TestServer::start(&["--ping-interval", "2s"]);
    let mut ws = connect(server.addr);
    let started = Instant::now();
    let mut n = 0;
    // A message every 250 ms for 3.2 s: never silent for a whole second.
    while started.elapsed() < secs(3.2) {
        send_text(&mut ws, &format!("tick {n}"));
        match common::recv(&mut ws) {
            Message::Text(t) => assert_eq!(t.as_str(), format!("{PREFIX}tick {n}")),
            other => panic!("an active client got {other:?}"),
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_silent_client_is_closed_at_the_idle_timeout_with_1001() {
    let server = TestServer::start(&["--ping-interval", "0", "--idle-timeout", "2s"]);
    let mut s = raw_websocket(server.addr);
    let started = Instant::now();
    // No ping first (pings are off): the close is the first frame.
    let close = read_frame(&mut s).expect("a close frame");
    around(
        started.elapsed(),
        secs(2.0),
        secs(1.1),
        secs(1.5),
        "idle close",
    );
    assert_eq!(
        (close.close_code(), close.close_reason().as_str()),
        (1001, "idle timeout")
    );
    // The client completes the close handshake; herald then hangs up.
    s.write_all(&masked_frame(0x88, &1001u16.to_be_bytes()))
        .unwrap();
    common::expect_eof(&mut s);
    assert_eq!(metric(server.addr, &closed("idle")), 1);
}

#[test]
fn a_client_answering_pings_outlives_the_idle_timeout_and_a_silent_one_does_not() {
    let server = TestServer::start(&["--ping-interval", "1s", "--idle-timeout", "2s"]);
    let mut silent = raw_websocket(server.addr);
    let mut answering = connect(server.addr);
    answering
        .get_mut()
        .set_read_timeout(Some(secs(0.5)))
        .unwrap();
    let started = Instant::now();
    let mut pings = 0;
    // tungstenite answers each ping with a pong on the next flush.
    // Twice the idle timeout.
    while started.elapsed() < secs(4.0) {
        match answering.read() {
            Ok(Message::Ping(_)) => {
                pings += 1;
                answering.flush().expect("send the pong");
            }
            Ok(other) => panic!("the answering client got {other:?}"),
            Err(tungstenite::Error::Io(e)) if common::is_timeout(&e) => {}
            Err(e) => panic!("the answering client was dropped: {e}"),
        }
    }
    assert!(pings >= 2, "{pings} pings in 4 s");
    answering
        .get_mut()
        .set_read_timeout(Some(common::TIMEOUT))
        .unwrap();
    send_text(&mut answering, "alive");
    assert_eq!(recv_text(&mut answering), format!("{PREFIX}alive"));

    // The silent one got one ping, then the close.
    let ping = read_frame(&mut silent).expect("a ping");
    assert_eq!(ping.first, 0x89);
    let close = read_frame(&mut silent).expect("a close frame");
    assert_eq!(close.close_code(), 1001);
}

#[test]
fn zero_turns_pings_and_the_idle_timeout_off() {
    let server = TestServer::start(&["--ping-interval", "0", "--idle-timeout", "0"]);
    let mut s = raw_websocket(server.addr);
    s.set_read_timeout(Some(secs(2.5))).unwrap();
    match read_frame(&mut s) {
        Err(e) if common::is_timeout(&e) => {}
        other => panic!("a silent client got {other:?} with both off"),
    }
    s.write_all(&masked_frame(0x81, b"still open")).unwrap();
    let echo = read_frame(&mut s).expect("the broadcast");
    assert_eq!(echo.payload, format!("{PREFIX}still open").as_bytes());
}

#[test]
fn the_handshake_deadline_closes_half_open_upgrades_and_mute_connections() {
    let server = TestServer::start(&["--handshake-timeout", "1s"]);
    let addr = server.addr;
    let mut upgraded = connect(addr);

    // An upgrade head that never ends: 408, then the connection closes.
    let mut half = tcp(addr);
    let head = upgrade_request("13", "");
    half.write_all(&head.as_bytes()[..head.len() - 2]).unwrap();
    // A connection that never sends a byte: closed without a word.
    let mut mute = tcp(addr);
    let started = Instant::now();

    let (response, _) = read_head(&mut half).expect("a response");
    assert_eq!(status_of(&response), 408, "{response}");
    around(started.elapsed(), secs(1.0), secs(0.15), secs(1.5), "408");
    common::expect_eof(&mut half);
    common::expect_eof(&mut mute);
    around(
        started.elapsed(),
        secs(1.0),
        secs(0.15),
        secs(1.5),
        "mute close",
    );

    // The client that upgraded in time is not touched by its deadline.
    std::thread::sleep(secs(0.5));
    send_text(&mut upgraded, "past the deadline");
    assert_eq!(
        recv_text(&mut upgraded),
        format!("{PREFIX}past the deadline")
    );
    drop((half, mute));
    common::eventually(common::TIMEOUT, "both counted as timeouts", || {
        (metric(addr, &closed("timeout")) == 2).then_some(())
    });
}
