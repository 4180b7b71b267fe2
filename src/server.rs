//! The event loop: one `mio::Poll`, one slab of connections, one thread.
//!
//! Each iteration: poll → handle every event (accept, read, write) → the
//! end-of-iteration phase, which fans this iteration's broadcasts out to
//! every open connection and flushes each with one `writev`, flushes the
//! other connections that queued bytes, and only then removes the
//! connections marked doomed. Slab keys are tokens and are reused, so a
//! connection is never removed mid-batch.

use std::fs::File;
use std::io::{self, Read};
use std::net::TcpListener as StdListener;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::WebSocketConfig;

use crate::config::Config;
use crate::conn::{CloseReason, Conn, Ctx, State};
use crate::frame::Frame;
use crate::http::{self, Status};
use crate::{sockopt, Shutdown};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);

/// Size of the one read buffer every socket is read into.
const READ_BUF_LEN: usize = 64 * 1024;

/// Bytes read from one connection per iteration before the others get a
/// turn; the rest is read in the next iteration (edge-triggered readiness
/// will not report it again).
const READ_BUDGET: usize = 256 * 1024;

/// How often deadlines are checked.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// Connections accepted beyond `--max-connections` only to be told 503;
/// past this many more they are closed without a word.
const REJECT_SLACK: usize = 64;

/// tungstenite's own read buffer per connection. Input reaches it from the
/// loop's buffer through memory, so a small one costs little and keeps an
/// idle connection well under 1 KiB.
const WS_READ_BUFFER: usize = 128;

/// Running totals, for logs (and metrics).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: u64,
    /// Messages received from clients.
    pub messages_in: u64,
    /// Broadcasts fanned out.
    pub broadcasts: u64,
    /// Frames queued by fan-out (broadcasts × open recipients).
    pub deliveries: u64,
    /// Clients closed for not reading.
    pub slow_consumers: u64,
    /// Connections turned away at the connection limit.
    pub over_limit: u64,
}

pub(crate) struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    cfg: Config,
    ws_config: WebSocketConfig,
    /// The loop-owned buffer every socket is read into.
    read_buf: Vec<u8>,
    /// Broadcasts encoded in this iteration.
    outbox: Vec<Frame>,
    /// Connections with bytes to flush in the end phase.
    dirty: Vec<usize>,
    /// Connections to remove in the end phase.
    doomed: Vec<usize>,
    /// Connections whose read budget ran out with input left.
    unread: Vec<usize>,
    page: Frame,
    shutdown: Shutdown,
    _waker: std::sync::Arc<Waker>,
    signals: Option<Signals>,
    /// Set once shutdown began: when to give up on close replies.
    draining: Option<Instant>,
    /// A descriptor held in reserve so that at EMFILE a connection can
    /// still be accepted and told 503 instead of spinning.
    spare_fd: Option<File>,
    /// Accepting is paused (descriptors exhausted) until this instant.
    accept_paused: Option<Instant>,
    last_sweep: Instant,
    stats: Stats,
}

impl Server {
    pub fn new(listener: StdListener, cfg: Config, shutdown: Shutdown) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = std::sync::Arc::new(Waker::new(poll.registry(), WAKER)?);
        shutdown.set_waker(waker.clone());
        let signals = if shutdown.handles_signals() {
            let mut s = Signals::new([SIGINT, SIGTERM])?;
            poll.registry()
                .register(&mut s, SIGNALS, Interest::READABLE)?;
            Some(s)
        } else {
            None
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(Some(cfg.max_message_size))
            .max_frame_size(Some(cfg.max_message_size));
        Ok(Server {
            poll,
            listener: Some(listener),
            conns: Slab::new(),
            ws_config,
            read_buf: vec![0; READ_BUF_LEN],
            outbox: Vec::new(),
            dirty: Vec::new(),
            doomed: Vec::new(),
            unread: Vec::new(),
            page: http::page_response(true),
            shutdown,
            _waker: waker,
            signals,
            draining: None,
            spare_fd: File::open("/dev/null").ok(),
            accept_paused: None,
            last_sweep: Instant::now(),
            stats: Stats::default(),
            cfg,
        })
    }

    /// Runs until shutdown completes.
    pub fn serve(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        if self.shutdown.is_requested() {
            self.begin_shutdown(Instant::now());
        }
        loop {
            let timeout = if self.unread.is_empty() {
                SWEEP_INTERVAL
            } else {
                Duration::ZERO
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(now),
                    WAKER => {
                        if self.shutdown.is_requested() {
                            self.begin_shutdown(now);
                        }
                    }
                    SIGNALS => {
                        if let Some(s) = &mut self.signals {
                            s.pending().for_each(drop);
                        }
                        self.begin_shutdown(now);
                    }
                    Token(k) => {
                        let readable =
                            event.is_readable() || event.is_read_closed() || event.is_error();
                        if readable {
                            self.read_conn(k, now);
                        }
                        if event.is_writable() {
                            if let Some(c) = self.conns.get_mut(k) {
                                c.blocked = false;
                            }
                            self.mark_dirty(k);
                        }
                    }
                }
            }
            for k in std::mem::take(&mut self.unread) {
                self.read_conn(k, now);
            }
            if now.duration_since(self.last_sweep) >= SWEEP_INTERVAL {
                self.last_sweep = now;
                self.sweep(now);
            }
            self.end_of_iteration();
            if let Some(deadline) = self.draining {
                if self.conns.is_empty() || now >= deadline {
                    tracing::info!(left = self.conns.len(), "shutdown complete");
                    return Ok(());
                }
            }
        }
    }

    fn accept_all(&mut self, now: Instant) {
        if self.accept_paused.is_some() {
            return;
        }
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(e) if is_fd_exhaustion(&e) => {
                    self.shed_one(now);
                    if self.accept_paused.is_some() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    /// At EMFILE/ENFILE: gives back the spare descriptor, accepts one
    /// connection to tell it 503, and takes the spare again. If even that
    /// fails, accepting pauses until the next sweep.
    fn shed_one(&mut self, now: Instant) {
        self.spare_fd = None;
        let accepted = self.listener.as_ref().map(|l| l.accept());
        if let Some(Ok((mut stream, _))) = accepted {
            self.stats.over_limit += 1;
            let busy = http::error_response(Status::Unavailable, "server out of file descriptors");
            let _ = std::io::Write::write(&mut stream, &busy);
        }
        self.spare_fd = File::open("/dev/null").ok();
        if self.spare_fd.is_none() {
            tracing::warn!("out of file descriptors; accepting paused");
            self.accept_paused = Some(now + SWEEP_INTERVAL);
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: std::net::SocketAddr, now: Instant) {
        self.stats.accepted += 1;
        let over = self.conns.len() >= self.cfg.max_connections;
        if over && self.conns.len() >= self.cfg.max_connections + REJECT_SLACK {
            self.stats.over_limit += 1;
            return; // dropped: closed at once
        }
        if let Err(e) = sockopt::apply(&stream, &self.cfg.socket) {
            tracing::debug!(%peer, error = %e, "socket option not applied");
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(%peer, error = %e, "register failed");
            return;
        }
        let mut conn = Conn::new(stream, peer, now + self.cfg.handshake_timeout);
        if over {
            self.stats.over_limit += 1;
            tracing::warn!(%peer, limit = self.cfg.max_connections, "connection limit reached");
            conn.finish_with(
                http::error_response(Status::Unavailable, "connection limit reached"),
                CloseReason::Rejected,
                now,
            );
            conn.deadline = Some(now + Duration::from_secs(1));
        } else {
            tracing::info!(%peer, "connect");
        }
        entry.insert(conn);
        self.mark_dirty(key);
    }

    /// Reads `k` until `WouldBlock`, EOF, or its budget for this iteration.
    fn read_conn(&mut self, k: usize, now: Instant) {
        let mut buf = std::mem::take(&mut self.read_buf);
        let mut total = 0;
        loop {
            let Some(conn) = self.conns.get_mut(k) else {
                break;
            };
            if !conn.wants_input() {
                break;
            }
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    conn.on_eof(now);
                    break;
                }
                Ok(n) => {
                    let mut ctx = Ctx {
                        cfg: &self.cfg,
                        ws_config: &self.ws_config,
                        outbox: &mut self.outbox,
                        page: &self.page,
                        now,
                        messages_in: &mut self.stats.messages_in,
                    };
                    conn.on_input(&buf[..n], &mut ctx);
                    total += n;
                    if total >= READ_BUDGET {
                        self.unread.push(k);
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(peer = %conn.peer, error = %e, "read failed");
                    conn.reason = CloseReason::IoError;
                    conn.doomed = true;
                    break;
                }
            }
        }
        self.read_buf = buf;
        self.mark_dirty(k);
    }

    /// Lists `k` for the end phase: flush if it has bytes, remove if doomed.
    fn mark_dirty(&mut self, k: usize) {
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(k);
        }
    }

    /// Checks deadlines; resumes accepting if it was paused.
    fn sweep(&mut self, now: Instant) {
        for (k, conn) in self.conns.iter_mut() {
            if matches!(conn.deadline, Some(d) if now >= d) {
                conn.on_deadline(now);
                if !conn.dirty {
                    conn.dirty = true;
                    self.dirty.push(k);
                }
            }
        }
        if matches!(self.accept_paused, Some(t) if now >= t) {
            self.accept_paused = None;
            self.spare_fd = self
                .spare_fd
                .take()
                .or_else(|| File::open("/dev/null").ok());
            self.accept_all(now);
        }
    }

    /// Fans out this iteration's broadcasts, flushes, then removes the doomed.
    fn end_of_iteration(&mut self) {
        let now = Instant::now();
        if !self.outbox.is_empty() {
            self.fan_out(now);
        }
        for k in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get_mut(k) else {
                continue;
            };
            conn.dirty = false;
            if !conn.doomed
                && !conn.blocked
                && (!conn.queue.is_empty()
                    || matches!(conn.state, State::Closing { write_shut: false }))
            {
                conn.flush();
            }
            if conn.doomed {
                self.doomed.push(k);
            }
        }
        for k in std::mem::take(&mut self.doomed) {
            if !self.conns.contains(k) {
                continue;
            }
            let conn = self.conns.remove(k);
            self.unread.retain(|&u| u != k);
            let _ = self.poll.registry().deregister(&mut { conn.stream });
            tracing::info!(peer = %conn.peer, reason = ?conn.reason, "disconnect");
        }
    }

    /// Queues every broadcast of this iteration for every open connection
    /// (handles only: no copy, no allocation per recipient) and flushes
    /// each with one `writev`.
    fn fan_out(&mut self, now: Instant) {
        let batch: usize = self.outbox.iter().map(|f| f.len()).sum();
        let limit = self.cfg.max_queued_bytes;
        let mut recipients = 0u64;
        for (k, conn) in self.conns.iter_mut() {
            if !conn.is_open() {
                continue;
            }
            if conn.queue.queued() + batch > limit {
                self.stats.slow_consumers += 1;
                conn.close_slow(limit, now);
            } else {
                recipients += 1;
                for frame in &self.outbox {
                    conn.queue.push(frame.clone());
                }
            }
            if !conn.blocked {
                conn.flush();
            }
            if conn.doomed {
                self.doomed.push(k);
            }
        }
        self.stats.broadcasts += self.outbox.len() as u64;
        self.stats.deliveries += recipients * self.outbox.len() as u64;
        self.outbox.clear();
    }

    /// Stops accepting and starts the close handshake with every client.
    fn begin_shutdown(&mut self, now: Instant) {
        if self.draining.is_some() {
            return;
        }
        tracing::info!(open = self.conns.len(), "shutting down");
        self.draining = Some(now + self.cfg.shutdown_timeout);
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            let conn = &mut self.conns[k];
            match conn.state {
                State::Open(_) => conn.close_ws(CloseCode::Away, "server shutting down"),
                State::Http(_) => conn.finish_with(
                    http::error_response(Status::Unavailable, "server shutting down"),
                    CloseReason::Shutdown,
                    now,
                ),
                State::Closing { .. } => {}
            }
            self.mark_dirty(k);
        }
    }
}

/// Accept errors that concern one connection only.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) || matches!(
        e.raw_os_error(),
        Some(libc_errno::EPROTO | libc_errno::EPERM)
    )
}

/// Out of descriptors, per process or system-wide.
fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

/// The few errno values the accept loop tells apart (Linux numbering).
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const EPROTO: i32 = 71;
    pub const ENOBUFS: i32 = 105;
}
