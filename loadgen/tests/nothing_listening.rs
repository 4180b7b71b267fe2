//! When no client can connect, loadgen says so in one line as soon as connecting is over,
//! instead of running its window over nothing; when some can, it runs as asked.

mod common;

use common::{cli_of, start};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A `ws://` URL on a loopback port nothing listens on.
fn free_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("ws://{}/", listener.local_addr().unwrap())
}

/// Runs `loadgen args`; returns what it wrote and how long it took.
fn loadgen(args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .unwrap();
    (out, t.elapsed())
}

/// Asserts a failed run (status 1) whose whole output is `line` on stderr, well before
/// the 11 s its warm-up and window would take.
fn assert_one_line(args: &[&str], line: &str) {
    let (out, elapsed) = loadgen(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert_eq!(stderr, format!("{line}\n"), "{args:?}");
    assert!(out.stdout.is_empty(), "{args:?}");
    assert!(
        elapsed < Duration::from_secs(5),
        "{args:?} took {elapsed:?}"
    );
}

#[test]
fn nothing_listening_fails_at_once_with_one_line() {
    let url = free_url();
    let line = format!("loadgen: no client could connect to {url}: connect: Connection refused");
    let run = ["--url", &url, "--clients", "8", "--duration", "10"];
    for procs in ["1", "2"] {
        let broadcast = [&["broadcast", "--warmup", "1", "--procs", procs][..], &run].concat();
        assert_one_line(&broadcast, &line);
        assert_one_line(&[&["idle", "--procs", procs][..], &run].concat(), &line);
    }
    assert_one_line(&[&["connect"][..], &run].concat(), &line);
}

#[test]
fn none_open_by_the_connect_deadline_fails_with_one_line() {
    // Connections wait in the backlog of a listener that never accepts: no failure, no
    // handshake either.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    for procs in ["1", "2"] {
        let (out, elapsed) = loadgen(&[
            "broadcast",
            "--url",
            &url,
            "--clients",
            "4",
            "--procs",
            procs,
            "--quiet",
            "--connect-timeout",
            "30",
            "--connect-phase-timeout",
            "0.5",
            "--duration",
            "10",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let (head, tail) = stderr.split_once(": none open after ").expect(&stderr);
        assert_eq!(head, format!("loadgen: no client could connect to {url}"));
        assert!(tail.ends_with(" s (--connect-phase-timeout)\n"), "{stderr}");
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    }
}

#[test]
fn some_connected_runs_the_window_and_reports() {
    // Clients 1 and 3 take the dead URL; 0 (the publisher) and 2 connect.
    let server = start(2, 64, |_, _, _| None);
    let (code, json) = cli_of(4, &server.url(), &["--url", &free_url()]);
    assert_eq!(code, Some(1), "{json}");
    assert_eq!(json["connected"], 2, "{json}");
    assert!(json["published"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(json["problems"][0], "only 2 of 4 clients connected");
}
