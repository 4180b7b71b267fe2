//! Several `--url`s (nodes sharing rooms): clients and publishers take the URLs in turn,
//! and every receiver of a room must have seen one interleaving of its publishers'
//! messages (`order_mismatch`).

mod common;

use common::{cli, cli_of, start, with_herald, Tamper, TOKEN};
use serde_json::{json, Value};

/// The same server under two names: what reaches it tells the two URLs apart only by the
/// `Host` header.
fn two_names(url: &str) -> String {
    url.replacen("127.0.0.1", "localhost", 1)
}

/// Asserts a clean report that compared every one of `clients` receivers.
fn assert_one_order(code: Option<i32>, json: &Value, clients: u64) {
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["problems"], json!([]));
    assert_eq!(
        (json["lost"].as_u64(), json["order_mismatch"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        json["order_compared"], clients,
        "every receiver had it all: {json}"
    );
    assert!(json["published"].as_u64().unwrap() > 0);
}

#[test]
fn clients_take_the_urls_in_turn() {
    let server = start(4, 64, |_, _, _| None);
    let (a, b) = (server.url(), two_names(&server.url()));
    let (code, json) = cli(&a, &["--url", &b, "--publishers", "2"]);
    assert_one_order(code, &json, 4);
    assert_eq!(json["urls"], json!([a, b]));
    let mut hosts = server.hosts.lock().unwrap().clone();
    hosts.sort();
    let port = server.addr.port();
    let (ip, name) = (format!("127.0.0.1:{port}"), format!("localhost:{port}"));
    assert_eq!(hosts, [ip.clone(), ip, name.clone(), name]);
}

#[test]
fn another_interleaving_fails_the_run() {
    // Receiver 2 gets publisher 0's message 5 after the next message, publisher 1's 5:
    // each publisher's sequence is intact there, only the interleaving differs.
    let server = start(4, 64, |receiver, p, seq| {
        (receiver == 2 && p == 0 && seq == 5).then_some(Tamper::DelayPastNext)
    });
    let (code, json) = cli(&server.url(), &["--publishers", "2"]);
    assert_eq!(code, Some(1), "{json}");
    assert_eq!(json["problems"], json!(["1 order mismatch"]));
    assert_eq!(
        (
            json["order_mismatch"].as_u64(),
            json["order_compared"].as_u64()
        ),
        (Some(1), Some(4))
    );
    assert_eq!(
        (json["lost"].as_u64(), json["reordered"].as_u64()),
        (Some(0), Some(0))
    );
}

#[test]
fn herald_under_two_urls_gives_each_room_one_order() {
    with_herald(|url| {
        let other = two_names(&url);
        // 12 clients in 3 rooms over 2 URLs: each room has members on both, and four
        // publishers (two in room r0) interleave there.
        let spread = ["--url", &other, "--publishers", "4", "--rooms", "3"];
        let (code, json) = cli_of(12, &url, &spread);
        assert_one_order(code, &json, 12);
        assert_eq!(json["urls"], json!([url, other]));

        let http = [&spread[..], &["--publish-via", "http", "--token", TOKEN]].concat();
        let (code, json) = cli_of(12, &url, &http);
        assert_one_order(code, &json, 12);
        assert_eq!(json["publish"]["answered_202"], json["published"]);

        // Over two processes the fingerprints of a room meet in the parent.
        let procs = [&spread[..], &["--procs", "2"]].concat();
        let (code, json) = cli_of(12, &url, &procs);
        assert_one_order(code, &json, 12);
    });
}
