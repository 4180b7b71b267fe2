//! Flushing a slice of the round through io_uring (`--io-uring`).
//!
//! Readiness still comes from epoll (mio); only the round's writes change:
//! each connection of a slice with bytes ready gets one `SENDMSG` entry
//! pointing at its queued frames (no copy), and one `io_uring_enter`
//! submits them all and waits for every completion, which is then applied
//! to its connection exactly as a `sendmsg(2)` result is
//! ([`Conn::complete_write`]).
//!
//! # Invariants
//! * A connection has at most one write in the ring, and its queue is not
//!   touched between the write's preparation and its completion: the
//!   entry points into the queue's frames.
//! * Every write carries `MSG_DONTWAIT`, so the kernel runs it at
//!   submission and completes it at once, with `EAGAIN` when the socket is
//!   full, instead of parking it until the socket is writable: nothing is
//!   left in flight when [`Ring::flush`] returns, and a full socket blocks
//!   its connection until a writable event, as with `sendmsg`.
//! * The message headers and iovecs live in buffers the ring owns,
//!   allocated once (zeroed pages the kernel maps on first use): a flush
//!   allocates nothing, and the iovecs of a submission are packed, so a
//!   slice of connections with a few frames each touches a few pages.

use std::io;

use io_uring::{opcode, types, IoUring};
use slab::Slab;

use crate::conn::Conn;
use crate::queue::MAX_IOVECS;
use crate::stats::Stats;

/// Writes per `io_uring_enter`: the default `--flush-slice`, so a slice
/// is one submission (a larger slice takes several).
const ENTRIES: usize = 512;

/// The ring and the memory its writes point at.
pub(crate) struct Ring {
    ring: IoUring,
    /// One message header per entry, each pointing at its run of `iovecs`.
    headers: Box<[libc::msghdr]>,
    /// The entries' iovecs, one run after another: room for
    /// [`MAX_IOVECS`] per entry.
    iovecs: Box<[libc::iovec]>,
    /// The connections a partial write left with bytes to send at once.
    again: Vec<usize>,
    /// The connections of the current pass (kept for its allocation).
    todo: Vec<usize>,
}

impl Ring {
    /// Sets up a ring.
    ///
    /// # Errors
    /// The kernel's: `EPERM` where `kernel.io_uring_disabled` forbids it,
    /// `ENOSYS` where the kernel has no io_uring, `ENOMEM` past the locked
    /// memory limit.
    pub fn new() -> io::Result<Self> {
        // One issuer (the loop's thread); task work, were there any, is
        // run at the next entry instead of interrupting the thread; a bad
        // entry does not leave the rest unsubmitted. A kernel without
        // these flags gets a plain ring.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_submit_all()
            .setup_coop_taskrun()
            .build(ENTRIES as u32)
            .or_else(|_| IoUring::new(ENTRIES as u32))?;
        // SAFETY: msghdr and iovec are plain C structs (integers and raw
        // pointers) for which all zeros is a valid, empty value.
        let (headers, iovecs) = unsafe {
            (
                Box::<[libc::msghdr]>::new_zeroed_slice(ENTRIES).assume_init(),
                Box::<[libc::iovec]>::new_zeroed_slice(ENTRIES * MAX_IOVECS).assume_init(),
            )
        };
        Ok(Ring {
            ring,
            headers,
            iovecs,
            again: Vec::new(),
            todo: Vec::new(),
        })
    }

    /// Writes the queues of the connections `keys` (each listed once, each
    /// with [`Conn::has_write_ready`]) until each is empty, blocked or
    /// doomed: one submission per [`ENTRIES`] connections, then again for
    /// those a partial write left with bytes.
    ///
    /// # Errors
    /// An error of `io_uring_enter` itself (not of a write, which goes to
    /// its connection): the ring is not to be used again. The connections
    /// whose completions were applied are up to date; the others are as
    /// they were (with `MSG_DONTWAIT` no write is left in flight), so the
    /// caller flushes them with `sendmsg`.
    pub fn flush(
        &mut self,
        conns: &mut Slab<Conn>,
        keys: &[usize],
        tick: u32,
        stats: &mut Stats,
    ) -> io::Result<()> {
        self.again.clear();
        self.again.extend_from_slice(keys);
        let mut todo = std::mem::take(&mut self.todo);
        let mut result = Ok(());
        while !self.again.is_empty() && result.is_ok() {
            std::mem::swap(&mut todo, &mut self.again);
            result = todo
                .chunks(ENTRIES)
                .try_for_each(|chunk| self.write(conns, chunk, tick, stats));
            todo.clear();
        }
        self.todo = todo;
        result
    }

    /// One submission: a `SENDMSG` per connection of `chunk` (at most
    /// [`ENTRIES`]), waited for and applied.
    fn write(
        &mut self,
        conns: &mut Slab<Conn>,
        chunk: &[usize],
        tick: u32,
        stats: &mut Stats,
    ) -> io::Result<()> {
        debug_assert!(chunk.len() <= ENTRIES);
        {
            let mut sq = self.ring.submission();
            let mut used = 0;
            for (i, &k) in chunk.iter().enumerate() {
                let conn = &conns[k];
                debug_assert!(conn.has_write_ready());
                // At most MAX_IOVECS slices per entry: the run fits.
                let run = &mut self.iovecs[used..used + MAX_IOVECS];
                let mut n = 0;
                for (slot, bytes) in run.iter_mut().zip(conn.write_slices()) {
                    *slot = libc::iovec {
                        iov_base: bytes.as_ptr() as *mut libc::c_void,
                        iov_len: bytes.len(),
                    };
                    n += 1;
                }
                let header = &mut self.headers[i];
                header.msg_iov = run.as_mut_ptr();
                header.msg_iovlen = n as _;
                used += n;
                let entry = opcode::SendMsg::new(types::Fd(conn.raw_fd()), header)
                    .flags((libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) as u32)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the header, its iovecs and the frames they point
                // at stay valid and unchanged until the entry completes,
                // which happens before this function returns (the loop
                // below waits for every completion, and no queue changes
                // before its own completion). The queue was empty (every
                // earlier submission was reaped whole) and holds ENTRIES.
                unsafe { sq.push(&entry) }.expect("a submission never exceeds the ring");
            }
        }
        let mut left = chunk.len();
        while left > 0 {
            match self.ring.submit_and_wait(left) {
                Ok(_) => {}
                // Interrupted, or the kernel asks for the completions to be
                // reaped first: reap what is there and wait again.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e),
            }
            for cqe in self.ring.completion() {
                left -= 1;
                let k = chunk[cqe.user_data() as usize];
                let res = cqe.result();
                let result = if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    Ok(res as usize)
                };
                if conns[k].complete_write(result, tick, stats) {
                    self.again.push(k);
                }
            }
        }
        Ok(())
    }
}
