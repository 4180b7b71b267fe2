//! A client that never reads is closed (1008) once its queue passes
//! `--max-queued-bytes`, its unsent messages dropped, while the clients
//! that read get every message in order. Under `--slow-consumer drop` a
//! client that stopped reading is told how many messages it lost as soon
//! as it has caught up, not at the next broadcast, which may never come.
//! A client that reads slowly through a tiny window gets every byte, in
//! order, however its writes are cut. Each test runs twice: with `sendmsg`
//! writes and with the round's slices written through io_uring
//! (`--io-uring`).

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    connect, drain, handshake, metric, recv_text, split, start_with, tcp_tiny_receive_buffer,
    Client, Ending, PREFIX, TIMEOUT, UNLIMITED,
};
use tungstenite::Message;

/// Messages published; about 1 KiB each, so 512 KiB in all: several times
/// what the stuck client's socket buffers plus its 64 KiB queue can hold.
const MESSAGES: usize = 512;
/// Messages the publisher may be ahead of the slowest reader. It keeps
/// every reader's queue far below the limit however the threads are
/// scheduled, so only the client that never reads can reach it, and it
/// does so with a queue close to the limit.
const WINDOW: usize = 4;
/// `--max-queued-bytes`.
const LIMIT: usize = 64 * 1024;

fn message(seq: usize) -> String {
    format!("{seq:05}:{}", "x".repeat(1018))
}

/// How many messages each reader has received, for the publisher to wait on.
#[derive(Default)]
struct Progress {
    received: Mutex<Vec<usize>>,
    changed: Condvar,
}

impl Progress {
    fn new(readers: usize) -> Arc<Self> {
        Arc::new(Progress {
            received: Mutex::new(vec![0; readers]),
            changed: Condvar::new(),
        })
    }

    fn set(&self, reader: usize, n: usize) {
        self.received.lock().unwrap()[reader] = n;
        self.changed.notify_all();
    }

    /// Waits until every reader has at least `n` messages.
    fn wait_all(&self, n: usize) {
        let guard = self.received.lock().unwrap();
        let (guard, timeout) = self
            .changed
            .wait_timeout_while(guard, TIMEOUT, |r| r.iter().any(|&c| c < n))
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "readers stalled at {:?}, waiting for {n}",
            *guard
        );
    }
}

#[test]
fn a_client_that_never_reads_is_closed_at_the_queue_limit_and_the_others_get_everything() {
    never_reads_with(&[]);
}

#[test]
fn a_client_that_never_reads_is_closed_at_the_queue_limit_through_io_uring() {
    never_reads_with(&["--io-uring"]);
}

fn never_reads_with(extra: &[&str]) {
    // A fixed send buffer keeps the kernel from absorbing megabytes for the
    // stuck client (loopback autotuning would), so the queue limit is what
    // stops it.
    let limit = LIMIT.to_string();
    let server = start_with(
        &["--max-queued-bytes", &limit, "--send-buffer", "8KiB"],
        extra,
    );
    let mut stuck = handshake(server.addr, tcp_tiny_receive_buffer(server.addr));
    let (mut publisher, publisher_reader) = split(connect(server.addr));
    let mut readers = vec![publisher_reader, connect(server.addr), connect(server.addr)];

    let progress = Progress::new(readers.len());
    let reader_threads: Vec<_> = readers
        .drain(..)
        .enumerate()
        .map(|(i, mut ws)| {
            let progress = progress.clone();
            thread::spawn(move || {
                for seq in 0..MESSAGES {
                    let got = recv_text(&mut ws);
                    assert!(
                        got.strip_prefix(PREFIX) == Some(message(seq).as_str()),
                        "reader {i}: message {seq} lost, reordered or changed: {:?}…",
                        &got[..got.len().min(40)]
                    );
                    progress.set(i, seq + 1);
                }
                ws
            })
        })
        .collect();

    for seq in 0..MESSAGES {
        progress.wait_all((seq + 1).saturating_sub(WINDOW));
        publisher
            .send(Message::text(message(seq)))
            .expect("publish");
    }
    let readers: Vec<Client> = reader_threads
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.join()
                .unwrap_or_else(|_| panic!("reader {i} failed (see its panic above)"))
        })
        .collect();

    // Now the stuck client reads what reached it: an in-order prefix of the
    // messages, then the end. Had herald not closed it, it would read all
    // of them and then time out.
    let (got, ending) = drain(&mut stuck);
    assert!(
        got.len() < MESSAGES,
        "the stuck client received all {MESSAGES} messages: it was never cut off"
    );
    // What reached it is what its small kernel buffers held (about 24 KiB);
    // the up to 64 KiB herald had queued for it were dropped, not sent.
    let received = got.len() * message(0).len();
    assert!(
        received < LIMIT,
        "the stuck client received {received} bytes after being cut off at {LIMIT}: \
         its queued messages were delivered instead of dropped"
    );
    for (seq, m) in got.iter().enumerate() {
        match m {
            Message::Text(t) if t.strip_prefix(PREFIX) == Some(message(seq).as_str()) => {}
            other => panic!("stuck client: message {seq} is not the {seq}th published: {other:?}"),
        }
    }
    match ending {
        // Its socket buffer was full, so the close frame may not get through.
        Ending::Close(1008) | Ending::Dropped(_) => {}
        other => panic!("stuck client ended with {other:?}, expected close 1008"),
    }
    drop(readers);
}

/// Messages the publisher sends in the drop-notice test: 400 KiB, several
/// times what the stopped client's socket buffers and its 64 KiB queue hold.
const BURST: usize = 400;
/// How soon the stopped client must hear of its losses once it reads again.
const NOTICE_WITHIN: Duration = Duration::from_secs(3);

#[test]
fn under_the_drop_policy_the_loss_is_told_once_the_queue_drains_without_another_broadcast() {
    drop_notice_with(&[]);
}

#[test]
fn under_the_drop_policy_the_loss_is_told_once_the_queue_drains_through_io_uring() {
    drop_notice_with(&["--io-uring"]);
}

fn drop_notice_with(extra: &[&str]) {
    let limit = LIMIT.to_string();
    let server = start_with(
        &[
            "--slow-consumer",
            "drop",
            "--max-queued-bytes",
            &limit,
            "--send-buffer",
            "8KiB",
        ],
        extra,
    );
    let mut stopped = handshake(server.addr, tcp_tiny_receive_buffer(server.addr));
    let mut publisher = connect(server.addr);

    // The publisher reads its own copies, never more than WINDOW behind, so
    // only the stopped client's queue can reach the limit.
    for seq in 0..BURST + WINDOW {
        if seq < BURST {
            publisher
                .send(Message::text(message(seq)))
                .expect("publish");
        }
        if seq >= WINDOW {
            let got = recv_text(&mut publisher);
            assert_eq!(
                got.strip_prefix(PREFIX),
                Some(message(seq - WINDOW).as_str())
            );
        }
    }
    // Every message has been fanned out; from now on nothing is broadcast,
    // as in a chat that has gone quiet.

    stopped
        .get_mut()
        .set_read_timeout(Some(NOTICE_WITHIN))
        .unwrap();
    let resumed = Instant::now();
    let mut received = Vec::new();
    let mut dropped = 0;
    while received.len() + dropped < BURST {
        let text = match stopped.read() {
            Ok(Message::Text(t)) => t.as_str().to_owned(),
            Ok(other) => panic!("expected a text message, got {other:?}"),
            Err(e) => panic!(
                "no drop notice {:?} after reading again ({e}): {} of the {BURST} messages \
                 received (last {:?}), {dropped} reported dropped",
                resumed.elapsed(),
                received.len(),
                received.last(),
            ),
        };
        if let Some(n) = text
            .strip_prefix("herald: ")
            .and_then(|t| t.strip_suffix(" messages dropped"))
        {
            dropped += n.parse::<usize>().expect("a count in the drop notice");
        } else {
            let body = text.strip_prefix(PREFIX).expect("a prefixed broadcast");
            let seq: usize = body[..5].parse().expect("a sequence number");
            assert_eq!(body, message(seq), "message {seq} cut or changed");
            assert!(
                received.last().is_none_or(|&l| l < seq),
                "message {seq} after {:?}: out of order",
                received.last()
            );
            received.push(seq);
        }
        assert!(
            resumed.elapsed() < NOTICE_WITHIN,
            "reading took over {NOTICE_WITHIN:?}"
        );
    }
    eprintln!(
        "received {} of {BURST} messages, told of {dropped} dropped, {:?} after reading again",
        received.len(),
        resumed.elapsed()
    );
    assert_eq!(received.len() + dropped, BURST);
    assert!(dropped > 0, "nothing was dropped: no limit applied");
    drop((stopped, publisher));
}

#[test]
fn a_slow_reader_behind_a_tiny_window_gets_every_byte_in_order() {
    slow_reader_with(&[]);
}

#[test]
fn a_slow_reader_behind_a_tiny_window_gets_every_byte_in_order_through_io_uring() {
    slow_reader_with(&["--io-uring"]);
}

/// 512 KiB of 1 KiB messages, published at once, through an 8 KiB send
/// buffer to a client with the smallest receive buffer that reads in
/// spurts: writes are cut short or refused (`EAGAIN`) again and again,
/// and each resumes exactly where it stopped, frame boundaries included.
/// The queue limit is far above the total, so nothing is dropped.
fn slow_reader_with(extra: &[&str]) {
    let server = start_with(
        &[&["--send-buffer", "8KiB"][..], &UNLIMITED].concat(),
        extra,
    );
    let mut slow = handshake(server.addr, tcp_tiny_receive_buffer(server.addr));
    let mut publisher = connect(server.addr);
    let reader = thread::spawn(move || {
        for seq in 0..MESSAGES {
            let got = recv_text(&mut slow);
            assert!(
                got.strip_prefix(PREFIX) == Some(message(seq).as_str()),
                "slow reader: message {seq} lost, reordered or cut: {:?}…",
                &got[..got.len().min(40)]
            );
            if seq % 16 == 15 {
                thread::sleep(Duration::from_millis(2));
            }
        }
        slow
    });
    for seq in 0..MESSAGES {
        publisher
            .write(Message::text(message(seq)))
            .expect("publish");
    }
    publisher.flush().expect("flush");
    for seq in 0..MESSAGES {
        let got = recv_text(&mut publisher);
        assert_eq!(got.strip_prefix(PREFIX), Some(message(seq).as_str()));
    }
    let slow = reader
        .join()
        .unwrap_or_else(|_| panic!("the slow reader failed (see its panic above)"));
    // However the writes were cut, each message was counted once.
    let deliveries = metric(server.addr, "herald_deliveries_total");
    assert_eq!(deliveries, 2 * MESSAGES as u64);
    assert_eq!(
        metric(server.addr, "herald_frames_per_write_sum"),
        deliveries
    );
    drop((slow, publisher));
}
