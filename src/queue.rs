//! The per-connection write queue.
//!
//! A FIFO of shared [`Frame`] handles plus an offset into the front one.
//! Flushing gathers up to [`MAX_IOVECS`] frames into one vectored write, so many
//! broadcasts queued in one loop iteration leave in one syscall, and a
//! partial write resumes exactly where it stopped.
//!
//! Each entry knows what it is ([`Kind`]): broadcast data may be discarded
//! for a client that fell behind, while herald's own answers (a 101, an
//! HTTP response, a pong, a close frame) never are. At most
//! [`MAX_WAITING_PONGS`] pongs wait at once: past that, a newer ping's pong
//! replaces the newest one not yet started (RFC 6455 §5.5.3 allows
//! answering only the latest ping).
//!
//! # Invariants
//! * `queued` equals the sum of the lengths of the entries minus `offset`,
//!   and `backlog` the same over broadcast entries only.
//! * `offset < entries[0].len()` whenever the queue is not empty: a fully
//!   written entry is popped at once.
//! * `waiting_pongs` counts the pong entries not yet started (at most
//!   [`MAX_WAITING_PONGS`]), and while it is not zero `pong` is the absolute
//!   index of the newest of them.
//! * Bytes only ever leave from the front, so frames are never interleaved:
//!   whatever enters the queue (a broadcast, a pong, a close reply) reaches
//!   the socket whole and in order.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::mem::MaybeUninit;

use crate::frame::Frame;
use crate::nonblock::{interrupted, would_block};
use crate::stats::WriteTally;

/// How many frames one vectored write carries at most. Linux allows 1024; past a
/// few dozen small frames the syscall cost is already amortised.
pub const MAX_IOVECS: usize = 64;

/// What one queue entry costs in memory besides its bytes: the deque slot,
/// the shared allocation's counts and the allocator's own overhead. Counted
/// against `--max-queued-bytes`, so a flood of tiny frames is charged what
/// it really costs, not 2 bytes each.
pub const ENTRY_COST: usize = 64;

/// Pongs that may wait unsent at once, each answering its own ping. A
/// client that pings and reads gets every pong (Autobahn's case 2.10 checks
/// that ten pings get ten pongs); one that pings without reading costs at
/// most this many.
pub const MAX_WAITING_PONGS: u8 = 16;

/// What a queue entry is, which decides whether it may be discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Broadcast data shared with other recipients: may be discarded for a
    /// slow consumer.
    Broadcast,
    /// herald's own answer to this client (a handshake or HTTP response, a
    /// close frame, a keepalive ping, a notice): never discarded.
    Own,
    /// A pong: never discarded; replaced by a newer one while unsent once
    /// [`MAX_WAITING_PONGS`] wait.
    Pong,
}

/// The outcome of [`WriteQueue::flush`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued reached the socket.
    Empty,
    /// The socket would block; the rest waits for the next writable event.
    Blocked,
}

#[derive(Debug)]
struct Entry {
    frame: Frame,
    kind: Kind,
    /// Broadcast messages in `frame` (a room's batch joins several), for
    /// [`WriteTally`]; 0 for herald's own frames.
    frames: u32,
}

/// A FIFO of encoded frames waiting for one socket.
#[derive(Debug, Default)]
pub struct WriteQueue {
    /// Entries not yet fully written, oldest first.
    entries: VecDeque<Entry>,
    /// Bytes of `entries[0]` already written.
    offset: usize,
    /// Unwritten bytes across all entries.
    queued: usize,
    /// Unwritten bytes of broadcast entries.
    backlog: usize,
    /// Broadcast entries queued.
    broadcasts: u32,
    /// Absolute index of `entries[0]` (entries popped so far, wrapping).
    head: u32,
    /// Absolute index of the newest pong not yet started, when
    /// `waiting_pongs` is not zero.
    pong: u32,
    /// Pong entries not yet started.
    waiting_pongs: u8,
}

impl WriteQueue {
    /// An empty queue; it allocates on the first push and keeps its capacity.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a frame handle (a reference-count bump, no copy).
    #[inline]
    pub fn push(&mut self, frame: Frame, kind: Kind) {
        self.push_entry(frame, kind, u32::from(kind == Kind::Broadcast));
    }

    /// Appends a broadcast batch of `frames` messages.
    #[inline]
    pub fn push_broadcast(&mut self, batch: Frame, frames: u32) {
        self.push_entry(batch, Kind::Broadcast, frames);
    }

    #[inline]
    fn push_entry(&mut self, frame: Frame, kind: Kind, frames: u32) {
        if kind == Kind::Pong {
            if self.waiting_pongs >= MAX_WAITING_PONGS {
                let i = self.pong.wrapping_sub(self.head) as usize;
                let old = std::mem::replace(&mut self.entries[i].frame, frame);
                self.queued = self.queued - old.len() + self.entries[i].frame.len();
                return;
            }
            self.pong = self.head.wrapping_add(self.entries.len() as u32);
            self.waiting_pongs += 1;
        }
        self.queued += frame.len();
        if kind == Kind::Broadcast {
            self.backlog += frame.len();
            self.broadcasts += 1;
        }
        self.entries.push_back(Entry {
            frame,
            kind,
            frames,
        });
    }

    /// Unwritten bytes.
    #[inline]
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// What the queue costs in memory: its unwritten bytes plus
    /// [`ENTRY_COST`] per entry.
    #[inline]
    pub fn cost(&self) -> usize {
        self.queued + self.entries.len() * ENTRY_COST
    }

    /// What the unwritten broadcast entries cost, as [`WriteQueue::cost`]
    /// counts it: the measure of a client falling behind.
    #[inline]
    pub fn backlog(&self) -> usize {
        self.backlog + self.broadcasts as usize * ENTRY_COST
    }

    /// Whether nothing is waiting.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops every broadcast entry not yet started, keeping herald's own
    /// answers and a partly written front entry, so the byte stream stays
    /// well-framed and a client is never left without its 101 or its pong.
    /// Used before a final close frame is queued for a client that fell
    /// behind.
    pub fn discard_broadcasts(&mut self) {
        let started = self.offset > 0;
        let mut i = 0;
        self.entries.retain(|e| {
            let keep = e.kind != Kind::Broadcast || (i == 0 && started);
            i += 1;
            keep
        });
        self.queued = 0;
        self.backlog = 0;
        self.broadcasts = 0;
        self.waiting_pongs = 0;
        for (i, e) in self.entries.iter().enumerate() {
            let left = e.frame.len() - if i == 0 { self.offset } else { 0 };
            self.queued += left;
            match e.kind {
                Kind::Broadcast => {
                    self.backlog += left;
                    self.broadcasts += 1;
                }
                Kind::Pong if i > 0 || self.offset == 0 => {
                    self.pong = self.head.wrapping_add(i as u32);
                    self.waiting_pongs += 1;
                }
                _ => {}
            }
        }
        if self.entries.is_empty() {
            self.offset = 0;
            self.entries.shrink_to_fit();
        }
    }

    /// Gives back the memory of an empty queue (a later push allocates it
    /// again).
    pub fn release_if_empty(&mut self) {
        if self.entries.is_empty() && self.entries.capacity() > 0 {
            self.entries = VecDeque::new();
        }
    }

    /// Writes as much as `w` takes, gathering frames into vectored writes,
    /// each write that carried broadcast bytes counted in `tally`.
    ///
    /// # Errors
    /// Any error of `w` other than `WouldBlock` and `Interrupted`; a write of
    /// zero bytes is reported as `WriteZero`.
    pub fn flush<W: Write>(&mut self, w: &mut W, tally: &mut WriteTally) -> io::Result<Flushed> {
        while !self.entries.is_empty() {
            let result = {
                // Only the slices in use are initialised: a flush of one
                // frame (the common case under light load) should not pay
                // for zeroing a whole batch.
                let mut slices = [MaybeUninit::<IoSlice<'_>>::uninit(); MAX_IOVECS];
                let mut n = 0;
                for (slot, bytes) in slices.iter_mut().zip(self.slices()) {
                    slot.write(IoSlice::new(bytes));
                    n += 1;
                }
                // SAFETY: the first `n` elements were initialised just above,
                // and `MaybeUninit<T>` has the layout of `T`.
                let slices =
                    unsafe { std::slice::from_raw_parts(slices.as_ptr().cast::<IoSlice<'_>>(), n) };
                w.write_vectored(slices)
            };
            if let Some(outcome) = self.complete(result, tally) {
                return outcome;
            }
        }
        Ok(self.drained())
    }

    /// What the next write should carry: the unwritten bytes of the first
    /// [`MAX_IOVECS`] entries, in order. For a write made elsewhere (a ring
    /// of `sendmsg`s); its result goes to [`WriteQueue::complete`] before
    /// the queue changes in any other way, since the write points into the
    /// queue's frames.
    #[inline]
    pub fn slices(&self) -> impl Iterator<Item = &[u8]> {
        self.entries
            .iter()
            .take(MAX_IOVECS)
            .enumerate()
            .map(|(i, e)| &e.frame[if i == 0 { self.offset } else { 0 }..])
    }

    /// Applies the result of one write of [`WriteQueue::slices`]: the bytes
    /// written leave the queue (counted in `tally` when they carried
    /// broadcast bytes). Returns `None` when the flush goes on (bytes are
    /// left and the socket did not say it would block), else its outcome.
    ///
    /// # Errors
    /// The write's error, other than `WouldBlock` and `Interrupted`; a write
    /// of zero bytes is reported as `WriteZero`.
    pub fn complete(
        &mut self,
        result: io::Result<usize>,
        tally: &mut WriteTally,
    ) -> Option<io::Result<Flushed>> {
        match result {
            Ok(0) => Some(Err(io::ErrorKind::WriteZero.into())),
            Ok(written) => {
                let (frames, carried_broadcast) = self.advance(written);
                if carried_broadcast {
                    tally.record(frames);
                }
                self.entries.is_empty().then(|| Ok(self.drained()))
            }
            Err(e) if would_block(&e) => Some(Ok(Flushed::Blocked)),
            Err(e) if interrupted(&e) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// The end of a flush that left nothing: a drained queue gives back
    /// memory a burst made it take.
    fn drained(&mut self) -> Flushed {
        if self.entries.capacity() > 64 {
            self.entries.shrink_to(16);
        }
        Flushed::Empty
    }

    /// Marks `n` bytes from the front as written. Returns the broadcast
    /// messages this completed and whether any broadcast bytes were among
    /// the `n`.
    fn advance(&mut self, mut n: usize) -> (u32, bool) {
        debug_assert!(n <= self.queued);
        if n == self.queued {
            // The common case: the socket took everything.
            let frames = self.entries.iter().map(|e| e.frames).sum();
            let carried = self.backlog > 0;
            self.head = self.head.wrapping_add(self.entries.len() as u32);
            self.entries.clear();
            self.offset = 0;
            self.queued = 0;
            self.backlog = 0;
            self.broadcasts = 0;
            self.waiting_pongs = 0;
            return (frames, carried);
        }
        self.queued -= n;
        let (mut frames, mut carried) = (0, false);
        while n > 0 {
            let front = &self.entries[0];
            let left = front.frame.len() - self.offset;
            let step = n.min(left);
            match front.kind {
                Kind::Broadcast => {
                    self.backlog -= step;
                    carried = true;
                }
                Kind::Pong if self.offset == 0 => {
                    // Started: a newer pong must not replace it mid-write.
                    // (Pongs start in order, so the newest is the last.)
                    self.waiting_pongs -= 1;
                }
                _ => {}
            }
            n -= step;
            if step == left {
                if front.kind == Kind::Broadcast {
                    self.broadcasts -= 1;
                }
                frames += front.frames;
                self.offset = 0;
                self.entries.pop_front();
                self.head = self.head.wrapping_add(1);
            } else {
                self.offset += step;
            }
        }
        (frames, carried)
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

    const KINDS: [Kind; 3] = [Kind::Broadcast, Kind::Own, Kind::Broadcast];

    /// The backlog recomputed from the entries, to check the running count.
    fn backlog_of(q: &WriteQueue) -> usize {
        q.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == Kind::Broadcast)
            .map(|(i, e)| e.frame.len() - if i == 0 { q.offset } else { 0 } + ENTRY_COST)
            .sum()
    }

    fn pong(payload: &[u8]) -> Frame {
        crate::frame::encode(crate::frame::OP_PONG, b"", payload)
    }

    #[test]
    fn pongs_wait_up_to_the_cap_then_the_newest_is_replaced() {
        let (frames, _) = frames();
        let mut q = WriteQueue::new();
        q.push(frames[5].clone(), Kind::Broadcast);
        let cap = u32::from(MAX_WAITING_PONGS);
        for i in 0..10_000u32 {
            q.push(pong(&i.to_be_bytes()), Kind::Pong);
        }
        q.push(frames[6].clone(), Kind::Broadcast);
        q.push(pong(b"last"), Kind::Pong);
        assert_eq!(
            q.entries.len(),
            2 + cap as usize,
            "pongs past the cap coalesce"
        );
        // Every ping up to the cap gets its own pong; the last one waiting
        // answers the latest ping.
        let mut expected = frames[5].to_vec();
        for i in 0..cap - 1 {
            expected.extend_from_slice(&pong(&i.to_be_bytes()));
        }
        expected.extend_from_slice(&pong(b"last"));
        expected.extend_from_slice(&frames[6]);
        assert_eq!(q.queued(), expected.len());
        // A pong being written is not replaced: newer ones queue behind.
        let mut w = Trickle {
            out: Vec::new(),
            step: frames[5].len() + 1,
            calls: 0,
        };
        assert_eq!(
            q.flush(&mut w, &mut WriteTally::default()).unwrap(),
            Flushed::Blocked
        );
        assert_eq!(q.waiting_pongs, MAX_WAITING_PONGS - 1);
        q.push(pong(b"newer"), Kind::Pong);
        q.push(pong(b"newest"), Kind::Pong);
        expected.extend_from_slice(&pong(b"newest"));
        while q.flush(&mut w, &mut WriteTally::default()).unwrap() == Flushed::Blocked {}
        assert_eq!(w.out, expected);
        assert_eq!((q.queued(), q.backlog(), q.cost()), (0, 0, 0));
        assert_eq!(q.waiting_pongs, 0);
    }

    #[test]
    fn writes_are_tallied_by_the_broadcast_messages_they_complete() {
        let (frames, _) = frames();
        let mut q = WriteQueue::new();
        // A batch of 3 messages, herald's own frame, a batch of 2.
        q.push_broadcast(frames[5].clone(), 3);
        q.push(frames[1].clone(), Kind::Own);
        q.push_broadcast(frames[6].clone(), 2);
        let mut tally = WriteTally::default();
        // All at once: one write, five messages.
        let mut w = Trickle {
            out: Vec::new(),
            step: usize::MAX,
            calls: 0,
        };
        assert_eq!(q.flush(&mut w, &mut tally).unwrap(), Flushed::Empty);
        assert_eq!((tally.writes, tally.frames), (1, 5));
        // A byte at a time: every write that carried broadcast bytes counts,
        // each message is counted by the write that completed it, and the
        // writes of herald's own frame alone do not count.
        q.push_broadcast(frames[5].clone(), 3);
        q.push(frames[1].clone(), Kind::Own);
        let mut tally = WriteTally::default();
        let mut w = Trickle {
            out: Vec::new(),
            step: 1,
            calls: 0,
        };
        while q.flush(&mut w, &mut tally).unwrap() == Flushed::Blocked {}
        assert_eq!(tally.frames, 3);
        assert_eq!(tally.writes, frames[5].len() as u64);
        assert_eq!(tally.buckets[0], frames[5].len() as u64 - 1);
        assert_eq!(tally.buckets[2], 1, "the write that completed the batch");
    }

    #[test]
    fn cost_counts_every_entry() {
        let mut q = WriteQueue::new();
        let f = crate::frame::encode(crate::frame::OP_TEXT, b"", b"");
        for _ in 0..100 {
            q.push(f.clone(), Kind::Broadcast);
        }
        q.push(f.clone(), Kind::Own);
        assert_eq!(q.queued(), 101 * 2);
        assert_eq!(q.cost(), 101 * (2 + ENTRY_COST));
        assert_eq!(q.backlog(), 100 * (2 + ENTRY_COST));
    }

    #[test]
    fn discard_keeps_herald_s_own_answers() {
        let (frames, _) = frames();
        let mut q = WriteQueue::new();
        q.push(
            Frame::from_bytes(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Kind::Own,
        );
        q.push(frames[3].clone(), Kind::Broadcast);
        q.push(pong(b"p"), Kind::Pong);
        q.push(frames[4].clone(), Kind::Broadcast);
        q.discard_broadcasts();
        q.push(pong(b"q"), Kind::Pong);
        assert_eq!(q.backlog(), 0);
        let mut w = Trickle {
            out: Vec::new(),
            step: 1000,
            calls: 0,
        };
        while q.flush(&mut w, &mut WriteTally::default()).unwrap() == Flushed::Blocked {}
        let mut expected = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
        expected.extend_from_slice(&pong(b"p"));
        expected.extend_from_slice(&pong(b"q"));
        assert_eq!(w.out, expected);
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
            for (i, f) in frames.iter().enumerate() {
                q.push(f.clone(), KINDS[i % 3]);
            }
            assert_eq!(q.queued(), expected.len());
            let mut w = Trickle {
                out: Vec::new(),
                step,
                calls: 0,
            };
            let mut rounds = 0;
            while q.flush(&mut w, &mut WriteTally::default()).unwrap() == Flushed::Blocked {
                assert_eq!(q.queued(), expected.len() - w.out.len());
                assert_eq!(q.backlog(), backlog_of(&q));
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
            q.push(f.clone(), Kind::Broadcast);
        }
        let first = frames[1].clone();
        let mut w = Trickle {
            out: Vec::new(),
            step: 3,
            calls: 0,
        };
        assert_eq!(
            q.flush(&mut w, &mut WriteTally::default()).unwrap(),
            Flushed::Blocked
        );
        q.discard_broadcasts();
        assert_eq!(q.backlog(), backlog_of(&q));
        q.push(crate::frame::encode_close(1008, "slow"), Kind::Own);
        while q.flush(&mut w, &mut WriteTally::default()).unwrap() == Flushed::Blocked {}
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
        q.push(
            crate::frame::encode(crate::frame::OP_TEXT, b"", b"x"),
            Kind::Own,
        );
        assert_eq!(
            q.flush(&mut Zero, &mut WriteTally::default())
                .unwrap_err()
                .kind(),
            io::ErrorKind::WriteZero
        );
    }
}
