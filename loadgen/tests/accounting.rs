//! Loss, duplication and reordering are counted exactly: proven against a test server
//! that drops, duplicates and swaps chosen deliveries, and against one that does not.

mod common;

use common::{broadcast_config, cli, short_timing, start, start_raw, Tamper};
use loadgen::config::Scenario;
use loadgen::run::run;
use std::sync::atomic::Ordering::Relaxed;

/// Receiver 1 loses 10 and 11, receiver 2 gets 21 before 20, receiver 3 gets 30 twice
/// (of publisher 0 only).
fn tampering(receiver: usize, publisher: u32, seq: u64) -> Option<Tamper> {
    match (receiver, publisher, seq) {
        (1, 0, 10 | 11) => Some(Tamper::Drop),
        (2, 0, 20) => Some(Tamper::SwapWithNext),
        (3, 0, 30) => Some(Tamper::Duplicate),
        _ => None,
    }
}

#[test]
fn a_faithful_server_loses_nothing() {
    let server = start(5, 64, |_, _, _| None);
    let out = run(
        broadcast_config(&server.url(), 5, 100.0, 0),
        short_timing(1.0),
    )
    .unwrap();
    let s = &out.stats;
    assert_eq!(s.connected, 5);
    assert!(
        out.published >= 95 && out.published <= 101,
        "{}",
        out.published
    );
    assert_eq!(s.delivered, out.published * 5);
    assert_eq!(
        (s.lost, s.duplicates, s.reordered, s.malformed),
        (0, 0, 0, 0)
    );
    assert_eq!(s.latency.len(), out.published * 5);
    assert_eq!(s.pings, 5, "every client saw the server's ping");
    assert_eq!(server.pongs.load(Relaxed), 5, "and answered it");
    assert!(loadgen::report::problems(&out).is_empty());
}

#[test]
fn drops_swaps_and_duplicates_are_each_counted_once() {
    let server = start(4, 64, tampering);
    let out = run(
        broadcast_config(&server.url(), 4, 100.0, 0),
        short_timing(1.0),
    )
    .unwrap();
    let s = &out.stats;
    assert!(out.published > 40, "the tampered numbers were published");
    assert_eq!(s.lost, 2);
    assert_eq!(s.reordered, 1);
    assert_eq!(s.duplicates, 1);
    assert_eq!(s.malformed, 0);
    assert_eq!(s.delivered, out.published * 4 - 2);
    let problems = loadgen::report::problems(&out);
    assert_eq!(problems, ["2 lost", "1 duplicated", "1 reordered"]);
}

#[test]
fn saturation_keeps_the_window_full_and_complete() {
    let server = start(3, 64, |_, _, _| None);
    let cfg = broadcast_config(&server.url(), 3, 0.0, 8);
    let out = run(cfg, short_timing(0.5)).unwrap();
    let s = &out.stats;
    assert!(
        out.published > 100,
        "window 8 against loopback: {}",
        out.published
    );
    assert!(out.drained);
    assert_eq!(s.delivered, out.published * 3);
    assert_eq!((s.lost, s.duplicates, s.reordered), (0, 0, 0));
}

#[test]
fn a_server_that_drops_in_saturation_is_caught() {
    // Dropping the publisher's own copy shrinks its window; every loss still counts.
    let server = start(3, 64, |r, _, seq| {
        (seq % 50 == 7 && r == 2).then_some(Tamper::Drop)
    });
    let out = run(
        broadcast_config(&server.url(), 3, 0.0, 4),
        short_timing(0.5),
    )
    .unwrap();
    assert!(out.stats.lost > 0);
    assert_eq!(out.stats.delivered + out.stats.lost, out.published * 3);
}

#[test]
fn a_wrong_accept_key_fails_every_handshake() {
    let addr = start_raw(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
    );
    let mut cfg = broadcast_config(&format!("ws://{addr}/"), 3, 10.0, 0);
    cfg.scenario = Scenario::Idle { rooms: 0 };
    let out = run(cfg, short_timing(0.1)).unwrap();
    assert_eq!(out.stats.connected, 0);
    assert_eq!(
        out.stats
            .failures
            .get("handshake: bad Sec-WebSocket-Accept"),
        Some(&3)
    );
    assert_eq!(
        loadgen::report::problems(&out),
        ["only 0 of 3 clients connected"]
    );
}

#[test]
fn a_refusing_server_is_counted_by_status() {
    let addr = start_raw("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
    let mut cfg = broadcast_config(&format!("ws://{addr}/"), 2, 10.0, 0);
    cfg.scenario = Scenario::Idle { rooms: 0 };
    let out = run(cfg, short_timing(0.1)).unwrap();
    assert_eq!(
        out.stats.failures.get("handshake: HTTP status 503"),
        Some(&2)
    );
}

#[test]
fn the_exit_status_reports_tampering() {
    let bad = start(4, 64, tampering);
    let (code, json) = cli(&bad.url(), &[]);
    assert_eq!(code, Some(1));
    assert_eq!(json["lost"], 2);
    assert_eq!(json["reordered"], 1);
    assert_eq!(json["duplicated"], 1);
    assert_eq!(json["ok"], false);

    let good = start(4, 64, |_, _, _| None);
    let (code, json) = cli(&good.url(), &[]);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["lost"], 0);
    assert_eq!(json["connected"], 4);
    assert!(json["latency"]["p99_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn threads_share_the_clients_and_the_accounting() {
    // Publishers and receivers spread over three event loops, each tracking the others'
    // messages; one receiver loses message 5 of each of the 4 publishers.
    let server = start(9, 64, |r, _, seq| {
        (r == 4 && seq == 5).then_some(Tamper::Drop)
    });
    let mut cfg = broadcast_config(&server.url(), 9, 200.0, 0);
    cfg.threads = 3;
    if let Scenario::Broadcast(b) = &mut cfg.scenario {
        b.publishers = 4;
    }
    let out = run(cfg, short_timing(1.0)).unwrap();
    let s = &out.stats;
    assert_eq!(s.connected, 9);
    assert!(out.published >= 190, "{}", out.published);
    assert_eq!(s.lost, 4);
    assert_eq!((s.duplicates, s.reordered, s.malformed), (0, 0, 0));
    assert_eq!(s.delivered, out.published * 9 - 4);
}

#[test]
fn several_processes_account_as_one_run() {
    // Two shard processes, two publishers (one in each): every receiver tracks both, and
    // the tampering is counted once, wherever the receiver lives.
    let bad = start(4, 64, tampering);
    let (code, json) = cli(&bad.url(), &["--procs", "2", "--publishers", "2"]);
    assert_eq!(code, Some(1));
    assert_eq!(json["procs"], 2);
    assert_eq!(json["connected"], 4);
    assert_eq!(json["lost"], 2);
    assert_eq!(json["reordered"], 1);
    assert_eq!(json["duplicated"], 1);
    let published = json["published"].as_u64().unwrap();
    assert!(published >= 95, "{published}");
    assert_eq!(json["deliveries"].as_u64().unwrap(), published * 4 - 2);
}
