//! One client cannot flood herald's log: at the default level (info) a
//! connection costs no line of its own, so thousands of short-lived
//! connections of every kind (WebSocket upgrades ended abruptly or
//! politely, health checks, malformed requests, connections that say
//! nothing) leave a log of a few lines, not one or two per connection.

mod common;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    masked_frame, read_frame, read_head, reset, status_of, tcp, upgrade_request, HeraldProcess,
};

/// Connections opened and closed.
const CONNECTIONS: usize = 10_000;
/// Threads opening them.
const CHURNERS: usize = 4;
/// When churning stops, done or not.
const CHURN_WINDOW: Duration = Duration::from_secs(10);
/// Fewest connections that make the count of log lines mean anything: a
/// line per connection would be ten times the limit.
const ENOUGH: usize = 1_000;
/// Lines the whole run may log, start-up line excepted.
const MAX_LINES: usize = 100;

/// Reads to EOF (a reset counts as one); returns what came.
fn read_to_end(s: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Err(e) if e.kind() != io::ErrorKind::ConnectionReset => Err(e),
        _ => Ok(rest),
    }
}

/// One short-lived connection of kind `i % 5`, closed by this side except
/// where herald must close first.
fn churn_one(addr: SocketAddr, i: usize) -> io::Result<()> {
    let mut s = tcp(addr);
    match i % 5 {
        // An upgrade, then a reset instead of a close handshake.
        0 => {
            s.write_all(upgrade_request("13", "").as_bytes())?;
            let (head, _) = read_head(&mut s)?;
            assert_eq!(status_of(&head), 101, "{head}");
            reset(s);
        }
        // An upgrade, then a proper close: herald answers and closes TCP.
        1 => {
            s.write_all(upgrade_request("13", "").as_bytes())?;
            let (head, _) = read_head(&mut s)?;
            assert_eq!(status_of(&head), 101, "{head}");
            s.write_all(&masked_frame(0x88, &1000u16.to_be_bytes()))?;
            let reply = read_frame(&mut s)?;
            assert_eq!(reply.close_code(), 1000);
            read_to_end(&mut s)?;
        }
        // A health check on a kept-alive connection, which this side ends.
        2 => {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")?;
            let (head, _) = read_head(&mut s)?;
            assert_eq!(status_of(&head), 200, "{head}");
        }
        // Garbage: a 400, then herald closes.
        3 => {
            s.write_all(b"HELLO? \x01\x02\r\n\r\n")?;
            let (head, _) = read_head(&mut s)?;
            assert_eq!(status_of(&head), 400, "{head}");
            read_to_end(&mut s)?;
        }
        // Gone before a word.
        _ => {}
    }
    Ok(())
}

#[test]
fn connection_churn_leaves_a_few_log_lines_at_the_default_level() {
    let herald = HeraldProcess::builder().rust_log(None).start();
    let addr = herald.addr;
    let started = Instant::now();
    let deadline = started + CHURN_WINDOW;
    let churners: Vec<_> = (0..CHURNERS)
        .map(|t| {
            thread::spawn(move || {
                let mut done = 0;
                for i in (t..CONNECTIONS).step_by(CHURNERS) {
                    if Instant::now() >= deadline {
                        break;
                    }
                    churn_one(addr, i).unwrap_or_else(|e| panic!("connection {i}: {e}"));
                    done += 1;
                }
                done
            })
        })
        .collect();
    let churned: usize = churners
        .into_iter()
        .map(|t| t.join().expect("churning thread"))
        .sum();
    let churning = started.elapsed();

    let (status, mut log) = herald.stop(Duration::from_secs(10));
    // What start-up logs does not grow with the churn.
    let started_at = log.iter().position(|l| l.contains("herald listening"));
    log.drain(..=started_at.expect("the start-up line"));
    assert!(status.success(), "herald exited with {status:?}");
    // Lines counted by level and message (`TIME LEVEL message key=value…`),
    // so that a failure says which lines there are too many of.
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for line in &log {
        let kind: Vec<&str> = line
            .split_whitespace()
            .skip(1)
            .take_while(|w| !w.contains('='))
            .collect();
        *kinds.entry(kind.join(" ")).or_default() += 1;
    }
    eprintln!(
        "{churned} connections in {churning:?}: {} log lines ({} bytes) at the default \
         level; by kind: {kinds:?}",
        log.len(),
        log.iter().map(|l| l.len() + 1).sum::<usize>()
    );
    assert!(
        churned >= ENOUGH,
        "only {churned} connections in {CHURN_WINDOW:?}: too few to judge the log by"
    );
    assert!(
        log.len() < MAX_LINES,
        "{} log lines for {churned} connections at the default level (at most {MAX_LINES} \
         allowed); by kind: {kinds:?}; the first: {:#?}",
        log.len(),
        &log[..log.len().min(10)]
    );
}
