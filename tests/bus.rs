//! The Redis backplane (`--redis URL`): herald nodes (the real binary) on
//! one `redis-server` share their rooms. Every broadcast goes through Redis
//! pub/sub (channel `PREFIX:lobby`, `PREFIX:room:NAME`) and reaches local
//! clients when it comes back, so every client of a room on every node sees
//! the same sequence. A node subscribes to a room's channel while it has
//! members there. While Redis is down the nodes keep their clients, answer
//! `/readyz` and `POST /publish` with 503, hold clients' messages in a
//! bounded buffer (`--bus-buffer`) and publish them, in order, once Redis is
//! back; past the buffer the sender is told. `CLIENT KILL TYPE pubsub` is
//! noticed and the subscriptions made again.
//!
//! Each test starts its own `redis-server` (tests/common/redis.rs); the
//! first two check that harness alone.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::bus::{
    all_hear_nothing, assert_same_sequence, channel, get, join, node, numbered, ping_pong, post,
    room_path, send_on_thread, split_all, wait_metric, wait_status, Readers, BACK_WITHIN, NOTICE,
    TOKEN,
};
use common::proxy::Proxy;
use common::redis::process_exists;
use common::{
    close_politely, eventually, metric, recv_text, send_text, Client, HeraldProcess, RedisServer,
    PREFIX, TIMEOUT,
};

/// How long clients must stay silent where nothing may arrive.
const QUIET: Duration = Duration::from_millis(300);

#[test]
fn the_redis_harness_starts_kills_and_restarts_on_the_same_port() {
    let mut redis = RedisServer::start();
    assert_eq!(redis.cli(&["PING"]), "PONG");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    // It works in its own temporary directory, never in the repository.
    let dir = redis.dir().to_owned();
    assert_eq!(
        redis.cli(&["CONFIG", "GET", "dir"]),
        format!("dir\n{}", dir.display())
    );
    let (port, pid) = (redis.port(), redis.pid().expect("running"));
    redis.kill9();
    assert!(!process_exists(pid), "redis-server {pid} survived kill9");
    assert!(
        TcpStream::connect(redis.addr()).is_err(),
        "port {port} still answers"
    );
    redis.restart();
    assert_eq!(redis.port(), port);
    assert_eq!(redis.cli(&["PING"]), "PONG");
    let pid = redis.pid().expect("running again");
    drop(redis);
    assert!(
        !process_exists(pid),
        "redis-server {pid} outlived its RedisServer"
    );
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[test]
fn a_stopped_redis_keeps_its_port_until_started() {
    let mut redis = RedisServer::stopped();
    assert!(redis.pid().is_none());
    assert!(TcpStream::connect(redis.addr()).is_err());
    redis.restart();
    assert_eq!(redis.cli(&["PING"]), "PONG");
}

/// `n` herald nodes on `redis` with `extra` flags; the last one gets the
/// URL from `HERALD_REDIS` instead of `--redis`.
fn nodes(redis: &RedisServer, n: usize, extra: &[&str]) -> Vec<HeraldProcess> {
    let url = redis.url();
    let mut nodes: Vec<HeraldProcess> = (1..n)
        .map(|_| node(&[&["--redis", url.as_str()], extra].concat()))
        .collect();
    nodes.push(
        HeraldProcess::builder()
            .env("HERALD_REDIS", &url)
            .flags(&["--publish-token", TOKEN])
            .flags(extra)
            .start(),
    );
    nodes
}

/// Clients of `room` (`None`: the lobby), `per_node` on each of `addrs`,
/// grouped by node.
fn members(addrs: &[SocketAddr], room: Option<&str>, per_node: usize) -> Vec<Client> {
    let path = room_path(room);
    addrs
        .iter()
        .flat_map(|&a| (0..per_node).map(move |_| a))
        .map(|a| join(a, &path))
        .collect()
}

#[test]
fn three_nodes_deliver_each_room_in_one_order_to_every_member_and_nothing_across_rooms() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 3, &[]);
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    // (room, members per node, messages per publishing member)
    let rooms: [(Option<&str>, usize, usize); 3] =
        [(Some("a"), 2, 100), (Some("b"), 1, 50), (None, 1, 50)];
    const POSTS: usize = 20;

    let mut joined: Vec<Vec<Client>> = rooms
        .iter()
        .map(|&(room, per_node, _)| members(&addrs, room, per_node))
        .collect();
    for &(room, _, _) in &rooms {
        redis.wait_subscribers(&channel("herald", room), 3);
    }

    // The first member on each node publishes; so does a backend, on node 0, into room a.
    let posts: Vec<String> = (0..POSTS).map(|seq| format!("a/post#{seq}")).collect();
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    let mut sent_per_room = Vec::new();
    let mut published = vec![0usize; nodes.len()];
    let mut sent_bytes = vec![0usize; nodes.len()];
    for (r, &(room, per_node, per_publisher)) in rooms.iter().enumerate() {
        let (writers, clients) = split_all(std::mem::take(&mut joined[r]));
        let name = room.unwrap_or("lobby");
        let mut sent = Vec::new();
        for (n, writer) in writers.into_iter().step_by(per_node).enumerate() {
            let (texts, received) = numbered(&format!("{name}/node{n}"), per_publisher);
            published[n] += texts.len();
            sent_bytes[n] += texts.iter().map(String::len).sum::<usize>();
            senders.push((writer, texts));
            sent.push(received);
        }
        if room == Some("a") {
            sent.push(posts.clone());
            published[0] += posts.len();
        }
        let total = sent.iter().map(Vec::len).sum();
        readers.push(Readers::spawn(clients, total));
        sent_per_room.push(sent);
    }
    let senders: Vec<_> = senders
        .into_iter()
        .map(|(w, texts)| send_on_thread(w, texts))
        .collect();
    for body in &posts {
        let r = post(addrs[0], Some("a"), body);
        assert_eq!(r.status, 202, "publish {body:?}: {r:?}");
        sent_bytes[0] += body.len();
    }
    let _writers: Vec<Client> = senders
        .into_iter()
        .map(|s| s.join().expect("sender panicked"))
        .collect();

    let mut everyone = Vec::new();
    for ((room, _, _), (readers, sent)) in rooms.iter().zip(readers.into_iter().zip(&sent_per_room))
    {
        let (clients, received) = readers.join();
        assert_same_sequence(room.unwrap_or("lobby"), &received, sent);
        everyone.extend(clients);
    }
    all_hear_nothing(&mut everyone, QUIET);

    let total: usize = published.iter().sum();
    let payload_bytes: usize = sent_bytes.iter().sum();
    for (n, &addr) in addrs.iter().enumerate() {
        assert_eq!(metric(addr, "herald_bus_up"), 1, "node {n}");
        assert_eq!(
            metric(addr, "herald_bus_publishes_total"),
            published[n] as u64,
            "node {n}: one publish per broadcast"
        );
        // Every node is subscribed to all three channels.
        wait_metric(addr, "herald_bus_received_total", total as u64, TIMEOUT);
        assert!(
            metric(addr, "herald_bus_sent_bytes_total") >= sent_bytes[n] as u64,
            "node {n}: sent bytes below its payloads'"
        );
        assert!(
            metric(addr, "herald_bus_received_bytes_total") >= payload_bytes as u64,
            "node {n}: received bytes below the payloads'"
        );
        assert_eq!(metric(addr, "herald_bus_gaps_total"), 0, "node {n}");
        assert_eq!(metric(addr, "herald_bus_undelivered_total"), 0, "node {n}");
        assert!(
            metric(addr, "herald_bus_echo_seconds_count") > 0,
            "node {n}: no echo latency observed"
        );
    }
}

#[test]
fn redis_killed_mid_run_keeps_clients_answers_503_and_publishes_the_held_messages_after_restart() {
    let mut redis = RedisServer::start();
    let nodes = nodes(&redis, 2, &[]);
    let (a, b) = (nodes[0].addr, nodes[1].addr);
    let ch = channel("herald", Some("k"));
    let mut clients = vec![
        join(a, "/rooms/k"),
        join(a, "/rooms/k"),
        join(b, "/rooms/k"),
    ];
    redis.wait_subscribers(&ch, 2);
    send_text(&mut clients[0], "before");
    for ws in &mut clients {
        assert_eq!(recv_text(ws), format!("{PREFIX}before"));
    }
    let reconnects: Vec<u64> = [a, b]
        .iter()
        .map(|&n| metric(n, "herald_bus_reconnects_total"))
        .collect();

    redis.kill9();
    for addr in [a, b] {
        wait_status(addr, "/readyz", 503, TIMEOUT);
        assert_eq!(
            get(addr, "/healthz").status,
            200,
            "{addr}: /healthz with the bus down"
        );
        assert_eq!(metric(addr, "herald_bus_up"), 0, "{addr}");
        let r = post(addr, Some("k"), "while down");
        assert_eq!(r.status, 503, "{addr}: {r:?}");
        assert_eq!(r.text().trim_end(), "bus unavailable", "{addr}");
    }
    // Nobody was disconnected, and nothing arrives.
    for ws in &mut clients {
        assert_eq!(ping_pong(ws), Vec::<String>::new());
    }
    // Held: sent while Redis is down; the pong after them says herald read them.
    let (held_a, want_a) = numbered("held/a", 5);
    let (held_b, want_b) = numbered("held/b", 5);
    for (i, texts) in [(0, &held_a), (2, &held_b)] {
        for t in texts {
            send_text(&mut clients[i], t);
        }
        assert_eq!(
            ping_pong(&mut clients[i]),
            Vec::<String>::new(),
            "client {i}"
        );
    }

    // Each node publishes what it holds once it has subscribed again. Redis
    // pub/sub keeps nothing: a node that subscribes again after the other
    // flushed misses those messages, and counts them as a gap when that
    // node's next message arrives. So its own node's held messages reach
    // every client, in order; the other's arrive in order or are counted.
    redis.restart();
    let back = Instant::now();
    for addr in [a, b] {
        let left = BACK_WITHIN.saturating_sub(back.elapsed());
        wait_status(addr, "/readyz", 200, left);
        wait_metric(
            addr,
            "herald_bus_up",
            1,
            BACK_WITHIN.saturating_sub(back.elapsed()),
        );
    }
    redis.wait_subscribers(&ch, 2);
    // One more from each node: the end of what to read, and what shows a
    // gap in the other's sequence.
    send_text(&mut clients[0], "after/a");
    send_text(&mut clients[2], "after/b");
    let ends = [format!("{PREFIX}after/a"), format!("{PREFIX}after/b")];
    let mut seen: Vec<Vec<String>> = Vec::new();
    for ws in &mut clients {
        let mut got = Vec::new();
        while !ends.iter().all(|e| got.contains(e)) {
            got.push(recv_text(ws));
        }
        seen.push(got);
    }
    assert_eq!(seen[0], seen[1], "two clients of one node, two orders");
    let node_of = [0, 0, 1];
    let held = [&want_a, &want_b];
    let mut missed = [0u64; 2];
    for (c, got) in seen.iter().enumerate() {
        let own = node_of[c];
        for (from, texts) in held.iter().enumerate() {
            let arrived: Vec<&String> = got.iter().filter(|t| texts.contains(t)).collect();
            let in_order: Vec<&String> = texts.iter().filter(|t| arrived.contains(t)).collect();
            assert_eq!(
                arrived, in_order,
                "client {c}: node {from}'s held messages out of order"
            );
            if from == own {
                assert_eq!(
                    arrived.len(),
                    texts.len(),
                    "client {c}: its own node's held messages lost"
                );
            } else {
                missed[own] = (texts.len() - arrived.len()) as u64;
            }
        }
    }
    for (n, addr) in [a, b].into_iter().enumerate() {
        assert_eq!(
            metric(addr, "herald_bus_gaps_total"),
            missed[n],
            "{addr}: the other node's held messages it missed are its gaps"
        );
        assert!(
            metric(addr, "herald_bus_reconnects_total") > reconnects[n],
            "{addr}: no reconnect counted"
        );
    }
}

#[test]
fn past_the_bus_buffer_the_sender_is_told_its_message_was_not_delivered() {
    let mut redis = RedisServer::start();
    let herald = node(&["--redis", &redis.url(), "--bus-buffer", "256"]);
    let addr = herald.addr;
    let mut sender = join(addr, "/");
    let mut other = join(addr, "/");
    redis.wait_subscribers(&channel("herald", None), 1);

    redis.kill9();
    wait_status(addr, "/readyz", 503, TIMEOUT);
    // Ten 100-byte messages into a 256-byte buffer: the first fit, the rest do not.
    let texts: Vec<String> = (0..10)
        .map(|i| format!("{i:02}{}", "x".repeat(98)))
        .collect();
    for t in &texts {
        send_text(&mut sender, t);
    }
    // herald decides when it reads each message: by the pong, every
    // refusal is counted, though a notice may come after the pong.
    let mut notices = ping_pong(&mut sender);
    let refused = metric(addr, "herald_bus_undelivered_total") as usize;
    while notices.len() < refused {
        notices.push(recv_text(&mut sender));
    }
    assert!(
        notices.iter().all(|n| n == NOTICE),
        "the sender got {notices:?}"
    );
    assert!(
        (1..texts.len()).contains(&refused),
        "{refused} of 10 messages refused with a 256-byte buffer"
    );
    assert_eq!(ping_pong(&mut other), Vec::<String>::new());

    // What fitted is published once Redis is back: the first messages, in order.
    redis.restart();
    wait_status(addr, "/readyz", 200, BACK_WITHIN);
    let kept = texts.len() - refused;
    for ws in [&mut sender, &mut other] {
        for t in &texts[..kept] {
            assert_eq!(recv_text(ws), format!("{PREFIX}{t}"));
        }
    }
    all_hear_nothing(&mut [sender, other], QUIET);
}

#[test]
fn killed_subscriptions_are_noticed_and_made_again() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 2, &[]);
    let (a, b) = (nodes[0].addr, nodes[1].addr);
    let ch = channel("herald", Some("p"));
    let mut clients = [join(a, "/rooms/p"), join(b, "/rooms/p")];
    redis.wait_subscribers(&ch, 2);
    let before: Vec<u64> = [a, b]
        .iter()
        .map(|&n| metric(n, "herald_bus_reconnects_total"))
        .collect();

    let killed: usize = redis
        .cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .parse()
        .expect("CLIENT KILL answers a count");
    assert!(killed >= 2, "{killed} pub/sub connections killed");
    redis.wait_subscribers(&ch, 2);
    assert!(redis.channels().contains(&ch), "{:?}", redis.channels());
    for (n, addr) in [a, b].into_iter().enumerate() {
        eventually(TIMEOUT, &format!("{addr} counts a reconnect"), || {
            (metric(addr, "herald_bus_reconnects_total") > before[n]).then_some(())
        });
        wait_metric(addr, "herald_bus_up", 1, TIMEOUT);
    }
    send_text(&mut clients[0], "flows again");
    for ws in &mut clients {
        assert_eq!(recv_text(ws), format!("{PREFIX}flows again"));
    }
}

#[test]
fn subscriptions_follow_the_rooms_and_the_prefix_names_the_channels() {
    let redis = RedisServer::start();
    let plain = node(&["--redis", &redis.url()]);
    let custom = node(&["--redis", &redis.url(), "--redis-prefix", "custom"]);
    let (x, lobby) = (channel("herald", Some("x")), channel("herald", None));
    let subscribed = |ch: &str, want: bool| {
        eventually(TIMEOUT, &format!("{ch} subscribed: {want}"), || {
            (redis.channels().iter().any(|c| c == ch) == want).then_some(())
        });
    };

    let member = join(plain.addr, "/rooms/x");
    subscribed(&x, true);
    let _in_lobby = join(plain.addr, "/");
    subscribed(&lobby, true);
    close_politely(member);
    subscribed(&x, false);
    assert!(
        redis.channels().contains(&lobby),
        "the lobby still has a member"
    );

    // Another prefix, other channels: the same room name on both nodes is two rooms.
    let mut elsewhere = join(custom.addr, "/rooms/x");
    subscribed(&channel("custom", Some("x")), true);
    let mut here = join(plain.addr, "/rooms/x");
    subscribed(&x, true);
    send_text(&mut elsewhere, "custom only");
    assert_eq!(recv_text(&mut elsewhere), format!("{PREFIX}custom only"));
    all_hear_nothing(std::slice::from_mut(&mut here), QUIET);
}

#[test]
fn a_node_started_with_redis_down_serves_and_joins_the_bus_when_redis_comes() {
    let mut redis = RedisServer::stopped();
    let herald = node(&["--redis", &redis.url()]);
    let addr = herald.addr;
    assert_eq!(get(addr, "/healthz").status, 200);
    assert_eq!(get(addr, "/readyz").status, 503);
    assert_eq!(metric(addr, "herald_bus_up"), 0);
    let mut ws = join(addr, "/rooms/s");
    assert_eq!(ping_pong(&mut ws), Vec::<String>::new());

    redis.restart();
    wait_status(addr, "/readyz", 200, BACK_WITHIN);
    redis.wait_subscribers(&channel("herald", Some("s")), 1);
    send_text(&mut ws, "hello");
    assert_eq!(recv_text(&mut ws), format!("{PREFIX}hello"));
}

#[test]
fn without_redis_readyz_is_200() {
    let herald = HeraldProcess::builder().env_remove("HERALD_REDIS").start();
    assert_eq!(get(herald.addr, "/readyz").status, 200);
    assert_eq!(get(herald.addr, "/healthz").status, 200);
}

/// The subscription socket of the one herald node behind `proxy`.
fn subscription(proxy: &Proxy) -> usize {
    let subs = proxy.connections_saying(b"-sub");
    assert_eq!(subs.len(), 1, "one subscription connection expected");
    subs[0]
}

/// One node on Redis through a proxy, two clients in `room`, subscribed:
/// what a quiet failure of the wire needs.
struct Proxied {
    redis: RedisServer,
    proxy: Proxy,
    herald: HeraldProcess,
    channel: String,
    clients: [Client; 2],
    /// The node's reconnects so far.
    reconnects: u64,
}

impl Proxied {
    fn start(room: &str) -> Self {
        let redis = RedisServer::start();
        let proxy = Proxy::start(redis.addr());
        let herald = node(&["--redis", &proxy.url()]);
        let channel = channel("herald", Some(room));
        let path = format!("/rooms/{room}");
        let clients = [join(herald.addr, &path), join(herald.addr, &path)];
        redis.wait_subscribers(&channel, 1);
        let reconnects = metric(herald.addr, "herald_bus_reconnects_total");
        Proxied {
            redis,
            proxy,
            herald,
            channel,
            clients,
            reconnects,
        }
    }
}

#[test]
fn a_subscription_lost_silently_is_noticed_by_a_publish_that_reached_nobody() {
    let mut p = Proxied::start("q");

    // Redis loses the subscription; herald's end of it stays open and quiet.
    p.proxy.cut_upstream(subscription(&p.proxy));
    p.redis.wait_subscribers(&p.channel, 0);
    let sent = Instant::now();
    send_text(&mut p.clients[0], "nobody heard this");
    // Its PUBLISH reached nobody: herald reconnects at once (not after its
    // PING goes unanswered, 3 s later) and publishes it again.
    for ws in &mut p.clients {
        assert_eq!(recv_text(ws), format!("{PREFIX}nobody heard this"));
    }
    assert!(
        sent.elapsed() < Duration::from_millis(1500),
        "took {:?}: noticed by the PING, not by the publish",
        sent.elapsed()
    );
    assert!(metric(p.herald.addr, "herald_bus_reconnects_total") > p.reconnects);
    assert_eq!(metric(p.herald.addr, "herald_bus_gaps_total"), 0);
}

#[test]
fn a_subscription_gone_quiet_is_noticed_by_its_ping_and_what_it_missed_is_counted() {
    let mut p = Proxied::start("s");

    // The subscription carries nothing more, both ends open: Redis still
    // counts it, so a publish reaches it and is lost on the wire.
    p.proxy.freeze(subscription(&p.proxy));
    send_text(&mut p.clients[0], "lost on the wire");
    eventually(
        Duration::from_secs(8),
        "a reconnect after the PING went unanswered",
        || (metric(p.herald.addr, "herald_bus_reconnects_total") > p.reconnects).then_some(()),
    );
    p.redis.wait_subscribers(&p.channel, 2);
    send_text(&mut p.clients[0], "after");
    for ws in &mut p.clients {
        assert_eq!(recv_text(ws), format!("{PREFIX}after"));
    }
    // The lost message is a gap in this node's own sequence, never silent.
    assert_eq!(metric(p.herald.addr, "herald_bus_gaps_total"), 1);
}
