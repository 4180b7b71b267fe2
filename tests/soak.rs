//! Soak: churn against the herald binary, 10 s by default. Churn clients
//! connect, publish and leave: gracefully, by vanishing (FIN without a
//! close frame), with a TCP reset in the middle of a frame or of a request
//! head, after sending garbage frames, oversized or invalid UTF-8 messages,
//! or garbage instead of HTTP. Meanwhile steady clients publish at a fixed
//! pace and count every broadcast.
//!
//! At the end: herald never stopped (it exits 0 on SIGTERM), every steady
//! client got every steady message in order and every message of each
//! churn client that finished its sequence, herald's open descriptors are
//! back to the baseline and its RSS within a bound of its baseline, and
//! its counters match what the churn did.
//!
//! The default keeps `cargo test` quick while still churning a few thousand
//! connections; a longer run finds slower leaks. `HERALD_SOAK_SECS=N` churns
//! for N seconds instead, e.g.
//!
//!     HERALD_SOAK_SECS=600 cargo test --release --test soak -- --nocapture

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    connect, drain, eventually, fd_count, masked_frame, metric, reset, sample, scrape, send_raw,
    send_text, split, status_kib, tcp, upgrade_request, Client, Ending, HeraldProcess, TIMEOUT,
};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

/// Steady clients: each publishes and counts everything.
const STEADY: usize = 3;
/// Threads running churn clients one after another.
const CHURNERS: usize = 4;
/// How often a steady client publishes.
const STEADY_PACE: Duration = Duration::from_millis(25);
/// Pause between two churn clients of one thread.
const CHURN_PAUSE: Duration = Duration::from_millis(10);
/// At most this many churn clients per thread, whatever the duration.
const CHURN_CAP: u64 = 100_000;
/// How far herald's RSS may end above its baseline. A leak of 1 KiB per
/// churn connection would pass it several times over.
const RSS_BOUND_KIB: u64 = 4 * 1024;
/// `--max-message-size` in the soak.
const MAX_MESSAGE: usize = 16 * 1024;

fn duration() -> Duration {
    let secs = std::env::var("HERALD_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    Duration::from_secs(secs)
}

/// How a churn client leaves; each kind in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// Close handshake after its messages.
    Graceful,
    /// FIN without a close frame.
    Vanish,
    /// Half a frame, then a TCP reset.
    ResetMidFrame,
    /// Half a request head, then a TCP reset.
    ResetMidHandshake,
    /// A frame with a reserved opcode: close 1002.
    GarbageFrame,
    /// A message over `--max-message-size`: close 1009.
    Oversized,
    /// A text message with invalid UTF-8: close 1007.
    BadUtf8,
    /// Binary junk instead of a request head: 400.
    GarbageHttp,
}

const LEAVES: [Leave; 8] = [
    Leave::Graceful,
    Leave::Vanish,
    Leave::ResetMidFrame,
    Leave::ResetMidHandshake,
    Leave::GarbageFrame,
    Leave::Oversized,
    Leave::BadUtf8,
    Leave::GarbageHttp,
];

/// What the churn did, for the counters at the end.
#[derive(Default)]
struct ChurnCounts {
    /// Churn clients whose whole sequence, end marker included, was sent
    /// before anything else could happen to them.
    complete: AtomicU64,
    /// Churn connections, by how they left (indexed like `LEAVES`).
    by_leave: [AtomicU64; LEAVES.len()],
}

impl ChurnCounts {
    fn of(&self, leaves: &[Leave]) -> u64 {
        leaves
            .iter()
            .map(|l| self.by_leave[*l as usize].load(Ordering::Relaxed))
            .sum()
    }

    fn connections(&self) -> u64 {
        self.of(&LEAVES)
    }
}

/// One churn client.
fn churn_once(addr: SocketAddr, who: &str, ending: Leave, n: u64, counts: &ChurnCounts) {
    counts.by_leave[ending as usize].fetch_add(1, Ordering::Relaxed);
    match ending {
        Leave::ResetMidHandshake => {
            let mut s = tcp(addr);
            let head = upgrade_request("13", "");
            s.write_all(&head.as_bytes()[..head.len() / 2]).unwrap();
            reset(s);
            return;
        }
        Leave::GarbageHttp => {
            let resp = common::http_exchange(addr, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\r\n\r\n");
            assert_eq!(resp.status, 400, "{resp:?}");
            return;
        }
        _ => {}
    }
    let mut ws = connect(addr);
    for seq in 0..n {
        // Sizes vary from a few bytes to a few KiB.
        let pad = "p".repeat(((seq * 997 + n * 31) % 3000) as usize);
        send_text(&mut ws, &format!("{who}:{seq}:{pad}"));
    }
    let complete = ending != Leave::Vanish && ending != Leave::ResetMidFrame;
    if complete {
        send_text(&mut ws, &format!("{who}:end:{n}"));
        counts.complete.fetch_add(1, Ordering::Relaxed);
    }
    let code = match ending {
        Leave::Graceful => {
            ws.close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .unwrap();
            1000
        }
        Leave::Vanish => return drop(ws),
        Leave::ResetMidFrame => {
            let mut frame = masked_frame(0x81, &[b'x'; 1000]);
            frame.truncate(200);
            send_raw(&mut ws, &frame);
            let stream = ws.get_ref().try_clone().unwrap();
            drop(ws);
            return reset(stream);
        }
        Leave::GarbageFrame => {
            send_raw(&mut ws, &masked_frame(0x83, b"garbage"));
            1002
        }
        Leave::Oversized => {
            send_raw(&mut ws, &masked_frame(0x82, &vec![0; MAX_MESSAGE + 1]));
            1009
        }
        Leave::BadUtf8 => {
            send_raw(&mut ws, &masked_frame(0x81, b"caf\xc3("));
            1007
        }
        Leave::ResetMidHandshake | Leave::GarbageHttp => unreachable!(),
    };
    let (_, end) = drain(&mut ws);
    assert_eq!(end, Ending::Close(code), "{who} {ending:?}");
}

/// What a steady client saw.
#[derive(Default, Debug)]
struct Tally {
    /// Next expected sequence number per publisher.
    next: HashMap<String, u64>,
    /// Steady publishers whose end marker arrived.
    steady_done: usize,
    /// Churn clients whose end marker arrived (after all their messages).
    churn_complete: u64,
    /// Messages received.
    received: u64,
    /// Everything that was wrong.
    violations: Vec<String>,
}

impl Tally {
    /// Checks one broadcast: `who:seq:...` must be the next of `who`, and
    /// `who:end:n` must come after exactly n messages.
    fn check(&mut self, text: &str) {
        self.received += 1;
        let mut parts = text.splitn(3, ':');
        let (Some(who), Some(what)) = (parts.next(), parts.next()) else {
            return self
                .violations
                .push(format!("not a soak message: {text:.60}"));
        };
        let next = self.next.entry(who.to_owned()).or_default();
        if what == "end" {
            let n: u64 = parts
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(u64::MAX);
            if n != *next {
                self.violations
                    .push(format!("{who} ended after {n} messages, {next} arrived"));
            }
            if who.starts_with('s') {
                self.steady_done += 1;
            } else {
                self.churn_complete += 1;
            }
            self.next.remove(who);
        } else if what.parse::<u64>().ok() == Some(*next) {
            *next += 1;
        } else {
            self.violations.push(format!(
                "{who}: got {what}, expected {next} (lost or reordered)"
            ));
            *next = what.parse::<u64>().map_or(*next, |s| s + 1);
        }
    }
}

/// Reads broadcasts until every steady publisher's end marker arrived.
fn count_everything(mut reader: Client) -> Tally {
    let mut tally = Tally::default();
    while tally.steady_done < STEADY {
        match reader.read() {
            Ok(Message::Text(t)) => tally.check(t.as_str()),
            Ok(other) => tally.violations.push(format!("unexpected {other:?}")),
            Err(e) => {
                tally.violations.push(format!("steady client dropped: {e}"));
                break;
            }
        }
    }
    tally
}

/// Waits until herald holds only the scrape's connection, then lets it go
/// and returns herald's descriptor count once that one is gone too, with
/// the number of scrapes it took (each ends as a "normal" close).
fn quiet_fds(herald: &HeraldProcess) -> (usize, u64) {
    let mut scrapes = 0;
    eventually(TIMEOUT, "herald holds no client connection", || {
        scrapes += 1;
        (metric(herald.addr, "herald_connections_open") == 1).then_some(())
    });
    // The scrape's own connection is dropped once herald sees its EOF.
    thread::sleep(Duration::from_millis(300));
    (fd_count(herald.pid()), scrapes)
}

#[test]
fn churn_loses_nothing_and_leaks_nothing() {
    let mut herald = HeraldProcess::start(&[
        "--prefix",
        "",
        "--max-message-size",
        &MAX_MESSAGE.to_string(),
    ]);
    let (addr, pid) = (herald.addr, herald.pid());

    // Warm up (lazy allocations, the metrics registry), then the baseline.
    let warm = ChurnCounts::default();
    for (i, ending) in LEAVES.iter().cycle().take(40).enumerate() {
        churn_once(addr, &format!("w.{i}"), *ending, 3, &warm);
    }
    let (base_fds, _) = quiet_fds(&herald);
    let base_rss = status_kib(pid, "VmRSS");
    let base = scrape(addr);

    // Steady clients: a writer and a reader each.
    let mut steady_readers = Vec::new();
    let mut steady_writers = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<Client> = (0..STEADY).map(|_| connect(addr)).collect();
    for (id, ws) in clients.into_iter().enumerate() {
        let (mut writer, reader) = split(ws);
        steady_readers.push(thread::spawn(move || count_everything(reader)));
        let stop = stop.clone();
        steady_writers.push(thread::spawn(move || {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                send_text(&mut writer, &format!("s{id}:{seq}"));
                seq += 1;
                thread::sleep(STEADY_PACE);
            }
            send_text(&mut writer, &format!("s{id}:end:{seq}"));
            (writer, seq)
        }));
    }

    // Churn until the time is up.
    let counts = Arc::new(ChurnCounts::default());
    let until = Instant::now() + duration();
    let churners: Vec<_> = (0..CHURNERS)
        .map(|w| {
            let counts = counts.clone();
            thread::spawn(move || {
                let mut i = 0u64;
                while Instant::now() < until && i < CHURN_CAP {
                    let ending = LEAVES[(i as usize + w) % LEAVES.len()];
                    churn_once(addr, &format!("c{w}.{i}"), ending, 1 + i % 5, &counts);
                    i += 1;
                    thread::sleep(CHURN_PAUSE);
                }
            })
        })
        .collect();
    for c in churners {
        c.join().expect("a churn client failed (see above)");
    }
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<(Client, u64)> = steady_writers
        .into_iter()
        .map(|w| w.join().expect("steady writer"))
        .collect();
    let tallies: Vec<Tally> = steady_readers
        .into_iter()
        .map(|r| r.join().expect("steady reader"))
        .collect();
    drop(sent);

    // Nothing lost or reordered for any steady client.
    let complete = counts.complete.load(Ordering::Relaxed);
    for (i, t) in tallies.iter().enumerate() {
        assert!(
            t.violations.is_empty(),
            "steady client {i}: {:#?}",
            t.violations
        );
        assert_eq!(t.steady_done, STEADY, "steady client {i}");
        // Every churn client that sent its end marker while steady client
        // i was connected: all of them (they started after it).
        assert_eq!(t.churn_complete, complete, "steady client {i}");
    }

    // herald let go of everything, and holds what it held before.
    let (end_fds, scrapes) = quiet_fds(&herald);
    let end_rss = status_kib(pid, "VmRSS");
    let end = scrape(addr);
    let delta = |series: &str| sample(&end, series) - sample(&base, series);
    eprintln!(
        "soak: {} churn connections ({complete} complete), {} messages per steady \
         client; fds {base_fds} -> {end_fds}; RSS {base_rss} -> {end_rss} KiB (peak {} KiB)",
        counts.connections(),
        tallies[0].received,
        status_kib(pid, "VmHWM"),
    );
    assert_eq!(end_fds, base_fds, "descriptors not back to the baseline");
    assert!(
        end_rss <= base_rss + RSS_BOUND_KIB,
        "RSS {end_rss} KiB after the soak, {base_rss} KiB before"
    );
    assert_eq!(sample(&end, "herald_websockets_open"), 0);
    // Every connection ended for the reason it did.
    let closed = |reason: &str| {
        delta(&format!(
            "herald_connections_closed_total{{reason=\"{reason}\"}}"
        ))
    };
    use Leave::*;
    // The scrapes since the baseline's (its own included) end normally too.
    assert_eq!(closed("normal"), counts.of(&[Graceful]) + 1 + scrapes);
    // Gone without a close frame: by a reset, or by a FIN (which the
    // kernel turns into a reset when broadcasts were left unread).
    let resets = counts.of(&[ResetMidFrame, ResetMidHandshake]);
    assert_eq!(
        closed("peer_gone") + closed("io_error"),
        counts.of(&[Vanish]) + resets + STEADY as u64
    );
    assert!(closed("io_error") >= resets);
    assert_eq!(
        closed("error"),
        counts.of(&[GarbageFrame, Oversized, BadUtf8])
    );
    assert_eq!(closed("rejected"), counts.of(&[GarbageHttp]));
    assert_eq!(
        delta("herald_handshakes_rejected_total{status=\"400\"}"),
        counts.of(&[GarbageHttp])
    );
    assert_eq!(delta("herald_slow_consumers_total"), 0);

    // Still alive and well: a clean exit on SIGTERM (a panic exits 101).
    herald.signal(libc::SIGTERM);
    let status = herald.wait(TIMEOUT);
    assert!(status.success(), "herald exited with {status}");
}
