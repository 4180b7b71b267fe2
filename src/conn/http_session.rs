//! The HTTP session: request heads routed one at a time and answered in
//! order, publish bodies read, and the requests only the server can finish
//! (metrics, a publish's 202) held as pending until it does.

use std::time::Instant;

use super::{Conn, Ctx, Marks, State, NO_ROOM};
use crate::bus::{Ack, Target};
use crate::config::Config;
use crate::frame::{self, Frame, OP_BINARY, OP_TEXT};
use crate::http::{self, Phase, Resource, Route, Status};
use crate::metrics;
use crate::queue::Kind;
use crate::rooms::Rooms;
use crate::stats::CloseReason;

/// Bytes read at once from a connection waiting for a request head: two
/// heads' worth, so a pipelining client's buffered requests cost little.
pub(super) const HTTP_READ: usize = 2 * http::MAX_HEAD_LEN;

/// A publish body being read.
pub(super) struct Body {
    buf: Vec<u8>,
    len: usize,
    binary: bool,
    keep_alive: bool,
    room: Option<String>,
}

/// A request the server must finish, since it needs more than this
/// connection: the metrics need every connection, a publish's answer needs
/// the count of recipients, known once the broadcast is fanned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pending {
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
    /// With the bus: answer 202 once Redis took the publish. One at a
    /// time: each waits for its own answer.
    BusPublished {
        /// Whether the connection stays open after it.
        keep_alive: bool,
        /// The bus's number for the publish.
        ticket: u32,
    },
}

/// What a connection waits for the server to do before it handles more
/// input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Awaiting {
    /// Render the metrics, which need every connection, for
    /// [`Conn::answer_metrics`].
    Metrics,
    /// Fan out this iteration's broadcasts, which counts the recipients
    /// [`Conn::answer_published`] reports.
    FanOut,
    /// Redis's answer to a publish, which the bus hands to
    /// [`Conn::answer_bus_published`].
    Bus,
}

impl Conn {
    /// What this connection waits for the server to do, if anything.
    pub fn awaits(&self) -> Option<Awaiting> {
        match self.pending? {
            Pending::Metrics { .. } => Some(Awaiting::Metrics),
            Pending::Published { .. } => Some(Awaiting::FanOut),
            Pending::BusPublished { .. } => Some(Awaiting::Bus),
        }
    }

    /// Answers a pending metrics request with `text`, the rendered metrics.
    pub fn answer_metrics(&mut self, text: &str, now: Instant, cfg: &Config) {
        let Some(Pending::Metrics { body, keep_alive }) = self.pending else {
            return;
        };
        let answer = |keep_alive: bool| {
            http::reply(
                "200 OK",
                metrics::CONTENT_TYPE,
                text.as_bytes(),
                body,
                keep_alive,
            )
        };
        // Pipelined requests after it wait in the buffer until the
        // answer has left (the connection is held till then).
        self.answer_pending(
            (if body { "GET" } else { "HEAD" }, &cfg.metrics_path),
            answer,
            1,
            keep_alive,
            now,
            cfg,
        );
    }

    /// Answers this iteration's publishes of the connection, once the
    /// fan-out counted their recipients in `rooms`. False if it had none.
    pub fn answer_published(&mut self, rooms: &Rooms, now: Instant, cfg: &Config) -> bool {
        let Some(Pending::Published {
            count,
            keep_alive,
            room,
        }) = self.pending
        else {
            return false;
        };
        let recipients = if room == NO_ROOM {
            0
        } else {
            rooms.recipients(room)
        };
        let body = format!("{{\"recipients\":{recipients}}}\n");
        let answer = |keep_alive: bool| {
            http::reply(
                "202 Accepted",
                "application/json",
                body.as_bytes(),
                true,
                keep_alive,
            )
        };
        // Pipelined requests after them wait in the buffer until the
        // answers have left (the connection is held till then).
        self.answer_pending(("POST", "/publish"), answer, count, keep_alive, now, cfg);
        true
    }

    /// Answers a publish Redis took (`ticket` is the bus's number for it)
    /// with the subscribers Redis counted: herald nodes, not clients, since
    /// each node counts its own clients when the message comes back. False
    /// if the connection waits for no such answer (it closed, and its key
    /// went to another connection).
    pub fn answer_bus_published(
        &mut self,
        ticket: u32,
        nodes: i64,
        now: Instant,
        cfg: &Config,
    ) -> bool {
        let Some(Pending::BusPublished {
            keep_alive,
            ticket: owed,
        }) = self.pending
        else {
            return false;
        };
        if owed != ticket {
            return false;
        }
        // Negative: Redis refused the message for good.
        let (status, kind, body) = match nodes {
            0.. => (
                "202 Accepted",
                "application/json",
                format!("{{\"nodes\":{nodes}}}\n"),
            ),
            _ => (
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                "bus refused the message\n".to_string(),
            ),
        };
        let answer =
            |keep_alive: bool| http::reply(status, kind, body.as_bytes(), true, keep_alive);
        self.answer_pending(("POST", "/publish"), answer, 1, keep_alive, now, cfg);
        true
    }

    /// Handles bytes read while waiting for a request head (or, with
    /// `data` empty, bytes left over from a pipelined request).
    pub(super) fn on_http_input(&mut self, data: &[u8], ctx: &mut Ctx<'_>) {
        if let State::Http(buf) = &mut self.state {
            // Everything is kept: past a complete head come a publish body
            // or pipelined requests. Growth is bounded: an incomplete head
            // past MAX_HEAD_LEN is answered 431, and no more is read while
            // a request waits for the server.
            buf.extend_from_slice(data);
            self.route_request(ctx);
        }
    }

    /// Handles bytes of a publish body; once it is whole, publishes it and
    /// routes what follows it.
    pub(super) fn on_body_input(&mut self, data: &[u8], ctx: &mut Ctx<'_>) {
        let State::Body(body) = &mut self.state else {
            return;
        };
        let take = (body.len - body.buf.len()).min(data.len());
        body.buf.extend_from_slice(&data[..take]);
        if body.buf.len() == body.len {
            let rest = data[take..].to_vec();
            if let State::Body(body) = std::mem::replace(&mut self.state, State::Http(rest)) {
                let frame = publish_frame(&body.buf, body.binary);
                self.published(frame, body.keep_alive, body.room.as_deref(), ctx);
                self.route_request(ctx);
            }
        }
    }

    /// Whether another pipelined request may be routed now.
    fn may_route(&self) -> bool {
        match self.pending {
            None => true,
            // More publishes may join the same fan-out; anything else waits,
            // so that answers leave in request order. Over the bus each
            // publish waits for its own answer from Redis.
            Some(Pending::Published { keep_alive, .. }) => keep_alive,
            Some(Pending::BusPublished { .. } | Pending::Metrics { .. }) => false,
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
            // Only when it is logged: the request line, owned.
            let line = logging(ctx.cfg)
                .then(|| http::request_line(input))
                .flatten()
                .map(|(m, p)| (m.to_string(), p.to_string()));
            let mut route = http::route(input, ctx.route, ctx.phase);
            if self.marks.has(Marks::METRICS_ONLY) {
                route = metrics_only(route);
            }
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
                    self.upgrade(&response, room.as_deref(), ctx);
                    self.log_answer(line.as_ref(), response.len(), ctx.cfg);
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
                        Resource::Ready => {
                            let (ready, text) = match (&ctx.bus, ctx.phase) {
                                (_, Phase::Draining) => (false, "shutting down\n"),
                                (Some(bus), _) if !bus.is_up() => (false, "bus unavailable\n"),
                                _ => (true, "ready\n"),
                            };
                            self.queue.push(
                                http::text_response(ready, text, body, keep_alive),
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
                    self.log_answer(line.as_ref(), 0, ctx.cfg);
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
                    self.log_answer(line.as_ref(), 0, ctx.cfg);
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
            self.log_answer(Some(&publish_line()), 0, ctx.cfg);
            return;
        };
        if let Some(bus) = ctx.bus.as_deref_mut() {
            // Every node hears it from Redis, this one included.
            let outcome = if bus.is_up() {
                let ack = Ack {
                    key: ctx.key,
                    ticket: bus.ticket(),
                };
                let (opcode, payload) = frame::split(&frame);
                let target = Target::Named(room);
                match bus.publish(ctx.rooms, target, opcode, payload, Some(ack), ctx.stats) {
                    Ok(()) => Ok(ack),
                    Err(_) => Err("bus buffer full"),
                }
            } else {
                Err("bus unavailable")
            };
            match outcome {
                Ok(ack) => {
                    ctx.stats.publishes += 1;
                    self.pending = Some(Pending::BusPublished {
                        keep_alive,
                        ticket: ack.ticket,
                    });
                }
                Err(why) => {
                    *ctx.stats.rejected.entry(503).or_default() += 1;
                    self.finish_with(
                        http::error_response(Status::Unavailable, why),
                        CloseReason::Rejected,
                        ctx.close_by(),
                    );
                    self.log_answer(Some(&publish_line()), 0, ctx.cfg);
                }
            }
            return;
        }
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

    /// Logs the answer just queued to the request `line` (method, path):
    /// its status and size from the queue, which held nothing before it
    /// (requests are routed only then), or a 101 of `sent` bytes written
    /// at once.
    fn log_answer(&self, line: Option<&(String, String)>, sent: usize, cfg: &Config) {
        let Some((method, path)) = line else { return };
        let first = self.queue.slices().next();
        let (status, bytes) = match first.and_then(http::status_of) {
            Some(status) => (status, self.queue.queued()),
            None => (101, sent),
        };
        log_request(self.peer, method, path, status, bytes, cfg);
    }

    /// Queues the answer to each of `count` requests the server finished
    /// (all kept alive but perhaps the last), then waits for the next
    /// request or closes.
    fn answer_pending(
        &mut self,
        what: (&str, &str),
        answer: impl Fn(bool) -> Frame,
        count: u32,
        keep_alive: bool,
        now: Instant,
        cfg: &Config,
    ) {
        self.pending = None;
        let before = self.queue.queued();
        for _ in 1..count {
            self.queue.push(answer(true), Kind::Own);
        }
        if keep_alive {
            self.queue.push(answer(true), Kind::Own);
            self.next_request(true, now, cfg);
        } else {
            self.finish_with(answer(false), CloseReason::Normal, now + cfg.close_timeout);
        }
        if logging(cfg) {
            let each = (self.queue.queued() - before) / count.max(1) as usize;
            let status = self.queue.slices().last().and_then(http::status_of);
            for _ in 0..count {
                log_request(self.peer, what.0, what.1, status.unwrap_or(0), each, cfg);
            }
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
}

/// Whether HTTP requests are logged at all (at info with `--access-log`,
/// else at debug).
fn logging(cfg: &Config) -> bool {
    cfg.access_log || tracing::enabled!(tracing::Level::DEBUG)
}

/// What a connection on `--metrics-listen` may ask: the metrics and the
/// health answers; the rest is not there.
fn metrics_only(route: Route) -> Route {
    match route {
        Route::Get {
            what: Resource::Metrics | Resource::Health | Resource::Ready,
            ..
        }
        | Route::Incomplete
        | Route::Reject(..) => route,
        _ => Route::Reject(
            Status::NotFound,
            "only the metrics, /healthz and /readyz are served here",
        ),
    }
}

/// The request line of a publish, for its log line once the body is read.
fn publish_line() -> (String, String) {
    ("POST".into(), "/publish".into())
}

/// One request's line: at info with `--access-log`, else at debug.
fn log_request(
    peer: super::Peer,
    method: &str,
    path: &str,
    status: u16,
    bytes: usize,
    cfg: &Config,
) {
    if cfg.access_log {
        tracing::info!(%peer, method, path, status, bytes, "request");
    } else {
        tracing::debug!(%peer, method, path, status, bytes, "request");
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
