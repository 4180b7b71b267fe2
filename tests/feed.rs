//! `--feed PATH` (a named pipe) and `--feed -` (standard input): every line
//! becomes one text broadcast, without the prefix, in order, to every open
//! client; at end of input the server logs it once and keeps serving.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    assert_each_receives, connect_many, recv_text, send_text, Client, HeraldProcess, PREFIX,
    TIMEOUT,
};

/// The log line herald writes once when the feed ends.
const END_OF_INPUT: &str = "feed reached end of input";

/// The `herald` binary with `--feed` and standard input piped.
fn start_herald(feed: &str) -> HeraldProcess {
    HeraldProcess::builder()
        .flags(&["--feed", feed])
        .stdin_piped()
        .start()
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

/// After the feed ended: logged once, still running, and a client's
/// message is still broadcast to every client (and is the next message
/// each reads, so no stray feed line is left over).
fn assert_still_serving(herald: &mut HeraldProcess, clients: &mut [Client]) {
    herald.expect_line(END_OF_INPUT, |l| l.contains(END_OF_INPUT));
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
    assert_eq!(herald.count_in_log(END_OF_INPUT), 1, "{:#?}", herald.log());
}

/// Opens the write end of `fifo` once herald has opened the read end
/// (a non-blocking open fails with ENXIO until then), within TIMEOUT.
fn open_fifo_writer(fifo: &Path, herald: &mut HeraldProcess) -> File {
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

    let mut herald = start_herald(fifo.to_str().unwrap());
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
    let mut herald = start_herald("-");
    let mut clients = connect_many(herald.addr, 3);
    let mut stdin = herald.take_stdin();
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
