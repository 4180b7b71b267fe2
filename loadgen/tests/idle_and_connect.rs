//! The `idle` and `connect` scenarios: connections are held without spinning, and
//! handshakes are counted, timed and closed cleanly.

mod common;

use common::{broadcast_config, short_timing, start};
use loadgen::config::Scenario;
use loadgen::run::run;

#[test]
fn idle_holds_every_connection_without_spinning() {
    let server = start(20, 64, |_, _, _| None);
    let mut cfg = broadcast_config(&server.url(), 20, 0.0, 1);
    cfg.scenario = Scenario::Idle { rooms: 0 };
    let out = run(cfg, short_timing(1.0)).unwrap();
    assert_eq!(out.stats.connected, 20);
    assert_eq!(out.stats.dropped(), 0);
    assert_eq!(out.stats.pings, 20, "pings are answered while idle");
    // A loop that never sleeps would burn the whole second.
    assert!(
        out.self_cpu_ns < 200_000_000,
        "{} ns of CPU to hold 20 idle connections",
        out.self_cpu_ns
    );
    assert!(loadgen::report::problems(&out).is_empty());
}

#[test]
fn connect_counts_and_times_each_handshake() {
    let server = start(30, 64, |_, _, _| None);
    let mut cfg = broadcast_config(&server.url(), 30, 0.0, 1);
    cfg.scenario = Scenario::Connect;
    cfg.max_pending = 4;
    let out = run(cfg, short_timing(10.0)).unwrap();
    assert_eq!(out.stats.connected, 30);
    assert_eq!(out.stats.failed(), 0);
    assert_eq!(out.stats.handshake.len(), 30);
    assert!(
        out.connect_secs < 5.0,
        "stopped at the count, not the time limit"
    );
    let json = loadgen::report::to_json(&out);
    assert!(json["handshakes_per_sec"].as_f64().unwrap() > 5.0);
    // Sampled after the workers ended: their CPU time must still be counted.
    assert!(
        out.self_cpu_ns > 0,
        "loadgen's own CPU time of a connect run"
    );
    assert!(
        json["loadgen"]["cpu_secs"].as_f64().unwrap() > 0.0,
        "{json}"
    );
}

#[test]
fn connect_stops_at_the_time_limit() {
    // Only 5 connections are ever accepted; the rest wait in the backlog until the
    // time limit abandons them, which is not a failure.
    let server = start(5, 64, |_, _, _| None);
    let mut cfg = broadcast_config(&server.url(), 1000, 0.0, 1);
    cfg.scenario = Scenario::Connect;
    cfg.max_pending = 8;
    let out = run(cfg, short_timing(0.5)).unwrap();
    assert_eq!(out.stats.connected, 5);
    assert!(out.connect_secs < 4.0, "{}", out.connect_secs);
}
