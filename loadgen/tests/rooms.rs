//! `--rooms N`: each client joins room `i % N` by its path, receivers expect only their
//! room's publishers, and a delivery from another room is caught as misrouted.

mod common;

use common::{broadcast_config, cli, short_timing, start, start_routed, Tamper};
use loadgen::config::Scenario;
use loadgen::run::run;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// Nine clients in three rooms (three each) and four publishers: rooms r0, r1, r2, r0.
fn rooms_config(url: &str) -> loadgen::config::Config {
    let mut cfg = broadcast_config(url, 9, 200.0, 0);
    cfg.threads = 2;
    if let Scenario::Broadcast(b) = &mut cfg.scenario {
        (b.publishers, b.rooms) = (4, 3);
    }
    cfg
}

#[test]
fn receivers_expect_exactly_their_rooms_publishers() {
    let server = start(9, 64, |_, _, _| None);
    let out = run(rooms_config(&server.url()), short_timing(1.0)).unwrap();
    let s = &out.stats;
    assert_eq!(s.connected, 9);
    let mut paths = server.paths.lock().unwrap().clone();
    paths.sort();
    let want: Vec<String> = (0..9).map(|i| format!("/rooms/r{}", i / 3)).collect();
    assert_eq!(paths, want);
    assert!(out.published >= 190, "{}", out.published);
    // Every publisher's room has three members: each message is due three times.
    assert_eq!(s.expected, out.published * 3);
    assert_eq!(s.delivered, s.expected);
    assert_eq!(
        (s.lost, s.duplicates, s.reordered, s.malformed, s.misrouted),
        (0, 0, 0, 0, 0)
    );
    assert!(out.drained);
    assert!(loadgen::report::problems(&out).is_empty());
}

#[test]
fn losses_are_counted_per_room() {
    // Room r0 (clients 0, 3, 6) loses publisher 3's message 5: three losses, and nothing
    // lost from the publishers of the other rooms, which r0 never expected.
    let server = start(9, 64, |_, p, seq| {
        (p == 3 && seq == 5).then_some(Tamper::Drop)
    });
    let out = run(rooms_config(&server.url()), short_timing(1.0)).unwrap();
    let s = &out.stats;
    assert_eq!(s.lost, 3);
    assert_eq!(s.delivered, out.published * 3 - 3);
    assert_eq!((s.duplicates, s.reordered, s.misrouted), (0, 0, 0));
    assert_eq!(loadgen::report::problems(&out), ["3 lost"]);
}

#[test]
fn a_misrouted_message_fails_the_run() {
    // Message 5 of publisher 0 (room r0) also reaches one receiver of room r1.
    let once = AtomicBool::new(false);
    let server = start_routed(4, 64, move |to, p, seq| {
        let misroute = !to.in_room && p == 0 && seq == 5 && !once.swap(true, Relaxed);
        misroute.then_some(Tamper::Misroute)
    });
    let (code, json) = cli(&server.url(), &["--rooms", "2", "--publishers", "2"]);
    assert_eq!(code, Some(1), "{json}");
    assert_eq!(json["rooms"], 2);
    assert_eq!(json["misrouted"], 1);
    assert_eq!(json["lost"], 0);
    assert_eq!(json["problems"], serde_json::json!(["1 misrouted"]));
    let published = json["published"].as_u64().unwrap();
    assert_eq!(json["expected_deliveries"].as_u64().unwrap(), published * 2);
    assert_eq!(json["deliveries"].as_u64().unwrap(), published * 2);
}

#[test]
fn without_rooms_everyone_is_on_the_url() {
    let server = start(4, 64, |_, _, _| None);
    let (code, json) = cli(&server.url(), &["--publishers", "2"]);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(*server.paths.lock().unwrap(), ["/"; 4]);
    assert!(json["rooms"].is_null());
    assert_eq!(json["misrouted"], 0);
    let published = json["published"].as_u64().unwrap();
    assert_eq!(json["expected_deliveries"].as_u64().unwrap(), published * 4);
    assert_eq!(json["deliveries"].as_u64().unwrap(), published * 4);
}

#[test]
fn rooms_hold_across_processes() {
    // Two shards: clients 0 and 2 (room r0) in one, 1 and 3 (room r1) in the other; each
    // receiver still expects only its own room's publisher.
    let server = start(4, 64, |_, _, _| None);
    let args = ["--rooms", "2", "--publishers", "2", "--procs", "2"];
    let (code, json) = cli(&server.url(), &args);
    assert_eq!(code, Some(0), "{json}");
    let published = json["published"].as_u64().unwrap();
    assert_eq!(json["expected_deliveries"].as_u64().unwrap(), published * 2);
    assert_eq!(json["deliveries"].as_u64().unwrap(), published * 2);
    assert_eq!(
        (json["lost"].as_u64(), json["misrouted"].as_u64()),
        (Some(0), Some(0))
    );
}
