//! A client that never reads is closed (1008) once its queue passes
//! `--max-queued-bytes`, its unsent messages dropped, while the clients
//! that read get every message in order.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use common::{
    connect, drain, handshake, recv_text, split, Client, Ending, TestServer, PREFIX, TIMEOUT,
};
use socket2::{Domain, Protocol, Socket, Type};
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

/// A client whose receive buffer is as small as the kernel allows, so that
/// not reading backs up into herald quickly.
fn connect_with_tiny_receive_buffer(addr: SocketAddr) -> Client {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    handshake(addr, socket.into())
}

#[test]
fn a_client_that_never_reads_is_closed_at_the_queue_limit_and_the_others_get_everything() {
    // A fixed send buffer keeps the kernel from absorbing megabytes for the
    // stuck client (loopback autotuning would), so the queue limit is what
    // stops it.
    let limit = LIMIT.to_string();
    let server = TestServer::start(&["--max-queued-bytes", &limit, "--send-buffer", "8KiB"]);
    let mut stuck = connect_with_tiny_receive_buffer(server.addr);
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
