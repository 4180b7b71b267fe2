//! Faults of the Redis backplane found in review: each test states what
//! the bus promises (src/bus/mod.rs, issue 12) and drives herald (the real
//! binary) against a real `redis-server` until the promise is broken.
//!
//! Some tests speak to Redis directly: [`publish_raw`] puts a hand-made
//! envelope on a room's channel, as another herald node (another version,
//! another clock) or any other client of the same Redis could.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::bus::{channel, join, node, ping_pong, wait_metric, TOKEN};
use common::{
    is_timeout, metric, recv_text, send_text, Client, HeraldProcess, RedisServer, PREFIX, TIMEOUT,
};

/// herald's default `--redis-prefix`.
const BUS_PREFIX: &str = "herald";

/// `SEEN_PER_ROOM` in src/bus/mod.rs: the streams a room remembers.
const SEEN_PER_ROOM: u64 = 64;

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// An envelope as src/bus/envelope.rs writes it (version 1, big-endian).
fn envelope(opcode: u8, node: u64, stream: u64, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut e = vec![1, opcode, 0];
    e.extend_from_slice(&node.to_be_bytes());
    e.extend_from_slice(&stream.to_be_bytes());
    e.extend_from_slice(&seq.to_be_bytes());
    e.extend_from_slice(&unix_micros().to_be_bytes());
    e.extend_from_slice(payload);
    e
}

/// `PUBLISH channel payload` over a connection of its own; returns the
/// subscribers Redis counted.
fn publish_raw(redis: &RedisServer, channel: &str, payload: &[u8]) -> i64 {
    let mut s = TcpStream::connect(redis.addr()).expect("connect to redis");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut cmd = format!(
        "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n",
        channel.len(),
        payload.len()
    )
    .into_bytes();
    cmd.extend_from_slice(payload);
    cmd.extend_from_slice(b"\r\n");
    s.write_all(&cmd).expect("write PUBLISH");
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .expect("read PUBLISH reply");
    line.trim()
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("PUBLISH {channel}: {line:?}"))
}

/// The texts that reach `ws` until it stays silent for `quiet`.
fn texts_until_quiet(ws: &mut Client, quiet: Duration) -> Vec<String> {
    ws.get_ref().set_read_timeout(Some(quiet)).unwrap();
    let mut texts = Vec::new();
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => texts.push(t.as_str().to_owned()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if is_timeout(&e) => break,
            Err(e) => panic!("after {} texts: {e}", texts.len()),
        }
    }
    ws.get_ref().set_read_timeout(Some(TIMEOUT)).unwrap();
    texts
}

/// A node on `redis` with one client in the lobby, subscribed.
fn lobby_node(redis: &RedisServer, flags: &[&str]) -> (HeraldProcess, Client) {
    let url = redis.url();
    let mut all = vec!["--redis", url.as_str()];
    all.extend_from_slice(flags);
    let herald = node(&all);
    let ws = join(herald.addr, "/");
    redis.wait_subscribers(&channel(BUS_PREFIX, None), 1);
    wait_metric(herald.addr, "herald_bus_up", 1, TIMEOUT);
    (herald, ws)
}

/// A sequence number comes from the bus, not from herald: one numbered 0
/// in a stream that began after the room did must be dropped or counted,
/// never crash the node. `deliver` computes `env.seq - 1` unchecked
/// (src/bus/mod.rs, the `None` arm of the seen lookup).
#[test]
fn an_envelope_numbered_zero_does_not_bring_the_node_down() {
    let redis = RedisServer::start();
    let (mut herald, mut ws) = lobby_node(&redis, &[]);
    let lobby = channel(BUS_PREFIX, None);
    // A stream that began after this node's lobby did (by its clock).
    let later = unix_micros() + 60_000_000;
    assert_eq!(
        publish_raw(&redis, &lobby, &envelope(1, 7, later, 0, b"zero")),
        1
    );
    thread::sleep(Duration::from_millis(300));
    herald.assert_running();
    ping_pong(&mut ws);
    let gaps = metric(herald.addr, "herald_bus_gaps_total");
    assert!(gaps < 1_000, "herald_bus_gaps_total {gaps}: it wrapped");
}

/// A room remembers 64 `(node, stream)` pairs. It must forget the one heard
/// least recently, not the oldest inserted: a long-lived, busy stream (this
/// room's own on a busy node) outlives any number of short-lived ones
/// (other nodes' rooms emptied and made again, each a new stream; ghost
/// maps cleared). Forgotten, its next message would count a false gap, and
/// a copy written again after a reconnect would be delivered twice.
#[test]
fn a_busy_stream_is_remembered_past_sixty_four_others() {
    let redis = RedisServer::start();
    let (herald, mut ws) = lobby_node(&redis, &[]);
    let lobby = channel(BUS_PREFIX, None);
    let later = unix_micros() + 60_000_000;
    // Two long-lived streams, A begun after the room and B before it, each
    // heard again while 64 others are heard once each (twice the memory).
    let (mut a, mut b) = (0, 0);
    let mut sent = 0;
    for n in 0..2 * SEEN_PER_ROOM {
        if n % 8 == 0 {
            a += 1;
            b += 1;
            publish_raw(
                &redis,
                &lobby,
                &envelope(1, 1, later, a, format!("a#{a}").as_bytes()),
            );
            publish_raw(
                &redis,
                &lobby,
                &envelope(1, 2, 1, b, format!("b#{b}").as_bytes()),
            );
            sent += 2;
        }
        publish_raw(&redis, &lobby, &envelope(1, 100 + n, 1, 1, b"once"));
        sent += 1;
    }
    let first = texts_until_quiet(&mut ws, Duration::from_millis(500));
    assert_eq!(first.len(), sent, "{first:?}");
    // A's next message (no gap), then a copy of B's last (as a node writes
    // again what Redis had not answered before a reconnect: a duplicate),
    // then a marker.
    publish_raw(&redis, &lobby, &envelope(1, 1, later, a + 1, b"a#next"));
    publish_raw(
        &redis,
        &lobby,
        &envelope(1, 2, 1, b, format!("b#{b}").as_bytes()),
    );
    publish_raw(&redis, &lobby, &envelope(1, 3, 1, 1, b"end"));
    let then = texts_until_quiet(&mut ws, Duration::from_millis(500));
    let seen = (
        then,
        metric(herald.addr, "herald_bus_gaps_total"),
        metric(herald.addr, "herald_bus_duplicates_total"),
    );
    let want = (vec!["a#next".to_owned(), "end".to_owned()], 0, 1);
    assert_eq!(seen, want, "(delivered, gaps, duplicates)");
}

/// A text message from the bus is delivered as a text frame; one that is
/// not UTF-8 (another version, a foreign publisher) must not be, since a
/// client then fails the connection (RFC 6455 §8.1). herald checks the
/// UTF-8 of every text a client or `/publish` sends, and none of the bus.
#[test]
fn a_text_from_the_bus_that_is_not_utf8_breaks_no_client() {
    let redis = RedisServer::start();
    let (_herald, mut ws) = lobby_node(&redis, &[]);
    let lobby = channel(BUS_PREFIX, None);
    publish_raw(&redis, &lobby, &envelope(1, 9, 1, 1, b"\xff\xfe not utf-8"));
    publish_raw(&redis, &lobby, &envelope(1, 9, 1, 2, b"fine"));
    assert_eq!(recv_text(&mut ws), "fine");
}

/// `--feed`: "when the loop falls behind, the channel fills and the reader
/// waits" (src/feed.rs), so no line is lost. With the bus, `drain_feed`
/// publishes every line the channel holds without looking at the bus's
/// room, and past `--bus-buffer` drops them (counted undelivered, nobody
/// told) while Redis is up but slow to answer: here it pauses for half a
/// second (as in a fork, an fsync, a `CLIENT PAUSE` during failover).
#[test]
fn a_feed_loses_no_line_while_redis_is_slow_to_answer() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut herald = HeraldProcess::builder()
        .env_remove("HERALD_REDIS")
        .flags(&["--redis", &url, "--feed", "-"])
        .stdin_piped()
        .start();
    let mut ws = join(herald.addr, "/");
    redis.wait_subscribers(&channel(BUS_PREFIX, None), 1);
    wait_metric(herald.addr, "herald_bus_up", 1, TIMEOUT);
    let mut stdin = herald.take_stdin();
    // 2 MiB of lines, twice the default --bus-buffer, written while Redis
    // is stopped for a moment.
    let lines: Vec<String> = (0..200)
        .map(|i| format!("feed#{i:03} {}", "x".repeat(10_000)))
        .collect();
    let pid = libc::pid_t::try_from(redis.pid().expect("running")).unwrap();
    // SAFETY: kill(2) on our own redis-server child; no memory involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let writer = {
        let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
        thread::spawn(move || {
            stdin.write_all(input.as_bytes()).expect("write the feed");
            stdin
        })
    };
    let deadline = Instant::now() + TIMEOUT;
    while metric(herald.addr, "herald_feed_lines_total") < 200 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(300));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let _stdin = writer.join().expect("writer");
    let got = texts_until_quiet(&mut ws, Duration::from_secs(2));
    let undelivered = metric(herald.addr, "herald_bus_undelivered_total");
    let short: Vec<&str> = got.iter().map(|t| &t[..8.min(t.len())]).collect();
    assert!(
        got == lines && undelivered == 0,
        "{} of {} feed lines arrived, herald_bus_undelivered_total {undelivered}; \
         first missing: {:?}",
        got.len(),
        lines.len(),
        lines.iter().map(|l| &l[..8]).find(|l| !short.contains(l))
    );
}

/// One publish Redis refuses for good (here `-NOPERM`: an ACL that allows
/// the lobby's channel and not a room's) is kept and written again after
/// every reconnect, and every reconnect is refused again: the bus flaps
/// every ~100 ms forever (the backoff starts over each time it is up),
/// logs two warnings per flap, and `/readyz` flaps with it. A refusal that
/// reconnecting cannot cure should drop that one publish (counted
/// undelivered, its `/publish` answered) and keep the bus up.
#[test]
fn a_publish_redis_refuses_for_good_does_not_flap_the_bus() {
    let redis = RedisServer::start();
    let lobby = channel(BUS_PREFIX, None);
    assert_eq!(
        redis.cli(&[
            "ACL",
            "SETUSER",
            "default",
            "resetchannels",
            &format!("&{lobby}")
        ]),
        "OK"
    );
    let (mut herald, _ws) = lobby_node(&redis, &[]);
    let addr = herald.addr;
    // Its answer may never come: the request is written, not read.
    let mut publish = TcpStream::connect(addr).expect("connect");
    let body = "refused";
    write!(
        publish,
        "POST /publish?room=forbidden HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write the publish");
    thread::sleep(Duration::from_secs(2));
    let reconnects = metric(addr, "herald_bus_reconnects_total");
    let flaps = herald.count_in_log("bus up again");
    let log = herald.log();
    assert!(
        reconnects <= 1 && flaps <= 1,
        "in 2 s: herald_bus_reconnects_total {reconnects}, {flaps} \"bus up again\" warnings; \
         log tail: {:#?}",
        &log[log.len().saturating_sub(4)..]
    );
}

/// A TCP proxy to `backend` that, like a NAT or a load balancer that lost a
/// connection's state, never tells the client its backend went away: the
/// subscription dies without a word, the case the "a publish reached no
/// subscriber" check is for.
fn silent_proxy(backend: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(backend) else {
                continue;
            };
            let (mut from_client, mut to_server) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut from_server, mut to_client) = (server, client);
            thread::spawn(move || {
                let _ = std::io::copy(&mut from_client, &mut to_server);
            });
            thread::spawn(move || {
                let _ = std::io::copy(&mut from_server, &mut to_client);
                // The backend is gone: the client is not told (its socket
                // is never closed from this side).
                std::mem::forget(to_client);
            });
        }
    });
    addr
}

/// "A PUBLISH reaching 0 subscribers in a subscribed room reconnects": it
/// does, but `on_reply` pops the publish's `Sent` entry before returning
/// the error, so its bytes stay in `publisher.out` with no entry: after the
/// reconnect they are written again, Redis's answer to them finds no
/// command ("Redis answered a command never sent"), the bus goes down
/// again, writes them again… forever; `herald_bus_buffered` never returns
/// to 0, and with commands of other lengths behind it `out` is drained
/// mid-command (garbage to Redis).
#[test]
fn a_publish_that_reached_nobody_reconnects_once_and_the_bus_recovers() {
    let redis = RedisServer::start();
    let proxy = silent_proxy(redis.addr());
    let url = format!("redis://{proxy}");
    let mut herald = node(&["--redis", &url]);
    let addr = herald.addr;
    let mut ws = join(addr, "/");
    redis.wait_subscribers(&channel(BUS_PREFIX, None), 1);
    wait_metric(addr, "herald_bus_up", 1, TIMEOUT);
    // The subscription's connection ends at Redis; herald hears nothing.
    assert_eq!(redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]), "1");
    send_text(&mut ws, "m1");
    let got = texts_until_quiet(&mut ws, Duration::from_secs(3));
    let log = herald.log();
    let tail = &log[log.len().saturating_sub(6)..];
    assert_eq!(
        got,
        [format!("{PREFIX}m1")],
        "the sender's own message; log: {tail:#?}"
    );
    // Give the reconnect time to settle, then the bus must stay up.
    thread::sleep(Duration::from_millis(1500));
    let before = metric(addr, "herald_bus_reconnects_total");
    thread::sleep(Duration::from_secs(1));
    let seen = (
        metric(addr, "herald_bus_reconnects_total") - before,
        metric(addr, "herald_bus_buffered_bytes"),
    );
    assert_eq!(
        seen,
        (0, 0),
        "(reconnects in the last second, bytes still buffered); reconnects in all: {}",
        metric(addr, "herald_bus_reconnects_total")
    );
}
