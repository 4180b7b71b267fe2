//! Interleaved flushing (`--flush-slice`): the end phase flushes a slice of
//! the round per iteration and reads in between, so messages read mid-round
//! join the queues still waiting. Whatever the slice, every client of a room
//! receives every message, each publisher's in order, and all of them in the
//! same sequence.

mod common;

use std::time::Duration;

use common::{metric, publish_concurrently, TestServer};

#[test]
fn every_slice_delivers_everything_in_one_order() {
    // 1: a round of 40 takes 40 iterations; 0: the whole round at once.
    for slice in ["1", "3", "0"] {
        let server = TestServer::start(&[
            "--flush-slice",
            slice,
            "--client-rate",
            "0",
            "--client-bandwidth",
            "0",
        ]);
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
