//! The WebSocket session: tungstenite's protocol state fed from the loop's
//! buffer, the guards on what a client may send (fragments, rate,
//! bandwidth), and delivery: broadcasts offered under the slow-consumer
//! policy, drop notices, pongs and close frames.

use std::io::{self, Read, Write};
use std::time::Instant;

use tungstenite::error::ProtocolError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error as WsError, Message};

use super::{Conn, Ctx, Marks, State};
use crate::bus::{Target, UNDELIVERED};
use crate::config::{Config, Mode, SlowConsumer};
use crate::frame::{self, Frame, OP_BINARY, OP_PONG, OP_TEXT};
use crate::http::{self, Status};
use crate::nonblock::would_block;
use crate::queue::{Kind, WriteQueue, ENTRY_COST};
use crate::stats::CloseReason;

/// An open WebSocket.
pub(super) struct Ws {
    ctx: WebSocketContext,
    fragments: FragmentGuard,
    allowance: Allowance,
    /// When the session opened (the loop's milliseconds, wrapping) and the
    /// messages its client sent: its log line's figures. They fit in the
    /// box's allocation as it was.
    opened_ms: u32,
    messages_in: u32,
}

impl Ws {
    /// A WebSocket just upgraded, with tungstenite's limits and a full
    /// allowance.
    fn new(ws_config: &WebSocketConfig, cfg: &Config, ms: u32) -> Self {
        Ws {
            ctx: WebSocketContext::new(Role::Server, Some(*ws_config)),
            fragments: FragmentGuard::default(),
            allowance: Allowance::new(cfg, ms),
            opened_ms: ms,
            messages_in: 0,
        }
    }

    /// When the session opened and the messages its client sent.
    pub(super) fn session(&self) -> (u32, u32) {
        (self.opened_ms, self.messages_in)
    }

    /// Whether tungstenite may still write: false once a Close was sent.
    pub(super) fn can_write(&self) -> bool {
        self.ctx.can_write()
    }

    /// Bytes the client may send now, at most `cap`: 0 when it is past its
    /// `--client-rate` or `--client-bandwidth` allowance.
    pub(super) fn read_allowance(&mut self, cfg: &Config, ms: u32, cap: usize) -> usize {
        self.allowance
            .available(cfg, ms, cap, self.fragments.payload_left())
    }
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
    /// Whether broadcasts should be queued for this connection.
    ///
    /// Read without touching the boxed protocol state, so fan-out reads one
    /// cache line per connection: tungstenite stops being able to write
    /// only after herald's own `close_ws`, or after the peer's Close, which
    /// moves the connection to `Closing` within the same read.
    #[inline]
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_)) && !self.marks.has(Marks::WS_CLOSING)
    }

    /// Answers an upgrade with `response` (the 101) and becomes a member
    /// of `room`, or answers 503 at the room limit.
    pub(super) fn upgrade(&mut self, response: &[u8], room: Option<&str>, ctx: &mut Ctx<'_>) {
        let Some((id, slot)) = ctx.rooms.join(room, ctx.key) else {
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
        ctx.stats.bytes_written += self.send_now(response) as u64;
        self.state = State::Open(Box::new(Ws::new(ctx.ws_config, ctx.cfg, ctx.ms)));
        self.marks.set(Marks::WAS_WS, true);
        self.deadline = None;
        ctx.stats.upgrades += 1;
    }

    /// Handles bytes read from an open WebSocket; returns the frames they
    /// carried.
    pub(super) fn on_ws_input(&mut self, data: &[u8], ctx: &mut Ctx<'_>) -> u32 {
        let State::Open(ws) = &mut self.state else {
            return 0;
        };
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
            return 0;
        }
        let frames = ws.fragments.take_frames();
        ws.allowance.charge(frames, data.len());
        let mut read = Seen::default();
        let result = read_messages(
            &mut ws.ctx,
            data,
            &mut self.queue,
            self.room,
            ctx,
            &mut read,
        );
        ws.messages_in = ws.messages_in.saturating_add(read.messages);
        match result {
            Ok(()) => {}
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                // Both Close frames are exchanged: the peer has nothing
                // more to say, so once the reply is out the server closes
                // TCP first (RFC 6455 §7.1.1).
                let herald_began = self.marks.has(Marks::WS_CLOSING);
                self.begin_closing(self.reason, ctx.close_by());
                self.marks.set(Marks::PEER_EOF, true);
                if let (Some((code, why)), false) = (read.close, herald_began) {
                    self.note_close(code, &why, "client");
                }
            }
            Err(e) => self.fail(&e, ctx.close_by()),
        }
        frames
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
                self.marks.set(Marks::PEER_EOF, true);
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
        self.finish_with(frame::encode_close(code, why), reason, close_by);
        self.note_close(code, why, "herald");
    }

    /// Closes a client whose broadcast backlog would pass `limit`: the
    /// broadcasts it has not started receiving are dropped (herald's own
    /// answers stay), and a close 1008 goes after them.
    fn close_slow(&mut self, limit: usize, close_by: Instant) {
        tracing::debug!(peer = %self.peer, backlog = self.backlog(), limit, "slow consumer closed");
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
    pub(super) fn close_ws(
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
            self.marks.set(Marks::WS_CLOSING, true);
            self.reason = reason;
            self.deadline = Some(close_by);
        }
    }

    /// The once-a-second keepalive of an open WebSocket, at second
    /// `tick`: a client silent for `idle_after` seconds is closed (1001),
    /// one silent for `ping_after` seconds is pinged, once (`None`: that
    /// rule is off). Returns whether it queued anything.
    pub fn keepalive(
        &mut self,
        tick: u32,
        ping: &Frame,
        ping_after: Option<u32>,
        idle_after: Option<u32>,
        close_by: Instant,
    ) -> bool {
        if !self.is_open() {
            return false;
        }
        let silent = tick.saturating_sub(self.last_seen);
        // Taking nothing while bytes wait is silence too, whatever the
        // client sends (a ping a second must not keep a client that
        // never reads).
        let stalled =
            |idle: u32| self.has_output() && tick.saturating_sub(self.last_drained) >= idle;
        if idle_after.is_some_and(|idle| silent >= idle || stalled(idle)) {
            self.close_ws(CloseCode::Away, "idle timeout", CloseReason::Idle, close_by);
            true
        } else if ping_after.is_some_and(|after| silent >= after) && !self.marks.has(Marks::PINGED)
        {
            self.queue.push(ping.clone(), Kind::Own);
            self.marks.set(Marks::PINGED, true);
            true
        } else {
            false
        }
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
        let backlog = self.backlog();
        if backlog == 0 || backlog + batch.len() + ENTRY_COST <= limit {
            if self.dropped > 0 {
                // Where the gap is, before what follows it.
                self.queue_drop_notice();
            }
            self.queue.push_broadcast(batch.clone(), count);
            self.delivered = self.delivered.saturating_add(count);
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
    pub(super) fn queue_drop_notice(&mut self) {
        let notice = format!("herald: {} messages dropped", self.dropped);
        self.queue
            .push(frame::encode(OP_TEXT, b"", notice.as_bytes()), Kind::Own);
        self.dropped = 0;
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
    read: &mut Seen,
) -> Result<(), WsError> {
    let mut io = Io { input: data, queue };
    loop {
        match ws.read(&mut io) {
            Ok(Message::Text(text)) => {
                read.messages += 1;
                deliver(ctx, io.queue, room, OP_TEXT, text.as_bytes());
            }
            Ok(Message::Binary(bytes)) => {
                read.messages += 1;
                deliver(ctx, io.queue, room, OP_BINARY, &bytes);
            }
            // A peer's Close is answered on the next `read`, which then
            // ends the connection; its code is kept for the session's log.
            Ok(Message::Close(frame)) => {
                read.close = Some(match frame {
                    Some(f) => (f.code.into(), f.reason.as_str().into()),
                    None => (frame::CLOSE_NO_STATUS, String::new()),
                });
            }
            // Pongs are queued by tungstenite itself.
            Ok(_) => {}
            Err(WsError::Io(e)) if would_block(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// What one call of [`read_messages`] saw, for the session's log line.
#[derive(Default)]
struct Seen {
    /// Data messages.
    messages: u32,
    /// The peer's Close: its code and reason.
    close: Option<(u16, String)>,
}

/// Routes one message from a client according to the mode.
#[inline]
fn deliver(ctx: &mut Ctx<'_>, own: &mut WriteQueue, room: u32, opcode: u8, payload: &[u8]) {
    ctx.stats.messages_in += 1;
    tracing::debug!(opcode, len = payload.len(), "message");
    match ctx.cfg.mode {
        Mode::Broadcast if ctx.bus.is_some() => {
            let bus = ctx.bus.as_deref_mut().expect("checked");
            let sent = bus.publish(
                ctx.rooms,
                Target::Room(room),
                opcode,
                payload,
                None,
                ctx.stats,
            );
            if sent.is_err() {
                own.push(
                    frame::encode(OP_TEXT, b"", UNDELIVERED.as_bytes()),
                    Kind::Own,
                );
            }
        }
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

#[cfg(test)]
mod size_tests {
    /// An open WebSocket's box, most of it tungstenite's context: the
    /// memory table in docs/design.md adds it up.
    #[test]
    fn an_open_websocket_stays_small() {
        use tungstenite::protocol::WebSocketContext;
        let (ws, ctx) = (
            std::mem::size_of::<super::Ws>(),
            std::mem::size_of::<WebSocketContext>(),
        );
        eprintln!("size_of::<Ws>() = {ws}, of which tungstenite's context {ctx}");
        // 312 bytes take the same 320-byte glibc chunk as 304 did: the
        // session's two counters cost no memory.
        assert!(ws <= 312, "Ws grew to {ws} bytes");
    }
}
