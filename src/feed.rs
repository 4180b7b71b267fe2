//! `--feed`: every line of standard input, a file or a named pipe becomes
//! one text broadcast.
//!
//! A reader thread does the blocking reads and hands lines to the loop over
//! a bounded channel, waking it with the loop's `mio::Waker`; when the loop
//! falls behind, the channel fills and the reader waits, so memory stays
//! bounded. End of input is logged once; the server keeps running.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use mio::Waker;

/// Lines buffered between the reader and the loop.
const FEED_BACKLOG: usize = 1024;

/// Longest line broadcast whole; longer lines are cut.
const MAX_LINE: usize = 64 * 1024;

/// Starts the reader for `path` (`-` is standard input).
///
/// # Errors
/// The file cannot be opened; a named pipe is opened by the reader
/// thread, since opening one blocks until a writer appears.
pub fn spawn(path: &str, waker: Arc<Waker>) -> io::Result<Receiver<Vec<u8>>> {
    let (tx, rx) = sync_channel::<Vec<u8>>(FEED_BACKLOG);
    let path = path.to_string();
    if path != "-" {
        // Fail early on a path that does not exist.
        std::fs::metadata(&path)?;
    }
    std::thread::Builder::new()
        .name("herald-feed".into())
        .spawn(move || {
            let input: Box<dyn Read> = if path == "-" {
                Box::new(io::stdin())
            } else {
                match std::fs::File::open(&path) {
                    Ok(f) => Box::new(f),
                    Err(e) => {
                        tracing::error!(feed = %path, error = %e, "cannot open feed");
                        return;
                    }
                }
            };
            let mut reader = BufReader::new(input);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader
                    .by_ref()
                    .take(MAX_LINE as u64 + 1)
                    .read_until(b'\n', &mut line)
                {
                    Ok(0) => break,
                    Ok(_) => {
                        while matches!(line.last(), Some(b'\n' | b'\r')) {
                            line.pop();
                        }
                        line.truncate(MAX_LINE);
                        let text = String::from_utf8_lossy(&line).into_owned().into_bytes();
                        if tx.send(text).is_err() {
                            return; // the server is gone
                        }
                        let _ = waker.wake();
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!(feed = %path, error = %e, "feed read failed");
                        break;
                    }
                }
            }
            tracing::info!(feed = %path, "feed reached end of input; still serving");
        })?;
    Ok(rx)
}
