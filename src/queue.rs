//! The per-connection write queue.
//!
//! A FIFO of shared [`Frame`] handles plus an offset into the front one.
//! Flushing gathers up to [`MAX_IOVECS`] frames into one vectored write, so many
//! broadcasts queued in one loop iteration leave in one syscall, and a
//! partial write resumes exactly where it stopped.
//!
//! # Invariants
//! * `queued` equals the sum of the lengths of the frames minus `offset`.
//! * `offset < frames[0].len()` whenever the queue is not empty: a fully
//!   written frame is popped at once.
//! * Bytes only ever leave from the front, so frames are never interleaved:
//!   whatever enters the queue (a broadcast, a pong, a close reply) reaches
//!   the socket whole and in order.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::mem::MaybeUninit;

use crate::frame::Frame;

/// How many frames one vectored write carries at most. Linux allows 1024; past a
/// few dozen small frames the syscall cost is already amortised.
pub const MAX_IOVECS: usize = 64;

/// The outcome of [`WriteQueue::flush`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued reached the socket.
    Empty,
    /// The socket would block; the rest waits for the next writable event.
    Blocked,
}

/// A FIFO of encoded frames waiting for one socket.
#[derive(Debug, Default)]
pub struct WriteQueue {
    /// Frames not yet fully written, oldest first.
    frames: VecDeque<Frame>,
    /// Bytes of `frames[0]` already written.
    offset: usize,
    /// Unwritten bytes across all frames.
    queued: usize,
}

impl WriteQueue {
    /// An empty queue; it allocates on the first push and keeps its capacity.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a frame handle (a reference-count bump, no copy).
    #[inline]
    pub fn push(&mut self, frame: Frame) {
        self.queued += frame.len();
        self.frames.push_back(frame);
    }

    /// Unwritten bytes.
    #[inline]
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Whether nothing is waiting.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Drops every frame not yet started, keeping a partly written front
    /// frame so the byte stream stays well-framed. Used before a final close
    /// frame is queued for a client that stopped reading.
    pub fn discard_unsent(&mut self) {
        let keep = usize::from(self.offset > 0);
        self.frames.truncate(keep);
        self.queued = self.frames.front().map_or(0, |f| f.len() - self.offset);
        if self.frames.is_empty() {
            self.frames.shrink_to_fit();
        }
    }

    /// Writes as much as `w` takes, gathering frames into vectored writes.
    ///
    /// # Errors
    /// Any error of `w` other than `WouldBlock` and `Interrupted`; a write of
    /// zero bytes is reported as `WriteZero`.
    pub fn flush<W: Write>(&mut self, w: &mut W) -> io::Result<Flushed> {
        while !self.frames.is_empty() {
            let written = {
                // Only the slices in use are initialised: a flush of one
                // frame (the common case under light load) should not pay
                // for zeroing a whole batch.
                let mut slices = [MaybeUninit::<IoSlice<'_>>::uninit(); MAX_IOVECS];
                let mut n = 0;
                for (slot, frame) in slices.iter_mut().zip(self.frames.iter()) {
                    let start = if n == 0 { self.offset } else { 0 };
                    slot.write(IoSlice::new(&frame[start..]));
                    n += 1;
                }
                // SAFETY: the first `n` elements were initialised just above,
                // and `MaybeUninit<T>` has the layout of `T`.
                let slices =
                    unsafe { std::slice::from_raw_parts(slices.as_ptr().cast::<IoSlice<'_>>(), n) };
                match w.write_vectored(slices) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(written) => written,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            self.advance(written);
        }
        // A drained queue gives back memory a burst made it take.
        if self.frames.capacity() > 64 {
            self.frames.shrink_to(16);
        }
        Ok(Flushed::Empty)
    }

    /// Marks `n` bytes from the front as written.
    fn advance(&mut self, mut n: usize) {
        debug_assert!(n <= self.queued);
        if n == self.queued {
            // The common case: the socket took everything.
            self.frames.clear();
            self.offset = 0;
            self.queued = 0;
            return;
        }
        self.queued -= n;
        while n > 0 {
            let front = self.frames[0].len() - self.offset;
            if n >= front {
                n -= front;
                self.offset = 0;
                self.frames.pop_front();
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that accepts at most `step` bytes per call and blocks every
    /// other call, like a congested socket.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut left = self.step;
            let mut total = 0;
            for b in bufs {
                let n = b.len().min(left);
                self.out.extend_from_slice(&b[..n]);
                left -= n;
                total += n;
                if left == 0 {
                    break;
                }
            }
            Ok(total)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn frames() -> (Vec<Frame>, Vec<u8>) {
        let mut all = Vec::new();
        let frames: Vec<Frame> = (0..200)
            .map(|i| {
                let payload = vec![b'a' + (i % 26) as u8; i * 7 % 300];
                let f = crate::frame::encode(crate::frame::OP_TEXT, b"", &payload);
                all.extend_from_slice(&f);
                f
            })
            .collect();
        (frames, all)
    }

    #[test]
    fn survives_partial_writes_of_any_size() {
        for step in [1, 2, 3, 7, 64, 1000] {
            let (frames, expected) = frames();
            let mut q = WriteQueue::new();
            for f in &frames {
                q.push(f.clone());
            }
            assert_eq!(q.queued(), expected.len());
            let mut w = Trickle {
                out: Vec::new(),
                step,
                calls: 0,
            };
            let mut rounds = 0;
            while q.flush(&mut w).unwrap() == Flushed::Blocked {
                assert_eq!(q.queued(), expected.len() - w.out.len());
                rounds += 1;
                assert!(rounds < 1_000_000);
            }
            assert!(q.is_empty());
            assert_eq!(q.queued(), 0);
            assert_eq!(w.out, expected, "step {step}");
        }
    }

    #[test]
    fn discard_keeps_the_partly_written_frame_whole() {
        let (frames, _) = frames();
        let mut q = WriteQueue::new();
        for f in &frames[1..10] {
            q.push(f.clone());
        }
        let first = frames[1].clone();
        let mut w = Trickle {
            out: Vec::new(),
            step: 3,
            calls: 0,
        };
        assert_eq!(q.flush(&mut w).unwrap(), Flushed::Blocked);
        q.discard_unsent();
        q.push(crate::frame::encode_close(1008, "slow"));
        while q.flush(&mut w).unwrap() == Flushed::Blocked {}
        let mut expected = first.to_vec();
        expected.extend_from_slice(&crate::frame::encode_close(1008, "slow"));
        assert_eq!(w.out, expected);
    }

    #[test]
    fn write_zero_is_an_error() {
        struct Zero;
        impl Write for Zero {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Ok(0)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut q = WriteQueue::new();
        q.push(crate::frame::encode(crate::frame::OP_TEXT, b"", b"x"));
        assert_eq!(
            q.flush(&mut Zero).unwrap_err().kind(),
            io::ErrorKind::WriteZero
        );
    }
}
