//! The Redis backplane on a Redis Cluster (`--redis-cluster`): sharded
//! pub/sub (`SPUBLISH`/`SSUBSCRIBE`), each room's channel served by the
//! master of its hash slot. Two herald nodes, ten rooms whose channels
//! spread over the three masters, messages from both nodes: every member
//! of a room receives the same sequence, nothing lost, nothing across rooms.
//!
//! The first test checks the cluster harness (tests/common/redis.rs) alone.
//!
//! Then the cluster's topology changes under herald: a room's slot moves to
//! another master (with nothing sent meanwhile, and with messages sent
//! throughout), a seed is down when herald starts, and a master is lost
//! (the cluster is down) and comes back.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::bus::{
    all_hear_nothing, assert_same_sequence, channel, get, join, node, numbered, ping_pong, post,
    send_on_thread, split_all, wait_metric, wait_status, Readers, NOTICE,
};
use common::redis::process_exists;
use common::{
    assert_each_receives, eventually, metric, recv_text, send_text, Client, HeraldProcess,
    RedisCluster, RedisServer, PREFIX, TIMEOUT,
};

/// How soon after a slot moved both nodes must have noticed it and be back:
/// the shard tells its subscribers at once, the first retry is at most
/// 100 ms later.
const MOVE_NOTICED: Duration = Duration::from_secs(5);

/// The longest retry delay of the bus (`BACKOFF_MAX` in src/bus/mod.rs),
/// which a long outage reaches.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[test]
fn the_cluster_harness_starts_three_masters_and_kills_them_all() {
    let cluster = RedisCluster::start(3);
    assert_eq!(cluster.nodes().len(), 3);
    for (i, node) in cluster.nodes().iter().enumerate() {
        let info = cluster.cli(i, &["CLUSTER", "INFO"]);
        assert!(info.contains("cluster_state:ok"), "node {i}: {info}");
        assert!(info.contains("cluster_known_nodes:3"), "node {i}: {info}");
        assert!(node.dir().exists());
    }
    // A shard channel's message is routed to its slot's master; nobody listens.
    let receivers = cluster.cli(0, &["SPUBLISH", "herald:room:probe", "hello"]);
    assert_eq!(
        receivers.parse::<u64>(),
        Ok(0),
        "SPUBLISH answered {receivers:?}"
    );
    let masters: BTreeSet<usize> = (0..10)
        .map(|i| cluster.master_of(&format!("herald:room:r{i}")))
        .collect();
    assert!(
        masters.len() > 1,
        "the test rooms' channels all on one master"
    );

    let pids = cluster.pids();
    let dirs: Vec<_> = cluster.nodes().iter().map(|n| n.dir().to_owned()).collect();
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|&p| process_exists(p)));
    drop(cluster);
    for pid in pids {
        assert!(
            !process_exists(pid),
            "redis-server {pid} outlived its cluster"
        );
    }
    for dir in dirs {
        assert!(!dir.exists(), "{} was not removed", dir.display());
    }
}

#[test]
fn two_nodes_on_a_cluster_deliver_ten_rooms_in_one_order_each() {
    const ROOMS: usize = 10;
    const PER_PUBLISHER: usize = 30;
    let cluster = RedisCluster::start(3);
    // Both forms of the flag: redis:// URLs and bare HOST:PORT.
    let nodes = [
        node(&["--redis-cluster", &cluster.urls()]),
        node(&["--redis-cluster", &cluster.addrs()]),
    ];
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let names: Vec<String> = (0..ROOMS).map(|i| format!("r{i}")).collect();

    // Room i: a member on each node, and a second one on node i % 2.
    let mut joined: Vec<Vec<Client>> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let path = format!("/rooms/{name}");
            vec![
                join(addrs[0], &path),
                join(addrs[1], &path),
                join(addrs[i % 2], &path),
            ]
        })
        .collect();
    for name in &names {
        cluster.wait_shard_subscribers(&channel("herald", Some(name)), 2);
    }

    // The members on node 0 and node 1 (the first two) publish.
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    let mut sent_per_room = Vec::new();
    for (r, name) in names.iter().enumerate() {
        let (writers, clients) = split_all(std::mem::take(&mut joined[r]));
        let mut sent = Vec::new();
        for (n, writer) in writers.into_iter().take(2).enumerate() {
            let (texts, received) = numbered(&format!("{name}/node{n}"), PER_PUBLISHER);
            sent.push(received);
            senders.push(send_on_thread(writer, texts));
        }
        readers.push(Readers::spawn(clients, 2 * PER_PUBLISHER));
        sent_per_room.push(sent);
    }
    let _writers: Vec<Client> = senders
        .into_iter()
        .map(|s| s.join().expect("sender panicked"))
        .collect();
    let mut everyone = Vec::new();
    for ((name, readers), sent) in names.iter().zip(readers).zip(&sent_per_room) {
        let (clients, received) = readers.join();
        assert_same_sequence(name, &received, sent);
        everyone.extend(clients);
    }
    all_hear_nothing(&mut everyone, std::time::Duration::from_millis(300));

    // The rooms' shard channels are spread over the masters.
    let mut found = BTreeSet::new();
    let mut masters_used = 0;
    for m in 0..cluster.nodes().len() {
        let here = cluster.shard_channels(m);
        masters_used += usize::from(!here.is_empty());
        found.extend(here);
    }
    let want: BTreeSet<String> = names.iter().map(|n| channel("herald", Some(n))).collect();
    assert_eq!(found, want, "PUBSUB SHARDCHANNELS over the masters");
    assert!(masters_used > 1, "every room's channel on one master");
}

/// Two herald nodes on `cluster`, each given every master as a seed.
fn two_nodes(cluster: &RedisCluster) -> [HeraldProcess; 2] {
    [
        node(&["--redis-cluster", &cluster.addrs()]),
        node(&["--redis-cluster", &cluster.addrs()]),
    ]
}

/// `per_node` members of `room` on each of `addrs` (those of `addrs[0]`
/// first), each split into a writer and a reader: returns the writers of
/// the first member on each node (one sender per node) and every reader.
fn members(addrs: &[SocketAddr], room: &str, per_node: usize) -> (Vec<Client>, Vec<Client>) {
    let path = format!("/rooms/{room}");
    let all = addrs
        .iter()
        .flat_map(|&a| (0..per_node).map(move |_| a))
        .map(|a| join(a, &path))
        .collect();
    let (writers, readers) = split_all(all);
    let senders = writers.into_iter().step_by(per_node).collect();
    (senders, readers)
}

/// Waits (at most [`MOVE_NOTICED`]) until each of `addrs` has counted a
/// reconnect more than `before` says, and answers `/readyz` 200.
fn wait_reconnected(addrs: &[SocketAddr], before: &[u64]) {
    let start = Instant::now();
    for (&addr, &n) in addrs.iter().zip(before) {
        eventually(
            MOVE_NOTICED,
            &format!("{addr}: a reconnect counted after the slot moved"),
            || (metric(addr, "herald_bus_reconnects_total") > n).then_some(()),
        );
        let left = MOVE_NOTICED.saturating_sub(start.elapsed());
        wait_status(addr, "/readyz", 200, left.max(Duration::from_millis(100)));
    }
}

#[test]
fn a_slot_moved_to_another_master_takes_the_room_with_it() {
    const PER_SENDER: usize = 20;
    let cluster = RedisCluster::start(3);
    let mut nodes = two_nodes(&cluster);
    let addrs = [nodes[0].addr, nodes[1].addr];
    let ch = channel("herald", Some("moving"));
    let from = cluster.master_of(&ch);
    let to = (from + 1) % cluster.nodes().len();
    // Two members on each node; the first on each node sends.
    let (mut writers, mut readers) = members(&addrs, "moving", 2);
    cluster.wait_shard_subscribers(&ch, 2);
    send_text(&mut writers[0], "before");
    assert_each_receives(&mut readers, &[format!("{PREFIX}before")]);
    let reconnects: Vec<u64> = addrs
        .iter()
        .map(|&a| metric(a, "herald_bus_reconnects_total"))
        .collect();

    cluster.move_slot(cluster.keyslot(&ch), to);
    assert_eq!(cluster.master_of(&ch), to, "the slot did not move");
    // The old master dropped both nodes' subscriptions (nothing was
    // published meanwhile to meet a MOVED); each takes its bus down, reads
    // the new map and subscribes on the new master.
    for herald in &mut nodes {
        herald.expect_line("the bus down for the dropped subscription", |l| {
            l.contains("bus down") && l.contains(&format!("dropped the subscription to {ch}"))
        });
    }
    wait_reconnected(&addrs, &reconnects);
    cluster.wait_shard_subscribers(&ch, 2);
    assert!(
        cluster.shard_channels(to).contains(&ch),
        "PUBSUB SHARDCHANNELS on the new master: {:?}",
        cluster.shard_channels(to)
    );
    assert!(
        !cluster.shard_channels(from).contains(&ch),
        "the old master still has {ch}: {:?}",
        cluster.shard_channels(from)
    );

    // After readiness: everything, in one order, on both nodes.
    let (texts0, want0) = numbered("moving/node0", PER_SENDER);
    let (texts1, want1) = numbered("moving/node1", PER_SENDER);
    let reading = Readers::spawn(readers, 2 * PER_SENDER);
    let senders: Vec<_> = writers
        .into_iter()
        .zip([texts0, texts1])
        .map(|(w, texts)| send_on_thread(w, texts))
        .collect();
    let _writers: Vec<Client> = senders
        .into_iter()
        .map(|s| s.join().expect("sender panicked"))
        .collect();
    let (mut readers, received) = reading.join();
    assert_same_sequence("moving", &received, &[want0, want1]);
    all_hear_nothing(&mut readers, Duration::from_millis(200));
    // Nothing was in flight while the slot moved: nothing may be missing.
    for addr in addrs {
        assert_eq!(metric(addr, "herald_bus_gaps_total"), 0, "{addr}");
        assert_eq!(metric(addr, "herald_bus_up"), 1, "{addr}");
    }
}

/// A client that sends `TAG#0`, `TAG#1`, … every `every` until `stop`;
/// the thread returns it and how many it sent.
fn send_until(
    mut writer: Client,
    tag: String,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<(Client, usize)> {
    thread::spawn(move || {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            send_text(&mut writer, &format!("{tag}#{n}"));
            n += 1;
            thread::sleep(every);
        }
        (writer, n)
    })
}

/// Reads texts on a thread until every one of `ends` has arrived.
fn read_until_all(mut reader: Client, ends: Vec<String>) -> JoinHandle<Vec<String>> {
    thread::spawn(move || {
        let mut got: Vec<String> = Vec::new();
        while !ends.iter().all(|e| got.contains(e)) {
            got.push(recv_text(&mut reader));
        }
        got
    })
}

#[test]
fn messages_sent_while_a_slot_moves_arrive_once_in_order_or_are_counted_as_gaps() {
    let cluster = RedisCluster::start(3);
    let nodes = two_nodes(&cluster);
    let addrs = [nodes[0].addr, nodes[1].addr];
    let ch = channel("herald", Some("busy"));
    let to = (cluster.master_of(&ch) + 1) % cluster.nodes().len();
    // Two members on each node; the first on each node sends.
    let (writers, readers) = members(&addrs, "busy", 2);
    cluster.wait_shard_subscribers(&ch, 2);
    let tags = ["busy/node0", "busy/node1"];
    let ends: Vec<String> = tags.iter().map(|t| format!("{PREFIX}{t}#end")).collect();
    let reading: Vec<_> = readers
        .into_iter()
        .map(|r| read_until_all(r, ends.clone()))
        .collect();
    let reconnects: Vec<u64> = addrs
        .iter()
        .map(|&a| metric(a, "herald_bus_reconnects_total"))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let every = Duration::from_millis(3);
    let senders: Vec<_> = writers
        .into_iter()
        .zip(tags)
        .map(|(w, tag)| send_until(w, tag.to_owned(), every, stop.clone()))
        .collect();
    thread::sleep(Duration::from_millis(300));
    cluster.move_slot(cluster.keyslot(&ch), to);
    wait_reconnected(&addrs, &reconnects);
    cluster.wait_shard_subscribers(&ch, 2);
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    let mut kept = Vec::new();
    for (s, tag) in senders.into_iter().zip(tags) {
        let (mut writer, n) = s.join().expect("sender panicked");
        // The last, after both nodes are subscribed on the new master: it
        // reaches everyone, and shows a gap in what came before it.
        send_text(&mut writer, &format!("{tag}#end"));
        sent.push(n);
        kept.push(writer);
    }
    let received: Vec<Vec<String>> = reading
        .into_iter()
        .map(|r| r.join().expect("a reader failed (see its panic above)"))
        .collect();

    // Each member: every sender's messages once, in its order; what is
    // missing is counted once for its node.
    let node_of = [0, 0, 1, 1];
    let mut missing = [None::<[u64; 2]>; 2];
    for (m, got) in received.iter().enumerate() {
        let mut next = [0usize; 2];
        let mut lost = [0u64; 2];
        for t in got {
            assert_ne!(t, NOTICE, "member {m}: a message refused");
            let body = t
                .strip_prefix(PREFIX)
                .unwrap_or_else(|| panic!("member {m}: {t:?} lacks the prefix"));
            let (tag, seq) = body
                .split_once('#')
                .unwrap_or_else(|| panic!("member {m}: unexpected {t:?}"));
            let s = tags
                .iter()
                .position(|&x| x == tag)
                .unwrap_or_else(|| panic!("member {m}: unexpected {t:?}"));
            let seq = if seq == "end" {
                sent[s]
            } else {
                seq.parse::<usize>()
                    .unwrap_or_else(|_| panic!("member {m}: unexpected {t:?}"))
            };
            assert!(
                seq >= next[s],
                "member {m}: {t:?} again or out of order (after #{})",
                next[s] as i64 - 1
            );
            lost[s] += (seq - next[s]) as u64;
            next[s] = seq + 1;
        }
        let unique: HashSet<&String> = got.iter().collect();
        assert_eq!(unique.len(), got.len(), "member {m}: a duplicate");
        let n = node_of[m];
        match missing[n] {
            None => missing[n] = Some(lost),
            Some(l) => assert_eq!(l, lost, "members of node {n} missed different messages"),
        }
        if m % 2 == 0 {
            assert_eq!(received[m], received[m + 1], "node {n}'s members differ");
        }
    }
    for (n, addr) in addrs.into_iter().enumerate() {
        let gaps = metric(addr, "herald_bus_gaps_total");
        let missed = missing[n].expect("members on every node");
        eprintln!(
            "node {n}: sent {sent:?}, its members missed {missed:?}, gaps {gaps}, \
             duplicates dropped {}",
            metric(addr, "herald_bus_duplicates_total")
        );
        assert_eq!(
            gaps,
            missed.iter().sum::<u64>(),
            "{addr}: what its members missed is not what it counted as gaps"
        );
    }
    drop(kept);
}

#[test]
fn a_seed_that_is_down_is_passed_over_for_the_next() {
    let cluster = RedisCluster::start(3);
    let dead = RedisServer::stopped();
    let seeds = format!("{},{}", dead.addr(), cluster.nodes()[1].addr());
    let n = node(&["--redis-cluster", &seeds]);
    wait_status(n.addr, "/readyz", 200, MOVE_NOTICED);
    assert_eq!(metric(n.addr, "herald_bus_up"), 1);
    // The map came whole from the live seed: a room on another master works.
    let room = (0..32)
        .map(|i| format!("s{i}"))
        .find(|r| cluster.master_of(&channel("herald", Some(r))) != 1)
        .expect("a room off the seed's master");
    let path = format!("/rooms/{room}");
    let mut clients = vec![join(n.addr, &path), join(n.addr, &path)];
    cluster.wait_shard_subscribers(&channel("herald", Some(&room)), 1);
    send_text(&mut clients[0], "hello");
    assert_each_receives(&mut clients, &[format!("{PREFIX}hello")]);
}

#[test]
fn a_master_lost_takes_the_bus_down_and_its_return_brings_it_back() {
    const PER_SENDER: usize = 5;
    // A short node timeout: the cluster is down, and up again, in seconds.
    let mut cluster = RedisCluster::start_with_node_timeout(3, Duration::from_millis(1000));
    let mut nodes = two_nodes(&cluster);
    let addrs = [nodes[0].addr, nodes[1].addr];
    let lost = channel("herald", Some("lost"));
    let victim = cluster.master_of(&lost);
    let kept_room = (0..32)
        .map(|i| format!("kept{i}"))
        .find(|r| cluster.master_of(&channel("herald", Some(r))) != victim)
        .expect("a room on another master");
    let kept = channel("herald", Some(&kept_room));
    let rooms = ["lost", kept_room.as_str()];
    // One member of each room on each node.
    let mut clients: Vec<Vec<Client>> = rooms
        .iter()
        .map(|r| {
            addrs
                .iter()
                .map(|&a| join(a, &format!("/rooms/{r}")))
                .collect()
        })
        .collect();
    for ch in [&lost, &kept] {
        cluster.wait_shard_subscribers(ch, 2);
    }

    cluster.node_mut(victim).kill9();
    for addr in addrs {
        wait_status(addr, "/readyz", 503, TIMEOUT);
    }
    // The survivors declare it failed: its slots are lost, the cluster down.
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    for &s in &survivors {
        cluster.wait_state(s, "fail", TIMEOUT);
    }
    for (addr, herald) in addrs.into_iter().zip(&mut nodes) {
        herald.assert_running();
        assert_eq!(get(addr, "/readyz").status, 503, "{addr}: /readyz");
        assert_eq!(get(addr, "/healthz").status, 200, "{addr}: /healthz");
        assert_eq!(metric(addr, "herald_bus_up"), 0, "{addr}");
        for room in rooms {
            let r = post(addr, Some(room), "while down");
            assert_eq!(r.status, 503, "{addr}: {r:?}");
            assert_eq!(r.text().trim_end(), "bus unavailable", "{addr}");
        }
    }
    // Every client still connected, and nothing arrives.
    for ws in clients.iter_mut().flatten() {
        assert_eq!(ping_pong(ws), Vec::<String>::new());
    }

    // Started again on its port with its nodes.conf, it rejoins with its
    // slots; herald's next retry (at most BACKOFF_MAX away) finds it.
    cluster.node_mut(victim).restart();
    for i in 0..3 {
        cluster.wait_state(i, "ok", TIMEOUT);
    }
    let back = Instant::now();
    let within = BACKOFF_MAX + Duration::from_secs(2);
    for addr in addrs {
        wait_metric(
            addr,
            "herald_bus_up",
            1,
            within.saturating_sub(back.elapsed()),
        );
        assert_eq!(get(addr, "/readyz").status, 200, "{addr}: /readyz");
    }
    for ch in [&lost, &kept] {
        cluster.wait_shard_subscribers(ch, 2);
    }
    for (room, members) in rooms.iter().zip(clients) {
        let (writers, readers) = split_all(members);
        let reading = Readers::spawn(readers, 2 * PER_SENDER);
        let mut want = Vec::new();
        let mut senders = Vec::new();
        for (n, w) in writers.into_iter().enumerate() {
            let (texts, received) = numbered(&format!("{room}/node{n}"), PER_SENDER);
            want.push(received);
            senders.push(send_on_thread(w, texts));
        }
        let _writers: Vec<Client> = senders
            .into_iter()
            .map(|s| s.join().expect("sender panicked"))
            .collect();
        let (_readers, received) = reading.join();
        assert_same_sequence(room, &received, &want);
    }
    for herald in &mut nodes {
        herald.assert_running();
        assert_eq!(herald.count_in_log("panicked"), 0, "{:#?}", herald.log());
    }
}
