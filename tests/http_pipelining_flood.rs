//! A keep-alive client that pipelines requests faster than it reads the
//! answers costs one answer at a time: herald stops reading it until its
//! answer has left, so its requests wait in its own socket, nobody else
//! notices, and it gets every answer, in order, once it reads.

mod common;

use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

use common::{connect, read_http_response, recv_text, send_text, tcp_with_buffers, TestServer};

#[test]
fn a_pipelining_client_that_never_reads_is_held_at_one_answer() {
    // Small socket buffers on both sides, so what herald does not read
    // pushes back on the client's writes within a few hundred KiB.
    let server = TestServer::start(&["--max-queued-bytes", "256KiB", "--recv-buffer", "32KiB"]);
    let addr = server.addr;
    let mut bystander = connect(addr);

    let flooder = tcp_with_buffers(addr, Some(4096), Some(32 * 1024));
    flooder
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    // Each request asks for the chat page: 2,000 of them in 60 KB would
    // queue megabytes of answers if herald answered them all at once.
    const PER_BURST: usize = 2_000;
    let burst = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(PER_BURST);
    let mut writer = flooder.try_clone().unwrap();
    let flood = thread::spawn(move || {
        let mut sent = 0;
        for _ in 0..50 {
            // Once the kernel's buffers are full the write times out: herald
            // is not reading the rest.
            if writer.write_all(&burst).is_err() {
                break;
            }
            sent += PER_BURST;
        }
        sent
    });
    let started = Instant::now();
    let sent = flood.join().unwrap();
    assert!(
        sent < 50 * PER_BURST,
        "herald read 3 MB of requests it could not answer"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // Only what the socket could not take is queued: one answer.
    let page = common::http_exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let queued = common::metric(addr, "herald_queued_bytes") as usize;
    let answer = page.body.len() + 512; // the body and a generous head
    assert!(
        queued <= answer,
        "{queued} bytes queued, one answer is about {answer}"
    );
    send_text(&mut bystander, "still here");
    assert_eq!(recv_text(&mut bystander), "Message from server: still here");

    // Reading, the client gets its answers, each whole, in order.
    flooder
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut flooder = flooder;
    for _ in 0..500 {
        let r = read_http_response(&mut flooder, false);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body.len(), page.body.len());
    }
}
