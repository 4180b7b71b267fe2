//! One client connection: its socket, its write queue and where it is in
//! its life. A connection goes through two sessions, each in its own file:
//! [`http_session`] until it upgrades (or for good, for plain requests),
//! [`ws_session`] once it is a WebSocket. This file keeps what both share:
//! the loop's view of the connection, closing, deadlines and the write
//! side.
//!
//! The loop never touches a connection's fields: it tells it what happened
//! (`on_writable`, `read_input`, `on_deadline`, `on_shutdown`, ...) and asks
//! it questions (`is_open`, `wants_flush`, `read_allowance`, ...), so the
//! queue and slow-consumer policies live here, not in the loop.

mod http_session;
mod ws_session;

use std::io::{self, Read as _, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use mio::net::TcpStream;
use mio::Registry;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::WebSocketConfig;

use crate::bus::Bus;
use crate::config::Config;
use crate::frame::{self, Frame};
use crate::http::{self, Phase, RouteConfig, Status};
use crate::nonblock::{interrupted, would_block};
use crate::queue::{Flushed, Kind, WriteQueue};
use crate::rooms::Rooms;
use crate::stats::{CloseReason, Stats};
use crate::tls::{Tls, TlsRead};

pub(crate) use http_session::Awaiting;
use http_session::{Body, Pending, HTTP_READ};
pub(crate) use ws_session::Offer;
use ws_session::Ws;

/// Where a connection is in its life.
enum State {
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
        /// How its WebSocket session went, if it was one: logged when the
        /// connection is removed.
        session: Option<Box<SessionEnd>>,
    },
}

/// An ended WebSocket session, for its log line.
#[derive(Debug)]
pub(super) struct SessionEnd {
    /// When it opened, in the loop's milliseconds (wrapping).
    opened_ms: u32,
    /// Messages the client sent.
    messages_in: u32,
    /// The close code and reason: the one herald gave, or the client's.
    code: Option<u16>,
    why: Box<str>,
    /// Who ended it.
    by: &'static str,
}

/// A client connection.
pub(crate) struct Conn {
    /// The non-blocking socket, registered once for read and write readiness.
    stream: TcpStream,
    /// Its TLS session, on a TLS listener: the transport every byte read
    /// or written goes through. `None`: the socket is the transport.
    tls: Option<Box<Tls>>,
    /// The peer's address, for logs.
    peer: Peer,
    /// Bytes waiting for the socket, in order.
    queue: WriteQueue,
    /// Protocol state.
    state: State,
    /// When the current phase must end: the handshake (or keep-alive)
    /// deadline in `Http` and `Body`, the close deadline once closing.
    deadline: Option<Instant>,
    /// A request the server must finish before more input is handled.
    pending: Option<Pending>,
    /// Last second (since the server started) anything arrived.
    last_seen: u32,
    /// Messages dropped for this client (`--slow-consumer drop`) since it
    /// was last told.
    dropped: u32,
    /// Last second (since the server started) the socket took bytes or
    /// the queue was empty: a client that takes nothing while bytes wait
    /// for it is silent too.
    last_drained: u32,
    /// Why the connection is closing, once it is.
    reason: CloseReason,
    /// Marked for removal at the end of the iteration (never mid-batch).
    doomed: bool,
    /// The room this WebSocket joined ([`NO_ROOM`] before the upgrade).
    room: u32,
    /// Its index in the room's member list.
    slot: u32,
    /// Messages queued for it, for its session's log line.
    delivered: u32,
    /// Facts and list memberships, one bit each ([`Marks`]): packed, so a
    /// connection stays within its size.
    marks: Marks,
}

/// Facts about a connection and the loop's lists it is on, one bit each.
#[derive(Debug, Default, Clone, Copy)]
struct Marks(u16);

impl Marks {
    /// It became a WebSocket at some point (shutdown waits for these).
    const WAS_WS: u16 = 1;
    /// A keepalive ping is out and nothing arrived since.
    const PINGED: u16 = 2;
    /// The peer sent EOF.
    const PEER_EOF: u16 = 4;
    /// Reading stopped because the connection may not take input now (its
    /// queue is full, an HTTP answer has not left, a request is pending);
    /// the loop lists it for reading once that changes.
    const HELD: u16 = 8;
    /// The socket reported an error (the peer reset it): what is still
    /// unread was abandoned by the peer.
    const RESET: u16 = 16;
    /// Accepted on `--metrics-listen`: served the metrics and health only.
    const METRICS_ONLY: u16 = 32;
    /// herald started the close handshake (tungstenite can no longer
    /// write), so broadcasts skip this connection.
    const WS_CLOSING: u16 = 64;
    /// Listed in the loop's flush list for this iteration.
    const DIRTY: u16 = 128;
    /// Listed in the loop's round of broadcast flushes (see
    /// [`Conn::list_for_round`]).
    const IN_ROUND: u16 = 256;
    /// The last flush hit `WouldBlock`: wait for a writable event.
    const BLOCKED: u16 = 512;
    /// Listed in the loop's read list (budget spent, or throttled): read
    /// from there, not on its events, so it is listed at most once.
    const UNREAD: u16 = 1024;

    #[inline]
    fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }

    /// Sets `bit`; returns whether it was clear.
    #[inline]
    fn raise(&mut self, bit: u16) -> bool {
        let was = self.has(bit);
        self.0 |= bit;
        !was
    }

    #[inline]
    fn set(&mut self, bit: u16, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }
}

/// A peer's address, for logs: a `SocketAddr` without the IPv6 flow and
/// scope fields (20 bytes, not 32), so a connection stays within its size.
#[derive(Debug, Clone, Copy)]
pub(super) struct Peer {
    ip: IpAddr,
    port: u16,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        SocketAddr::new(self.ip, self.port).fmt(f)
    }
}

/// `Conn::room` of a connection in no room.
const NO_ROOM: u32 = u32::MAX;

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
    /// The same, in whole seconds since the server started: the clock of
    /// keepalive.
    pub tick: u32,
    /// Counters.
    pub stats: &'a mut Stats,
    /// The Redis bus (`--redis`): broadcasts are published to it, not
    /// pushed to the rooms.
    pub bus: Option<&'a mut Bus>,
}

impl Ctx<'_> {
    /// When a connection that starts closing now must be gone.
    pub fn close_by(&self) -> Instant {
        self.now + self.cfg.close_timeout
    }
}

/// How much the loop may read from a connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadLimit {
    /// Up to this many bytes.
    Bytes(usize),
    /// Nothing: a WebSocket past its `--client-rate` or
    /// `--client-bandwidth` allowance waits for the loop's throttle tick.
    Throttled,
    /// Nothing, ever: past its allowance with input a peer abandoned (the
    /// socket was reset), not worth reading at the paced rate. The
    /// connection is doomed.
    Abandoned,
}

/// What one read from the socket came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Input {
    /// `bytes` were read and handled; they carried `frames` WebSocket
    /// frames (0 for HTTP): the loop's work is per frame as much as per
    /// byte.
    Read {
        /// Bytes read (from the socket, or decrypted: the larger).
        bytes: usize,
        /// WebSocket frames they carried.
        frames: u32,
        /// The read took all the socket held (it gave less than asked)
        /// and nothing read is left undelivered: data that arrives later
        /// raises a new edge, so the read that would only say
        /// `WouldBlock` can be saved.
        drained: bool,
    },
    /// Nothing more for now (`WouldBlock`).
    Drained,
    /// A signal interrupted the read: read again.
    Interrupted,
    /// The peer closed its side, or the read failed: the connection is
    /// closing or doomed.
    Ended,
}

impl Conn {
    /// A freshly accepted connection, waiting for its request head.
    pub fn new(stream: TcpStream, peer: SocketAddr, deadline: Instant, tick: u32) -> Self {
        let peer = Peer {
            ip: peer.ip(),
            port: peer.port(),
        };
        Conn {
            stream,
            tls: None,
            peer,
            queue: WriteQueue::new(),
            state: State::Http(Vec::new()),
            deadline: Some(deadline),
            pending: None,
            last_seen: tick,
            dropped: 0,
            last_drained: tick,
            reason: CloseReason::Normal,
            doomed: false,
            room: NO_ROOM,
            slot: 0,
            delivered: 0,
            marks: Marks::default(),
        }
    }

    /// Makes `tls` the connection's transport (a TLS listener's, before
    /// anything was read).
    pub fn use_tls(&mut self, tls: Tls) {
        self.tls = Some(Box::new(tls));
    }

    // The loop's lists. A connection is on each at most once; the flag
    // here says whether it is, so listing costs no search.

    /// Flags the connection as listed for reading; true if it was not
    /// already, so the caller lists it: a connection is on one read list
    /// at most once.
    #[inline]
    pub fn list_for_read(&mut self) -> bool {
        self.marks.raise(Marks::UNREAD)
    }

    /// The loop took it off its read list to read it.
    #[inline]
    pub fn unlist_for_read(&mut self) {
        self.marks.set(Marks::UNREAD, false);
    }

    /// Whether it is on a read list: then it is read from there, in turn,
    /// not on its events.
    #[inline]
    pub fn is_listed_for_read(&self) -> bool {
        self.marks.has(Marks::UNREAD)
    }

    /// Flags the connection for the end phase's flush; true if it was not
    /// already, so the caller lists it.
    #[inline]
    pub fn list_for_flush(&mut self) -> bool {
        self.marks.raise(Marks::DIRTY)
    }

    /// The end phase took it off its flush list.
    #[inline]
    pub fn unlist_for_flush(&mut self) {
        self.marks.set(Marks::DIRTY, false);
    }

    /// Flags the connection for the round of broadcast flushes, which the
    /// loop works through a slice per iteration; true if it was not
    /// already, so the caller appends it. One already listed keeps its
    /// place, and what is queued for it meanwhile leaves in the same write.
    #[inline]
    pub fn list_for_round(&mut self) -> bool {
        self.marks.raise(Marks::IN_ROUND)
    }

    /// Its turn in the round came.
    #[inline]
    pub fn unlist_for_round(&mut self) {
        self.marks.set(Marks::IN_ROUND, false);
    }

    /// Whether it waits in the round (its key must leave the round's list
    /// when it is removed).
    #[inline]
    pub fn is_listed_for_round(&self) -> bool {
        self.marks.has(Marks::IN_ROUND)
    }

    /// Whether it is to be removed at the end of the iteration.
    #[inline]
    pub fn is_doomed(&self) -> bool {
        self.doomed
    }

    /// Whether this connection is closing or closed.
    pub fn is_closing(&self) -> bool {
        self.doomed || matches!(self.state, State::Closing { .. })
    }

    /// Whether it became a WebSocket at some point: shutdown waits for
    /// these to close.
    pub fn was_websocket(&self) -> bool {
        self.marks.has(Marks::WAS_WS)
    }

    /// Bytes waiting in its queue.
    #[inline]
    pub fn queued(&self) -> usize {
        self.queue.queued()
    }

    /// The room it is a member of, and its slot there; `None` before the
    /// upgrade.
    pub fn room_slot(&self) -> Option<(u32, u32)> {
        (self.room != NO_ROOM).then_some((self.room, self.slot))
    }

    /// Its room moved it to `slot` (another member left).
    pub fn set_slot(&mut self, slot: u32) {
        self.slot = slot;
    }

    /// Whether input read now may become broadcasts: a WebSocket message,
    /// or a publish body. (A request head may carry a whole publish too,
    /// but its reads are small: `HTTP_READ`.)
    pub fn may_broadcast(&self) -> bool {
        matches!(self.state, State::Open(_) | State::Body(_))
    }

    /// Whether the socket should be read now: not while a request waits
    /// for the server, nor while an HTTP answer has not left (pipelined
    /// requests are answered one at a time, as the client reads), nor while
    /// the queue costs more than `limit` (`--max-queued-bytes`).
    fn wants_input(&self, limit: usize) -> bool {
        !self.doomed
            && !self.marks.has(Marks::PEER_EOF)
            && self.pending.is_none()
            && match self.state {
                State::Http(_) => self.queue.is_empty(),
                State::Open(_) => self.queue.cost() + self.sealed() <= limit,
                State::Body(_) | State::Closing { .. } => true,
            }
    }

    /// Whether the socket may be read now (see `wants_input`). If not, the
    /// connection is held: [`Conn::unhold_if_ready`] releases it once that
    /// changes.
    pub fn hold_unless_ready(&mut self, limit: usize) -> bool {
        let ready = self.wants_input(limit);
        if !ready {
            self.marks.set(Marks::HELD, true);
        }
        ready
    }

    /// Releases a held connection once it may take input again (its queue
    /// drained, its answer left): readiness is edge-triggered, so the
    /// input it left in its socket would otherwise never be reported again.
    /// True if the caller must put it on its read list (it was on none).
    #[inline]
    pub fn unhold_if_ready(&mut self, limit: usize) -> bool {
        if self.marks.has(Marks::HELD) && self.wants_input(limit) {
            self.marks.set(Marks::HELD, false);
            self.list_for_read()
        } else {
            false
        }
    }

    /// How much the socket may be read now, at most `cap`.
    pub fn read_allowance(&mut self, cfg: &Config, ms: u32, cap: usize) -> ReadLimit {
        let cap = match &mut self.state {
            State::Open(ws) => ws.read_allowance(cfg, ms, cap),
            // Pipelined requests wait in the buffer while their answers
            // leave one at a time; a small read keeps that buffer small.
            State::Http(_) => cap.min(HTTP_READ),
            _ => cap,
        };
        match cap {
            0 if self.marks.has(Marks::RESET) => {
                self.reason = CloseReason::PeerGone;
                self.doomed = true;
                ReadLimit::Abandoned
            }
            0 => ReadLimit::Throttled,
            n => ReadLimit::Bytes(n),
        }
    }

    /// The socket reported an error (the peer reset it): what is still
    /// unread was abandoned.
    pub fn on_reset(&mut self) {
        self.marks.set(Marks::RESET, true);
    }

    /// Reads the socket once into `buf` and handles what came.
    pub fn read_input(&mut self, buf: &mut [u8], ctx: &mut Ctx<'_>) -> Input {
        // A closing connection's input is only read to find its end: raw,
        // since it is discarded (a TLS session that failed would only fail
        // again).
        if self.tls.is_some() && !self.is_closing() {
            return self.read_tls_input(buf, ctx);
        }
        match self.stream.read(buf) {
            Ok(0) => {
                self.on_eof(ctx.close_by());
                Input::Ended
            }
            Ok(n) => {
                self.last_seen = ctx.tick;
                self.marks.set(Marks::PINGED, false);
                let frames = self.on_input(&buf[..n], ctx);
                Input::Read {
                    bytes: n,
                    frames,
                    drained: n < buf.len(),
                }
            }
            Err(e) if would_block(&e) => Input::Drained,
            Err(e) if interrupted(&e) => Input::Interrupted,
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "read failed");
                self.reason = CloseReason::IoError;
                self.doomed = true;
                Input::Ended
            }
        }
    }

    /// [`Conn::read_input`] through the TLS session: one socket read (or
    /// none, when decrypted bytes wait), plaintext into `buf`.
    fn read_tls_input(&mut self, buf: &mut [u8], ctx: &mut Ctx<'_>) -> Input {
        let Some(tls) = self.tls.as_mut() else {
            return Input::Drained;
        };
        let read = tls.read(&mut &self.stream, buf);
        if tls.just_connected() {
            ctx.stats.tls_handshakes += 1;
        }
        match read {
            TlsRead::Read {
                plain,
                wire,
                drained,
            } => {
                self.last_seen = ctx.tick;
                self.marks.set(Marks::PINGED, false);
                let frames = if plain > 0 {
                    self.on_input(&buf[..plain], ctx)
                } else {
                    0
                };
                Input::Read {
                    bytes: plain.max(wire),
                    frames,
                    drained,
                }
            }
            TlsRead::Blocked => Input::Drained,
            TlsRead::Interrupted => Input::Interrupted,
            TlsRead::Eof => {
                self.on_eof(ctx.close_by());
                Input::Ended
            }
            TlsRead::PlainHttp => {
                // Told in plain text: it would not understand an alert.
                self.tls = None;
                tracing::debug!(peer = %self.peer, status = 400, "plain HTTP on a TLS port");
                *ctx.stats.rejected.entry(400).or_default() += 1;
                self.finish_with(
                    http::error_response(
                        Status::BadRequest,
                        "this port speaks TLS: use https:// or wss://",
                    ),
                    CloseReason::ProtocolError,
                    ctx.close_by(),
                );
                Input::Ended
            }
            TlsRead::Broken(e) => {
                // rustls sealed an alert for the peer: it leaves with the
                // closing flush.
                tracing::debug!(peer = %self.peer, error = %e, "TLS failed");
                ctx.stats.tls_failures += 1;
                self.begin_closing(CloseReason::ProtocolError, ctx.close_by());
                Input::Ended
            }
            TlsRead::Failed(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "read failed");
                self.reason = CloseReason::IoError;
                self.doomed = true;
                Input::Ended
            }
        }
    }

    /// Plaintext sealed in the TLS session but not yet on the wire: the
    /// client's backlog too.
    #[inline]
    fn sealed(&self) -> usize {
        self.tls.as_ref().map_or(0, |t| t.held())
    }

    /// Broadcast bytes the client has not taken: in the queue, and sealed
    /// in its TLS session.
    #[inline]
    pub(super) fn backlog(&self) -> usize {
        self.queue.backlog() + self.sealed()
    }

    /// Whether bytes wait for the client, in the queue or sealed.
    #[inline]
    pub(super) fn has_output(&self) -> bool {
        !self.queue.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Handles bytes read from the socket (or, with `data` empty, bytes
    /// left over from a pipelined request).
    ///
    /// Returns the WebSocket frames the input carried (0 for HTTP): the
    /// loop's work is per frame as much as per byte.
    fn on_input(&mut self, data: &[u8], ctx: &mut Ctx<'_>) -> u32 {
        let frames = match self.state {
            State::Http(_) => {
                self.on_http_input(data, ctx);
                0
            }
            State::Body(_) => {
                self.on_body_input(data, ctx);
                0
            }
            State::Open(_) => self.on_ws_input(data, ctx),
            State::Closing { .. } => 0,
        };
        // What this input made herald queue for the client itself (pongs,
        // echoes, HTTP answers) is bounded without closing anyone: past
        // `--max-queued-bytes` the client is not read until it drains.
        frames
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
    /// An open WebSocket's session is kept for its log line.
    pub(super) fn begin_closing(&mut self, reason: CloseReason, close_by: Instant) {
        if !matches!(self.state, State::Closing { .. }) {
            let closing = State::Closing {
                write_shut: false,
                session: None,
            };
            let session = match std::mem::replace(&mut self.state, closing) {
                State::Open(ws) => Some(Box::new(self.session_of(&ws, reason))),
                _ => None,
            };
            if let State::Closing { session: s, .. } = &mut self.state {
                *s = session;
            }
            self.reason = reason;
            self.deadline = Some(close_by);
            self.pending = None;
        }
    }

    /// How an open session stands, as it would end for `reason`: a close
    /// herald started names its code (a handshake herald began is 1001).
    fn session_of(&self, ws: &Ws, reason: CloseReason) -> SessionEnd {
        let (opened_ms, messages_in) = ws.session();
        let herald_began = self.marks.has(Marks::WS_CLOSING);
        SessionEnd {
            opened_ms,
            messages_in,
            code: herald_began.then_some(frame::CLOSE_AWAY),
            why: if herald_began {
                reason.name().into()
            } else {
                "".into()
            },
            by: match reason {
                CloseReason::PeerGone | CloseReason::IoError => "gone",
                _ if herald_began => "herald",
                _ => "client",
            },
        }
    }

    /// Records the close code and reason that ended the session, and who
    /// gave it (after [`Conn::begin_closing`]).
    pub(super) fn note_close(&mut self, code: u16, why: &str, by: &'static str) {
        if let State::Closing {
            session: Some(s), ..
        } = &mut self.state
        {
            s.code = Some(code);
            s.why = why.into();
            s.by = by;
        }
    }

    /// The peer closed its side.
    fn on_eof(&mut self, close_by: Instant) {
        self.marks.set(Marks::PEER_EOF, true);
        let reason = match &self.state {
            State::Open(ws) if ws.can_write() => CloseReason::PeerGone,
            _ => self.reason,
        };
        self.begin_closing(reason, close_by);
        if self.queue.is_empty() {
            self.doomed = true;
        }
    }

    /// Whether the current phase's deadline has passed.
    pub fn deadline_passed(&self, now: Instant) -> bool {
        matches!(self.deadline, Some(d) if now >= d)
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

    /// The server began shutting down: a WebSocket starts its close
    /// handshake, a request under way is answered 503. Returns true when
    /// the caller must list it for reading (it was on no list).
    pub fn on_shutdown(&mut self, now: Instant, close_by: Instant) -> bool {
        match self.state {
            State::Open(_) => self.close_ws(
                CloseCode::Away,
                "server shutting down",
                CloseReason::Shutdown,
                close_by,
            ),
            // No request read yet: a response nobody asked for would be
            // read as the answer to the next request sent on it. A
            // request already on its way is read (next iteration) and
            // answered as a draining server answers; a connection still
            // silent at the next sweep is closed without a word.
            State::Http(ref head) if head.is_empty() && self.pending.is_none() => {
                self.reason = CloseReason::Shutdown;
                self.deadline = Some(now);
                return self.list_for_read();
            }
            State::Http(_) | State::Body(_) => self.finish_with(
                http::error_response(Status::Unavailable, "server shutting down"),
                CloseReason::Shutdown,
                close_by,
            ),
            State::Closing { .. } => {}
        }
        false
    }

    /// Deregisters the socket and drops the connection, which closes it.
    /// Returns why it closed, for the counters.
    ///
    /// A WebSocket's session is logged here, at debug: its room (`room`,
    /// the name; empty for the lobby), how long it lasted (`ms` is the
    /// loop's clock now), messages in and out, and how it ended.
    pub fn disconnect(self, registry: &Registry, room: Option<&str>, ms: u32) -> CloseReason {
        let session = match &self.state {
            State::Open(ws) => Some(Box::new(self.session_of(ws, self.reason))),
            _ => None,
        };
        let Conn {
            stream,
            peer,
            reason,
            state,
            delivered,
            ..
        } = self;
        let _ = registry.deregister(&mut { stream });
        let session = match state {
            State::Closing { session, .. } => session,
            _ => session,
        };
        if let Some(s) = session {
            tracing::debug!(
                peer = %peer,
                room = room.unwrap_or(""),
                duration_ms = ms.wrapping_sub(s.opened_ms),
                messages_in = s.messages_in,
                messages_out = delivered,
                code = s.code.map_or(String::from("-"), |c| c.to_string()),
                why = &*s.why,
                by = s.by,
                reason = %reason.name(),
                "session"
            );
        }
        reason
    }

    /// The socket may take bytes again.
    pub fn on_writable(&mut self) {
        self.marks.set(Marks::BLOCKED, false);
    }

    /// Accepted on `--metrics-listen`: it is answered the metrics,
    /// `/healthz` and `/readyz`, and 404 for anything else.
    pub fn serve_metrics_only(&mut self) {
        self.marks.set(Marks::METRICS_ONLY, true);
    }

    /// Whether the end phase has something to write for it: queued bytes,
    /// or the shutdown of a drained closing connection's write side.
    pub fn wants_flush(&self) -> bool {
        !self.doomed
            && (self.has_output()
                || matches!(
                    self.state,
                    State::Closing {
                        write_shut: false,
                        ..
                    }
                ))
    }

    /// Writes what the queue holds, unless the last write hit `WouldBlock`
    /// (a writable event comes first); when a closing connection has
    /// drained, shuts its write side (or dooms it if the peer is gone
    /// too). A client that lost messages under `--slow-consumer drop` is
    /// told as soon as its queue drains. Bytes and writes are counted in
    /// `stats`.
    #[inline]
    pub fn flush(&mut self, tick: u32, stats: &mut Stats) {
        if self.marks.has(Marks::BLOCKED) {
            return;
        }
        self.write_queued(tick, stats);
        self.tell_drops(tick, stats);
    }

    /// Tells a client that lost messages under `--slow-consumer drop` as
    /// soon as its queue has drained.
    fn tell_drops(&mut self, tick: u32, stats: &mut Stats) {
        if self.dropped > 0 && self.queue.is_empty() && self.is_open() {
            self.queue_drop_notice();
            self.write_queued(tick, stats);
        }
    }

    /// Whether a write made elsewhere (the loop's ring of `sendmsg`s) may
    /// take its queue now: bytes wait, the socket has not said it would
    /// block, and it is not doomed. What else [`Conn::flush`] does for a
    /// connection that wants a flush (shutting a drained closing one's
    /// write side) is left to `flush`.
    #[inline]
    pub fn has_write_ready(&self) -> bool {
        !self.marks.has(Marks::BLOCKED)
            && !self.doomed
            && !self.queue.is_empty()
            && self.tls.is_none()
    }

    /// The socket, for a write made elsewhere.
    #[inline]
    pub fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// What the next write made elsewhere carries (see
    /// [`WriteQueue::slices`]): the queue must not change until
    /// [`Conn::complete_write`] has its result.
    #[inline]
    pub fn write_slices(&self) -> impl Iterator<Item = &[u8]> {
        self.queue.slices()
    }

    /// Applies the result of a write of [`Conn::write_slices`] made
    /// elsewhere, as [`Conn::flush`] applies each of its own: the bytes
    /// leave the queue, `WouldBlock` blocks the connection until a
    /// writable event, an error dooms it, a drained closing connection's
    /// write side is shut and a drop notice goes out. Returns true when
    /// bytes are left and the socket may take more now (a partial write):
    /// the caller writes again.
    pub fn complete_write(
        &mut self,
        result: io::Result<usize>,
        tick: u32,
        stats: &mut Stats,
    ) -> bool {
        let before = self.queue.queued();
        let outcome = self.queue.complete(result, &mut stats.writes);
        self.count_written(before, tick, stats);
        match outcome {
            None => true,
            Some(outcome) => {
                self.settle_flush(outcome);
                self.tell_drops(tick, stats);
                false
            }
        }
    }

    /// Gives the queue's memory back if it holds nothing: an idle
    /// connection holds no queue memory.
    pub fn release_queue_if_empty(&mut self) {
        self.queue.release_if_empty();
    }

    /// Writes `bytes` at once if nothing is queued before them, and queues
    /// what the socket does not take. For the `101`: an idle WebSocket then
    /// never allocates a queue. Returns the bytes written.
    pub(super) fn send_now(&mut self, bytes: &[u8]) -> usize {
        let written = if self.queue.is_empty() && self.tls.is_none() {
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

    /// Vectored writes of what the queue holds, until it is empty or the
    /// socket would block.
    fn write_queued(&mut self, tick: u32, stats: &mut Stats) {
        let before = self.queue.queued();
        let result = match &mut self.tls {
            None => self
                .queue
                .flush(&mut SendMsg(&self.stream), &mut stats.writes),
            Some(tls) => {
                let last = matches!(self.state, State::Closing { .. });
                tls.flush(&mut self.queue, &mut &self.stream, &mut stats.writes, last)
            }
        };
        self.count_written(before, tick, stats);
        self.settle_flush(result);
    }

    /// Counts what left the queue since it held `before` bytes.
    #[inline]
    fn count_written(&mut self, before: usize, tick: u32, stats: &mut Stats) {
        let written = before - self.queue.queued();
        stats.bytes_written += written as u64;
        if written > 0 || self.queue.is_empty() {
            self.last_drained = tick;
        }
    }

    /// Acts on how a flush ended: a drained closing connection shuts its
    /// write side (or is doomed if the peer is gone too), `WouldBlock`
    /// waits for a writable event, an error dooms the connection.
    fn settle_flush(&mut self, result: io::Result<Flushed>) {
        match result {
            Ok(Flushed::Empty) => {
                self.marks.set(Marks::BLOCKED, false);
                if let State::Closing { write_shut, .. } = &mut self.state {
                    if self.marks.has(Marks::PEER_EOF) {
                        self.doomed = true;
                    } else if !*write_shut {
                        *write_shut = true;
                        if self.stream.shutdown(Shutdown::Write).is_err() {
                            self.doomed = true;
                        }
                    }
                }
            }
            Ok(Flushed::Blocked) => self.marks.set(Marks::BLOCKED, true),
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "write failed");
                self.doomed = true;
                if self.reason == CloseReason::Normal {
                    self.reason = CloseReason::IoError;
                }
            }
        }
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

#[cfg(test)]
mod size_tests {
    /// The slab holds one `Conn` per connection: keep it small (docs/benchmarks.md
    /// states memory per idle connection).
    #[test]
    fn a_connection_stays_small() {
        let size = std::mem::size_of::<super::Conn>();
        eprintln!("size_of::<Conn>() = {size}");
        assert!(size <= 192, "Conn grew to {size} bytes");
    }
}
