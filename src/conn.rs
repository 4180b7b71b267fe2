//! One client connection: its socket, its write queue and its protocol state.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Instant;

use mio::net::TcpStream;
use tungstenite::error::ProtocolError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error as WsError, Message};

use crate::config::{Config, Mode, SlowConsumer};
use crate::frame::{self, Frame, OP_BINARY, OP_PONG, OP_TEXT};
use crate::http::{self, Phase, Resource, Route, RouteConfig, Status};
use crate::nonblock::{interrupted, would_block};
use crate::queue::{Flushed, Kind, WriteQueue, ENTRY_COST};
use crate::rooms::Rooms;
use crate::stats::{CloseReason, Stats};

/// Bytes read at once from a connection waiting for a request head: two
/// heads' worth, so a pipelining client's buffered requests cost little.
const HTTP_READ: usize = 2 * http::MAX_HEAD_LEN;

/// Where a connection is in its life.
pub(crate) enum State {
    /// Waiting for a complete HTTP request head; holds the bytes so far
    /// (at most [`http::MAX_HEAD_LEN`] + 1, or what a pipelining client
    /// sent after its previous request).
    Http(Vec<u8>),
    /// Reading the body of `POST /publish` (at most `--max-message-size`).
    Body(Box<Body>),
    /// Upgraded to WebSocket: tungstenite's protocol state. Its output
    /// (pongs, close frames) goes into this connection's write queue.
    Open(Box<Ws>),
    /// herald's last bytes are queued (an HTTP response or a close frame);
    /// input is read and discarded. Once the queue drains the write side is
    /// shut, and the connection is removed at the peer's EOF or the deadline.
    Closing {
        /// Whether `shutdown(Write)` has been done.
        write_shut: bool,
    },
}

/// A publish body being read.
pub(crate) struct Body {
    buf: Vec<u8>,
    len: usize,
    binary: bool,
    keep_alive: bool,
    room: Option<String>,
}

/// An open WebSocket.
pub(crate) struct Ws {
    ctx: WebSocketContext,
    fragments: FragmentGuard,
    allowance: Allowance,
}

/// The smallest frame a client can send: a 2-byte header and the 4-byte
/// mask every client frame carries (an unmasked one ends the connection).
const MIN_CLIENT_FRAME: usize = 6;

/// Two token buckets, over frames (`--client-rate`, `--client-burst`) and
/// over bytes (`--client-bandwidth`), refilled by the time since the last
/// read. A client without allowance is not read: its input waits in its
/// socket (TCP backpressure), nothing is dropped. Kept to 12 bytes, as
/// every open WebSocket has one.
struct Allowance {
    frames: f32,
    bytes: f32,
    /// When it was last refilled, in the loop's milliseconds (wrapping).
    at_ms: u32,
}

impl Allowance {
    fn new(cfg: &Config, ms: u32) -> Self {
        Allowance {
            frames: cfg.client_burst.max(1) as f32,
            bytes: cfg.client_bandwidth as f32,
            at_ms: ms,
        }
    }

    /// Bytes that may be read now, at most `cap`: 0 means none. Each frame
    /// takes at least [`MIN_CLIENT_FRAME`] bytes, so reading no more than
    /// that many per frame token keeps the frame count within the bucket.
    fn available(&mut self, cfg: &Config, ms: u32, cap: usize, payload_left: u64) -> usize {
        let dt = ms.wrapping_sub(self.at_ms) as f32 / 1000.0;
        self.at_ms = ms;
        let mut cap = cap;
        if cfg.client_rate > 0 {
            let burst = cfg.client_burst.max(1) as f32;
            self.frames = (self.frames + dt * cfg.client_rate as f32).min(burst);
            // Bytes of the frame in progress cannot start a frame: only what
            // lies past them needs frame tokens.
            let tokens = (self.frames.max(0.0) as usize).saturating_mul(MIN_CLIENT_FRAME);
            cap = cap.min(tokens.saturating_add(payload_left.min(usize::MAX as u64) as usize));
        }
        if cfg.client_bandwidth > 0 {
            let per_second = cfg.client_bandwidth as f32;
            self.bytes = (self.bytes + dt * per_second).min(per_second);
            cap = cap.min(self.bytes.max(0.0) as usize);
        }
        cap
    }

    /// Takes what a read used.
    fn charge(&mut self, frames: u32, bytes: usize) {
        self.frames -= frames as f32;
        self.bytes -= bytes as f32;
    }
}

/// A request the server must finish, since it needs more than this
/// connection: the metrics need every connection, a publish's answer needs
/// the count of recipients, known once the broadcast is fanned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pending {
    /// Render the metrics and queue them (`body` false for HEAD).
    Metrics {
        /// Whether to send the body.
        body: bool,
        /// Whether the connection stays open.
        keep_alive: bool,
    },
    /// Answer 202 with the recipients, once per publish of this connection
    /// in this iteration's batches.
    Published {
        /// Publishes waiting for their answer (pipelined ones are routed in
        /// the same pass, so they share one fan-out).
        count: u32,
        /// Whether the connection stays open after the last of them.
        keep_alive: bool,
        /// The room they went to; [`NO_ROOM`] if it had no members
        /// (nobody received them).
        room: u32,
    },
}

/// What became of a broadcast batch offered to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Queued behind what the connection already has.
    Queued,
    /// Dropped for a slow consumer under `--slow-consumer drop` (it will be
    /// told how many it lost).
    Dropped,
    /// The connection is slow and closes with 1008 under
    /// `--slow-consumer close`.
    Closed,
}

/// A client connection.
pub(crate) struct Conn {
    /// The non-blocking socket, registered once for read and write readiness.
    pub stream: TcpStream,
    /// The peer's address, for logs.
    pub peer: SocketAddr,
    /// Bytes waiting for the socket, in order.
    pub queue: WriteQueue,
    /// Protocol state.
    pub state: State,
    /// When the current phase must end: the handshake (or keep-alive)
    /// deadline in `Http` and `Body`, the close deadline once closing.
    pub deadline: Option<Instant>,
    /// A request the server must finish before more input is handled.
    pub pending: Option<Pending>,
    /// Last second (since the server started) anything arrived.
    pub last_seen: u32,
    /// Messages dropped for this client (`--slow-consumer drop`) since it
    /// was last told.
    pub dropped: u32,
    /// Last second (since the server started) the socket took bytes or
    /// the queue was empty: a client that takes nothing while bytes wait
    /// for it is silent too.
    pub last_drained: u32,
    /// Why the connection is closing, once it is.
    pub reason: CloseReason,
    /// It became a WebSocket at some point (shutdown waits for these).
    pub was_ws: bool,
    /// herald started the close handshake (tungstenite can no longer
    /// write), so broadcasts skip this connection.
    pub ws_closing: bool,
    /// A keepalive ping is out and nothing arrived since.
    pub pinged: bool,
    /// The peer sent EOF.
    pub peer_eof: bool,
    /// Marked for removal at the end of the iteration (never mid-batch).
    pub doomed: bool,
    /// Listed in the loop's flush list for this iteration.
    pub dirty: bool,
    /// The last flush hit `WouldBlock`: wait for a writable event.
    pub blocked: bool,
    /// Listed in the loop's read list (budget spent, or throttled): read
    /// from there, not on its events, so it is listed at most once.
    pub unread: bool,
    /// Reading stopped because the connection may not take input now (its
    /// queue is full, an HTTP answer has not left, a request is pending);
    /// the loop lists it for reading once that changes.
    pub held: bool,
    /// The socket reported an error (the peer reset it): what is still
    /// unread was abandoned by the peer.
    pub reset: bool,
    /// The room this WebSocket joined ([`NO_ROOM`] before the upgrade).
    pub room: u32,
    /// Its index in the room's member list.
    pub slot: u32,
}

/// `Conn::room` of a connection in no room.
pub(crate) const NO_ROOM: u32 = u32::MAX;

/// What the loop lends a connection while it handles input.
pub(crate) struct Ctx<'a> {
    /// The configuration.
    pub cfg: &'a Config,
    /// The front door's view of it.
    pub route: &'a RouteConfig,
    /// Whether the server still takes new clients.
    pub phase: Phase,
    /// tungstenite's limits, derived from `cfg`.
    pub ws_config: &'a WebSocketConfig,
    /// The rooms, with this iteration's broadcasts, fanned out at its end.
    pub rooms: &'a mut Rooms,
    /// This connection's slab key (for joining a room).
    pub key: usize,
    /// Cached clock for this iteration.
    pub now: Instant,
    /// The same, in milliseconds since the loop started (wrapping).
    pub ms: u32,
    /// Counters.
    pub stats: &'a mut Stats,
}

impl Ctx<'_> {
    /// When a connection that starts closing now must be gone.
    pub fn close_by(&self) -> Instant {
        self.now + self.cfg.close_timeout
    }
}

/// The stream tungstenite sees: reads come from the loop-owned buffer
/// (so tungstenite's own read buffer can stay tiny), writes go to the
/// connection's queue.
///
/// # Invariants
/// tungstenite writes whole frames through this adapter (`write_out_buffer`
/// loops until its buffer is empty, and we accept everything), so its pongs
/// and close frames enter the queue whole, between broadcast frames, never
/// inside one. `flush` does nothing: the loop owns the socket's write side.
struct Io<'a> {
    input: &'a [u8],
    queue: &'a mut WriteQueue,
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // One call carries one whole frame (tungstenite's write buffer is
        // 0, so it writes each frame as soon as it is formatted).
        let kind = if buf.first() == Some(&(0x80 | OP_PONG)) {
            Kind::Pong
        } else {
            Kind::Own
        };
        self.queue.push(Frame::from_bytes(buf), kind);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Counts the fragments of the message being received, by following the
/// frame headers in the byte stream tungstenite is fed (tungstenite
/// reassembles without a limit on their number, and a flood of empty
/// fragments costs CPU without costing bytes).
///
/// It also counts every frame header it completes, for `--client-rate`.
#[derive(Default)]
struct FragmentGuard {
    header: [u8; 14],
    have: u8,
    skip: u64,
    fragments: u32,
    /// Frame headers completed since the last [`FragmentGuard::take_frames`].
    frames: u32,
}

impl FragmentGuard {
    /// Payload bytes of the current frame not yet seen (0 while a header
    /// is incomplete).
    fn payload_left(&self) -> u64 {
        self.skip
    }

    /// Frames seen since the last call.
    fn take_frames(&mut self) -> u32 {
        std::mem::take(&mut self.frames)
    }

    /// Follows `data`; false once a message has more than `max` fragments.
    fn scan(&mut self, mut data: &[u8], max: usize) -> bool {
        loop {
            if self.skip > 0 {
                if data.is_empty() {
                    return true;
                }
                let n = (data.len() as u64).min(self.skip) as usize;
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let have = self.have as usize;
            let need = if have < 2 {
                2
            } else {
                let ext = match self.header[1] & 0x7F {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                2 + ext + if self.header[1] & 0x80 != 0 { 4 } else { 0 }
            };
            if have < need {
                if data.is_empty() {
                    return true;
                }
                let n = (need - have).min(data.len());
                self.header[have..have + n].copy_from_slice(&data[..n]);
                self.have += n as u8;
                data = &data[n..];
                // A header that just became whole is counted now, even if
                // this read ends with it (an empty final fragment).
                continue;
            }
            // A whole header: account for it, then skip its payload.
            let h = &self.header;
            let (fin, opcode) = (h[0] & 0x80 != 0, h[0] & 0x0F);
            self.skip = match h[1] & 0x7F {
                126 => u16::from_be_bytes([h[2], h[3]]) as u64,
                127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                n => n as u64,
            };
            self.have = 0;
            self.frames = self.frames.saturating_add(1);
            if opcode < 8 {
                if opcode == 0 || !fin {
                    self.fragments = self.fragments.saturating_add(1);
                }
                if self.fragments as usize > max {
                    return false;
                }
                if fin {
                    self.fragments = 0;
                }
            }
        }
    }
}

impl Conn {
    /// A freshly accepted connection, waiting for its request head.
    pub fn new(stream: TcpStream, peer: SocketAddr, deadline: Instant, tick: u32) -> Self {
        Conn {
            stream,
            peer,
            queue: WriteQueue::new(),
            state: State::Http(Vec::new()),
            deadline: Some(deadline),
            pending: None,
            last_seen: tick,
            dropped: 0,
            last_drained: tick,
            reason: CloseReason::Normal,
            was_ws: false,
            ws_closing: false,
            pinged: false,
            peer_eof: false,
            doomed: false,
            dirty: false,
            blocked: false,
            unread: false,
            held: false,
            reset: false,
            room: NO_ROOM,
            slot: 0,
        }
    }

    /// Flags the connection as listed for reading; true if it was not
    /// already, so the caller lists it: a connection is on one read list
    /// at most once.
    pub fn list(&mut self) -> bool {
        !std::mem::replace(&mut self.unread, true)
    }

    /// Whether broadcasts should be queued for this connection.
    ///
    /// Read without touching the boxed protocol state, so fan-out reads one
    /// cache line per connection: tungstenite stops being able to write
    /// only after herald's own `close_ws`, or after the peer's Close, which
    /// moves the connection to `Closing` within the same read.
    #[inline]
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_)) && !self.ws_closing
    }

    /// Whether the socket should be read now: not while a request waits
    /// for the server, nor while an HTTP answer has not left (pipelined
    /// requests are answered one at a time, as the client reads), nor while
    /// the queue costs more than `limit` (`--max-queued-bytes`).
    pub fn wants_input(&self, limit: usize) -> bool {
        !self.doomed
            && !self.peer_eof
            && self.pending.is_none()
            && match self.state {
                State::Http(_) => self.queue.is_empty(),
                State::Open(_) => self.queue.cost() <= limit,
                State::Body(_) | State::Closing { .. } => true,
            }
    }

    /// Whether input read now may become broadcasts: a WebSocket message,
    /// or a publish body. (A request head may carry a whole publish too,
    /// but its reads are small: `HTTP_READ`.)
    pub fn may_broadcast(&self) -> bool {
        matches!(self.state, State::Open(_) | State::Body(_))
    }

    /// Whether the socket should be read now, and how much: `Some(0)` when
    /// a WebSocket client is past its `--client-rate` or
    /// `--client-bandwidth` allowance, `cap` when it is not limited.
    pub fn read_allowance(&mut self, cfg: &Config, ms: u32, cap: usize) -> usize {
        match &mut self.state {
            State::Open(ws) => ws
                .allowance
                .available(cfg, ms, cap, ws.fragments.payload_left()),
            // Pipelined requests wait in the buffer while their answers
            // leave one at a time; a small read keeps that buffer small.
            State::Http(_) => cap.min(HTTP_READ),
            _ => cap,
        }
    }

    /// Whether this connection is closing or closed.
    pub fn is_closing(&self) -> bool {
        self.doomed || matches!(self.state, State::Closing { .. })
    }

    /// Queues `response` as this connection's last bytes.
    ///
    /// `close_by` is when the closing must be over (`--close-timeout` from
    /// now): the connection is removed then, whatever is left.
    pub fn finish_with(&mut self, response: Frame, reason: CloseReason, close_by: Instant) {
        self.queue.push(response, Kind::Own);
        self.begin_closing(reason, close_by);
    }

    /// Stops accepting input and broadcasts; what is queued still goes out.
    fn begin_closing(&mut self, reason: CloseReason, close_by: Instant) {
        if !matches!(self.state, State::Closing { .. }) {
            self.state = State::Closing { write_shut: false };
            self.reason = reason;
            self.deadline = Some(close_by);
            self.pending = None;
        }
    }

    /// Handles bytes read from the socket (or, with `data` empty, bytes
    /// left over from a pipelined request).
    ///
    /// Returns the WebSocket frames the input carried (0 for HTTP): the
    /// loop's work is per frame as much as per byte.
    pub fn on_input(&mut self, data: &[u8], ctx: &mut Ctx<'_>) -> u32 {
        let mut frames = 0;
        match &mut self.state {
            State::Http(buf) => {
                // Everything is kept: past a complete head come a publish
                // body or pipelined requests. Growth is bounded: an
                // incomplete head past MAX_HEAD_LEN is answered 431, and no
                // more is read while a request waits for the server.
                buf.extend_from_slice(data);
                self.route_request(ctx);
            }
            State::Body(body) => {
                let take = (body.len - body.buf.len()).min(data.len());
                body.buf.extend_from_slice(&data[..take]);
                if body.buf.len() == body.len {
                    let rest = data[take..].to_vec();
                    if let State::Body(body) = std::mem::replace(&mut self.state, State::Http(rest))
                    {
                        let frame = publish_frame(&body.buf, body.binary);
                        self.published(frame, body.keep_alive, body.room.as_deref(), ctx);
                        self.route_request(ctx);
                    }
                }
            }
            State::Open(ws) => {
                if !ws.fragments.scan(data, ctx.cfg.max_fragments) {
                    let why = format!(
                        "more than {} fragments in one message",
                        ctx.cfg.max_fragments
                    );
                    self.close_with(
                        frame::CLOSE_TOO_BIG,
                        &why,
                        CloseReason::ProtocolError,
                        ctx.close_by(),
                    );
                } else {
                    frames = ws.fragments.take_frames();
                    ws.allowance.charge(frames, data.len());
                    match read_messages(&mut ws.ctx, data, &mut self.queue, self.room, ctx) {
                        Ok(()) => {}
                        Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                            // Both Close frames are exchanged: the peer has
                            // nothing more to say, so once the reply is out
                            // the server closes TCP first (RFC 6455 §7.1.1).
                            self.begin_closing(self.reason, ctx.close_by());
                            self.peer_eof = true;
                        }
                        Err(e) => self.fail(&e, ctx.close_by()),
                    }
                }
            }
            State::Closing { .. } => {}
        }
        // What this input made herald queue for the client itself (pongs,
        // echoes, HTTP answers) is bounded without closing anyone: past
        // `--max-queued-bytes` the client is not read until it drains.
        frames
    }

    /// Whether another pipelined request may be routed now.
    fn may_route(&self) -> bool {
        match self.pending {
            None => true,
            // More publishes may join the same fan-out; anything else waits,
            // so that answers leave in request order.
            Some(Pending::Published { keep_alive, .. }) => keep_alive,
            Some(Pending::Metrics { .. }) => false,
        }
    }

    /// Routes the requests in the `Http` buffer, as many as are complete
    /// and may be answered in order, then drops the bytes they used.
    fn route_request(&mut self, ctx: &mut Ctx<'_>) {
        let mut pos = 0;
        // An answer still in the queue holds the next request back, so a
        // client that pipelines without reading costs one answer.
        while self.may_route() && self.queue.is_empty() {
            let State::Http(buf) = &mut self.state else {
                return;
            };
            let input = &buf[pos..];
            if input.is_empty() {
                break;
            }
            let route = http::route(input, ctx.route, ctx.phase);
            if let Some(Pending::Published { room: owed, .. }) = self.pending {
                // Only a publish to the same room joins the same answer.
                let same_room = matches!(&route, Route::Publish { room, .. }
                    if ctx.rooms.find(room.as_deref()).unwrap_or(NO_ROOM) == owed);
                if !same_room {
                    break;
                }
            }
            match route {
                Route::Incomplete => break,
                Route::Upgrade { response, room } => {
                    let Some((id, slot)) = ctx.rooms.join(room.as_deref(), ctx.key) else {
                        *ctx.stats.rejected.entry(503).or_default() += 1;
                        self.finish_with(
                            http::error_response(Status::Unavailable, "room limit reached"),
                            CloseReason::Rejected,
                            ctx.close_by(),
                        );
                        return;
                    };
                    (self.room, self.slot) = (id, slot);
                    ctx.stats.room_joins += 1;
                    tracing::debug!(peer = %self.peer, room = room.as_deref().unwrap_or(""), "upgrade");
                    ctx.stats.bytes_written += self.send_now(&response) as u64;
                    let ws = WebSocketContext::new(Role::Server, Some(*ctx.ws_config));
                    self.state = State::Open(Box::new(Ws {
                        ctx: ws,
                        fragments: FragmentGuard::default(),
                        allowance: Allowance::new(ctx.cfg, ctx.ms),
                    }));
                    self.was_ws = true;
                    self.deadline = None;
                    ctx.stats.upgrades += 1;
                    return;
                }
                Route::Get {
                    what,
                    head_len,
                    body,
                    keep_alive,
                } => {
                    pos += head_len;
                    match what {
                        Resource::Page => self
                            .queue
                            .push(http::page_response(body, keep_alive), Kind::Own),
                        Resource::Health => {
                            let serving = ctx.phase == Phase::Serving;
                            let text = if serving { "ok\n" } else { "shutting down\n" };
                            self.queue.push(
                                http::text_response(serving, text, body, keep_alive),
                                Kind::Own,
                            )
                        }
                        Resource::Metrics => {
                            // Answered (and, without keep-alive, closed) by
                            // the server, which sees every connection.
                            self.pending = Some(Pending::Metrics { body, keep_alive });
                            continue;
                        }
                    }
                    self.next_request(keep_alive, ctx.now, ctx.cfg);
                }
                Route::Publish {
                    head_len,
                    body_len,
                    binary,
                    keep_alive,
                    room,
                } => {
                    let start = pos + head_len;
                    if buf.len() - start < body_len {
                        // The body is still arriving.
                        let mut partial = Vec::with_capacity(body_len);
                        partial.extend_from_slice(&buf[start..]);
                        self.state = State::Body(Box::new(Body {
                            buf: partial,
                            len: body_len,
                            binary,
                            keep_alive,
                            room,
                        }));
                        return;
                    }
                    let frame = publish_frame(&buf[start..start + body_len], binary);
                    if frame.is_none() && self.pending.is_some() {
                        // Its 400 must follow the 202s still owed: route it
                        // again once they are sent.
                        break;
                    }
                    pos = start + body_len;
                    self.published(frame, keep_alive, room.as_deref(), ctx);
                }
                Route::Reject(status, why) => {
                    tracing::debug!(peer = %self.peer, status = status.code(), why, "rejected");
                    *ctx.stats.rejected.entry(status.code()).or_default() += 1;
                    self.finish_with(
                        http::error_response(status, why),
                        CloseReason::Rejected,
                        ctx.close_by(),
                    );
                    return;
                }
            }
        }
        if let State::Http(buf) = &mut self.state {
            buf.drain(..pos.min(buf.len()));
        }
    }

    /// A publish body is complete: queue its broadcast (the 202 waits for
    /// the fan-out, which counts the recipients), or reject it.
    fn published(
        &mut self,
        frame: Option<Frame>,
        keep_alive: bool,
        room: Option<&str>,
        ctx: &mut Ctx<'_>,
    ) {
        let Some(frame) = frame else {
            *ctx.stats.rejected.entry(400).or_default() += 1;
            self.finish_with(
                http::error_response(Status::BadRequest, "a text body must be valid UTF-8"),
                CloseReason::Rejected,
                ctx.close_by(),
            );
            return;
        };
        // A room without members does not exist: the message reaches no one.
        let room = ctx.rooms.find(room).unwrap_or(NO_ROOM);
        if room != NO_ROOM {
            ctx.rooms.push_encoded(room, &frame);
        }
        ctx.stats.publishes += 1;
        let count = match self.pending {
            Some(Pending::Published { count, .. }) => count + 1,
            _ => 1,
        };
        self.pending = Some(Pending::Published {
            count,
            keep_alive,
            room,
        });
    }

    /// Queues the answer to each of `count` requests the server finished
    /// (all kept alive but perhaps the last), then waits for the next
    /// request or closes.
    pub fn answer_pending(
        &mut self,
        answer: impl Fn(bool) -> Frame,
        count: u32,
        keep_alive: bool,
        now: Instant,
        cfg: &Config,
    ) {
        self.pending = None;
        for _ in 1..count {
            self.queue.push(answer(true), Kind::Own);
        }
        if keep_alive {
            self.queue.push(answer(true), Kind::Own);
            self.next_request(true, now, cfg);
        } else {
            self.finish_with(answer(false), CloseReason::Normal, now + cfg.close_timeout);
        }
    }

    /// After a response: wait for the next request, or close.
    fn next_request(&mut self, keep_alive: bool, now: Instant, cfg: &Config) {
        if keep_alive {
            self.deadline = Some(now + cfg.handshake_timeout);
        } else {
            self.begin_closing(CloseReason::Normal, now + cfg.close_timeout);
        }
    }

    /// The server finished a pending request: continue with pipelined input.
    pub fn resume(&mut self, ctx: &mut Ctx<'_>) {
        if self.pending.is_none() && matches!(self.state, State::Http(_)) {
            self.route_request(ctx);
        }
    }

    /// Ends the connection after a protocol error, with the close code the
    /// RFC gives for it.
    fn fail(&mut self, e: &WsError, close_by: Instant) {
        let (code, why): (u16, String) = match e {
            WsError::Capacity(_) => (frame::CLOSE_TOO_BIG, "message too big".into()),
            WsError::Utf8(_) => (
                frame::CLOSE_INVALID_DATA,
                "invalid UTF-8 in a text message".into(),
            ),
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                self.peer_eof = true;
                self.begin_closing(CloseReason::PeerGone, close_by);
                return;
            }
            WsError::Protocol(p) => (frame::CLOSE_PROTOCOL, p.to_string()),
            WsError::Io(_) => {
                self.doomed = true;
                self.reason = CloseReason::IoError;
                return;
            }
            other => (frame::CLOSE_INTERNAL, other.to_string()),
        };
        self.close_with(code, &why, CloseReason::ProtocolError, close_by);
    }

    /// Sends a close frame as the last bytes, without waiting for the reply.
    fn close_with(&mut self, code: u16, why: &str, reason: CloseReason, close_by: Instant) {
        tracing::debug!(peer = %self.peer, code, why, "closing on error");
        self.finish_with(frame::encode_close(code, why), reason, close_by);
    }

    /// Closes a client whose broadcast backlog would pass `limit`: the
    /// broadcasts it has not started receiving are dropped (herald's own
    /// answers stay), and a close 1008 goes after them.
    fn close_slow(&mut self, limit: usize, close_by: Instant) {
        tracing::debug!(peer = %self.peer, backlog = self.queue.backlog(), limit, "slow consumer closed");
        self.queue.discard_broadcasts();
        let why = format!("slow consumer: more than {limit} bytes queued");
        self.close_with(
            frame::CLOSE_POLICY,
            &why,
            CloseReason::SlowConsumer,
            close_by,
        );
    }

    /// Starts the close handshake (shutdown, idle timeout); the peer has
    /// until `close_by` to answer.
    pub fn close_ws(
        &mut self,
        code: CloseCode,
        why: &'static str,
        reason: CloseReason,
        close_by: Instant,
    ) {
        if let State::Open(ws) = &mut self.state {
            let mut io = Io {
                input: &[],
                queue: &mut self.queue,
            };
            let frame = CloseFrame {
                code,
                reason: why.into(),
            };
            // Writing into the queue cannot block; any error means the
            // handshake was already under way, which is just as good.
            let _ = ws.ctx.close(&mut io, Some(frame));
            self.ws_closing = true;
            self.reason = reason;
            self.deadline = Some(close_by);
        }
    }

    /// The peer closed its side.
    pub fn on_eof(&mut self, close_by: Instant) {
        self.peer_eof = true;
        let reason = match &self.state {
            State::Open(ws) if ws.ctx.can_write() => CloseReason::PeerGone,
            _ => self.reason,
        };
        self.begin_closing(reason, close_by);
        if self.queue.is_empty() {
            self.doomed = true;
        }
    }

    /// A deadline passed. Returns the status sent, if any.
    pub fn on_deadline(&mut self, close_by: Instant) -> Option<u16> {
        match &self.state {
            State::Http(head) if head.is_empty() => {
                // An idle kept-alive connection (or one idle when shutdown
                // began): nothing to say.
                if self.reason == CloseReason::Normal {
                    self.reason = CloseReason::Timeout;
                }
                self.doomed = true;
                None
            }
            State::Http(_) | State::Body(_) => {
                let status = Status::RequestTimeout;
                self.finish_with(
                    http::error_response(status, "request not received in time"),
                    CloseReason::Timeout,
                    close_by,
                );
                Some(status.code())
            }
            _ => {
                if self.reason == CloseReason::Normal {
                    self.reason = CloseReason::Timeout;
                }
                self.doomed = true;
                None
            }
        }
    }

    /// Writes what the queue holds; when a closing connection has drained,
    /// shuts its write side (or dooms it if the peer is gone too). A client
    /// that lost messages under `--slow-consumer drop` is told as soon as
    /// its queue drains. Returns the bytes written.
    pub fn flush(&mut self, tick: u32) -> usize {
        let mut written = self.flush_once(tick);
        if self.dropped > 0 && self.queue.is_empty() && self.is_open() {
            self.queue_drop_notice();
            written += self.flush_once(tick);
        }
        written
    }

    /// Writes `bytes` at once if nothing is queued before them, and queues
    /// what the socket does not take. For the `101`: an idle WebSocket then
    /// never allocates a queue. Returns the bytes written.
    fn send_now(&mut self, bytes: &[u8]) -> usize {
        let written = if self.queue.is_empty() {
            match SendMsg(&self.stream).write(bytes) {
                Ok(n) => n,
                Err(e) if would_block(&e) => 0,
                Err(e) if interrupted(&e) => 0,
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "write failed");
                    self.doomed = true;
                    self.reason = CloseReason::IoError;
                    return 0;
                }
            }
        } else {
            0
        };
        if written < bytes.len() {
            self.queue
                .push(Frame::from_bytes(&bytes[written..]), Kind::Own);
        }
        written
    }

    /// Offers this iteration's broadcast batch (`count` messages joined in
    /// one frame): the slow-consumer policy, in one place.
    ///
    /// Slow means: broadcasts from earlier iterations are still unsent and
    /// this batch would take them past `limit`. Its own 101, pongs and pings
    /// never make a client slow, and one with no backlog keeps up, so even
    /// a batch larger than the limit (whose frames every recipient shares)
    /// is queued for it.
    pub fn offer(
        &mut self,
        batch: &Frame,
        count: u32,
        limit: usize,
        policy: SlowConsumer,
        close_by: Instant,
    ) -> Offer {
        let backlog = self.queue.backlog();
        if backlog == 0 || backlog + batch.len() + ENTRY_COST <= limit {
            if self.dropped > 0 {
                // Where the gap is, before what follows it.
                self.queue_drop_notice();
            }
            self.queue.push(batch.clone(), Kind::Broadcast);
            Offer::Queued
        } else if policy == SlowConsumer::Drop {
            self.dropped = self.dropped.saturating_add(count);
            Offer::Dropped
        } else {
            self.close_slow(limit, close_by);
            Offer::Closed
        }
    }

    /// Queues `herald: N messages dropped` for a client that lost messages.
    fn queue_drop_notice(&mut self) {
        let notice = format!("herald: {} messages dropped", self.dropped);
        self.queue
            .push(frame::encode(OP_TEXT, b"", notice.as_bytes()), Kind::Own);
        self.dropped = 0;
    }

    fn flush_once(&mut self, tick: u32) -> usize {
        let before = self.queue.queued();
        let result = self.queue.flush(&mut SendMsg(&self.stream));
        let written = before - self.queue.queued();
        if written > 0 || self.queue.is_empty() {
            self.last_drained = tick;
        }
        match result {
            Ok(Flushed::Empty) => {
                self.blocked = false;
                if let State::Closing { write_shut } = &mut self.state {
                    if self.peer_eof {
                        self.doomed = true;
                    } else if !*write_shut {
                        *write_shut = true;
                        if self.stream.shutdown(Shutdown::Write).is_err() {
                            self.doomed = true;
                        }
                    }
                }
            }
            Ok(Flushed::Blocked) => self.blocked = true,
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "write failed");
                self.doomed = true;
                if self.reason == CloseReason::Normal {
                    self.reason = CloseReason::IoError;
                }
            }
        }
        written
    }
}

/// Writes through `sendmsg(2)` rather than `writev(2)`: the socket call
/// skips the VFS layer (`fdget_pos`, `vfs_writev`), about 8% of herald's
/// time in a `perf` profile of loadgen scenario (c); an A/B run of that
/// scenario measured about 4% less CPU per delivery.
struct SendMsg<'a>(&'a TcpStream);

impl Write for SendMsg<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        socket2::SockRef::from(self.0).send_vectored_with_flags(bufs, 0)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Feeds `data` to tungstenite and routes every complete message.
///
/// # Errors
/// tungstenite's, `ConnectionClosed` included; `Ok` once the input is used up.
fn read_messages(
    ws: &mut WebSocketContext,
    data: &[u8],
    queue: &mut WriteQueue,
    room: u32,
    ctx: &mut Ctx<'_>,
) -> Result<(), WsError> {
    let mut io = Io { input: data, queue };
    loop {
        match ws.read(&mut io) {
            Ok(Message::Text(text)) => deliver(ctx, io.queue, room, OP_TEXT, text.as_bytes()),
            Ok(Message::Binary(bytes)) => deliver(ctx, io.queue, room, OP_BINARY, &bytes),
            // Pongs are queued by tungstenite itself; a peer's Close is
            // answered on the next `read`, which then ends the connection.
            Ok(_) => {}
            Err(WsError::Io(e)) if would_block(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// The broadcast frame for a publish body; `None` for a text body that is
/// not UTF-8.
fn publish_frame(body: &[u8], binary: bool) -> Option<Frame> {
    if binary {
        Some(frame::encode(OP_BINARY, b"", body))
    } else {
        std::str::from_utf8(body).ok()?;
        Some(frame::encode(OP_TEXT, b"", body))
    }
}

/// Routes one message from a client according to the mode.
#[inline]
fn deliver(ctx: &mut Ctx<'_>, own: &mut WriteQueue, room: u32, opcode: u8, payload: &[u8]) {
    ctx.stats.messages_in += 1;
    tracing::debug!(opcode, len = payload.len(), "message");
    match ctx.cfg.mode {
        Mode::Broadcast => {
            let prefix = if opcode == OP_TEXT {
                ctx.cfg.prefix.as_bytes()
            } else {
                b""
            };
            ctx.rooms.push(room, opcode, prefix, payload);
        }
        Mode::Echo => own.push(frame::encode(opcode, b"", payload), Kind::Own),
    }
}

#[cfg(test)]
mod tests {
    use super::FragmentGuard;

    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        if len < 126 {
            out.push(0x80 | len as u8);
        } else {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend(std::iter::repeat_n(b'a', len));
        out
    }

    #[test]
    fn fragment_guard_counts_across_any_split() {
        let mut stream = frame(false, 1, 3);
        for _ in 0..8 {
            stream.extend(frame(false, 0, 200));
            stream.extend(frame(true, 9, 2)); // a ping between fragments
        }
        stream.extend(frame(true, 0, 1));
        stream.extend(frame(true, 1, 5));
        // 10 fragments in the first message.
        for split in [1usize, 2, 3, 7, 100, stream.len()] {
            let mut ok = FragmentGuard::default();
            assert!(
                stream.chunks(split).all(|c| ok.scan(c, 10)),
                "split {split}"
            );
            let mut strict = FragmentGuard::default();
            assert!(
                !stream.chunks(split).all(|c| strict.scan(c, 9)),
                "split {split}"
            );
        }
    }
}

#[cfg(test)]
mod size_tests {
    /// The slab holds one `Conn` per connection: keep it small (the README
    /// states memory per idle connection).
    #[test]
    fn a_connection_stays_small() {
        let size = std::mem::size_of::<super::Conn>();
        eprintln!("size_of::<Conn>() = {size}");
        assert!(size <= 192, "Conn grew to {size} bytes");
    }
}

#[cfg(test)]
mod allowance_tests {
    use super::*;

    /// Once the frame bucket is low, reads used to be capped
    /// at 6 bytes per frame token even inside a frame's payload, where no
    /// header can start; a 60 KiB payload then takes ~1000 reads.
    /// Models read_conn's loop: allowance -> read -> scan -> charge.
    #[test]
    fn payload_reads_are_not_capped_by_frame_tokens() {
        let cfg = crate::config::Config::default();
        let mut a = Allowance::new(&cfg, 0);
        let mut g = FragmentGuard::default();
        // The client spent its burst on empty frames.
        a.charge(cfg.client_burst, 0);
        // 10 ms later (one THROTTLE_TICK) a 60 KiB text frame is in the socket.
        let mut stream = vec![0x81, 0xFE, 0xF0, 0x00, 0, 0, 0, 0];
        stream.extend(std::iter::repeat_n(b'a', 61440));
        let (mut pos, mut reads, ms) = (0usize, 0usize, 10u32);
        while pos < stream.len() {
            let cap = a.available(&cfg, ms, 64 * 1024, g.payload_left());
            if cap == 0 {
                break;
            }
            let n = cap.min(stream.len() - pos);
            assert!(g.scan(&stream[pos..pos + n], cfg.max_fragments));
            a.charge(g.take_frames(), n);
            pos += n;
            reads += 1;
        }
        eprintln!("{reads} reads for {pos} bytes");
        assert!(reads <= 16, "{reads} reads for one 60 KiB frame");
    }
}
