//! The receive path: reading a connection, parsing its frames, and accounting each
//! delivery.
//!
//! The worker owns one large read buffer. A readable connection is read into it (after
//! the few bytes of an incomplete frame the connection kept from its previous read), every
//! whole frame in it is parsed in place, and only the incomplete tail is copied back into
//! the connection. Nothing is allocated per frame; a fragmented message is the one case
//! that allocates (to reassemble it).

use super::{Conn, Ctx, Reason, State};
use crate::clock::now_ns;
use crate::config::Scenario;
use crate::control::Phase;
use crate::frame::{self, Frame};
use crate::track::Seen;
use crate::{handshake, message, tls};
use std::io::{self, Read};
use std::sync::atomic::Ordering::Relaxed;

/// Size of the worker's read buffer: large, so one `read` takes many frames.
pub(super) const READ_BUF: usize = 256 * 1024;

/// What an event said about a connection's socket.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ready {
    pub(super) readable: bool,
    pub(super) writable: bool,
    /// The peer closed (or the socket failed): read on to the end-of-file, since this
    /// edge will not come again.
    pub(super) hung_up: bool,
}

/// How a read loop stopped without an error.
pub(super) enum ReadEnd {
    /// The socket has no more data for now.
    Drained,
    /// The server closed its side.
    Eof,
}

/// Reads everything the socket has (through the TLS session, if any) and handles each
/// whole frame.
pub(super) fn read_ready(
    conn: &mut Conn,
    buf: &mut Vec<u8>,
    ctx: &mut Ctx,
    hung_up: bool,
) -> Result<ReadEnd, Reason> {
    if conn.tls.is_some() {
        ctx.inbox.start(hung_up);
    }
    loop {
        let carry = conn.carry.len();
        if buf.len() < carry + READ_BUF / 2 {
            buf.resize(carry + READ_BUF / 2, 0);
        }
        let space = buf.len() - carry;
        let read = match conn.tls.as_deref_mut() {
            None => conn.stream.read(&mut buf[carry..]),
            Some(tls) => ctx.inbox.read(&mut conn.stream, tls, &mut buf[carry..]),
        };
        let n = match read {
            Ok(0) => return Ok(ReadEnd::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadEnd::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(tls::failure("read", &e)),
        };
        buf[..carry].copy_from_slice(&conn.carry);
        conn.carry.clear();
        let data = &buf[..carry + n];
        let used = handle_bytes(conn, data, now_ns(), ctx)?;
        conn.carry.extend_from_slice(&data[used..]);
        if n < space && !hung_up && conn.tls.is_none() {
            // A short read emptied the socket's receive queue; data arriving later raises
            // a new edge, so this saves the read that would return WouldBlock. (A short
            // read of plaintext says nothing of the socket: the inbox keeps that count.)
            return Ok(ReadEnd::Drained);
        }
    }
}

/// Handles the response head (while handshaking) and every whole frame in `data`;
/// returns how many bytes were used.
fn handle_bytes(conn: &mut Conn, data: &[u8], now: u64, ctx: &mut Ctx) -> Result<usize, Reason> {
    let mut pos = 0;
    if conn.state == State::Handshaking {
        let accept = conn.accept.as_deref().expect("set with the request");
        match handshake::check_response(data, accept) {
            Ok(None) => return Ok(0),
            Ok(Some(len)) => pos = len,
            Err(e) => return Err(e.to_string()),
        }
        conn.accept = None;
        conn.set_state(State::Open, &mut ctx.census);
        ctx.stats.connected += 1;
        ctx.ctl.connected.fetch_add(1, Relaxed);
        ctx.ctl.members[conn.room as usize].fetch_add(1, Relaxed);
        ctx.stats
            .handshake
            .saturating_record(now.saturating_sub(conn.since_ns).max(1));
    }
    let max = ctx.cfg.max_frame;
    loop {
        match frame::parse(&data[pos..], max) {
            Ok(Some((f, used))) => {
                pos += used;
                handle_frame(conn, f, now, ctx)?;
            }
            Ok(None) => return Ok(pos),
            Err(e) => {
                ctx.stats.malformed += 1;
                return Err(format!("protocol: {e}"));
            }
        }
    }
}

fn handle_frame(conn: &mut Conn, f: Frame<'_>, now: u64, ctx: &mut Ctx) -> Result<(), Reason> {
    match f.opcode {
        frame::OP_TEXT | frame::OP_BINARY => {
            if conn.frag.is_some() {
                ctx.stats.malformed += 1;
                return Err("protocol: new message inside a fragmented one".into());
            }
            if f.fin {
                deliver(conn, f.payload, now, ctx);
            } else {
                conn.frag = Some(f.payload.to_vec());
            }
        }
        frame::OP_CONTINUATION => {
            let Some(mut msg) = conn.frag.take() else {
                ctx.stats.malformed += 1;
                return Err("protocol: continuation without a message".into());
            };
            msg.extend_from_slice(f.payload);
            if f.fin {
                deliver(conn, &msg, now, ctx);
            } else {
                conn.frag = Some(msg);
            }
        }
        frame::OP_PING => {
            ctx.stats.pings += 1;
            frame::encode_masked(frame::OP_PONG, f.payload, ctx.rng.mask(), &mut conn.out);
        }
        frame::OP_PONG => {}
        _ => {
            // Close: answer it once; the server then closes the socket.
            if conn.state == State::Open {
                let code = f.payload.get(..2).unwrap_or(&[]);
                frame::encode_masked(frame::OP_CLOSE, code, ctx.rng.mask(), &mut conn.out);
                if ctx.phase != Phase::Close {
                    let detail = match code {
                        [a, b] => format!(" (code {})", u16::from_be_bytes([*a, *b])),
                        _ => String::new(),
                    };
                    return Err(format!("server sent Close{detail}"));
                }
                conn.set_state(State::Closing, &mut ctx.census);
                conn.since_ns = now;
            }
        }
    }
    Ok(())
}

/// Accounts one delivered message (broadcast), and lets a saturation publisher send the
/// next one when this is its own copy.
#[inline]
fn deliver(conn: &mut Conn, payload: &[u8], now: u64, ctx: &mut Ctx) {
    let Scenario::Broadcast(b) = &ctx.cfg.scenario else {
        return;
    };
    let stamp = payload
        .strip_prefix(b.delivered_prefix())
        .and_then(|msg| message::decode(msg, b.size));
    let Some(stamp) = stamp.filter(|s| s.publisher < b.publishers) else {
        ctx.stats.malformed += 1;
        return;
    };
    // Without rooms everyone is in room 0: no division on that path.
    let (room, index) = match b.rooms {
        0 => (0, stamp.publisher),
        n => (stamp.publisher % n, stamp.publisher / n),
    };
    if room != conn.room {
        ctx.stats.misrouted += 1;
        return;
    }
    let seen = conn.trackers[index as usize].observe(stamp.seq);
    conn.order.push(stamp.publisher, stamp.seq, seen);
    match seen {
        Seen::Duplicate => {
            ctx.stats.duplicates += 1;
            return;
        }
        Seen::Reordered => ctx.stats.reordered += 1,
        Seen::InOrder | Seen::Ahead => {}
    }
    ctx.stats.delivered += 1;
    ctx.unflushed += 1;
    let latency = now.saturating_sub(stamp.intended_ns).max(1);
    if stamp.intended_ns >= ctx.measure_ns && stamp.intended_ns < ctx.end_ns {
        ctx.stats.latency.saturating_record(latency);
        if let Some(h) = conn.latency.as_deref_mut() {
            h.record(latency);
        }
    }
    if now >= ctx.measure_ns && now < ctx.end_ns {
        ctx.stats.in_window += 1;
    }
    ctx.live.saturating_record(latency);
    if let Some(p) = conn.publisher.as_mut().filter(|p| p.id == stamp.publisher) {
        p.in_flight = p.in_flight.saturating_sub(1);
        if b.rate == 0.0 && ctx.sending(now) && conn.can_publish() {
            ctx.publish(conn, now);
        }
    }
}
