//! `/healthz` (200 while serving, 503 while draining), the log lines on
//! standard error (`--log-format json` is one JSON object a line; levels
//! from `RUST_LOG`, no per-message line at the default level), and
//! `herald --version`. The binary runs as a child on a free loopback port
//! and is stopped by its PID.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    close_politely, connect, http_exchange, recv_text, send_text, HeraldProcess, HttpResponse,
    TestServer, PREFIX,
};
use serde_json::Value;

/// How long any one wait may take.
const WAIT: Duration = Duration::from_secs(10);

fn healthz(addr: SocketAddr) -> HttpResponse {
    http_exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
}

#[test]
fn healthz_answers_ok_while_serving() {
    let server = TestServer::start(&[]);
    let r = healthz(server.addr);
    assert_eq!(r.status, 200, "{}", r.status_line);
    assert_eq!(r.text().trim_end(), "ok");
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{r:?}"
    );
    let head = http_exchange(
        server.addr,
        b"HEAD /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    // With clients connected it is still ok.
    let _ws = connect(server.addr);
    assert_eq!(healthz(server.addr).status, 200);
}

#[test]
fn healthz_answers_503_while_shutting_down() {
    let mut herald = HeraldProcess::start(&["--shutdown-timeout", "3s"]);
    let addr = herald.addr;
    // A client that is open, then never reads again: it never answers the
    // close handshake, so herald drains for the whole --shutdown-timeout.
    let mut silent = connect(addr);
    send_text(&mut silent, "here");
    assert_eq!(recv_text(&mut silent), format!("{PREFIX}here"));
    assert_eq!(healthz(addr).status, 200);

    herald.signal(libc::SIGTERM);
    let signalled = Instant::now();
    // The loop handles the signal; until then health may still be ok.
    let draining = loop {
        let r = healthz(addr);
        match r.status {
            503 => break r,
            200 => {}
            other => panic!("/healthz answered {other} during shutdown: {r:?}"),
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(2),
            "/healthz still 200 {:?} after SIGTERM",
            signalled.elapsed()
        );
        thread::sleep(Duration::from_millis(10));
    };
    // A probe caught mid-request when the drain began is told "server
    // shutting down"; one that arrives while draining gets health's own.
    assert!(draining.text().contains("shutting down"), "{draining:?}");
    let again = healthz(addr);
    assert_eq!(again.status, 503, "{again:?}");
    assert_eq!(again.text().trim_end(), "shutting down");
    assert_eq!(
        again.header("connection"),
        Some("close"),
        "a draining server keeps no connection alive"
    );
    assert!(
        signalled.elapsed() < Duration::from_millis(2500),
        "the probes took {:?}, too close to the timeout to prove anything",
        signalled.elapsed()
    );

    let status = herald.wait(Duration::from_secs(8));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(2500),
        "exited {:?} after SIGTERM though a client never answered the close",
        signalled.elapsed()
    );
    drop(silent);
}

/// Runs one session against the binary: a client connects, sends
/// `messages`, reads them back and closes politely; then, once the close
/// is logged (the debug line, or the next info summary), SIGTERM. Returns
/// the client's address (herald's `peer`) and every stderr line.
fn session(flags: &[&str], rust_log: Option<&str>, messages: &[&str]) -> (String, Vec<String>) {
    let mut flags = flags.to_vec();
    flags.extend(["--log-summary-interval", "200ms"]);
    let mut herald = HeraldProcess::builder()
        .flags(&flags)
        .rust_log(rust_log)
        .start();
    let mut ws = connect(herald.addr);
    let peer = ws.get_ref().local_addr().expect("local_addr").to_string();
    for m in messages {
        send_text(&mut ws, m);
        assert_eq!(recv_text(&mut ws), format!("{PREFIX}{m}"));
    }
    close_politely(ws);
    if rust_log.is_some_and(|l| l.contains("debug")) {
        herald.expect_line("the client's session", |l| {
            l.contains("session") && l.contains(&peer)
        });
    } else {
        herald.expect_line("a summary with the close", |l| {
            l.contains("summary") && l.contains("normal=1")
        });
    }
    let (status, log) = herald.stop(WAIT);
    assert!(status.success(), "exit status {status:?}; log: {log:#?}");
    (peer, log)
}

/// Every line parsed as a JSON object.
fn json_lines(log: &[String]) -> Vec<serde_json::Map<String, Value>> {
    log.iter()
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(o)) => o,
            Ok(other) => panic!("log line is JSON but not an object: {other}"),
            Err(e) => panic!("log line is not JSON ({e}): {l:?}"),
        })
        .collect()
}

fn field<'a>(event: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a str> {
    event.get("fields")?.get(name)?.as_str()
}

#[test]
fn json_logs_are_one_object_a_line_with_a_summary_and_no_line_per_client() {
    let (peer, log) = session(&["--log-format", "json"], None, &["one", "two"]);
    let events = json_lines(&log);
    for e in &events {
        assert!(e.get("timestamp").is_some_and(Value::is_string), "{e:?}");
        assert!(e.get("level").is_some_and(Value::is_string), "{e:?}");
        assert!(field(e, "message").is_some(), "no message in {e:?}");
    }
    let named = |msg: &str| -> Vec<&serde_json::Map<String, Value>> {
        events
            .iter()
            .filter(|e| field(e, "message") == Some(msg))
            .collect()
    };
    assert_eq!(named("herald listening").len(), 1, "{log:#?}");
    // At info a client is counted in a summary, not logged by itself.
    assert!(named("request").is_empty(), "{log:#?}");
    assert!(named("session").is_empty(), "{log:#?}");
    assert!(log.iter().all(|l| !l.contains(&peer)), "{log:#?}");
    let summaries = named("summary");
    assert!(!summaries.is_empty(), "{log:#?}");
    assert_eq!(summaries[0]["level"], "INFO");
    let total = |name: &str| -> u64 {
        summaries
            .iter()
            .map(|e| {
                e["fields"][name]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{name} in {e:?}"))
            })
            .sum()
    };
    assert_eq!(total("opened"), 1, "{log:#?}");
    assert!(
        summaries
            .iter()
            .any(|e| field(e, "closed") == Some("normal=1")),
        "{log:#?}"
    );
    // The default level (info) has no line per message, nor any debug line.
    assert!(named("message").is_empty(), "{log:#?}");
    assert!(
        events
            .iter()
            .all(|e| e["level"] != "DEBUG" && e["level"] != "TRACE"),
        "{log:#?}"
    );
    assert_eq!(named("shutdown complete").len(), 1, "{log:#?}");
}

#[test]
fn rust_log_debug_adds_a_line_per_request_session_and_message() {
    let sent = ["one", "two", "a third message"];
    let (peer, log) = session(&["--log-format", "json"], Some("debug"), &sent);
    let events = json_lines(&log);
    let of_peer = |what: &str| -> Vec<&serde_json::Map<String, Value>> {
        events
            .iter()
            .filter(|e| field(e, "message") == Some(what) && field(e, "peer") == Some(&peer))
            .collect()
    };
    // The upgrade is a request like any other...
    let requests = of_peer("request");
    assert_eq!(requests.len(), 1, "{log:#?}");
    assert_eq!(requests[0]["level"], "DEBUG");
    assert_eq!(field(requests[0], "method"), Some("GET"));
    assert_eq!(field(requests[0], "path"), Some("/"));
    assert_eq!(requests[0]["fields"]["status"], 101, "{log:#?}");
    // ...and the WebSocket that followed is one session, with its figures
    // and the close the client gave.
    let sessions = of_peer("session");
    assert_eq!(sessions.len(), 1, "{log:#?}");
    let s = &sessions[0]["fields"];
    assert_eq!(s["messages_in"], 3, "{s:?}");
    assert_eq!(s["messages_out"], 3, "{s:?}");
    assert_eq!(s["code"], "1000", "{s:?}");
    assert_eq!(s["by"], "client", "{s:?}");
    assert_eq!(s["reason"], "normal", "{s:?}");
    assert_eq!(s["room"], "", "{s:?}");
    assert!(s["duration_ms"].as_u64().is_some(), "{s:?}");
    let per_message: Vec<_> = events
        .iter()
        .filter(|e| field(e, "message") == Some("message"))
        .collect();
    assert_eq!(per_message.len(), sent.len(), "{log:#?}");
    for (e, m) in per_message.iter().zip(sent) {
        assert_eq!(e["level"], "DEBUG");
        assert_eq!(e["fields"]["len"], m.len(), "{e:?}");
    }
}

#[test]
fn text_logs_are_key_value_lines() {
    let (peer, log) = session(&[], None, &["hi"]);
    assert!(
        log.iter().any(|l| l.contains(" summary ")
            && l.contains("opened=1")
            && l.contains("closed=normal=1")),
        "{log:#?}"
    );
    assert!(log.iter().all(|l| !l.contains(&peer)), "{log:#?}");
    assert!(
        log.iter().all(|l| !l.trim_start().starts_with('{')),
        "JSON in the text format: {log:#?}"
    );
    assert!(
        log.iter().all(|l| !l.contains("DEBUG")),
        "debug lines at the default level: {log:#?}"
    );
}

#[test]
fn version_flag_prints_the_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .expect("run herald --version");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("herald {}\n", env!("CARGO_PKG_VERSION"))
    );
}

/// Runs the binary with `args` alone; it must end by itself (a bad value
/// stops it before it listens).
fn herald_with(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run herald")
}

#[test]
fn values_that_would_make_herald_useless_are_refused_before_it_listens() {
    for (args, says) in [
        (
            &["--max-message-size", "0"][..],
            "--max-message-size 0: no message could be sent",
        ),
        (
            &["--ping-interval", "250ms"][..],
            "is not a whole number of seconds",
        ),
        (
            &["--idle-timeout", "1.5"][..],
            "is not a whole number of seconds",
        ),
    ] {
        let out = herald_with(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn a_client_closed_for_a_message_too_big_is_logged_with_the_code_and_reason_it_got() {
    let mut herald = HeraldProcess::builder()
        .flags(&["--log-format", "json", "--max-message-size", "1KiB"])
        .rust_log(Some("debug"))
        .start();
    let mut ws = connect(herald.addr);
    let peer = ws.get_ref().local_addr().expect("local_addr").to_string();
    ws.send(tungstenite::Message::text("x".repeat(2048)))
        .expect("send");
    let line = herald.expect_line("the session's line", |l| {
        l.contains("\"session\"") && l.contains(&peer)
    });
    let v: Value = serde_json::from_str(&line).expect("json");
    let s = &v["fields"];
    assert_eq!(s["code"], "1009", "{s:?}");
    assert_eq!(s["why"], "message too big", "{s:?}");
    assert_eq!(s["by"], "herald", "{s:?}");
    assert_eq!(s["reason"], "error", "{s:?}");
    drop(ws);
    let _ = herald.stop(WAIT);
}

#[test]
fn access_log_puts_each_request_at_info_with_method_path_status_and_bytes() {
    let mut herald = HeraldProcess::builder()
        .flags(&["--log-format", "json", "--access-log"])
        .start();
    let answer = healthz(herald.addr);
    assert_eq!(answer.status, 200);
    let line = herald.expect_line("the request's line", |l| {
        l.contains("\"request\"") && l.contains("/healthz")
    });
    let v: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(v["level"], "INFO");
    let f = &v["fields"];
    assert_eq!(
        (f["method"].as_str(), f["status"].as_u64()),
        (Some("GET"), Some(200))
    );
    // The whole answer: its head and its body.
    let bytes = f["bytes"].as_u64().expect("bytes") as usize;
    assert!(
        bytes > answer.status_line.len() + answer.body.len(),
        "{f:?}"
    );
    let _ = herald.stop(WAIT);
}

#[test]
fn metrics_listen_gives_each_node_its_own_door_to_metrics_and_health_and_nothing_else() {
    let mut herald = HeraldProcess::builder()
        .flags(&["--metrics-listen", "127.0.0.1:0"])
        .start();
    let line = herald.expect_line("the metrics listener", |l| {
        l.contains("metrics and health listening")
    });
    let addr: SocketAddr = line
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    assert_ne!(addr, herald.addr);
    let get = |path: &str| {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        http_exchange(addr, request.as_bytes())
    };
    let metrics = get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("herald_connections_open"));
    assert_eq!(get("/healthz").status, 200);
    assert_eq!(get("/readyz").status, 200);
    // No chat, no WebSocket, no publishing there...
    assert_eq!(get("/").status, 404);
    let upgrade = http_exchange(addr, common::upgrade_request("13", "").as_bytes());
    assert_eq!(upgrade.status, 404, "{}", upgrade.status_line);
    // ...while the main port serves everything, the metrics included.
    assert_eq!(healthz(herald.addr).status, 200);
    let _ = herald.stop(WAIT);
}
