//! The event loop: one `mio::Poll`, one slab of connections, one thread.
//!
//! Each iteration: poll → read the connections left over from the last
//! iteration, then those with events (each within its budget and the
//! iteration's) → the end-of-iteration phase, which turns each room's batch
//! of this iteration's broadcasts into one frame, offers it to the room's
//! open members and lists them in the round of flushes, flushes the
//! connections that must be written now and a slice of the round (each
//! with one vectored `sendmsg`, or, with `--io-uring`, the slice's writes
//! submitted at once through [`crate::uring`]), and only then removes the
//! connections marked doomed.
//! Slab keys are tokens and are reused, so a connection is never removed
//! mid-batch.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::net::TcpListener as StdListener;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use prometheus_client::metrics::histogram::Histogram;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use tungstenite::protocol::WebSocketConfig;

use crate::bus::{Ack, Bus, BusIo, Target};
use crate::config::Config;
use crate::conn::{Awaiting, Conn, Ctx, Input, Offer, ReadLimit};
use crate::frame::{self, Frame, OP_PING, OP_TEXT};
use crate::http::{self, Phase, RouteConfig, Status};
use crate::nonblock::{interrupted, would_block};
use crate::rooms::Rooms;
use crate::stats::{CloseReason, Stats};
use crate::tls::Acceptor;
use crate::uring::Ring;
use crate::{feed, metrics, sockopt, Shutdown};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);
const METRICS_LISTENER: Token = Token(usize::MAX - 4);
const TLS_LISTENER: Token = Token(usize::MAX - 5);

/// Size of the one read buffer every socket is read into.
const READ_BUF_LEN: usize = 64 * 1024;

/// Work read from one connection per iteration before the others get a
/// turn, in bytes plus [`FRAME_COST`] per WebSocket frame; the rest is read
/// in the next iteration (edge-triggered readiness will not report it
/// again).
const READ_BUDGET: usize = 128 * 1024;

/// Work read from all connections in one iteration: past it, connections
/// with input wait for the next iteration, where they are served first. So
/// an iteration's work is bounded whatever the clients send.
const ITERATION_INPUT: usize = 512 * 1024;

/// What a frame costs the loop, in bytes of input: handling a frame costs
/// far more than copying its bytes, so a flood of empty frames must not
/// pass for a few bytes.
const FRAME_COST: usize = 64;

/// One iteration's joined broadcast batch is kept under
/// `--max-queued-bytes` divided by this: past it, input waits in the
/// senders' sockets for the next iteration, so a client that reads as fast
/// as the kernel lets it never holds a batch near the limit.
const BATCH_FRACTION: usize = 4;

/// The seed of the generator that orders each round of flushes.
const ROUND_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// Bytes read per iteration from a connection that is closing: its input
/// is discarded, so a client that keeps sending after its close costs
/// little until its close deadline.
const CLOSING_BUDGET: usize = 4 * 1024;

/// The smallest read worth a syscall: one minimal client frame.
const MIN_READ: usize = 6;

/// How often clients past their rate allowance are looked at again.
const THROTTLE_TICK: Duration = Duration::from_millis(10);

/// How often deadlines are checked.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// Connections accepted beyond `--max-connections` only to be told 503;
/// past this many more they are closed without a word.
const REJECT_SLACK: usize = 64;

/// tungstenite's own read buffer per connection. Input reaches it from the
/// loop's buffer through memory, so a small one costs little and keeps an
/// idle connection well under 1 KiB.
const WS_READ_BUFFER: usize = 128;

pub(crate) struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    /// `--metrics-listen`: the node's own door to its metrics and health.
    metrics_listener: Option<TcpListener>,
    /// `--tls-listen`: TLS beside the plain `--listen`.
    tls_listener: Option<TcpListener>,
    /// The certificate and key (`--tls-cert`, `--tls-key`), reloaded on
    /// SIGHUP.
    tls: Option<Acceptor>,
    /// `--listen` itself speaks TLS (certificates given, no `--tls-listen`).
    listener_tls: bool,
    conns: Slab<Conn>,
    cfg: Config,
    route: RouteConfig,
    ws_config: WebSocketConfig,
    /// The loop-owned buffer every socket is read into.
    read_buf: Vec<u8>,
    /// The rooms, each with this iteration's broadcasts to it.
    rooms: Rooms,
    /// The rooms being fanned out (kept to reuse its allocation).
    fanning: Vec<u32>,
    /// The most batch bytes (across rooms) an iteration takes input for.
    batch_cap: usize,
    /// How many bytes of broadcast one byte of input can become at most (a
    /// 6-byte empty frame becomes a header plus the prefix): reads are
    /// sized so the batch stays under `batch_cap`.
    expansion: usize,
    /// Input this iteration may still read, across all connections.
    input_left: usize,
    /// Connections whose publish is answered once the batches are fanned out.
    publish_acks: Vec<usize>,
    /// Connections with bytes to flush in the end phase.
    dirty: Vec<usize>,
    /// The round of broadcast flushes: recipients with bytes queued, in
    /// turn. The end phase flushes `--flush-slice` of them per iteration and
    /// the loop reads again in between, so a message read meanwhile joins
    /// the queues still waiting and leaves in the same write. A connection
    /// flushed goes to the back when it next has bytes: every one is
    /// flushed once per round, and each round is put in slab order and its
    /// blocks shuffled when it starts ([`order_round`]).
    round: VecDeque<usize>,
    /// Entries of the round still to flush before the next round starts.
    round_left: usize,
    /// Draws each round's order (xorshift64*).
    round_rng: u64,
    /// Room to reorder a round in (kept to reuse its allocation).
    round_scratch: Vec<usize>,
    /// `--io-uring`: the ring the round's slices are written through;
    /// `None` without the flag, or where io_uring is unavailable.
    ring: Option<Ring>,
    /// The slice of the round being flushed, and those of its connections
    /// the ring writes (both kept for their allocation).
    slice: Vec<usize>,
    ring_batch: Vec<usize>,
    /// Connections to remove in the end phase.
    doomed: Vec<usize>,
    /// Connections to read first in the next iteration, in order (budget
    /// spent, iteration bound reached, or input held back until now);
    /// each is listed once (`Conn::list_for_read`).
    unread: VecDeque<usize>,
    /// The list being read in this iteration (swapped with `unread`, so
    /// neither allocates per iteration).
    carry: VecDeque<usize>,
    /// Connections that spent their own budget this iteration: listed
    /// after those the iteration's bound left unread, so that every
    /// connection with input is read in turn.
    spent: Vec<usize>,
    /// Connections past their rate allowance, looked at every
    /// `THROTTLE_TICK` (also listed by `Conn::list_for_read`).
    throttled: Vec<usize>,
    /// When `throttled` is looked at next.
    throttle_check: Instant,
    /// The feed was not drained to the end (the batch was full).
    feed_pending: bool,
    /// A feed line the bus had no room for yet: published first once it
    /// has (the feed's reader waits meanwhile, as the channel fills).
    feed_line: Option<Vec<u8>>,
    /// The keepalive ping, encoded once.
    ping: Frame,
    shutdown: Shutdown,
    _waker: Arc<Waker>,
    signals: Option<Signals>,
    feed: Option<Receiver<Vec<u8>>>,
    /// Set once shutdown began: when to give up on close replies.
    draining: Option<Instant>,
    /// A descriptor held in reserve so that at EMFILE a connection can
    /// still be accepted and told 503 instead of spinning.
    spare_fd: Option<File>,
    /// Accepting is paused (descriptors exhausted) until this instant.
    accept_paused: Option<Instant>,
    epoch: Instant,
    last_sweep: Instant,
    last_keepalive: u32,
    /// When the last summary line was logged, and the counters then.
    last_summary: (Instant, Stats),
    stats: Stats,
    iteration_time: Histogram,
    /// The Redis bus (`--redis`), and the publish answers it handed over.
    bus: Option<Bus>,
    bus_acks: Vec<(Ack, i64)>,
}

impl Server {
    pub fn new(listener: StdListener, cfg: Config, shutdown: Shutdown) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        shutdown.set_waker(waker.clone());
        let signals = if shutdown.handles_signals() {
            // SIGHUP reloads the TLS pair; without TLS it is logged, not
            // fatal (the default action would end the server).
            let mut s = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
            poll.registry()
                .register(&mut s, SIGNALS, Interest::READABLE)?;
            Some(s)
        } else {
            None
        };
        let feed = match &cfg.feed {
            Some(path) => Some(feed::spawn(path, waker.clone())?),
            None => None,
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(Some(cfg.max_message_size))
            .max_frame_size(Some(cfg.max_message_size));
        let route = RouteConfig {
            allow_origins: cfg.allow_origins.clone(),
            require_origin: cfg.require_origin,
            metrics_path: Some(cfg.metrics_path.clone()).filter(|p| !p.is_empty()),
            publish_token: cfg.publish_token.clone().filter(|t| !t.is_empty()),
            max_body: cfg.max_message_size,
        };
        let now = Instant::now();
        // Output per message is at most a 10-byte header, the prefix and the
        // payload; input at least a 6-byte header and the same payload.
        let expansion = (10 + cfg.prefix.len()).div_ceil(MIN_READ).max(1);
        let bus = Bus::new(&cfg, now)?;
        let metrics_listener = match cfg.metrics_listen {
            Some(addr) => {
                let std = StdListener::bind(addr)?;
                std.set_nonblocking(true)?;
                let mut l = TcpListener::from_std(std);
                poll.registry()
                    .register(&mut l, METRICS_LISTENER, Interest::READABLE)?;
                tracing::info!(addr = %l.local_addr()?, "metrics and health listening");
                Some(l)
            }
            None => None,
        };
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => Some(Acceptor::load(cert, key).map_err(io::Error::other)?),
            _ => None,
        };
        let tls_listener = match cfg.tls_listen {
            Some(addr) => {
                let std = crate::sockopt::bind(addr, &cfg.socket)?;
                std.set_nonblocking(true)?;
                let mut l = TcpListener::from_std(std);
                poll.registry()
                    .register(&mut l, TLS_LISTENER, Interest::READABLE)?;
                tracing::info!(addr = %l.local_addr()?, "TLS listening");
                Some(l)
            }
            None => None,
        };
        let ring = if cfg.io_uring {
            match Ring::new() {
                Ok(ring) => Some(ring),
                Err(e) => {
                    tracing::info!(error = %e, "io_uring unavailable: flushing with sendmsg");
                    None
                }
            }
        } else {
            None
        };
        Ok(Server {
            poll,
            listener: Some(listener),
            metrics_listener,
            listener_tls: tls.is_some() && tls_listener.is_none(),
            tls_listener,
            tls,
            conns: Slab::new(),
            route,
            ws_config,
            read_buf: vec![0; READ_BUF_LEN],
            rooms: Rooms::new(cfg.max_rooms, bus.is_some()),
            fanning: Vec::new(),
            batch_cap: (cfg.max_queued_bytes / BATCH_FRACTION).max(MIN_READ),
            expansion,
            input_left: ITERATION_INPUT,
            publish_acks: Vec::new(),
            dirty: Vec::new(),
            round: VecDeque::new(),
            round_left: 0,
            round_rng: ROUND_SEED,
            round_scratch: Vec::new(),
            ring,
            slice: Vec::new(),
            ring_batch: Vec::new(),
            doomed: Vec::new(),
            unread: VecDeque::new(),
            carry: VecDeque::new(),
            spent: Vec::new(),
            throttled: Vec::new(),
            throttle_check: now,
            feed_pending: false,
            feed_line: None,
            ping: frame::encode(OP_PING, b"", b""),
            shutdown,
            _waker: waker,
            signals,
            feed,
            draining: None,
            spare_fd: File::open("/dev/null").ok(),
            accept_paused: None,
            epoch: now,
            last_sweep: now,
            last_keepalive: 0,
            last_summary: (now, Stats::default()),
            stats: Stats::default(),
            iteration_time: metrics::iteration_histogram(),
            bus,
            bus_acks: Vec::new(),
            cfg,
        })
    }

    /// Seconds since the server started: the clock of `last_seen`.
    fn tick(&self, now: Instant) -> u32 {
        now.duration_since(self.epoch).as_secs() as u32
    }

    /// Whether new clients are still taken: not once shutdown began.
    fn phase(&self) -> Phase {
        if self.draining.is_some() {
            Phase::Draining
        } else {
            Phase::Serving
        }
    }

    /// Runs until shutdown completes.
    pub fn serve(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        if self.shutdown.is_requested() {
            self.begin_shutdown(Instant::now());
        }
        loop {
            let timeout = if !self.unread.is_empty()
                || self.feed_pending
                || !self.round.is_empty()
                || self.bus.as_ref().is_some_and(Bus::has_input_left)
            {
                Duration::ZERO
            } else if !self.throttled.is_empty() {
                self.throttle_check
                    .saturating_duration_since(Instant::now())
                    .min(SWEEP_INTERVAL)
            } else {
                SWEEP_INTERVAL
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if interrupted(&e) => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            self.input_left = ITERATION_INPUT;
            // The bus before anything: its subscription fills the batches
            // first, so Redis never waits on herald's clients.
            self.service_bus(&events, now);
            // The feed first: clients carried over must not fill every
            // iteration's batch before it.
            if self.feed_pending {
                self.drain_feed();
            }
            self.read_carried(now);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(now, false),
                    TLS_LISTENER => self.accept_all(now, true),
                    METRICS_LISTENER => self.accept_metrics(now),
                    WAKER => {
                        if self.shutdown.is_requested() {
                            self.begin_shutdown(now);
                        }
                        self.drain_feed();
                    }
                    SIGNALS => {
                        let (mut reload, mut stop) = (false, false);
                        if let Some(s) = &mut self.signals {
                            for signal in s.pending() {
                                match signal {
                                    SIGHUP => reload = true,
                                    _ => stop = true,
                                }
                            }
                        }
                        if reload {
                            self.reload_tls();
                        }
                        if stop {
                            self.begin_shutdown(now);
                        }
                    }
                    token if Bus::owns(token) => {}
                    Token(k) => {
                        let readable =
                            event.is_readable() || event.is_read_closed() || event.is_error();
                        // A listed connection is read from its list, in turn.
                        if event.is_error() {
                            if let Some(c) = self.conns.get_mut(k) {
                                c.on_reset();
                            }
                        }
                        if readable && self.conns.get(k).is_some_and(|c| !c.is_listed_for_read()) {
                            self.read_conn(k, now);
                        }
                        if event.is_writable() {
                            if let Some(c) = self.conns.get_mut(k) {
                                c.on_writable();
                            }
                            self.mark_dirty(k);
                        }
                    }
                }
            }
            if now.duration_since(self.last_sweep) >= SWEEP_INTERVAL {
                self.last_sweep = now;
                self.sweep(now);
            }
            self.end_of_iteration(now);
            self.stats.iterations += 1;
            self.iteration_time.observe(now.elapsed().as_secs_f64());
            if let Some(deadline) = self.draining {
                let clients_left = self.conns.iter().any(|(_, c)| c.was_websocket());
                if !clients_left || Instant::now() >= deadline {
                    if let Some(bus) = self.bus.as_ref().filter(|b| b.buffered() > 0) {
                        tracing::warn!(
                            bytes = bus.buffered(),
                            "shutdown: publishes Redis never took are lost"
                        );
                    }
                    tracing::info!(left = self.conns.len(), "shutdown complete");
                    return Ok(());
                }
            }
        }
    }

    /// Hands the bus its sockets' readiness, lets it read its subscription
    /// and replies, and answers the HTTP publishes Redis took.
    fn service_bus(&mut self, events: &Events, now: Instant) {
        let cap = self.iteration_cap();
        let Some(bus) = self.bus.as_mut() else { return };
        for event in events.iter() {
            if Bus::owns(event.token()) {
                let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                bus.on_event(event.token(), readable, event.is_writable());
            }
        }
        bus.service(&mut BusIo {
            rooms: &mut self.rooms,
            stats: &mut self.stats,
            cap,
            registry: self.poll.registry(),
            now,
            prefix: self.cfg.prefix.as_bytes(),
        });
        bus.take_acks(&mut self.bus_acks);
        if self.feed_line.is_some() {
            self.drain_feed();
        }
        let tick = self.tick(now);
        let limit = self.cfg.max_queued_bytes;
        for &(ack, nodes) in &self.bus_acks {
            let Some(conn) = self.conns.get_mut(ack.key) else {
                continue;
            };
            if conn.answer_bus_published(ack.ticket, nodes, now, &self.cfg) {
                conn.flush(tick, &mut self.stats);
                relist_if_ready(conn, ack.key, &mut self.unread, limit);
                if conn.list_for_flush() {
                    self.dirty.push(ack.key);
                }
            }
        }
    }

    /// Reads the connections listed last iteration, oldest first, and the
    /// throttled ones when their tick comes: round robin, so a connection
    /// left over by the budget is served before newer input.
    fn read_carried(&mut self, now: Instant) {
        std::mem::swap(&mut self.unread, &mut self.carry);
        if !self.throttled.is_empty() && now >= self.throttle_check {
            self.throttle_check = now + THROTTLE_TICK;
            self.carry.extend(self.throttled.drain(..));
        }
        while let Some(k) = self.carry.pop_front() {
            if let Some(conn) = self.conns.get_mut(k) {
                conn.unlist_for_read();
                self.read_conn(k, now);
            }
        }
    }

    /// SIGHUP: new handshakes get the certificate and key as the files
    /// hold them now; open connections keep their sessions. A pair that
    /// cannot serve is refused and the one in use kept.
    fn reload_tls(&mut self) {
        let Some(tls) = &mut self.tls else {
            tracing::info!("SIGHUP: no --tls-cert, nothing to reload");
            return;
        };
        match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
            Err(why) => tracing::warn!(%why, "SIGHUP: TLS reload refused, the old pair kept"),
        }
    }

    /// Accepts what waits on `--listen` (`tls` false) or `--tls-listen`.
    fn accept_all(&mut self, now: Instant, tls: bool) {
        if self.accept_paused.is_some() {
            return;
        }
        let tls = tls || self.listener_tls;
        loop {
            let listener = if tls && !self.listener_tls {
                &self.tls_listener
            } else {
                &self.listener
            };
            let Some(listener) = listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.admit(stream, peer, now, tls);
                }
                Err(e) if would_block(&e) => return,
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(e) if is_fd_exhaustion(&e) => {
                    // accept(2) reserves a descriptor before it looks at the
                    // queue, so EMFILE says nothing about waiting clients:
                    // stop once shedding finds none, or the loop would spin.
                    if !self.shed_one(now, tls) || self.accept_paused.is_some() {
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

    /// Accepts on `--metrics-listen`: connections there get the metrics and
    /// health answers only. Not shed at the descriptor limit: a scrape
    /// that fails then is how an operator hears of it.
    fn accept_metrics(&mut self, now: Instant) {
        loop {
            let Some(listener) = &self.metrics_listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    if let Some(k) = self.admit(stream, peer, now, false) {
                        self.conns[k].serve_metrics_only();
                    }
                }
                Err(e) if would_block(&e) => return,
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "accept on --metrics-listen failed");
                    return;
                }
            }
        }
    }

    /// At EMFILE/ENFILE: gives back the spare descriptor, accepts one
    /// connection to tell it 503, and takes the spare again. If even that
    /// fails, accepting pauses until the next sweep. Returns whether a
    /// connection was waiting.
    fn shed_one(&mut self, now: Instant, tls: bool) -> bool {
        self.spare_fd = None;
        let listener = if tls && !self.listener_tls {
            &self.tls_listener
        } else {
            &self.listener
        };
        let accepted = listener.as_ref().map(|l| l.accept());
        let shed = matches!(accepted, Some(Ok(_)));
        if let Some(Ok((mut stream, peer))) = accepted {
            self.stats.over_limit += 1;
            tracing::debug!(%peer, "out of file descriptors: connection refused");
            // A TLS client could not read a plain 503: it is just closed.
            if !tls {
                let busy =
                    http::error_response(Status::Unavailable, "server out of file descriptors");
                let _ = std::io::Write::write(&mut stream, &busy);
            }
        }
        self.spare_fd = File::open("/dev/null").ok();
        if self.spare_fd.is_none() {
            tracing::debug!("out of file descriptors; accepting paused");
            self.accept_paused = Some(now + SWEEP_INTERVAL);
        }
        shed
    }

    /// Takes a new connection in; returns its key unless it was dropped.
    fn admit(
        &mut self,
        mut stream: TcpStream,
        peer: std::net::SocketAddr,
        now: Instant,
        tls: bool,
    ) -> Option<usize> {
        self.stats.accepted += 1;
        let over = self.conns.len() >= self.cfg.max_connections;
        // A TLS newcomer cannot read a 503 before its handshake, which a
        // turned-away connection is not worth: it is closed at once.
        if over && (tls || self.conns.len() >= self.cfg.max_connections + REJECT_SLACK) {
            self.stats.over_limit += 1;
            self.stats.closed[CloseReason::Limit as usize] += 1;
            return None; // dropped: closed at once
        }
        if let Err(e) = sockopt::apply(&stream, &self.cfg.socket) {
            tracing::debug!(%peer, error = %e, "socket option not applied");
        }
        let session = match self.tls.as_ref().filter(|_| tls).map(Acceptor::accept) {
            None => None,
            Some(Ok(session)) => Some(session),
            Some(Err(e)) => {
                tracing::warn!(%peer, error = %e, "TLS session not created");
                return None;
            }
        };
        let tick = self.tick(now);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(%peer, error = %e, "register failed");
            return None;
        }
        let mut conn = Conn::new(stream, peer, now + self.cfg.handshake_timeout, tick);
        if let Some(session) = session {
            conn.use_tls(session);
        }
        if over {
            self.stats.over_limit += 1;
            *self.stats.rejected.entry(503).or_default() += 1;
            tracing::debug!(%peer, limit = self.cfg.max_connections, "connection limit reached");
            conn.finish_with(
                http::error_response(Status::Unavailable, "connection limit reached"),
                CloseReason::Limit,
                // Turned away: a second is enough to take its 503.
                now + self.cfg.close_timeout.min(Duration::from_secs(1)),
            );
        }
        entry.insert(conn);
        self.mark_dirty(key);
        Some(key)
    }

    /// Handles `k`'s pipelined input, then reads it until `WouldBlock`,
    /// EOF, a request the server must finish, or a bound: its budget, the
    /// iteration's input or batch bound (then it is listed to be read first
    /// next iteration), its rate allowance (then it waits for its tick), or
    /// a full queue (then it is held until the queue drains).
    fn read_conn(&mut self, k: usize, now: Instant) {
        let tick = self.tick(now);
        let ms = now.duration_since(self.epoch).as_millis() as u32;
        let limit = self.cfg.max_queued_bytes;
        let phase = self.phase();
        let batch_cap = self.iteration_cap();
        let mut buf = std::mem::take(&mut self.read_buf);
        let mut total = 0usize;
        while let Some(conn) = self.conns.get_mut(k) {
            let mut ctx = Ctx {
                cfg: &self.cfg,
                route: &self.route,
                phase,
                ws_config: &self.ws_config,
                rooms: &mut self.rooms,
                key: k,
                now,
                ms,
                tick,
                stats: &mut self.stats,
                bus: self.bus.as_mut(),
            };
            conn.resume(&mut ctx);
            if !conn.hold_unless_ready(limit) {
                break;
            }
            // A closing connection's input is only read to find its end.
            let budget = if conn.is_closing() {
                CLOSING_BUDGET
            } else {
                READ_BUDGET
            };
            if total.saturating_add(MIN_READ) > budget {
                if conn.list_for_read() {
                    self.spent.push(k);
                }
                break;
            }
            // Only input that can become broadcasts is sized by the batch's
            // room, and with nothing in the batch one minimal read always
            // fits, so a tiny --max-queued-bytes or a huge --prefix slows
            // reading down but never stops it.
            let room = if !conn.may_broadcast() {
                usize::MAX
            } else if ctx.rooms.pending() == 0 {
                (batch_cap / self.expansion).max(MIN_READ)
            } else {
                batch_cap.saturating_sub(ctx.rooms.pending()) / self.expansion
            };
            let cap = READ_BUF_LEN
                .min(budget.saturating_sub(total))
                .min(self.input_left)
                .min(room);
            if cap < MIN_READ {
                if conn.list_for_read() {
                    // One that had its turn goes behind those that had none:
                    // the first to be read must not take the iteration's
                    // room every time.
                    if total > 0 {
                        self.spent.push(k);
                    } else {
                        self.unread.push_back(k);
                    }
                }
                break;
            }
            let cap = match conn.read_allowance(&self.cfg, ms, cap) {
                ReadLimit::Bytes(cap) => cap,
                ReadLimit::Throttled => {
                    ctx.stats.throttled += 1;
                    if conn.list_for_read() {
                        self.throttled.push(k);
                    }
                    break;
                }
                ReadLimit::Abandoned => break,
            };
            match conn.read_input(&mut buf[..cap], &mut ctx) {
                Input::Read {
                    bytes,
                    frames,
                    drained,
                } => {
                    let work = bytes + frames as usize * FRAME_COST;
                    total += work;
                    self.input_left = self.input_left.saturating_sub(work);
                    // A short read took all the socket held, and data that
                    // arrives later raises a new edge: the read that would
                    // only say WouldBlock is saved (one syscall per
                    // publisher per iteration). Not for HTTP, whose
                    // pipelined requests are routed between reads.
                    if drained && conn.is_open() {
                        break;
                    }
                }
                Input::Interrupted => {}
                Input::Drained | Input::Ended => break,
            }
        }
        self.read_buf = buf;
        self.finish_pending(k);
        self.mark_dirty(k);
    }

    /// Completes what a connection asked of the server.
    fn finish_pending(&mut self, k: usize) {
        let Some(conn) = self.conns.get(k) else {
            return;
        };
        match conn.awaits() {
            Some(Awaiting::Metrics) => {
                let text = self.render_metrics();
                self.conns[k].answer_metrics(&text, Instant::now(), &self.cfg);
            }
            Some(Awaiting::FanOut) if !self.publish_acks.contains(&k) => {
                self.publish_acks.push(k);
            }
            _ => {}
        }
    }

    fn render_metrics(&self) -> String {
        let mut gauges = metrics::Gauges {
            connections: self.conns.len(),
            ..Default::default()
        };
        for (_, c) in self.conns.iter() {
            gauges.websockets += usize::from(c.is_open());
            gauges.queued_bytes += c.queued();
        }
        gauges.rooms = self.rooms.len();
        let sizes: Vec<usize> = self.rooms.sizes().collect();
        let bus = self.bus.as_ref().map(|b| metrics::BusGauges {
            up: b.is_up(),
            buffered: b.buffered(),
            echo: b.echo_times(),
        });
        metrics::render(&self.stats, gauges, &sizes, &self.iteration_time, bus)
    }

    /// Moves lines from `--feed` into their room's batch, until the batches are full;
    /// the rest waits in the feed's bounded channel for the next iteration.
    fn drain_feed(&mut self) {
        self.feed_pending = false;
        let Some(rx) = &self.feed else { return };
        loop {
            if self.rooms.pending() >= self.iteration_cap() {
                self.feed_pending = true;
                return;
            }
            let next = match self.feed_line.take() {
                Some(line) => Ok(line),
                None => rx.try_recv(),
            };
            match next {
                Ok(line) => {
                    let to = self.cfg.feed_room.as_deref();
                    if let Some(bus) = self.bus.as_mut() {
                        if !bus.has_room(line.len()) {
                            // Tried again when the bus answers or at the next
                            // sweep, not by spinning.
                            self.feed_line = Some(line);
                            return;
                        }
                        self.stats.feed_lines += 1;
                        let target = Target::Named(to);
                        let _ = bus.publish(
                            &mut self.rooms,
                            target,
                            OP_TEXT,
                            &line,
                            None,
                            &mut self.stats,
                        );
                        continue;
                    }
                    self.stats.feed_lines += 1;
                    // A room without members does not exist: nobody hears it.
                    if let Some(room) = self.rooms.find(to) {
                        self.rooms.push(room, OP_TEXT, b"", &line);
                    }
                }
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.feed = None;
                    return;
                }
            }
        }
    }

    /// The batch bytes this iteration may read input for. `batch_cap` is
    /// what one round of flushes may bring a client; a round of `n` listed
    /// connections takes about `n / --flush-slice` iterations, which share
    /// it, so a client that keeps up holds about `batch_cap` at most when
    /// its turn comes, however long the round.
    fn iteration_cap(&self) -> usize {
        let (slice, listed) = (self.cfg.flush_slice, self.round.len());
        if slice == 0 || listed <= slice {
            self.batch_cap
        } else {
            (self.batch_cap / listed.div_ceil(slice)).max(MIN_READ)
        }
    }

    /// Lists `k` for the end phase: flush if it has bytes, remove if doomed.
    fn mark_dirty(&mut self, k: usize) {
        if self.conns.get_mut(k).is_some_and(Conn::list_for_flush) {
            self.dirty.push(k);
        }
    }

    /// Checks deadlines (every sweep) and keepalive (every second);
    /// resumes accepting if it was paused.
    fn sweep(&mut self, now: Instant) {
        let tick = self.tick(now);
        let keepalive = tick != self.last_keepalive;
        self.last_keepalive = tick;
        // Whole seconds, at least 1; `None` when the option is 0 (off).
        let seconds = |d: Duration| (!d.is_zero()).then(|| d.as_secs().max(1) as u32);
        let ping_after = seconds(self.cfg.ping_interval);
        let idle_after = seconds(self.cfg.idle_timeout);
        let close_by = now + self.cfg.close_timeout;
        for (k, conn) in self.conns.iter_mut() {
            let mut touched = false;
            if conn.deadline_passed(now) {
                if let Some(status) = conn.on_deadline(close_by) {
                    *self.stats.rejected.entry(status).or_default() += 1;
                }
                touched = true;
            } else if keepalive {
                touched = conn.keepalive(tick, &self.ping, ping_after, idle_after, close_by);
            }
            if keepalive {
                // An idle connection holds no queue memory; a busy one
                // allocates it again once a second at most.
                conn.release_queue_if_empty();
            }
            if touched && conn.list_for_flush() {
                self.dirty.push(k);
            }
        }
        if let Some(bus) = self.bus.as_mut() {
            bus.tick(&mut self.rooms, self.poll.registry(), now);
            if self.feed_line.is_some() {
                self.drain_feed();
            }
        }
        let every = self.cfg.log_summary_interval;
        if !every.is_zero() && now.duration_since(self.last_summary.0) >= every {
            self.log_summary(now);
        }
        if matches!(self.accept_paused, Some(t) if now >= t) {
            self.accept_paused = None;
            self.spare_fd = self
                .spare_fd
                .take()
                .or_else(|| File::open("/dev/null").ok());
            self.accept_all(now, false);
            self.accept_all(now, true);
        }
    }

    /// Fans out this iteration's broadcasts, flushes what must leave now
    /// and a slice of the round, then removes the doomed.
    ///
    /// # Invariants
    /// On return the rooms' batches, the flush list and the removal list are
    /// empty: no frame, urgent flush or removal is carried into the next
    /// iteration, and every slab key removed here was last used by this
    /// iteration's events. The round carries over: every key in it is a
    /// connection flagged `in_round`, listed once; its first `round_left`
    /// keys are the current round's (those after them joined since, and
    /// wait for the next), and the loop polls without waiting while it is
    /// not empty.
    fn end_of_iteration(&mut self, now: Instant) {
        if let Some(bus) = self.bus.as_mut() {
            let registry = self.poll.registry();
            bus.write_publishes(&mut self.rooms, &mut self.stats, registry, now);
        }
        if self.rooms.has_pending() || !self.publish_acks.is_empty() {
            self.fan_out(now);
        }
        debug_assert!(!self.rooms.has_pending(), "fan-out left frames behind");
        let tick = self.tick(now);
        let limit = self.cfg.max_queued_bytes;
        // Answers, closes and writable sockets first, whole. One that waits
        // in the round keeps its turn: flushed now, a publisher would get
        // its own copies before the rest of its room (and, pacing itself by
        // them, outrun its room's clients).
        for k in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get_mut(k) else {
                continue;
            };
            conn.unlist_for_flush();
            if conn.wants_flush() && !conn.is_listed_for_round() {
                conn.flush(tick, &mut self.stats);
            }
            relist_if_ready(conn, k, &mut self.unread, limit);
            if conn.is_doomed() {
                self.doomed.push(k);
            }
        }
        if self.round_left == 0 && !self.round.is_empty() {
            // A new round, its blocks in an order drawn afresh: kept in one
            // order, the clients just before a publisher's turn would wait a
            // whole round for its messages every time, and own the tail.
            order_round(
                &mut self.round,
                &mut self.round_scratch,
                &mut self.round_rng,
            );
            self.round_left = self.round.len();
        }
        let mut slice = match self.cfg.flush_slice {
            0 => self.round_left,
            n => n.min(self.round_left),
        };
        if self.bus.as_ref().is_some_and(Bus::awaits_echo) {
            // This node's messages are on their way back from Redis: a
            // short slice lets the loop read them sooner, instead of after
            // a full slice of writes for the messages before them.
            slice = slice.min(ECHO_SLICE);
        }
        self.round_left -= slice;
        if self.ring.is_some() {
            self.flush_slice_through_ring(slice, tick);
        } else {
            for k in self.round.drain(..slice) {
                let conn = &mut self.conns[k];
                conn.unlist_for_round();
                if conn.wants_flush() {
                    conn.flush(tick, &mut self.stats);
                }
                relist_if_ready(conn, k, &mut self.unread, limit);
                if conn.is_doomed() {
                    self.doomed.push(k);
                }
            }
        }
        let (mut listed_gone, mut round_gone) = (false, false);
        for k in std::mem::take(&mut self.doomed) {
            if !self.conns.contains(k) {
                continue;
            }
            let conn = self.conns.remove(k);
            listed_gone |= conn.is_listed_for_read();
            round_gone |= conn.is_listed_for_round();
            // Its room's name, for the session's line (only when logged).
            let room_name = conn
                .room_slot()
                .filter(|_| tracing::enabled!(tracing::Level::DEBUG))
                .map(|(room, _)| self.rooms.name(room).to_string());
            if let Some((room, slot)) = conn.room_slot() {
                if let Some(moved) = self.rooms.leave(room, slot) {
                    self.conns[moved].set_slot(slot);
                }
                self.stats.room_leaves += 1;
            }
            let ms = now.duration_since(self.epoch).as_millis() as u32;
            let reason = conn.disconnect(self.poll.registry(), room_name.as_deref(), ms);
            self.stats.closed[reason as usize] += 1;
        }
        if listed_gone {
            // One pass for all the removed, not one per removal: nothing was
            // inserted since, so a key not in the slab is one just removed.
            let conns = &self.conns;
            self.unread.retain(|&k| conns.contains(k));
            self.spent.retain(|&k| conns.contains(k));
            self.throttled.retain(|&k| conns.contains(k));
        }
        if round_gone {
            let conns = &self.conns;
            self.round.retain(|&k| conns.contains(k));
            self.round_left = self.round_left.min(self.round.len());
        }
        if let Some(bus) = self.bus.as_mut() {
            // After the removals: rooms they emptied are unsubscribed.
            let registry = self.poll.registry();
            bus.end_of_iteration(&mut self.rooms, &mut self.stats, registry, now);
        }
        debug_assert!(
            self.publish_acks.is_empty(),
            "publishes answered in fan-out"
        );
        debug_assert!(self.dirty.is_empty() && self.doomed.is_empty());
        self.unread.extend(self.spent.drain(..));
        debug_assert!(
            self.unread
                .iter()
                .chain(&self.throttled)
                .all(|&k| self.conns.get(k).is_some_and(|c| c.is_listed_for_read())),
            "a listed connection is gone or unflagged"
        );
        debug_assert!(
            self.round
                .iter()
                .all(|&k| self.conns.get(k).is_some_and(|c| c.is_listed_for_round())),
            "a connection in the round is gone or unflagged"
        );
        debug_assert!(
            self.rooms.pending() == 0 && self.carry.is_empty(),
            "input carried past its iteration"
        );
    }

    /// The next `len` connections of the round flushed as the `sendmsg`
    /// loop flushes them, their writes submitted through the ring at once.
    /// Should the ring itself fail, herald says so and writes with
    /// `sendmsg` from then on.
    fn flush_slice_through_ring(&mut self, len: usize, tick: u32) {
        let limit = self.cfg.max_queued_bytes;
        let Some(ring) = &mut self.ring else { return };
        self.slice.clear();
        self.slice.extend(self.round.drain(..len));
        self.ring_batch.clear();
        for &k in &self.slice {
            let conn = &mut self.conns[k];
            conn.unlist_for_round();
            if conn.wants_flush() {
                if conn.has_write_ready() {
                    self.ring_batch.push(k);
                } else {
                    // Blocked (nothing to do) or closing with nothing
                    // queued (shut the write side): no write to submit.
                    conn.flush(tick, &mut self.stats);
                }
            }
        }
        if let Err(e) = ring.flush(&mut self.conns, &self.ring_batch, tick, &mut self.stats) {
            tracing::warn!(error = %e, "io_uring failed: flushing with sendmsg from now on");
            self.ring = None;
            for &k in &self.ring_batch {
                let conn = &mut self.conns[k];
                if conn.wants_flush() {
                    conn.flush(tick, &mut self.stats);
                }
            }
        }
        for &k in &self.slice {
            let conn = &mut self.conns[k];
            relist_if_ready(conn, k, &mut self.unread, limit);
            if conn.is_doomed() {
                self.doomed.push(k);
            }
        }
    }

    /// Logs, at info, what happened since the last summary: connections
    /// opened and closed by reason, requests rejected by status, slow,
    /// dropped and throttled clients. Nothing when nothing happened, and
    /// never a line per client, whatever the clients do.
    fn log_summary(&mut self, now: Instant) {
        let (_, before) = &self.last_summary;
        let s = &self.stats;
        let closed: Vec<String> = CloseReason::ALL
            .iter()
            .filter_map(|r| {
                let n = s.closed[*r as usize] - before.closed[*r as usize];
                (n > 0).then(|| format!("{}={n}", r.name()))
            })
            .collect();
        let rejected: Vec<String> = s
            .rejected
            .iter()
            .filter_map(|(status, n)| {
                let n = n - before.rejected.get(status).copied().unwrap_or(0);
                (n > 0).then(|| format!("{status}={n}"))
            })
            .collect();
        let opened = s.accepted - before.accepted;
        let slow = s.slow_consumers - before.slow_consumers;
        let dropped = s.dropped_messages - before.dropped_messages;
        let throttled = s.throttled - before.throttled;
        let over_limit = s.over_limit - before.over_limit;
        if opened + slow + dropped + throttled + over_limit > 0 || !closed.is_empty() {
            let websockets = self.conns.iter().filter(|(_, c)| c.is_open()).count();
            tracing::info!(
                opened,
                closed = %if closed.is_empty() { "0".into() } else { closed.join(",") },
                rejected = %if rejected.is_empty() { "0".into() } else { rejected.join(",") },
                over_limit,
                slow,
                dropped,
                throttled,
                open = self.conns.len(),
                websockets,
                "summary"
            );
        }
        self.last_summary = (now, self.stats.clone());
    }

    /// Queues each room's broadcasts of this iteration for the room's open
    /// members (handles only: no copy, no allocation per recipient) and
    /// lists them in the round of flushes; then answers this iteration's
    /// publishes. Rooms with nothing to say cost nothing.
    fn fan_out(&mut self, now: Instant) {
        let tick = self.tick(now);
        let limit = self.cfg.max_queued_bytes;
        let policy = self.cfg.slow_consumer;
        let close_by = now + self.cfg.close_timeout;
        let mut queued_total = 0usize;
        let mut fanning = std::mem::take(&mut self.fanning);
        self.rooms.take_dirty(&mut fanning);
        for &room in &fanning {
            // The room's batch as one frame: each member gets one handle
            // (one queue entry, one iovec), whatever the count.
            let (shared, count) = self.rooms.take_batch(room);
            let mut recipients = 0u64;
            for &k in self.rooms.members(room) {
                let conn = &mut self.conns[k];
                if !conn.is_open() {
                    continue;
                }
                match conn.offer(&shared, count as u32, limit, policy, close_by) {
                    Offer::Queued => recipients += 1,
                    Offer::Dropped => self.stats.dropped_messages += count as u64,
                    Offer::Closed => self.stats.slow_consumers += 1,
                }
                if conn.list_for_round() {
                    self.round.push_back(k);
                }
                queued_total += conn.queued();
                if conn.is_doomed() {
                    self.doomed.push(k);
                }
            }
            self.rooms.set_recipients(room, recipients);
            self.stats.broadcasts += count as u64;
            self.stats.deliveries += recipients * count as u64;
        }
        self.fanning = fanning;
        self.stats.queued_high_water = self.stats.queued_high_water.max(queued_total);

        for k in std::mem::take(&mut self.publish_acks) {
            let Some(conn) = self.conns.get_mut(k) else {
                continue;
            };
            if conn.answer_published(&self.rooms, now, &self.cfg) {
                conn.flush(tick, &mut self.stats);
                relist_if_ready(conn, k, &mut self.unread, limit);
            }
        }
    }

    /// Starts the close handshake with every client and turns new ones
    /// away with 503 (health checks see 503 too).
    fn begin_shutdown(&mut self, now: Instant) {
        if self.draining.is_some() {
            return;
        }
        tracing::info!(open = self.conns.len(), "shutting down");
        self.draining = Some(now + self.cfg.shutdown_timeout);
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        let close_by = now + self.cfg.close_timeout;
        for k in keys {
            if self.conns[k].on_shutdown(now, close_by) {
                self.unread.push_back(k);
            }
            self.mark_dirty(k);
        }
    }
}

/// Lists `k` for reading if it was held and may take input again (see
/// [`Conn::unhold_if_ready`]).
#[inline]
fn relist_if_ready(conn: &mut Conn, k: usize, unread: &mut VecDeque<usize>, limit: usize) {
    if conn.unhold_if_ready(limit) {
        unread.push_back(k);
    }
}

/// The most connections flushed per iteration while this node's own
/// publishes are on their way through Redis.
const ECHO_SLICE: usize = 64;

/// Keys of a round kept together when it is reordered.
const ROUND_BLOCK: usize = 64;

/// Sorts `round` by slab key, then puts its blocks of [`ROUND_BLOCK`] keys in
/// a random order (Fisher-Yates over block indices, xorshift64*), each
/// block's keys kept in theirs. `scratch` holds the block order and then the
/// new sequence, so a round reuses its allocation.
///
/// Blocks of neighbours, because connections accepted one after another sit
/// close in the slab and in the kernel (their sockets were allocated one
/// after another), and a walk in that order costs the kernel measurably less
/// per write. The sort is what makes a block neighbours: fan-out lists a
/// round room by room, and the members of a room, joined among everyone
/// else's, lie scattered over the slab (100 rooms of 100 whose clients
/// arrived in turn put every 100th connection in one room). A sorted round
/// of 10,000 takes a few microseconds to sort again; the round's writes take
/// tens of milliseconds.
fn order_round(round: &mut VecDeque<usize>, scratch: &mut Vec<usize>, state: &mut u64) {
    let keys = round.make_contiguous();
    keys.sort_unstable();
    let blocks = keys.len().div_ceil(ROUND_BLOCK);
    if blocks < 2 {
        return;
    }
    scratch.clear();
    scratch.extend(0..blocks);
    for i in (1..blocks).rev() {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        scratch.swap(i, (r % (i as u64 + 1)) as usize);
    }
    for n in 0..blocks {
        let b = scratch[n];
        let end = ((b + 1) * ROUND_BLOCK).min(keys.len());
        scratch.extend_from_slice(&keys[b * ROUND_BLOCK..end]);
    }
    keys.copy_from_slice(&scratch[blocks..]);
}

/// Accept errors that concern one connection only.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) || matches!(e.raw_os_error(), Some(errno::EPROTO | errno::EPERM))
}

/// Out of descriptors or socket memory, per process or system-wide.
fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(errno::EMFILE | errno::ENFILE | errno::ENOBUFS | errno::ENOMEM)
    )
}

/// The few errno values the accept loop tells apart (Linux numbering).
mod errno {
    pub const EPERM: i32 = 1;
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const EPROTO: i32 = 71;
    pub const ENOBUFS: i32 = 105;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ordered_round_keeps_every_key_once_in_shuffled_blocks_of_neighbours() {
        let mut state = ROUND_SEED;
        let mut scratch = Vec::new();
        for n in [0, 1, 63, 64, 65, 1_000, 10_007] {
            // Listed as fan-out lists 100 rooms whose members joined in
            // turn: room by room, each room's keys 100 apart.
            let mut round: VecDeque<usize> =
                (0..100).flat_map(|room| (room..n).step_by(100)).collect();
            order_round(&mut round, &mut scratch, &mut state);
            let keys: Vec<usize> = round.iter().copied().collect();
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "n = {n}");
            // Each block starts at a multiple of the block size and runs on
            // in order.
            let mut i = 0;
            while i < n {
                let start = keys[i];
                assert_eq!(start % ROUND_BLOCK, 0, "n = {n}, at {i}");
                let len = ROUND_BLOCK.min(n - start);
                assert_eq!(
                    keys[i..i + len],
                    (start..start + len).collect::<Vec<_>>()[..]
                );
                i += len;
            }
            if n > 2 * ROUND_BLOCK {
                assert_ne!(keys, (0..n).collect::<Vec<_>>(), "n = {n}: not reordered");
            }
        }
    }
}
