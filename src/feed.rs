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

use crate::nonblock::interrupted;
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
                match read_line(&mut reader, &mut line) {
                    Ok(false) => break,
                    Ok(true) => {
                        let text = String::from_utf8_lossy(&line).into_owned().into_bytes();
                        if tx.send(text).is_err() {
                            return; // the server is gone
                        }
                        let _ = waker.wake();
                    }
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

/// Reads one line into `line` without its line ending, keeping at most
/// [`MAX_LINE`] bytes of it (the rest of a longer line is skipped).
/// Returns false at end of input.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<bool> {
    let mut seen = false;
    loop {
        let (done, used) = {
            let buf = match reader.fill_buf() {
                Ok(b) => b,
                Err(e) if interrupted(&e) => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                return Ok(seen);
            }
            seen = true;
            let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            let room = MAX_LINE.saturating_sub(line.len());
            line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            (done.is_some(), done.unwrap_or(buf.len()))
        };
        reader.consume(used);
        if done {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_and_the_rest_skipped() {
        let mut input = vec![b'a'; MAX_LINE + 10];
        input.extend_from_slice(b"\r\nsecond\nlast without newline");
        let mut r = io::BufReader::with_capacity(1000, &input[..]);
        let mut line = Vec::new();
        assert!(read_line(&mut r, &mut line).unwrap());
        assert_eq!(line.len(), MAX_LINE);
        line.clear();
        assert!(read_line(&mut r, &mut line).unwrap());
        assert_eq!(line, b"second");
        line.clear();
        assert!(read_line(&mut r, &mut line).unwrap());
        assert_eq!(line, b"last without newline");
        line.clear();
        assert!(!read_line(&mut r, &mut line).unwrap());
    }
}
