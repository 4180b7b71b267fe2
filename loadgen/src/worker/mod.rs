//! One load-generating thread: a mio loop that owns a share of the clients, opens and
//! closes their connections and paces their publishers. What arrives on a connection is
//! handled in [`receive`]; publishing over HTTP is in [`http`].

mod http;
mod receive;

use crate::clock::{now_ns, MS, SEC};
use crate::config::{room_name, Broadcast, Config, PublishVia, Scenario};
use crate::control::{new_histogram, Control, Phase};
use crate::frame;
use crate::loghist::LogHistogram;
use crate::message::{self, Stamp};
use crate::order::Interleaving;
use crate::rng::Rng;
use crate::stats::Stats;
use crate::timer::Timer;
use crate::track::SeqTracker;
use crate::{handshake, net, publish, tls};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::ClientConnection;
use slab::Slab;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use http::{HttpPub, HTTP};
use receive::{read_ready, ReadEnd, Ready, READ_BUF};

const WAKE: Token = Token(usize::MAX - 1);
const TIMER: Token = Token(usize::MAX - 2);
/// The publishers' own poll, registered in the worker's: readable when a publisher is.
const PUBLISHERS: Token = Token(usize::MAX - 3);
/// How long a closing connection may wait for the server to close before it is dropped.
const CLOSE_GRACE_NS: u64 = 2 * SEC;
/// Events handled between two looks at the clock for due open-loop messages.
const EVENTS_PER_CLOCK_CHECK: usize = 32;
/// How often a worker hands its latencies to the live line (which prints every second).
const LIVE_PERIOD_NS: u64 = 250 * MS;
/// Longest sleep in `poll`, so timeouts are noticed without a timer.
const MAX_SLEEP_NS: u64 = 100 * MS;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `connect()` was called; waiting for the socket to become writable.
    Connecting,
    /// The upgrade request was sent; waiting for a 101 with the right accept key.
    Handshaking,
    /// The WebSocket is open.
    Open,
    /// A Close frame was sent (or answered); waiting for the server to close the socket.
    Closing,
}

/// One client connection.
struct Conn {
    /// The socket, registered `READABLE | WRITABLE` once (edge-triggered).
    stream: TcpStream,
    /// The TLS session of a `wss://` connection: what is read from and written to the
    /// socket passes through it (boxed: a plaintext connection pays one word for it).
    tls: Option<Box<ClientConnection>>,
    /// Where the connection is in its life.
    state: State,
    /// When the current state's deadline clock started: `connect()` for the handshake
    /// timeout and latency, the Close frame for the closing grace.
    since_ns: u64,
    /// The `Sec-WebSocket-Accept` the server must answer, until it has.
    accept: Option<Box<str>>,
    /// Bytes to send; `out[out_pos..]` is still unsent.
    out: Vec<u8>,
    /// How much of `out` the socket has taken.
    out_pos: usize,
    /// The incomplete tail (a partial frame or response head) of the previous read.
    carry: Vec<u8>,
    /// A fragmented message being reassembled.
    frag: Option<Vec<u8>>,
    /// The client's index in the run.
    client: u32,
    /// Its room (0 without rooms).
    room: u32,
    /// Sequence tracking per publisher of its room, publisher `j` at `j / rooms`
    /// (broadcast only).
    trackers: Box<[SeqTracker]>,
    /// The order its room's messages reached it in (broadcast only).
    order: Interleaving,
    /// Its deliveries' latencies, the same ones the run's histogram records, for its own
    /// median (broadcast only: `None` costs the other scenarios nothing).
    latency: Option<Box<LogHistogram>>,
    /// Set when this client publishes.
    publisher: Option<Publisher>,
    /// A publisher's HTTP connection (`--publish-via http`).
    http: Option<Box<HttpPub>>,
}

impl Conn {
    /// Moves the connection to `to`, keeping `census` in step.
    fn set_state(&mut self, to: State, census: &mut Census) {
        census.leave(self.state);
        census.enter(to);
        self.state = to;
    }

    /// Whether there is anything to write: queued bytes, or (TLS) records the session made,
    /// such as its handshake's next flight after a read.
    fn has_output(&self) -> bool {
        !self.out.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Whether this is a publisher whose publishing has not failed.
    fn can_publish(&self) -> bool {
        self.publisher.is_some() && !self.http.as_ref().is_some_and(|h| h.failed)
    }
}

/// The sending side of a publishing client.
#[derive(Debug, Clone, Copy)]
struct Publisher {
    /// Publisher index.
    id: u32,
    /// Sequence number of the next message.
    next_seq: u64,
    /// Messages sent whose own copy has not come back.
    in_flight: u32,
}

/// Why an open connection ended early or a pending one failed.
type Reason = String;

/// How a connection ends, for counting it.
#[derive(Debug)]
enum End {
    /// As planned: its close went through, or the run is over. Not counted, except that a
    /// connection that never opened still failed ("closed").
    Clean,
    /// It failed or broke, for this reason: a failure if it never opened, a drop if it was
    /// open before the `Close` phase.
    Broke(Reason),
}

/// How many connections are in the states the loop watches. Only [`Census::enter`] and
/// [`Census::leave`] change it, called where a connection is added, changes state
/// ([`Conn::set_state`]) or is removed ([`Worker::take`]), so the counts cannot drift
/// from the states; debug builds check that on every loop.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Census {
    /// Connections in `Connecting` or `Handshaking`.
    pending: u32,
    /// Connections in `Closing`.
    closing: u32,
}

impl Census {
    fn slot(&mut self, state: State) -> Option<&mut u32> {
        match state {
            State::Connecting | State::Handshaking => Some(&mut self.pending),
            State::Closing => Some(&mut self.closing),
            State::Open => None,
        }
    }

    fn enter(&mut self, state: State) {
        if let Some(n) = self.slot(state) {
            *n += 1;
        }
    }

    fn leave(&mut self, state: State) {
        if let Some(n) = self.slot(state) {
            *n -= 1;
        }
    }

    /// The census `conns` should have, counted from their states.
    fn of(conns: &Slab<Conn>) -> Census {
        let mut census = Census::default();
        for (_, c) in conns {
            census.enter(c.state);
        }
        census
    }
}

/// Everything the receive path needs besides the connection and the read buffer.
struct Ctx {
    cfg: Arc<Config>,
    ctl: Arc<Control>,
    rng: Rng,
    stats: Stats,
    /// Latencies not yet handed to the live line.
    live: Histogram<u64>,
    /// Distinct deliveries not yet added to `ctl.distinct`.
    unflushed: u64,
    /// Run marks, copied from `ctl` when the run starts (`u64::MAX` before).
    start_ns: u64,
    measure_ns: u64,
    end_ns: u64,
    /// The phase as this worker last saw it.
    phase: Phase,
    /// Scratch for one message.
    msg: Vec<u8>,
    /// How many connections are pending or closing.
    census: Census,
    /// Ciphertext read and not yet decrypted (TLS connections only).
    inbox: tls::Inbox,
}

impl Ctx {
    fn broadcast(&self) -> Option<&Broadcast> {
        match &self.cfg.scenario {
            Scenario::Broadcast(b) => Some(b),
            _ => None,
        }
    }

    /// Whether publishers may send at `now`.
    #[inline]
    fn sending(&self, now: u64) -> bool {
        self.phase == Phase::Run && now >= self.start_ns && now < self.end_ns
    }

    /// Queues the next message of `conn`'s publisher, meant to be sent at `intended_ns`:
    /// a frame on its WebSocket, or a request on its HTTP connection.
    fn publish(&mut self, conn: &mut Conn, intended_ns: u64) {
        let Some(p) = conn.publisher.as_mut() else {
            return;
        };
        let stamp = Stamp {
            publisher: p.id,
            seq: p.next_seq,
            intended_ns,
        };
        message::encode(stamp, &mut self.msg);
        match conn.http.as_deref_mut() {
            None => frame::encode_masked(frame::OP_TEXT, &self.msg, self.rng.mask(), &mut conn.out),
            Some(h) => h.queue(&self.msg, p.next_seq),
        }
        p.next_seq += 1;
        p.in_flight += 1;
        self.stats.published += 1;
        self.ctl.published[p.id as usize].store(p.next_seq, Relaxed);
    }
}

/// A worker thread's loop and its connections.
pub struct Worker {
    poll: Poll,
    events: Events,
    /// The publishing connections' sockets, apart from the receivers': a publisher's own
    /// copies can be looked for in one `epoll_wait` in the middle of a batch of receiver
    /// events, where reading every publisher's socket in turn would mostly find nothing.
    pub_poll: Poll,
    pub_events: Events,
    timer: Timer,
    conns: Slab<Conn>,
    buf: Vec<u8>,
    ctx: Ctx,
    /// Clients still to open, popped from the back.
    todo: Vec<u32>,
    /// When the next connect batch may start.
    next_batch_ns: u64,
    /// Slab keys of the publishing connections.
    publishers: Vec<usize>,
    /// Trackers of connections that ended, with their room and order, kept to count what
    /// they lost and compare their orders.
    dead_trackers: Vec<(u32, Box<[SeqTracker]>, Interleaving)>,
    /// When the live histogram is next handed over.
    next_live_ns: u64,
    /// Whether saturation publishers have sent their first window.
    kicked: bool,
    /// When the next open-loop message is due (`u64::MAX`: none).
    next_due_ns: u64,
    /// When the `Close` phase began here.
    close_started_ns: u64,
}

impl Worker {
    /// A worker for every `threads`-th client of this process, from its `index`-th.
    ///
    /// # Errors
    /// When the poll, waker or timer cannot be created.
    pub fn new(index: usize, cfg: Arc<Config>, ctl: Arc<Control>) -> io::Result<Worker> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        ctl.add_waker(waker);
        let timer = Timer::new()?;
        timer.register(poll.registry(), TIMER)?;
        let pub_poll = Poll::new()?;
        poll.registry().register(
            &mut SourceFd(&pub_poll.as_raw_fd()),
            PUBLISHERS,
            Interest::READABLE,
        )?;
        let mut todo: Vec<u32> = cfg.my_clients().skip(index).step_by(cfg.threads).collect();
        todo.reverse();
        let size = match &cfg.scenario {
            Scenario::Broadcast(b) => b.size,
            _ => 0,
        };
        let ctx = Ctx {
            rng: Rng::new(now_ns() ^ (index as u64) << 48),
            stats: Stats::default(),
            live: new_histogram(),
            unflushed: 0,
            start_ns: u64::MAX,
            measure_ns: u64::MAX,
            end_ns: u64::MAX,
            phase: Phase::Connect,
            msg: vec![0; size],
            census: Census::default(),
            inbox: tls::Inbox::default(),
            cfg,
            ctl,
        };
        Ok(Worker {
            poll,
            events: Events::with_capacity(1024),
            pub_poll,
            pub_events: Events::with_capacity(256),
            timer,
            conns: Slab::with_capacity(todo.len()),
            buf: vec![0; READ_BUF],
            ctx,
            todo,
            next_batch_ns: 0,
            publishers: Vec::new(),
            dead_trackers: Vec::new(),
            next_live_ns: now_ns() + LIVE_PERIOD_NS,
            kicked: false,
            next_due_ns: u64::MAX,
            close_started_ns: 0,
        })
    }

    /// Runs until the coordinator's `Close` phase has closed every connection (or, for
    /// `connect`, until this worker's share is done), and returns what was counted.
    ///
    /// # Errors
    /// Only when `poll` itself fails.
    pub fn run(mut self) -> io::Result<Stats> {
        // Timers of this thread fire on time, not up to 50 µs late (the default slack).
        // SAFETY: prctl with PR_SET_TIMERSLACK only changes this thread's timer slack.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
        let connect_only = matches!(self.ctx.cfg.scenario, Scenario::Connect);
        loop {
            let now = now_ns();
            self.sync_phase(now);
            if self.finished(now, connect_only) {
                break;
            }
            self.launch(now, connect_only);
            self.expire(now);
            self.next_due_ns = self.publish_due(now);
            let mut deadline = self.next_due_ns;
            if now >= self.next_live_ns {
                self.hand_over_live();
                self.next_live_ns = now + LIVE_PERIOD_NS;
            }
            // With max_pending handshakes in progress, the next launch waits for one of
            // them to complete, which an event reports.
            if !self.todo.is_empty() && self.ctx.census.pending < self.ctx.cfg.max_pending {
                deadline = deadline.min(self.next_batch_ns);
            }
            if self.ctx.phase == Phase::Run && now < self.ctx.start_ns {
                deadline = deadline.min(self.ctx.start_ns);
            }
            if now < self.ctx.end_ns {
                deadline = deadline.min(self.ctx.end_ns);
            }
            deadline = deadline.min(self.next_live_ns).min(now + MAX_SLEEP_NS);
            self.sleep_until(now, deadline)?;
            self.dispatch(connect_only);
            if self.ctx.unflushed > 0 {
                self.ctx.ctl.distinct.fetch_add(self.ctx.unflushed, Relaxed);
                self.ctx.unflushed = 0;
            }
        }
        self.hand_over_live();
        Ok(self.finish())
    }

    /// Follows the coordinator's phase changes.
    fn sync_phase(&mut self, now: u64) {
        let phase = self.ctx.ctl.phase();
        if phase == self.ctx.phase {
            return;
        }
        if self.ctx.phase < Phase::Run && phase >= Phase::Run {
            self.ctx.start_ns = self.ctx.ctl.start_ns.load(Relaxed);
            self.ctx.measure_ns = self.ctx.ctl.measure_ns.load(Relaxed);
            self.ctx.end_ns = self.ctx.ctl.end_ns.load(Relaxed);
            // Publishers' HTTP connections open now, in the 20 ms before publishing starts,
            // not with the WebSockets: the server may time out a connection idle longer.
            let keys: Vec<usize> = self
                .conns
                .iter()
                .filter(|(_, c)| c.http.is_some() && c.state == State::Open)
                .map(|(k, _)| k)
                .collect();
            for key in keys {
                self.open_http(key);
            }
        }
        self.ctx.phase = phase;
        if phase == Phase::Close {
            self.close_started_ns = now;
            self.todo.clear();
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                self.start_close(key, now);
            }
        }
    }

    fn finished(&mut self, now: u64, connect_only: bool) -> bool {
        if self.ctx.phase == Phase::Close {
            return self.conns.is_empty() || now >= self.close_started_ns + CLOSE_GRACE_NS;
        }
        if !connect_only || self.ctx.phase < Phase::Run {
            return false;
        }
        // `connect`: done when the share is done, or time is up and the last handshakes
        // in progress are abandoned (not failures: the clock, not the server, ended them).
        if now >= self.ctx.end_ns && !self.todo.is_empty() {
            self.todo.clear();
            let pending: Vec<usize> = self
                .conns
                .iter()
                .filter(|(_, c)| matches!(c.state, State::Connecting | State::Handshaking))
                .map(|(k, _)| k)
                .collect();
            for key in pending {
                self.take(key);
            }
        }
        self.todo.is_empty() && self.conns.is_empty()
    }

    /// Starts the next batch of connections when it is due.
    fn launch(&mut self, now: u64, connect_only: bool) {
        if now < self.next_batch_ns || self.todo.is_empty() {
            return;
        }
        if connect_only && (self.ctx.phase != Phase::Run || now >= self.ctx.end_ns) {
            return;
        }
        self.next_batch_ns = now + self.ctx.cfg.batch_interval_ns;
        let mut started = 0;
        while started < self.ctx.cfg.batch && self.ctx.census.pending < self.ctx.cfg.max_pending {
            let Some(client) = self.todo.pop() else { break };
            started += 1;
            self.open(client, now);
        }
    }

    fn open(&mut self, client: u32, now: u64) {
        let cfg = &self.ctx.cfg;
        let tls = match tls::session(cfg.tls.as_ref(), cfg.url_of(client)) {
            Ok(tls) => tls,
            Err(why) => return self.count_failure(why),
        };
        let mut stream = match net::connect(cfg.url_of(client).addr, cfg.local_addr(client)) {
            Ok(s) => s,
            Err(e) => return self.count_failure(format!("connect: {}", net::describe(&e))),
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let publishes = self.ctx.broadcast().is_some_and(|b| client < b.publishers);
        let poll = if publishes {
            &self.pub_poll
        } else {
            &self.poll
        };
        if let Err(e) = poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.count_failure(format!("register: {}", net::describe(&e)));
        }
        let (room, trackers, latency, publisher, http) = match self.ctx.broadcast() {
            Some(b) => {
                let room = b.room_of(client);
                let http = match &b.via {
                    PublishVia::Http { token } if publishes => {
                        Some(Box::new(HttpPub::new(publish::request_head(
                            self.ctx.cfg.url_of(client),
                            token.as_deref(),
                            b.size,
                            (b.rooms > 0).then(|| room_name(room)).as_deref(),
                        ))))
                    }
                    _ => None,
                };
                (
                    room,
                    vec![SeqTracker::default(); b.publishers_in(room) as usize].into_boxed_slice(),
                    Some(LogHistogram::boxed()),
                    publishes.then_some(Publisher {
                        id: client,
                        next_seq: 0,
                        in_flight: 0,
                    }),
                    http,
                )
            }
            None => (0, Box::default(), None, None, None),
        };
        entry.insert(Conn {
            stream,
            tls,
            state: State::Connecting,
            since_ns: now,
            accept: None,
            out: Vec::new(),
            out_pos: 0,
            carry: Vec::new(),
            frag: None,
            client,
            room,
            trackers,
            order: Interleaving::default(),
            latency,
            publisher,
            http,
        });
        self.ctx.census.enter(State::Connecting);
    }

    fn count_failure(&mut self, reason: Reason) {
        if self.ctx.ctl.first_failure.get().is_none() {
            let _ = self.ctx.ctl.first_failure.set(reason.clone());
        }
        *self.ctx.stats.failures.entry(reason).or_default() += 1;
        self.ctx.ctl.failed.fetch_add(1, Relaxed);
    }

    /// Fails handshakes past their timeout and drops connections past their close grace.
    fn expire(&mut self, now: u64) {
        let handshake_deadline = now.saturating_sub(self.ctx.cfg.connect_timeout_ns);
        let close_deadline = now.saturating_sub(CLOSE_GRACE_NS);
        debug_assert_eq!(self.ctx.census, Census::of(&self.conns));
        if self.ctx.census == Census::default() {
            return;
        }
        let expired: Vec<(usize, State)> = self
            .conns
            .iter()
            .filter(|(_, c)| match c.state {
                State::Connecting | State::Handshaking => c.since_ns < handshake_deadline,
                State::Closing => c.since_ns < close_deadline,
                State::Open => false,
            })
            .map(|(k, c)| (k, c.state))
            .collect();
        for (key, state) in expired {
            let how = match state {
                State::Connecting => End::Broke("connect: timed out".into()),
                State::Handshaking => End::Broke("handshake: timed out".into()),
                State::Open | State::Closing => End::Clean,
            };
            self.end(key, how);
        }
    }

    /// Sends what publishers owe at `now`; returns when the next open-loop message is due.
    fn publish_due(&mut self, now: u64) -> u64 {
        let Some(b) = self.ctx.broadcast().cloned() else {
            return u64::MAX;
        };
        if !self.ctx.sending(now) {
            return u64::MAX;
        }
        if self.publishers.is_empty() && !self.kicked {
            self.publishers = self
                .conns
                .iter()
                .filter(|(_, c)| c.publisher.is_some() && c.state == State::Open)
                .map(|(k, _)| k)
                .collect();
        }
        let mut next_due = u64::MAX;
        let saturation = b.rate == 0.0;
        for i in 0..self.publishers.len() {
            let key = self.publishers[i];
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            let Some(Publisher { id, .. }) = conn.publisher else {
                continue;
            };
            if conn.state != State::Open || !conn.can_publish() {
                continue;
            }
            if saturation {
                if !self.kicked {
                    for _ in 0..b.window {
                        self.ctx.publish(conn, now);
                    }
                }
            } else {
                loop {
                    let seq = conn.publisher.map_or(0, |p| p.next_seq);
                    let due = b.due_ns(self.ctx.start_ns, id, seq);
                    if due > now || due >= self.ctx.end_ns {
                        if due < self.ctx.end_ns {
                            next_due = next_due.min(due);
                        }
                        break;
                    }
                    self.ctx.stats.send_lag.saturating_record(now - due + 1);
                    self.ctx.publish(conn, due);
                }
            }
            if let Err(e) = flush(conn) {
                self.end(key, End::Broke(format!("write: {}", net::describe(&e))));
            }
            self.flush_http(key);
        }
        self.kicked = true;
        next_due
    }

    fn hand_over_live(&mut self) {
        if self.ctx.live.is_empty() {
            return;
        }
        if let Ok(mut live) = self.ctx.ctl.live.lock() {
            live.add(&self.ctx.live).expect("same bounds");
        }
        self.ctx.live.reset();
    }

    /// Waits for events until `deadline`. The timerfd wakes the loop at the deadline
    /// itself, since epoll's own timeout is in whole milliseconds (rounded up), which
    /// would make every open-loop message late; the epoll timeout is only a backstop.
    fn sleep_until(&mut self, now: u64, deadline: u64) -> io::Result<()> {
        let timeout = if deadline <= now {
            std::time::Duration::ZERO
        } else {
            self.timer.arm_at(deadline)?;
            std::time::Duration::from_nanos(deadline - now + 10 * MS)
        };
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                self.events.clear();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn dispatch(&mut self, connect_only: bool) {
        // Take the events out so handlers may borrow the worker mutably; putting them back
        // keeps their storage for the next poll.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        // Publishers' events go first: a saturation publisher refills its window as soon as
        // it sees its own copies, so the server gets new work while this loop is still busy
        // with the receivers, instead of idling until the whole batch is done.
        if events.iter().any(|ev| ev.token() == PUBLISHERS) {
            self.dispatch_publishers(connect_only);
        }
        for (i, ev) in events.iter().enumerate() {
            // A full batch of events takes milliseconds: publishers due meanwhile must
            // not wait for its end, or every receiver's latency would include the wait.
            if i % EVENTS_PER_CLOCK_CHECK == EVENTS_PER_CLOCK_CHECK - 1 {
                let now = now_ns();
                if now >= self.next_due_ns {
                    self.next_due_ns = self.publish_due(now);
                }
                // Likewise a saturation publisher's own copies, arrived since the poll.
                if self.saturating() {
                    self.dispatch_publishers(connect_only);
                }
            }
            match ev.token() {
                WAKE | PUBLISHERS => {}
                TIMER => self.timer.clear(),
                Token(t) if t & HTTP != 0 => self.on_http_ready(t & !HTTP, ready_of(ev)),
                Token(key) => self.on_ready(key, ready_of(ev), connect_only),
            }
        }
        self.events = events;
    }

    /// Handles what the publishers' poll has ready, until it has nothing: its own
    /// readiness in the worker's poll is edge-triggered, so what is left behind would not
    /// be reported again.
    fn dispatch_publishers(&mut self, connect_only: bool) {
        let mut events = std::mem::replace(&mut self.pub_events, Events::with_capacity(0));
        loop {
            match self
                .pub_poll
                .poll(&mut events, Some(std::time::Duration::ZERO))
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The worker's own poll fails the same way at its next call, and says so.
                Err(_) => break,
            }
            let mut seen = 0;
            for ev in events.iter() {
                seen += 1;
                self.on_ready(ev.token().0, ready_of(ev), connect_only);
            }
            if seen < events.capacity() {
                break;
            }
        }
        self.pub_events = events;
    }

    /// Whether this is a saturation run that is publishing now.
    fn saturating(&self) -> bool {
        !self.publishers.is_empty()
            && self.ctx.broadcast().is_some_and(|b| b.rate == 0.0)
            && self.ctx.phase == Phase::Run
    }

    fn on_ready(&mut self, key: usize, ready: Ready, connect_only: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return; // ended earlier in this batch
        };
        if conn.state == State::Connecting {
            match finish_connect(conn, &self.ctx.cfg, &mut self.ctx.rng) {
                Ok(true) => conn.set_state(State::Handshaking, &mut self.ctx.census),
                Ok(false) => return,
                Err(e) => {
                    let why = format!("connect: {}", net::describe(&e));
                    return self.end(key, End::Broke(why));
                }
            }
        }
        if ready.readable {
            match read_ready(conn, &mut self.buf, &mut self.ctx, ready.hung_up) {
                Ok(ReadEnd::Drained) => {}
                Ok(ReadEnd::Eof) if conn.state == State::Handshaking => {
                    return self.end(key, End::Broke("handshake: closed by server".into()))
                }
                Ok(ReadEnd::Eof) => return self.end(key, End::Broke("closed by server".into())),
                Err(reason) => return self.end(key, End::Broke(reason)),
            }
            if connect_only && conn.state == State::Open {
                self.start_close(key, now_ns());
            }
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if ready.writable || conn.has_output() {
            if let Err(e) = flush(conn) {
                return self.end(key, End::Broke(format!("write: {}", net::describe(&e))));
            }
        }
        if conn.http.is_some() {
            self.flush_http(key); // what its own copies let a saturation publisher send
        }
    }

    /// Sends a Close frame (code 1000) and waits for the server to close the socket.
    fn start_close(&mut self, key: usize, now: u64) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match conn.state {
            State::Open => {
                frame::encode_masked(
                    frame::OP_CLOSE,
                    &1000u16.to_be_bytes(),
                    self.ctx.rng.mask(),
                    &mut conn.out,
                );
                conn.set_state(State::Closing, &mut self.ctx.census);
                conn.since_ns = now;
                if flush(conn).is_err() {
                    self.end(key, End::Clean);
                }
            }
            State::Connecting | State::Handshaking => {
                self.end(key, End::Broke("unfinished at the end".into()))
            }
            State::Closing => {}
        }
    }

    /// Takes connection `key` out of the slab, the census and the poll.
    fn take(&mut self, key: usize) -> Option<Conn> {
        let mut conn = self.conns.try_remove(key)?;
        self.ctx.census.leave(conn.state);
        let poll = if conn.publisher.is_some() {
            &self.pub_poll
        } else {
            &self.poll
        };
        let _ = poll.registry().deregister(&mut conn.stream);
        Some(conn)
    }

    /// Removes connection `key` and counts how it ended: see [`End`]. A connection that
    /// was closing, or any in the `Close` phase, ended as planned whatever happened.
    fn end(&mut self, key: usize, how: End) {
        if let Some(conn) = self.conns.get_mut(key) {
            let _ = flush(conn); // a Close reply, if one is queued
        }
        let Some(mut conn) = self.take(key) else {
            return;
        };
        let planned = conn.state == State::Closing || self.ctx.phase == Phase::Close;
        match (conn.state, how) {
            (State::Connecting | State::Handshaking, End::Clean) => {
                self.count_failure("closed".into())
            }
            (State::Connecting | State::Handshaking, End::Broke(reason)) => {
                self.count_failure(reason)
            }
            (State::Open | State::Closing, how) => {
                if let (End::Broke(reason), false) = (how, planned) {
                    *self.ctx.stats.drops.entry(reason).or_default() += 1;
                    self.ctx.ctl.dropped.fetch_add(1, Relaxed);
                    self.ctx.ctl.members[conn.room as usize].fetch_sub(1, Relaxed);
                }
                if !conn.trackers.is_empty() {
                    let trackers = std::mem::take(&mut conn.trackers);
                    self.dead_trackers.push((conn.room, trackers, conn.order));
                }
                if let Some(p50) = conn.latency.and_then(|h| h.value_at_quantile(0.5)) {
                    self.ctx.stats.client_p50.saturating_record(p50);
                }
            }
        }
        if let Some(i) = self.publishers.iter().position(|&k| k == key) {
            self.publishers.swap_remove(i);
        }
        if let (Some(mut h), Some(p)) = (conn.http.take(), conn.publisher) {
            self.ctx.http_end(&mut h, p, self.poll.registry());
        }
    }

    /// Counts what every receiver lost and should have had, now that publishing is over.
    fn finish(mut self) -> Stats {
        let published: Vec<u64> = self
            .ctx
            .ctl
            .published
            .iter()
            .map(|p| p.load(Relaxed))
            .collect();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.end(key, End::Clean);
        }
        debug_assert_eq!(self.ctx.census, Census::default());
        let rooms = self.ctx.broadcast().map_or(1, Broadcast::room_count) as usize;
        for (room, trackers, order) in &self.dead_trackers {
            let room_published = || published.iter().skip(*room as usize).step_by(rooms);
            for (t, &n) in trackers.iter().zip(room_published()) {
                self.ctx.stats.lost += t.missing(n);
                self.ctx.stats.expected += n;
            }
            let orders = &mut self.ctx.stats.orders;
            orders.add(*room, *order, trackers, room_published().copied());
        }
        self.ctx.stats
    }
}

/// What an event says of its socket.
fn ready_of(ev: &mio::event::Event) -> Ready {
    Ready {
        readable: ev.is_readable() || ev.is_read_closed() || ev.is_error(),
        writable: ev.is_writable() || ev.is_error(),
        hung_up: ev.is_read_closed() || ev.is_error(),
    }
}

/// Completes a non-blocking `connect()` and sends the upgrade request.
///
/// Returns `Ok(false)` while the connection is still in progress.
fn finish_connect(conn: &mut Conn, cfg: &Config, rng: &mut Rng) -> io::Result<bool> {
    if let Some(e) = conn.stream.take_error()? {
        return Err(e);
    }
    match conn.stream.peer_addr() {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
        Err(e) => return Err(e),
    }
    let key = handshake::new_key(rng);
    conn.accept = Some(handshake::accept_for(&key).into_boxed_str());
    let url = cfg.url_of(conn.client);
    handshake::write_request(url, &cfg.ws_path(conn.client), &key, &mut conn.out);
    Ok(true)
}

/// Writes a connection's queued bytes until done or the socket is full.
fn flush(conn: &mut Conn) -> io::Result<()> {
    send(
        &mut conn.stream,
        conn.tls.as_deref_mut(),
        &mut conn.out,
        &mut conn.out_pos,
    )
}

/// Writes `out[*pos..]` to `stream`, through the TLS session `tls` if there is one, until
/// done or the socket is full.
fn send(
    stream: &mut TcpStream,
    tls: Option<&mut ClientConnection>,
    out: &mut Vec<u8>,
    pos: &mut usize,
) -> io::Result<()> {
    match tls {
        None => write_out(stream, out, pos),
        Some(tls) => tls::write_out(stream, tls, out),
    }
}

/// Writes `out[*pos..]` to `stream` until done (then empties `out`) or the socket is full.
fn write_out(stream: &mut TcpStream, out: &mut Vec<u8>, pos: &mut usize) -> io::Result<()> {
    while *pos < out.len() {
        match stream.write(&out[*pos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.clear();
    *pos = 0;
    Ok(())
}
