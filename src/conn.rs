//! One client connection: its socket, its write queue and its protocol state.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use tungstenite::error::ProtocolError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error as WsError, Message};

use crate::config::{Config, Mode};
use crate::frame::{self, Frame, OP_BINARY, OP_TEXT};
use crate::http::{self, Route, Status};
use crate::queue::{Flushed, WriteQueue};

/// How long a connection may take to drain its last bytes and see the peer
/// close, once herald has decided to close it.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a connection is in its life.
pub(crate) enum State {
    /// Waiting for a complete HTTP request head; holds the bytes so far
    /// (at most [`http::MAX_HEAD_LEN`] + 1).
    Http(Vec<u8>),
    /// Upgraded to WebSocket: tungstenite's protocol state. Its output
    /// (pongs, close frames) goes into this connection's write queue.
    Open(Box<WebSocketContext>),
    /// herald's last bytes are queued (an HTTP response or a close frame);
    /// input is read and discarded. Once the queue drains the write side is
    /// shut, and the connection is removed at the peer's EOF or the deadline.
    Closing {
        /// Whether `shutdown(Write)` has been done.
        write_shut: bool,
    },
}

/// Why a connection ended, for the disconnect log and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The close handshake completed, or an HTTP exchange ended.
    Normal,
    /// The peer vanished without a close handshake.
    PeerGone,
    /// A protocol, UTF-8 or size violation by the peer.
    ProtocolError,
    /// An I/O error on the socket.
    IoError,
    /// The peer stopped reading and its queue passed the limit.
    SlowConsumer,
    /// A handshake or close deadline passed.
    Timeout,
    /// Rejected at the front door (4xx, or 503 at the connection limit).
    Rejected,
    /// The server is shutting down.
    Shutdown,
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
    /// When the current phase must end: the handshake deadline while in
    /// `Http`, the removal deadline while `Closing`; `None` while `Open`.
    pub deadline: Option<Instant>,
    /// Why the connection is closing, once it is.
    pub reason: CloseReason,
    /// The peer sent EOF.
    pub peer_eof: bool,
    /// Marked for removal at the end of the iteration (never mid-batch).
    pub doomed: bool,
    /// Listed in the loop's flush list for this iteration.
    pub dirty: bool,
    /// The last flush hit `WouldBlock`: wait for a writable event.
    pub blocked: bool,
}

/// What the loop lends a connection while it handles input.
pub(crate) struct Ctx<'a> {
    /// The configuration.
    pub cfg: &'a Config,
    /// tungstenite's limits, derived from `cfg`.
    pub ws_config: &'a WebSocketConfig,
    /// Broadcasts encoded in this iteration, fanned out at its end.
    pub outbox: &'a mut Vec<Frame>,
    /// The chat page response, encoded once.
    pub page: &'a Frame,
    /// Cached clock for this iteration.
    pub now: Instant,
    /// Messages received from clients.
    pub messages_in: &'a mut u64,
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
        self.queue.push(Frame::from_bytes(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Conn {
    /// A freshly accepted connection, waiting for its request head.
    pub fn new(stream: TcpStream, peer: SocketAddr, handshake_deadline: Instant) -> Self {
        Conn {
            stream,
            peer,
            queue: WriteQueue::new(),
            state: State::Http(Vec::new()),
            deadline: Some(handshake_deadline),
            reason: CloseReason::Normal,
            peer_eof: false,
            doomed: false,
            dirty: false,
            blocked: false,
        }
    }

    /// Whether broadcasts should be queued for this connection.
    #[inline]
    pub fn is_open(&self) -> bool {
        matches!(&self.state, State::Open(ws) if ws.can_write())
    }

    /// Whether the socket should still be read.
    pub fn wants_input(&self) -> bool {
        !self.doomed && !self.peer_eof
    }

    /// Queues `response` as this connection's last bytes.
    pub fn finish_with(&mut self, response: Frame, reason: CloseReason, now: Instant) {
        self.queue.push(response);
        self.begin_closing(reason, now);
    }

    /// Stops accepting input and broadcasts; what is queued still goes out.
    fn begin_closing(&mut self, reason: CloseReason, now: Instant) {
        if !matches!(self.state, State::Closing { .. }) {
            self.state = State::Closing { write_shut: false };
            self.reason = reason;
            self.deadline = Some(now + CLOSE_TIMEOUT);
        }
    }

    /// Handles bytes read from the socket.
    pub fn on_input(&mut self, data: &[u8], ctx: &mut Ctx<'_>) {
        match &mut self.state {
            State::Http(head) => {
                let room = http::MAX_HEAD_LEN + 1 - head.len();
                head.extend_from_slice(&data[..data.len().min(room)]);
                match http::route(head) {
                    Route::Incomplete => {}
                    Route::Upgrade { response } => {
                        tracing::debug!(peer = %self.peer, "upgrade");
                        self.queue.push(Frame::from_vec(response));
                        let ws = WebSocketContext::new(Role::Server, Some(*ctx.ws_config));
                        self.state = State::Open(Box::new(ws));
                        self.deadline = None;
                    }
                    Route::Page { body } => {
                        let page = if body {
                            ctx.page.clone()
                        } else {
                            http::page_response(false)
                        };
                        self.finish_with(page, CloseReason::Normal, ctx.now);
                    }
                    Route::Reject(status, why) => {
                        tracing::debug!(peer = %self.peer, status = status.code(), why, "rejected");
                        self.finish_with(
                            http::error_response(status, why),
                            CloseReason::Rejected,
                            ctx.now,
                        );
                    }
                }
            }
            State::Open(ws) => match read_messages(ws, data, &mut self.queue, ctx) {
                Ok(()) => {}
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    self.begin_closing(self.reason, ctx.now)
                }
                Err(e) => self.fail(&e, ctx.now),
            },
            State::Closing { .. } => {}
        }
        if self.queue.queued() > ctx.cfg.max_queued_bytes
            && !matches!(self.state, State::Closing { .. })
        {
            self.close_slow(ctx.cfg.max_queued_bytes, ctx.now);
        }
    }

    /// Ends the connection after a protocol error, with the close code the
    /// RFC gives for it.
    fn fail(&mut self, e: &WsError, now: Instant) {
        let (code, why): (u16, String) = match e {
            WsError::Capacity(_) => (1009, "message too big".into()),
            WsError::Utf8(_) => (1007, "invalid UTF-8 in a text message".into()),
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                self.peer_eof = true;
                self.begin_closing(CloseReason::PeerGone, now);
                return;
            }
            WsError::Protocol(p) => (1002, p.to_string()),
            WsError::Io(_) => {
                self.doomed = true;
                self.reason = CloseReason::IoError;
                return;
            }
            other => (1011, other.to_string()),
        };
        tracing::debug!(peer = %self.peer, code, why, "closing on error");
        self.finish_with(
            frame::encode_close(code, &why),
            CloseReason::ProtocolError,
            now,
        );
    }

    /// Closes a client whose queue passed `limit`: what it has not started
    /// receiving is dropped, and a close 1008 goes after the partial frame.
    pub fn close_slow(&mut self, limit: usize, now: Instant) {
        tracing::warn!(peer = %self.peer, queued = self.queue.queued(), limit, "slow consumer closed");
        self.queue.discard_unsent();
        let why = format!("slow consumer: more than {limit} bytes queued");
        self.finish_with(
            frame::encode_close(1008, &why),
            CloseReason::SlowConsumer,
            now,
        );
    }

    /// Starts the close handshake with `code` (graceful shutdown).
    pub fn close_ws(&mut self, code: CloseCode, why: &'static str) {
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
            let _ = ws.close(&mut io, Some(frame));
            self.reason = CloseReason::Shutdown;
        }
    }

    /// The peer closed its side.
    pub fn on_eof(&mut self, now: Instant) {
        self.peer_eof = true;
        let reason = match &self.state {
            State::Open(ws) if ws.can_write() => CloseReason::PeerGone,
            _ => self.reason,
        };
        self.begin_closing(reason, now);
        if self.queue.is_empty() {
            self.doomed = true;
        }
    }

    /// A deadline passed.
    pub fn on_deadline(&mut self, now: Instant) {
        match self.state {
            State::Http(_) => self.finish_with(
                http::error_response(Status::RequestTimeout, "request head not received in time"),
                CloseReason::Timeout,
                now,
            ),
            _ => {
                if self.reason == CloseReason::Normal {
                    self.reason = CloseReason::Timeout;
                }
                self.doomed = true;
            }
        }
    }

    /// Writes what the queue holds; when a closing connection has drained,
    /// shuts its write side (or dooms it if the peer is gone too).
    pub fn flush(&mut self) {
        match self.queue.flush(&mut self.stream) {
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
    ctx: &mut Ctx<'_>,
) -> Result<(), WsError> {
    let mut io = Io { input: data, queue };
    loop {
        match ws.read(&mut io) {
            Ok(Message::Text(text)) => deliver(ctx, io.queue, OP_TEXT, text.as_bytes()),
            Ok(Message::Binary(bytes)) => deliver(ctx, io.queue, OP_BINARY, &bytes),
            // Pongs are queued by tungstenite itself; a peer's Close is
            // answered on the next `read`, which then ends the connection.
            Ok(_) => {}
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Routes one message from a client according to the mode.
#[inline]
fn deliver(ctx: &mut Ctx<'_>, own: &mut WriteQueue, opcode: u8, payload: &[u8]) {
    *ctx.messages_in += 1;
    tracing::debug!(opcode, len = payload.len(), "message");
    match ctx.cfg.mode {
        Mode::Broadcast => {
            let prefix = if opcode == OP_TEXT {
                ctx.cfg.prefix.as_bytes()
            } else {
                b""
            };
            ctx.outbox.push(frame::encode(opcode, prefix, payload));
        }
        Mode::Echo => own.push(frame::encode(opcode, b"", payload)),
    }
}
