//! The Redis backplane on a Redis Cluster (`--redis-cluster`): sharded
//! pub/sub (`SPUBLISH`/`SSUBSCRIBE`), each room's channel served by the
//! master of its hash slot. Two herald nodes, ten rooms whose channels
//! spread over the three masters, messages from both nodes: every member
//! of a room receives the same sequence, nothing lost, nothing across rooms.
//!
//! The first test checks the cluster harness (tests/common/redis.rs) alone.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::bus::{
    all_hear_nothing, assert_same_sequence, channel, join, node, numbered, send_on_thread,
    split_all, Readers,
};
use common::redis::process_exists;
use common::{Client, RedisCluster};

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
