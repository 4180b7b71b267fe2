//! `--feed PATH` (a named pipe) and `--feed -` (standard input): every line
//! becomes one text broadcast, without the prefix, in order, to every open
//! client; at end of input the server logs it once and keeps serving.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use common::{connect_many, recv_text, send_text, Client, PREFIX, TIMEOUT};

/// The log line herald writes once when the feed ends.
const END_OF_INPUT: &str = "feed reached end of input";

/// The `herald` binary with `--feed` (and standard input piped), on a free
/// loopback port; its log lines are collected. Killed by PID on drop.
struct FeedHerald {
    addr: SocketAddr,
    child: Child,
    lines: Receiver<String>,
    log: Vec<String>,
}

impl FeedHerald {
    fn start(feed: &str) -> Self {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--listen", &addr.to_string(), "--feed", feed])
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn herald");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            use std::io::BufRead;
            // Keeps reading after the test stops listening, so herald never
            // blocks on a full pipe.
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut herald = FeedHerald {
            addr,
            child,
            lines,
            log: Vec::new(),
        };
        herald.wait_for_log("herald listening");
        herald
    }

    /// Waits (at most TIMEOUT) for a log line containing `needle`.
    fn wait_for_log(&mut self, needle: &str) {
        if self.log.iter().any(|l| l.contains(needle)) {
            return;
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.log.push(line);
                    if found {
                        return;
                    }
                }
                Err(e) => panic!("no log line {needle:?} ({e}); log so far: {:#?}", self.log),
            }
        }
    }

    /// Log lines so far containing `needle`.
    fn count_in_log(&mut self, needle: &str) -> usize {
        self.log.extend(self.lines.try_iter());
        self.log.iter().filter(|l| l.contains(needle)).count()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("herald exited ({status}); log: {:#?}", self.log);
        }
    }
}

impl Drop for FeedHerald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under the system temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("herald-feed-test-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Lines that exercise what the feed must keep and strip: a CRLF ending,
/// non-ASCII text, an empty line, and many numbered lines.
fn feed_lines() -> (String, Vec<String>) {
    let mut input = String::from("first line\r\nhéllo ✓ from the log\n\n");
    let mut want = vec![
        "first line".to_string(),
        "héllo ✓ from the log".to_string(),
        String::new(),
    ];
    for n in 0..200 {
        input.push_str(&format!("log line {n}\n"));
        want.push(format!("log line {n}"));
    }
    (input, want)
}

/// Each client reads exactly `want`, in order (text, no prefix).
fn assert_each_receives(clients: &mut [Client], want: &[String]) {
    for (i, c) in clients.iter_mut().enumerate() {
        for (n, line) in want.iter().enumerate() {
            assert_eq!(&recv_text(c), line, "client {i}, line {n}");
        }
    }
}

/// After the feed ended: logged once, still running, and a client's
/// message is still broadcast to every client (and is the next message
/// each reads, so no stray feed line is left over).
fn assert_still_serving(herald: &mut FeedHerald, clients: &mut [Client]) {
    herald.wait_for_log(END_OF_INPUT);
    herald.assert_running();
    send_text(&mut clients[0], "after the feed ended");
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            recv_text(c),
            format!("{PREFIX}after the feed ended"),
            "client {i}"
        );
    }
    herald.assert_running();
    assert_eq!(herald.count_in_log(END_OF_INPUT), 1, "{:#?}", herald.log);
}

/// Opens the write end of `fifo` once herald has opened the read end
/// (a non-blocking open fails with ENXIO until then), within TIMEOUT.
fn open_fifo_writer(fifo: &Path, herald: &mut FeedHerald) -> File {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
        {
            Ok(f) => {
                // Back to blocking writes: the test writes more than a pipe holds.
                // SAFETY: fcntl on a descriptor this File owns.
                let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
                let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
                assert!(flags >= 0, "F_GETFL");
                // SAFETY: as above.
                let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) };
                assert_eq!(rc, 0, "F_SETFL");
                return f;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                herald.assert_running();
                assert!(
                    Instant::now() < deadline,
                    "herald never opened the feed {fifo:?}"
                );
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("open {fifo:?} for writing: {e}"),
        }
    }
}

#[test]
fn lines_written_to_a_named_pipe_reach_every_client_in_order() {
    let dir = TempDir::new();
    let fifo = dir.0.join("feed");
    let status = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {fifo:?}: {status}");

    let mut herald = FeedHerald::start(fifo.to_str().unwrap());
    // Every client is upgraded before the first line is written.
    let mut clients = connect_many(herald.addr, 3);
    let mut writer = open_fifo_writer(&fifo, &mut herald);
    let (input, want) = feed_lines();
    writer
        .write_all(input.as_bytes())
        .expect("write to the pipe");
    assert_each_receives(&mut clients, &want);

    // A second burst on the same pipe, then the writer closes: end of input.
    writer.write_all(b"last line\n").unwrap();
    drop(writer);
    assert_each_receives(&mut clients, &["last line".to_string()]);
    assert_still_serving(&mut herald, &mut clients);
}

#[test]
fn lines_written_to_standard_input_reach_every_client_in_order() {
    let mut herald = FeedHerald::start("-");
    let mut clients = connect_many(herald.addr, 3);
    let mut stdin = herald.child.stdin.take().expect("stdin");
    let (input, want) = feed_lines();
    stdin.write_all(input.as_bytes()).expect("write to stdin");
    stdin.flush().unwrap();
    assert_each_receives(&mut clients, &want);
    // herald is still reading: nothing has ended yet.
    assert_eq!(herald.count_in_log(END_OF_INPUT), 0);

    // A final line without a newline still counts; closing stdin ends the feed.
    stdin.write_all(b"no newline at the end").unwrap();
    drop(stdin);
    assert_each_receives(&mut clients, &["no newline at the end".to_string()]);
    assert_still_serving(&mut herald, &mut clients);
}
