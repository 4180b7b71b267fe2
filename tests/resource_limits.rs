//! Resources a client can make herald spend are bounded: connections
//! (`--max-connections`), file descriptors (EMFILE on accept, in a child
//! process with a low `RLIMIT_NOFILE`), and the bytes queued for a client
//! that stops reading (`--max-queued-bytes`, under both `--slow-consumer`
//! policies), with the server's memory measured in `/proc`.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    close_politely, connect, connect_many, cpu_time, drain, eventually, fd_count, http_exchange,
    leave_descriptors, metric, read_frame, read_head, read_until_close_frame, recv_text,
    request_status, sample, scrape, send_text, status_kib, tcp, tcp_tiny_receive_buffer,
    upgrade_request, Client, HeraldProcess, TestServer, PREFIX, TIMEOUT,
};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role};
use tungstenite::{Message, WebSocket};

/// `clients[sender]` sends `text`, and every client receives it.
fn all_receive(clients: &mut [Client], sender: usize, text: &str) {
    send_text(&mut clients[sender], text);
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(recv_text(c), format!("{PREFIX}{text}"), "client {i}");
    }
}

/// Upgrades a new client as soon as herald has room for it (it is told
/// 503 until then); counts the refusals in `refused`.
fn join_when_there_is_room(addr: SocketAddr, refused: &mut u64) -> Client {
    let s = eventually(TIMEOUT, "room for a newcomer", || {
        let (status, s) = request_status(addr, upgrade_request("13", "").as_bytes());
        if status == 503 {
            *refused += 1;
            return None;
        }
        assert_eq!(status, 101);
        Some(s)
    });
    WebSocket::from_raw_socket(s, Role::Client, None)
}

#[test]
fn past_max_connections_every_newcomer_gets_503_and_a_freed_slot_is_reused() {
    let server = TestServer::start(&["--max-connections", "3"]);
    let mut clients = connect_many(server.addr, 3);
    let mut turned_away = 0u64;

    for i in 0..10 {
        // Half of them send an upgrade, half send nothing at all: the 503
        // comes at accept, before any request.
        let answer = if i % 2 == 0 {
            let resp = http_exchange(server.addr, upgrade_request("13", "").as_bytes());
            assert_eq!(resp.header("Connection"), Some("close"));
            (resp.status, resp.text().to_owned())
        } else {
            knock(server.addr).expect("an answer at accept")
        };
        assert_eq!(
            answer,
            (503, "connection limit reached\n".to_owned()),
            "{i}"
        );
        turned_away += 1;
    }

    // The three are untouched.
    all_receive(&mut clients, 2, "still three");

    // One leaves; its slot goes to the next newcomer once herald has seen
    // it go (until then a newcomer is still told 503).
    let leaving = clients.remove(0);
    close_politely(leaving);
    clients.push(join_when_there_is_room(server.addr, &mut turned_away));
    all_receive(&mut clients, 2, "a newcomer");

    // Every refusal was counted, and only those.
    let mut gone = clients.remove(0);
    gone.close(Some(bye())).expect("close");
    drain(&mut gone);
    let exposition = eventually(TIMEOUT, "a slot for the scrape", || {
        let resp = http_exchange(
            server.addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        if resp.status == 503 {
            turned_away += 1;
            return None;
        }
        Some(resp.text().to_owned())
    });
    assert_eq!(sample(&exposition, "herald_over_limit_total"), turned_away);
}

/// A normal close frame.
fn bye() -> CloseFrame {
    CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }
}

/// Descriptors herald may still open for clients in the EMFILE test.
const FD_SLOTS: usize = 6;

/// The CPU time a process used since a starting point, against the clock.
struct CpuWatch {
    pid: u32,
    cpu: Duration,
    since: Instant,
}

impl CpuWatch {
    fn start(pid: u32) -> Self {
        CpuWatch {
            pid,
            cpu: cpu_time(pid),
            since: Instant::now(),
        }
    }

    /// (CPU used, time passed) since the start.
    fn used(&self) -> (Duration, Duration) {
        (cpu_time(self.pid) - self.cpu, self.since.elapsed())
    }

    fn report(&self) -> String {
        let (cpu, wall) = self.used();
        format!("herald used {cpu:?} of CPU in {wall:?}")
    }
}

/// A connection that sends nothing and reads what it is told, to EOF
/// (within 3 s): the status and the body.
fn knock(addr: SocketAddr) -> io::Result<(u16, String)> {
    let mut s = tcp(addr);
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let (head, body) = common::split_head(&raw).unwrap_or((&raw, b""));
    let (head, body) = (String::from_utf8_lossy(head), String::from_utf8_lossy(body));
    Ok((common::status_of(&head), body.into_owned()))
}

#[test]
fn out_of_descriptors_newcomers_get_503_without_spinning_and_accepting_recovers() {
    let herald = HeraldProcess::start(&[]);
    let (pid, addr) = (herald.pid(), herald.addr);
    // A first client: herald has set up its loop once it is served, and
    // what it holds open then is the baseline plus that client.
    let mut clients = vec![connect(addr)];
    let open = fd_count(pid);
    leave_descriptors(pid, FD_SLOTS - 1);

    // Exactly FD_SLOTS clients fit; the last takes the last descriptor.
    let watch = CpuWatch::start(pid);
    for i in 2..=FD_SLOTS {
        match tungstenite::client(format!("ws://{addr}/"), tcp(addr)) {
            Ok((ws, _)) => clients.push(ws),
            Err(e) => panic!(
                "client {i} of {FD_SLOTS} got no upgrade ({e}) with {} of {} descriptors \
                 open; {}",
                fd_count(pid),
                open + FD_SLOTS - 1,
                watch.report()
            ),
        }
    }
    assert_eq!(
        fd_count(pid),
        open + FD_SLOTS - 1,
        "one descriptor per client"
    );

    // Newcomers keep knocking for two seconds: each is told 503 by way of
    // the spare descriptor, and herald does not burn a core in between.
    let watch = CpuWatch::start(pid);
    let mut refused = 0u64;
    while watch.since.elapsed() < Duration::from_secs(2) {
        let answer = knock(addr)
            .unwrap_or_else(|e| panic!("a newcomer got no answer: {e}; {}", watch.report()));
        assert_eq!(
            answer,
            (503, "server out of file descriptors\n".to_owned()),
            "{}",
            watch.report()
        );
        refused += 1;
        thread::sleep(Duration::from_millis(100));
    }
    let (cpu, wall) = watch.used();
    assert!(refused >= 5, "{refused} answers in {wall:?}");
    assert!(
        cpu < wall / 4,
        "spinning while out of descriptors: {}",
        watch.report()
    );

    // The clients it has were served all along.
    all_receive(&mut clients, 0, "no descriptors, no problem");

    // Descriptors come back when clients leave, and newcomers get in again.
    for c in clients.drain(..3) {
        close_politely(c);
    }
    clients.push(join_when_there_is_room(addr, &mut refused));
    all_receive(&mut clients, 0, "welcome back");
    assert_eq!(metric(addr, "herald_over_limit_total"), refused);
}

/// Messages the publisher sends in the slow-consumer tests.
const FLOOD: usize = 3000;
/// Bytes of each: 12 MiB in all, many times the queue limit.
const FLOOD_SIZE: usize = 4096;
/// `--max-queued-bytes` there.
const QUEUE_LIMIT: usize = 512 * 1024;
/// Messages the publisher may be ahead of its own copies.
const WINDOW: usize = 16;
/// How much herald's peak resident memory may pass its resident memory
/// before the flood. A queue without a bound would hold most of the 12 MiB.
const MEMORY_BOUND_KIB: u64 = 6 * 1024;

fn flood_message(seq: usize) -> String {
    format!("{seq:06}:{}", "m".repeat(FLOOD_SIZE - 7))
}

/// The sequence number of a flood message, which must be whole.
fn flood_seq(payload: &[u8]) -> usize {
    assert_eq!(payload.len(), FLOOD_SIZE, "a cut or merged message");
    std::str::from_utf8(&payload[..6])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a flood message: {:?}", &payload[..16]))
}

/// Reads `n` flood messages on `ws`, which must come in order from `from`.
fn read_flood(ws: &mut Client, from: usize, n: usize) {
    for expect in from..from + n {
        match common::recv(ws) {
            Message::Text(t) => assert_eq!(flood_seq(t.as_bytes()), expect),
            other => panic!("expected message {expect}, got {other:?}"),
        }
    }
}

/// herald with the given `--slow-consumer` policy, a client that never
/// reads (tiny receive buffer, raw socket), a client that reads everything
/// and a publisher; the flood runs on a thread, which returns the
/// publisher and the reading client once both got every message.
struct SlowConsumerRun {
    herald: HeraldProcess,
    slow: TcpStream,
    baseline_kib: u64,
    flood: thread::JoinHandle<(Client, Client)>,
}

impl SlowConsumerRun {
    fn start(policy: &str) -> Self {
        let limit = QUEUE_LIMIT.to_string();
        let herald = HeraldProcess::start(&[
            "--slow-consumer",
            policy,
            "--max-queued-bytes",
            &limit,
            "--send-buffer",
            "16KiB",
            "--prefix",
            "",
        ]);
        let addr = herald.addr;
        let mut slow = tcp_tiny_receive_buffer(addr);
        slow.write_all(upgrade_request("13", "").as_bytes())
            .unwrap();
        let (head, _) = read_head(&mut slow).unwrap();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let mut healthy = connect(addr);
        let mut publisher = connect(addr);
        let baseline_kib = status_kib(herald.pid(), "VmRSS");
        // One thread publishes and reads both reading clients, never more
        // than WINDOW messages behind: their queues stay far below the
        // limit however the threads are scheduled, so only the client that
        // never reads can reach it.
        let flood = thread::spawn(move || {
            for seq in 0..FLOOD + WINDOW {
                if seq < FLOOD {
                    send_text(&mut publisher, &flood_message(seq));
                }
                if seq >= WINDOW {
                    read_flood(&mut publisher, seq - WINDOW, 1);
                    read_flood(&mut healthy, seq - WINDOW, 1);
                }
            }
            (publisher, healthy)
        });
        SlowConsumerRun {
            herald,
            slow,
            baseline_kib,
            flood,
        }
    }

    /// Waits for the flood to reach every reading client and checks
    /// herald's peak memory against the bound; returns the publisher and
    /// the reading client.
    fn finish(self) -> (HeraldProcess, TcpStream, Client, Client) {
        let (publisher, healthy) = self.flood.join().expect("flood");
        let peak = status_kib(self.herald.pid(), "VmHWM");
        assert!(
            peak < self.baseline_kib + MEMORY_BOUND_KIB,
            "herald's peak RSS {peak} KiB, {} KiB before the flood",
            self.baseline_kib
        );
        (self.herald, self.slow, publisher, healthy)
    }
}

#[test]
fn slow_consumer_close_policy_ends_it_with_1008_in_bounded_memory() {
    let mut run = SlowConsumerRun::start("close");
    let addr = run.herald.addr;
    eventually(TIMEOUT, "the slow consumer is closed", || {
        (metric(addr, "herald_slow_consumers_total") == 1).then_some(())
    });
    // What it gets: whole messages from the first on, none skipped, then 1008.
    let (frames, close) = read_until_close_frame(&mut run.slow);
    assert!(frames.len() < FLOOD, "it got everything: no limit applied");
    for (i, f) in frames.iter().enumerate() {
        assert_eq!((f.first, flood_seq(&f.payload)), (0x81, i));
    }
    assert_eq!(close.close_code(), 1008);
    assert_eq!(
        close.close_reason(),
        format!("slow consumer: more than {QUEUE_LIMIT} bytes queued")
    );
    common::expect_eof(&mut run.slow);
    let _running = run.finish();
    let exposition = scrape(addr);
    assert_eq!(sample(&exposition, "herald_slow_consumers_total"), 1);
    assert_eq!(sample(&exposition, "herald_messages_dropped_total"), 0);
}

#[test]
fn slow_consumer_drop_policy_loses_whole_messages_and_is_told_how_many() {
    let run = SlowConsumerRun::start("drop");
    let addr = run.herald.addr;
    let (_herald, mut slow, mut publisher, mut healthy) = run.finish();

    // It drains what was queued for it: whole messages, in order, some
    // missing, and at each gap (the last one included, as soon as its
    // queue drains: no further broadcast is needed) a notice of exactly
    // how many it lost there.
    slow.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut got = Vec::new();
    let mut told = 0;
    let mut next_expected = 0;
    loop {
        match read_frame(&mut slow) {
            Ok(f) => {
                assert_eq!(f.first, 0x81);
                if let Some(n) = std::str::from_utf8(&f.payload)
                    .ok()
                    .and_then(|t| t.strip_prefix("herald: "))
                {
                    let n: usize = n
                        .strip_suffix(" messages dropped")
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!(n > 0);
                    told += n;
                    next_expected += n;
                    continue;
                }
                let seq = flood_seq(&f.payload);
                assert_eq!(seq, next_expected, "a gap nobody was told of: {got:?}");
                got.push(seq);
                next_expected += 1;
            }
            Err(e) if common::is_timeout(&e) => break,
            Err(e) => panic!("slow client's connection failed: {e}"),
        }
        assert!(got.len() <= FLOOD);
    }
    let lost = FLOOD - got.len();
    assert!(lost > 0, "nothing was dropped: no limit applied");
    assert_eq!(told, lost, "every loss is told before the next broadcast");

    // The next broadcast follows with nothing owed before it.
    slow.set_read_timeout(Some(TIMEOUT)).unwrap();
    send_text(&mut publisher, "after the flood");
    let next = read_frame(&mut slow).unwrap();
    assert_eq!(next.payload, b"after the flood");
    for ws in [&mut publisher, &mut healthy] {
        assert_eq!(recv_text(ws), "after the flood");
    }
    let exposition = scrape(addr);
    assert_eq!(
        sample(&exposition, "herald_messages_dropped_total"),
        lost as u64
    );
    assert_eq!(sample(&exposition, "herald_slow_consumers_total"), 0);
}
