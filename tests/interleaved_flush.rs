//! Interleaved flushing (`--flush-slice`): the end phase flushes a slice of
//! the round per iteration and reads in between, so messages read mid-round
//! join the queues still waiting. Whatever the slice, every client of a room
//! receives every message, each publisher's in order, and all of them in the
//! same sequence. Each test runs twice: with `sendmsg` writes and with the
//! round's slices written through io_uring (`--io-uring`).

mod common;

use std::thread;
use std::time::Duration;

use common::{
    connect_many, metric, publish_concurrently, recv_text, start_with, Client, PREFIX, UNLIMITED,
};
use tungstenite::Message;

#[test]
fn every_slice_delivers_everything_in_one_order() {
    every_slice_delivers_everything_in_one_order_with(&[]);
}

#[test]
fn every_slice_delivers_everything_in_one_order_through_io_uring() {
    every_slice_delivers_everything_in_one_order_with(&["--io-uring"]);
}

fn every_slice_delivers_everything_in_one_order_with(extra: &[&str]) {
    // 1: a round of 40 takes 40 iterations; 0: the whole round at once.
    for slice in ["1", "3", "0"] {
        let server = start_with(&[&["--flush-slice", slice][..], &UNLIMITED].concat(), extra);
        // Bursts of 7, so messages arrive while rounds run.
        let seen = publish_concurrently(server.addr, 40, 4, 300, 7, Duration::from_micros(200));
        for (i, s) in seen.iter().enumerate().skip(1) {
            assert!(
                s == &seen[0],
                "--flush-slice {slice}: client {i} saw another interleaving than client 0"
            );
        }
        // Every frame left in some write: the writes' frames add up to the
        // deliveries.
        let deliveries = metric(server.addr, "herald_deliveries_total");
        assert_eq!(deliveries, 40 * 4 * 300, "--flush-slice {slice}");
        assert_eq!(
            metric(server.addr, "herald_frames_per_write_sum"),
            deliveries,
            "--flush-slice {slice}"
        );
        let writes = metric(server.addr, "herald_frames_per_write_count");
        assert!(writes > 0 && writes <= deliveries, "{writes} writes");
    }
}

/// A publisher that paces itself by its own copies (as loadgen's saturation
/// publishers do, and any request/acknowledge client) gets them in its turn
/// of the round, like everyone else: served out of turn, it would always see
/// its copy first and outrun its room, every message adding to the queues of
/// the clients still waiting their turn.
#[test]
fn a_publisher_gets_its_own_copies_in_its_turn() {
    a_publisher_gets_its_own_copies_in_its_turn_with(&[]);
}

#[test]
fn a_publisher_gets_its_own_copies_in_its_turn_through_io_uring() {
    a_publisher_gets_its_own_copies_in_its_turn_with(&["--io-uring"]);
}

fn a_publisher_gets_its_own_copies_in_its_turn_with(extra: &[&str]) {
    const CLIENTS: usize = 200;
    const MESSAGES: usize = 3_000;
    const WINDOW: usize = 16;
    let server = start_with(&[&["--flush-slice", "1"][..], &UNLIMITED].concat(), extra);
    let mut all = connect_many(server.addr, CLIENTS);
    let mut publisher = all.remove(0);
    let readers: Vec<_> = all
        .into_iter()
        .map(|mut ws| {
            thread::spawn(move || {
                for _ in 0..MESSAGES {
                    recv_text(&mut ws);
                }
                ws
            })
        })
        .collect();
    // At most WINDOW of its messages without their copy back.
    let mut sent = 0;
    for got in 0..MESSAGES {
        while sent < MESSAGES && sent < got + WINDOW {
            publisher
                .write(Message::text(format!("{sent:08}")))
                .expect("publish");
            sent += 1;
        }
        publisher.flush().expect("flush");
        assert_eq!(recv_text(&mut publisher), format!("{PREFIX}{got:08}"));
    }
    let readers: Vec<Client> = readers.into_iter().map(|t| t.join().unwrap()).collect();
    // Queued at once, across all clients: the window's worth each, twice
    // over (a client's turn may come just before the publisher's), never
    // the hundreds a publisher out of turn piles up.
    let frame = (2 + PREFIX.len() + 8) as u64;
    let high_water = metric(server.addr, "herald_queued_high_water_bytes");
    let bound = CLIENTS as u64 * 2 * WINDOW as u64 * frame;
    assert!(
        high_water <= bound,
        "{high_water} bytes queued at once (bound {bound})"
    );
    drop(readers);
}
