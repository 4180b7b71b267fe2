//! Publishing over HTTP (`--publish-via http`).
//!
//! A publisher's messages go out as `POST /publish` requests on one extra connection of
//! its own, registered in the worker's loop (token: the publisher's key with [`HTTP`] set)
//! and opened when the run starts (again later if the server closed it while idle).
//! Requests are pipelined; each answer must be a `202` with a recipient count. Any other
//! answer, or none, is a publish error: the publisher then stops, and only what it sent
//! before the first failed request counts as published.

use super::{send, Conn, Ctx, Publisher, Ready, Reason, Worker};
use crate::control::Phase;
use crate::stats::Stats;
use crate::tls::{self, Inbox};
use crate::{net, publish};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::ClientConnection;
use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::atomic::Ordering::Relaxed;

/// Set in the token of a publisher's HTTP connection (the rest is the publisher's key).
pub(super) const HTTP: usize = 1 << (usize::BITS - 2);
/// Bytes read at a time from an HTTP connection (its answers are small).
const HTTP_READ: usize = 16 * 1024;

/// The HTTP connection a publisher publishes through.
#[derive(Default)]
pub(super) struct HttpPub {
    /// What each of its requests starts with (the room differs between publishers).
    head: Vec<u8>,
    /// The socket (`None`: not open yet, or closed by the server while idle).
    stream: Option<TcpStream>,
    /// Its TLS session when the publisher's URL is `wss://` (HTTPS, then).
    tls: Option<Box<ClientConnection>>,
    /// Requests to send; `out[out_pos..]` is still unsent.
    out: Vec<u8>,
    /// How much of `out` the socket has taken.
    out_pos: usize,
    /// Answer bytes not yet parsed.
    input: Vec<u8>,
    /// Sequence numbers of the requests made and not yet answered, oldest first.
    unanswered: VecDeque<u64>,
    /// A request failed: the publisher has stopped.
    pub(super) failed: bool,
}

impl HttpPub {
    /// A connection whose requests start with `head` (not opened yet).
    pub(super) fn new(head: Vec<u8>) -> HttpPub {
        HttpPub {
            head,
            ..HttpPub::default()
        }
    }

    /// Whether there is anything to write: queued requests, or (TLS) records the session
    /// made, such as its handshake's next flight after a read.
    fn has_output(&self) -> bool {
        self.out_pos < self.out.len() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Queues the request that publishes `msg`, message `seq` of its publisher.
    pub(super) fn queue(&mut self, msg: &[u8], seq: u64) {
        self.out.extend_from_slice(&self.head);
        self.out.extend_from_slice(msg);
        self.unanswered.push_back(seq);
    }
}

impl Ctx {
    /// Closes publisher `p`'s HTTP connection `h`. Requests still unanswered are failed
    /// publishes: the oldest for `first`, the others for `rest`. If there were any, the
    /// publisher stops, and while publishing is on, its published count is cut to what it
    /// sent before the oldest (the server broadcast none of it: herald discards what
    /// follows an error answer). Without any, the close is clean.
    fn http_down(
        &mut self,
        h: &mut HttpPub,
        p: Publisher,
        reg: &Registry,
        first: &str,
        rest: &str,
    ) {
        if let Some(mut stream) = h.stream.take() {
            let _ = reg.deregister(&mut stream);
        }
        h.tls = None;
        (h.out_pos, h.failed) = (0, h.failed || !h.unanswered.is_empty());
        h.out.clear();
        h.input.clear();
        let Some(&oldest) = h.unanswered.front() else {
            return;
        };
        self.stats.publish_error(first, 1);
        self.stats
            .publish_error(rest, h.unanswered.len() as u64 - 1);
        h.unanswered.clear();
        if self.phase == Phase::Run {
            self.ctl.published[p.id as usize].store(oldest, Relaxed);
        }
    }

    /// Closes publisher `p`'s HTTP connection `h` as its WebSocket ends: reads the last
    /// answers, which may still be unread (the WebSocket can end first), and counts the
    /// requests left unanswered as failed.
    pub(super) fn http_end(&mut self, h: &mut HttpPub, p: Publisher, reg: &Registry) {
        let why = match h.stream.is_some() && !h.unanswered.is_empty() {
            true => read_answers(h, &mut self.inbox, &mut self.stats, false).err(),
            false => None,
        };
        let end = "publish: not answered by the end";
        let why = why.as_deref().unwrap_or(end);
        self.http_down(h, p, reg, why, end);
    }
}

impl Worker {
    /// Opens publisher `key`'s HTTP connection unless it is open or failed.
    pub(super) fn open_http(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let (Some(h), Some(p)) = (conn.http.as_deref_mut(), conn.publisher) else {
            return;
        };
        if h.stream.is_some() || h.failed {
            return;
        }
        let cfg = &self.ctx.cfg;
        let reg = self.poll.registry();
        let url = cfg.url_of(p.id);
        let session = tls::session(cfg.tls.as_ref(), url).map_err(|why| format!("publish: {why}"));
        let opened = session.and_then(|tls| {
            let mut s = net::connect(url.addr, cfg.local_addr(p.id))
                .map_err(|e| format!("publish: connect: {}", net::describe(&e)))?;
            let token = Token(key | HTTP);
            reg.register(&mut s, token, Interest::READABLE | Interest::WRITABLE)
                .map_err(|e| format!("publish: register: {}", net::describe(&e)))?;
            Ok((s, tls))
        });
        match opened {
            Ok((s, tls)) => (h.stream, h.tls) = (Some(s), tls),
            Err(why) => self.ctx.http_down(h, p, reg, &why, &why),
        }
    }

    /// Sends what publisher `key` queued on its HTTP connection, opening it if need be.
    pub(super) fn flush_http(&mut self, key: usize) {
        let queued = |c: &Conn| c.http.as_ref().is_some_and(|h| h.has_output());
        if !self.conns.get(key).is_some_and(queued) {
            return;
        }
        self.open_http(key);
        let conn = &mut self.conns[key];
        let (Some(h), Some(p)) = (conn.http.as_deref_mut(), conn.publisher) else {
            return;
        };
        let Some(stream) = h.stream.as_mut() else {
            return; // it failed to open (counted)
        };
        if let Err(e) = send(stream, h.tls.as_deref_mut(), &mut h.out, &mut h.out_pos) {
            let why = format!("publish: {}", tls::failure("write", &e));
            self.ctx.http_down(h, p, self.poll.registry(), &why, &why);
        }
    }

    /// Reads and checks the answers on publisher `key`'s HTTP connection, and sends what
    /// is queued.
    pub(super) fn on_http_ready(&mut self, key: usize, ready: Ready) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let (Some(h), Some(p)) = (conn.http.as_deref_mut(), conn.publisher) else {
            return;
        };
        if h.stream.is_none() {
            return; // closed earlier in this batch
        }
        if ready.readable {
            let reg = self.poll.registry();
            match read_answers(h, &mut self.ctx.inbox, &mut self.ctx.stats, ready.hung_up) {
                Ok(false) => {}
                Ok(true) => {
                    let why = "publish: not answered (closed by the server)";
                    return self.ctx.http_down(h, p, reg, why, why);
                }
                Err(why) => {
                    let rest = "publish: not answered (the connection ended)";
                    return self.ctx.http_down(h, p, reg, &why, rest);
                }
            }
        }
        if ready.writable || h.has_output() {
            self.flush_http(key);
        }
    }
}

/// Reads what publisher connection `h` has (all of it when `hung_up`), through `inbox`
/// when it speaks TLS, and checks every whole answer, each against the oldest unanswered
/// request. Returns whether the server closed the connection.
///
/// # Errors
/// Why the oldest unanswered request failed: an answer other than 202 (left unconsumed),
/// a malformed answer, or a read or TLS error.
fn read_answers(
    h: &mut HttpPub,
    inbox: &mut Inbox,
    stats: &mut Stats,
    hung_up: bool,
) -> Result<bool, Reason> {
    let Some(stream) = h.stream.as_mut() else {
        return Ok(false);
    };
    if h.tls.is_some() {
        inbox.start(hung_up);
    }
    let (mut eof, mut broken) = (false, None);
    loop {
        let len = h.input.len();
        h.input.resize(len + HTTP_READ, 0);
        let read = match h.tls.as_deref_mut() {
            None => stream.read(&mut h.input[len..]),
            Some(tls) => inbox.read(stream, tls, &mut h.input[len..]),
        };
        h.input.truncate(len + *read.as_ref().unwrap_or(&0));
        match read {
            Ok(0) => eof = true,
            // A short read of plaintext says nothing of the socket: read on to WouldBlock.
            Ok(n) if n == HTTP_READ || hung_up || h.tls.is_some() => continue,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => broken = Some(format!("publish: {}", tls::failure("read", &e))),
        }
        break;
    }
    let mut pos = 0;
    let checked = loop {
        match publish::parse_answer(&h.input[pos..]) {
            Ok(None) => break Ok(()),
            Err(why) => break Err(why),
            Ok(Some(_)) if h.unanswered.is_empty() => {
                break Err("publish: an answer to no request".into())
            }
            Ok(Some((a, _))) if a.status != 202 => {
                break Err(format!("publish: HTTP {}", a.status))
            }
            Ok(Some((a, used))) => {
                pos += used;
                h.unanswered.pop_front();
                match a.recipients {
                    Some(n) => {
                        stats.publish_answers += 1;
                        stats.recipients = (stats.recipients.0.min(n), stats.recipients.1.max(n));
                    }
                    None => stats.publish_error("publish: 202 without {\"recipients\":N}", 1),
                }
            }
        }
    };
    h.input.drain(..pos);
    checked?;
    broken.map_or(Ok(eof), Err)
}
