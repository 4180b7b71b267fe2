//! A keep-alive client that pipelines requests faster than it reads the
//! answers is closed at `--max-queued-bytes`, and nobody else notices.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{connect, recv_text, send_text, tcp, TestServer};

#[test]
fn a_pipelining_client_that_never_reads_is_closed_at_the_queue_limit() {
    let server = TestServer::start(&["--max-queued-bytes", "256KiB"]);
    let mut bystander = connect(server.addr);

    let mut flooder = tcp(server.addr);
    flooder
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Each request asks for the ~2 KiB chat page: 2,000 of them in 60 KB
    // would queue about 4 MiB of answers, far past the limit.
    let burst = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2_000);
    let started = Instant::now();
    let mut closed = false;
    for _ in 0..50 {
        if flooder.write_all(&burst).is_err() {
            closed = true;
            break;
        }
    }
    // herald stops reading it once it is closed, so the writes above end in
    // an error; if they all fit in the kernel's buffers, the socket must at
    // least reach EOF or a reset on reading, within the close deadline.
    if !closed {
        flooder
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut sink = vec![0u8; 1 << 20];
        loop {
            match flooder.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "the flooding client was never closed"
                ),
            }
        }
    }

    send_text(&mut bystander, "still here");
    assert_eq!(recv_text(&mut bystander), "Message from server: still here");
}
