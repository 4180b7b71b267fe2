//! The Redis backplane: several herald nodes, one conversation per room.
//!
//! With `--redis`, a broadcast is not delivered where it was sent: it is
//! published to its room's channel (`PREFIX:lobby`, `PREFIX:room:NAME`) in an
//! [`envelope`], and every node, the sender's included, delivers what comes
//! back on its subscription. Redis hands a channel's messages to every
//! subscriber in one order, so every client of a room on every node sees the
//! same sequence; delivering locally first would let two nodes show two
//! simultaneous messages in opposite orders.
//!
//! Everything runs in the server's one loop: each Redis server is two
//! non-blocking mio sockets (one publishes, one subscribes), commands are
//! packed by the `redis` crate, replies decoded from a buffer by
//! `redis-protocol`, so nothing here ever blocks. An iteration's publishes
//! leave in one write; the subscription is read first in every iteration,
//! outside the clients' read budget, so Redis never finds herald a slow
//! subscriber.
//!
//! Delivery guarantees, and how they are kept:
//! - **Own echo.** A room's publishes wait ([`RoomBus`]'s held queue) until
//!   its `SUBSCRIBE` is confirmed: the two sockets are two Redis clients, and
//!   a publish that overtook the subscription would never come back.
//! - **Outages.** Publish commands stay in the node's out buffer until Redis
//!   answers them, and are written again after a reconnect (the subscriptions
//!   first); receivers drop a copy whose sequence number they already saw.
//!   Memory is bounded by `--bus-buffer`: past it a message is refused.
//! - **Silent failures.** A `PING` on each subscription every second, and a
//!   `PUBLISH` that reached nobody in a room this node is subscribed to,
//!   reconnect the bus.
//! - **Gaps** in a `(node, stream)` sequence are counted, never silent.

mod cluster;
mod envelope;
mod link;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::{Registry, Token};
use prometheus_client::metrics::histogram::Histogram;
use redis_protocol::redis_keyslot;
use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::types::RangeFrame;

use crate::config::{Config, RedisUrl};
use crate::frame::OP_TEXT;
use crate::rooms::Rooms;
use crate::stats::Stats;
use cluster::{Cluster, SlotRange};
use link::{pack, Link};

pub use envelope::Envelope;

/// The highest token the bus uses; each Redis server takes two below it.
const TOKEN_TOP: usize = usize::MAX - 16;

/// Redis servers the bus talks to at most (a cluster's masters).
pub const MAX_SERVERS: usize = 128;

/// Reconnect delays: the first, and the most, doubled in between; each
/// with up to half again added at random, so nodes that lost Redis together
/// do not all come back in the same millisecond.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long the bus must stay up before its backoff starts over.
const STABLE_AFTER: Duration = Duration::from_secs(5);

/// A connection not set up (TCP and the greeting) in this long has failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often each subscription is pinged, and how long its answer may take.
const PING_EVERY: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// `(node, stream)` sequences a room remembers; the oldest is forgotten past
/// it (its next message then starts it again, uncounted).
const SEEN_PER_ROOM: usize = 64;

/// Rooms without local members that this node published to, whose
/// sequences it keeps; the map starts over past it (new streams).
const MAX_GHOSTS: usize = 4096;

/// The notice a client gets for a message the bus could not take.
pub const UNDELIVERED: &str = "herald: message not delivered (bus unavailable)";

/// A publish over HTTP that waits for Redis's answer: the connection and
/// its ticket (so a key reused meanwhile is never answered by mistake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The connection's slab key.
    pub key: usize,
    /// The number the bus gave this publish.
    pub ticket: u32,
}

/// Where a message goes.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A room with local members, by id: a client's message, which each
    /// node prefixes with its `--prefix`.
    Room(u32),
    /// A room by name (`None`: the lobby), with or without local members: a
    /// publish or a feed line, delivered as it is.
    Named(Option<&'a str>),
}

/// Why a message was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `--bus-buffer` is full.
    Full,
}

/// A room's side of the bus, kept in the room.
#[derive(Debug, Default)]
pub struct RoomBus {
    sub: Sub,
    /// This node's stream for the room (0: none yet) and its last number.
    stream: u64,
    seq: u64,
    /// Publishes waiting for the room's subscription: packed commands, and
    /// what each is.
    held: Vec<u8>,
    held_cmds: Vec<Sent>,
    /// When this node's room began (its first subscription), by this
    /// node's clock: a stream that began later should be heard whole.
    since_us: u64,
    /// Messages heard from the bus (the clock of `seen`), and whether a
    /// stream was ever forgotten to make room.
    heard: u64,
    forgot: bool,
    /// The last number received from each `(node, stream)`.
    seen: Vec<Seen>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Sub {
    /// Not subscribed (no members, or the bus is down).
    #[default]
    Off,
    /// `SUBSCRIBE` sent, not confirmed.
    Pending,
    /// Confirmed; the number tells this subscription from earlier ones.
    Active(u32),
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    node: u64,
    stream: u64,
    seq: u64,
    /// When it was last heard, by the room's count of messages.
    heard: u64,
}

/// One command in a server's out buffer.
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// Its packed length.
    len: u32,
    /// Its channel's hash slot (cluster; 0 otherwise): where it goes.
    slot: u16,
    /// The room (for the "reached nobody" check) and the subscription it was
    /// sent under (0: none to check).
    room: u32,
    generation: u32,
    ack: Option<Ack>,
}

/// Where a server's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// No sockets.
    Idle,
    /// TCP connects under way.
    Connecting,
    /// Greetings sent, replies due.
    Greeting,
    /// Every room's `SUBSCRIBE` sent, confirmations due.
    Resubscribing,
    /// Publishing.
    Ready,
}

/// One Redis server: a socket that publishes and one that subscribes.
struct Server {
    addr: SocketAddr,
    phase: Phase,
    publisher: Link,
    subscriber: Link,
    /// One entry per publish in `publisher.out`, oldest first. Commands stay
    /// until Redis answers them: after a reconnect they are written again.
    sent: VecDeque<Sent>,
    /// Confirmations due before a resubscribing server is ready.
    resubscribing: usize,
    /// When the unanswered `PING` was sent, and the last one.
    ping_sent: Option<Instant>,
    last_ping: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting to reconnect at this instant.
    Down(Instant),
    /// Asking a cluster seed for the slot map, until the deadline.
    Discovering(Instant),
    /// Connecting, greeting or resubscribing, until the deadline.
    Connecting(Instant),
    /// Every server ready.
    Up,
}

/// The bus.
pub struct Bus {
    servers: Vec<Server>,
    /// With `--redis-cluster`: the slot map and how to learn it.
    cluster: Option<Cluster>,
    /// The commands, classic or sharded.
    verbs: Verbs,
    /// Publishes no server is known for yet (a cluster before its map).
    unrouted: Vec<u8>,
    unrouted_sent: VecDeque<Sent>,
    /// The URL logged, and whose credentials every connection uses (a
    /// cluster's first seed).
    url: RedisUrl,
    prefix: String,
    /// This process's id in every envelope it writes.
    node: u64,
    state: State,
    /// Whether the bus was ever up (the first time is not a reconnect).
    was_up: bool,
    /// Since when it is up.
    up_since: Option<Instant>,
    /// The server serviced first in the last iteration.
    turn: usize,
    /// The last reason Redis gave for refusing a publish, logged once.
    refused: Option<String>,
    backoff: Duration,
    rng: u64,
    /// Why the bus is down, logged once per outage.
    down_reason: Option<String>,
    /// Subscription numbers handed out.
    generations: u32,
    /// The last stream begun (streams are named by their start time).
    last_stream: u64,
    /// Sequences of rooms without local members this node published to.
    ghosts: HashMap<Box<str>, (u64, u64)>,
    /// Channels with an `UNSUBSCRIBE` not yet confirmed: a `subscribe`
    /// confirmation that arrives before it is an older one's.
    unsubscribing: HashMap<Box<str>, u32>,
    /// Bytes of publish commands kept for Redis (out buffers and held queues).
    buffered: usize,
    limit: usize,
    tickets: u32,
    /// Reused for every command, so packing allocates nothing once warm.
    cmd: redis::Cmd,
    channel: Vec<u8>,
    envelope: Vec<u8>,
    packed: Vec<u8>,
    occupied: Vec<u32>,
    /// HTTP publishes Redis answered: the ack and the subscribers it counted.
    acks: Vec<(Ack, i64)>,
    /// The subscription had more input than the iteration took.
    input_left: bool,
    echo: Histogram,
}

impl Bus {
    /// The bus of `cfg.redis`, `None` without one. Host names are resolved
    /// here, once.
    ///
    /// # Errors
    /// A host name that does not resolve.
    pub fn new(cfg: &Config, now: Instant) -> io::Result<Option<Bus>> {
        let (url, servers, cluster, verbs) = match (&cfg.redis, cfg.redis_cluster.first()) {
            (Some(url), _) => {
                let server = Server::new(resolve(url)?, 0, now);
                (url.clone(), vec![server], None, CLASSIC)
            }
            (None, Some(first)) => {
                let seeds = cfg
                    .redis_cluster
                    .iter()
                    .map(resolve)
                    .collect::<io::Result<Vec<_>>>()?;
                let probe = Link::new(Token(PROBE_TOKEN), false);
                (
                    first.clone(),
                    Vec::new(),
                    Some(Cluster::new(seeds, probe)),
                    SHARDED,
                )
            }
            (None, None) => return Ok(None),
        };
        let node = random_u64();
        let bus = Bus {
            servers,
            cluster,
            verbs,
            unrouted: Vec::new(),
            unrouted_sent: VecDeque::new(),
            url,
            prefix: cfg.redis_prefix.clone(),
            node,
            state: State::Down(now),
            was_up: false,
            up_since: None,
            turn: 0,
            refused: None,
            backoff: BACKOFF_MIN,
            rng: node | 1,
            down_reason: None,
            generations: 0,
            last_stream: 0,
            ghosts: HashMap::new(),
            unsubscribing: HashMap::new(),
            buffered: 0,
            limit: cfg.bus_buffer,
            tickets: 0,
            cmd: redis::Cmd::new(),
            channel: Vec::new(),
            envelope: Vec::new(),
            packed: Vec::new(),
            occupied: Vec::new(),
            acks: Vec::new(),
            input_left: false,
            echo: crate::metrics::echo_histogram(),
        };
        tracing::info!(redis = %bus.url, node = %format_args!("{node:016x}"),
            prefix = %bus.prefix, "bus configured");
        Ok(Some(bus))
    }

    /// Whether `token` is one of the bus's sockets.
    pub fn owns(token: Token) -> bool {
        (PROBE_TOKEN..=TOKEN_TOP).contains(&token.0)
    }

    /// Whether every broadcast can be published now (`/readyz`).
    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// Bytes held for Redis now.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Whether a message of `payload` bytes fits in `--bus-buffer` now, with
    /// its envelope and command around it.
    pub fn has_room(&self, payload: usize) -> bool {
        // Envelope, channel name (a room name is 64 bytes at most) and the
        // command's framing.
        let around = envelope::HEADER_LEN + self.prefix.len() + 64 + 64;
        self.buffered + payload + around <= self.limit
    }

    /// The publish-to-echo times of this node's own messages.
    pub fn echo_times(&self) -> &Histogram {
        &self.echo
    }

    /// Whether publishes of this node are written and not yet answered: their
    /// echo is on its way.
    pub fn awaits_echo(&self) -> bool {
        self.state == State::Up && self.servers.iter().any(|s| s.publisher.written > 0)
    }

    /// Whether the loop should poll without waiting: input is left over.
    pub fn has_input_left(&self) -> bool {
        self.input_left
    }

    /// Notes readiness of one of the bus's sockets.
    pub fn on_event(&mut self, token: Token, readable: bool, writable: bool) {
        if let Some(c) = &mut self.cluster {
            if c.probe.token == token {
                c.probe.readable |= readable;
                c.probe.writable |= writable;
            }
        }
        for s in &mut self.servers {
            for link in [&mut s.publisher, &mut s.subscriber] {
                if link.token == token {
                    link.readable |= readable;
                    link.writable |= writable;
                }
            }
        }
    }

    /// Moves the HTTP publishes Redis answered since the last call, with the
    /// number of subscribers Redis counted (negative: refused), into `into`
    /// (emptied first): the two vectors trade places, so neither allocates.
    pub fn take_acks(&mut self, into: &mut Vec<(Ack, i64)>) {
        into.clear();
        std::mem::swap(&mut self.acks, into);
    }

    /// A number for an HTTP publish's [`Ack`].
    pub fn ticket(&mut self) -> u32 {
        // Wrapping: a ticket only has to differ from the few a reused key
        // could still be owed.
        self.tickets = self.tickets.wrapping_add(1).max(1);
        self.tickets
    }

    /// Publishes a message to `target`'s channel, or holds it until the
    /// room's subscription is confirmed or the bus is back.
    ///
    /// # Errors
    /// [`Refused::Full`] past `--bus-buffer` (nothing was kept).
    pub fn publish(
        &mut self,
        rooms: &mut Rooms,
        target: Target<'_>,
        opcode: u8,
        payload: &[u8],
        ack: Option<Ack>,
        stats: &mut Stats,
    ) -> Result<(), Refused> {
        let id = match target {
            Target::Room(id) => Some(id),
            Target::Named(name) => rooms.find(name).filter(|&id| rooms.is_occupied(id)),
        };
        let sent_us = unix_micros();
        // The message's place in its stream: a local room keeps it, a room
        // without local members has a ghost entry.
        let (stream, seq) = match id {
            Some(id) => {
                let (name, rb) = rooms.bus_mut(id);
                if rb.stream == 0 {
                    rb.stream = next_stream(&mut self.last_stream, sent_us);
                }
                channel_of(&mut self.channel, &self.prefix, name);
                (rb.stream, rb.seq + 1)
            }
            None => {
                let name = match target {
                    Target::Named(n) => n.unwrap_or(""),
                    Target::Room(_) => unreachable!("a room id is a local room"),
                };
                if !self.ghosts.contains_key(name) {
                    if self.ghosts.len() >= MAX_GHOSTS {
                        self.ghosts.clear();
                    }
                    let stream = next_stream(&mut self.last_stream, sent_us);
                    self.ghosts.insert(name.into(), (stream, 0));
                }
                channel_of(&mut self.channel, &self.prefix, name);
                let (stream, seq) = self.ghosts[name];
                (stream, seq + 1)
            }
        };
        self.envelope.clear();
        Envelope {
            opcode,
            flags: match target {
                Target::Room(_) => envelope::FROM_CLIENT,
                Target::Named(_) => 0,
            },
            node: self.node,
            stream,
            seq,
            sent_us,
            payload,
        }
        .write(&mut self.envelope);
        let mut packed = std::mem::take(&mut self.packed);
        packed.clear();
        let verb = self.verbs.publish;
        let len = pack(
            &mut self.cmd,
            verb,
            &[&self.channel, &self.envelope],
            &mut packed,
        );
        if self.buffered + len > self.limit {
            self.packed = packed;
            stats.bus_undelivered += 1;
            return Err(Refused::Full);
        }
        self.buffered += len;
        let mut sent = Sent {
            len: len as u32,
            slot: self.slot_of(&self.channel),
            room: id.unwrap_or(u32::MAX),
            generation: 0,
            ack,
        };
        match id {
            Some(id) => {
                let (_, rb) = rooms.bus_mut(id);
                rb.seq = seq;
                match rb.sub {
                    // Confirmed, so its server is connected: straight out.
                    Sub::Active(g) => {
                        sent.generation = g;
                        self.send(sent, &packed);
                    }
                    _ => {
                        rb.held.extend_from_slice(&packed);
                        rb.held_cmds.push(sent);
                    }
                }
            }
            None => {
                if let Target::Named(n) = target {
                    if let Some(g) = self.ghosts.get_mut(n.unwrap_or("")) {
                        g.1 = seq;
                    }
                }
                self.send(sent, &packed);
            }
        }
        self.packed = packed;
        stats.bus_publishes += 1;
        Ok(())
    }

    /// The hash slot of `channel` (0 without a cluster).
    fn slot_of(&self, channel: &[u8]) -> u16 {
        match self.cluster {
            Some(_) => redis_keyslot(channel),
            None => 0,
        }
    }

    /// The server of `slot`, if known.
    fn server_of(&self, slot: u16) -> Option<usize> {
        match &self.cluster {
            Some(c) => c.owner(slot),
            None => Some(0),
        }
    }

    /// Queues a packed publish on its slot's server, or, with none known
    /// yet, until the cluster's map arrives.
    fn send(&mut self, sent: Sent, bytes: &[u8]) {
        match self.server_of(sent.slot) {
            Some(i) => {
                let s = &mut self.servers[i];
                s.publisher.out.extend_from_slice(bytes);
                s.sent.push_back(sent);
            }
            None => {
                self.unrouted.extend_from_slice(bytes);
                self.unrouted_sent.push_back(sent);
            }
        }
    }

    /// Handles the sockets' readiness: completes connections, reads the
    /// subscriptions (into the rooms' batches, while they hold less than
    /// `cap` bytes) and the publishers' replies. Called first in every
    /// iteration; `prefix` goes before text messages, as for local ones.
    pub fn service(&mut self, io: &mut BusIo<'_>) {
        self.input_left = false;
        if let State::Discovering(_) = self.state {
            let result = self.discover(io.stats).and_then(|ranges| match ranges {
                Some(ranges) => self.adopt(&ranges, io.registry, io.now),
                None => Ok(()),
            });
            if let Err(why) = result {
                self.fail(io.rooms, io.registry, why, io.now);
            }
            return;
        }
        // Each iteration starts with another server: the first one read may
        // fill the batches, and a shard never read would miss its PONGs.
        let n = self.servers.len();
        self.turn = self.turn.wrapping_add(1);
        for k in 0..n {
            let i = (self.turn + k) % n;
            if let Err(why) = self.service_server(i, io) {
                self.fail(io.rooms, io.registry, why, io.now);
                return;
            }
        }
        if matches!(self.state, State::Connecting(_))
            && self.servers.iter().all(|s| s.phase == Phase::Ready)
        {
            self.state = State::Up;
            self.up_since = Some(io.now);
            if self.was_up {
                io.stats.bus_reconnects += 1;
            }
            self.was_up = true;
            match self.down_reason.take() {
                Some(why) => tracing::warn!(redis = %self.url, was = %why, "bus up again"),
                None => tracing::info!(redis = %self.url, "bus up"),
            }
        }
    }

    fn service_server(&mut self, i: usize, io: &mut BusIo<'_>) -> Result<(), String> {
        let s = &mut self.servers[i];
        if s.phase == Phase::Connecting {
            for link in [&mut s.subscriber, &mut s.publisher] {
                if !link.connected && (link.readable || link.writable) {
                    link.check_connected()?;
                }
            }
            if s.publisher.connected && s.subscriber.connected {
                let node = self.node;
                let select = self.cluster.is_none();
                s.greet(&mut self.cmd, &self.url, node, select);
            }
        }
        // The subscription first: it fills this iteration's batches.
        let s = &self.servers[i];
        if s.subscriber.connected && (s.subscriber.readable || !s.subscriber.input.is_empty()) {
            self.read_subscription(i, io)?;
        }
        let s = &self.servers[i];
        if s.publisher.connected && s.publisher.readable {
            self.read_replies(i, io)?;
        }
        let s = &self.servers[i];
        if s.phase == Phase::Greeting && s.publisher.greeting == 0 && s.subscriber.greeting == 0 {
            self.resubscribe(i, io.rooms);
        }
        Ok(())
    }

    /// Reads and handles what the subscription socket holds, until the
    /// batches are full.
    fn read_subscription(&mut self, i: usize, io: &mut BusIo<'_>) -> Result<(), String> {
        let mut input = std::mem::take(&mut self.servers[i].subscriber.input);
        let mut pos = 0;
        let result = loop {
            if io.rooms.pending() >= io.cap {
                self.input_left = true;
                break Ok(());
            }
            match decode_range(&input[pos..]) {
                Ok(Some((frame, used))) => {
                    let at = pos;
                    pos += used;
                    if let Err(e) = self.on_push(i, &input[at..pos], &frame, io) {
                        break Err(e);
                    }
                }
                Ok(None) => {
                    input.drain(..pos);
                    pos = 0;
                    let link = &mut self.servers[i].subscriber;
                    if !link.readable {
                        break Ok(());
                    }
                    match link.fill(&mut input) {
                        Ok(0) => link.readable = false,
                        Ok(n) => io.stats.bus_received_bytes += n as u64,
                        Err(e) => break Err(e),
                    }
                }
                Err(e) => break Err(format!("unreadable input from Redis: {e}")),
            }
        };
        input.drain(..pos);
        self.servers[i].subscriber.input = input;
        result
    }

    /// One frame from a subscription socket (`buf`: its bytes).
    fn on_push(
        &mut self,
        i: usize,
        buf: &[u8],
        frame: &RangeFrame,
        io: &mut BusIo<'_>,
    ) -> Result<(), String> {
        let bytes = |r: &RangeFrame| match r {
            RangeFrame::BulkString((a, b)) | RangeFrame::SimpleString((a, b)) => Some(&buf[*a..*b]),
            _ => None,
        };
        let s = &mut self.servers[i];
        match frame {
            RangeFrame::Array(parts) if !parts.is_empty() => {
                let kind = bytes(&parts[0]).unwrap_or_default();
                let channel = parts.get(1).and_then(bytes).unwrap_or_default();
                match kind {
                    b"message" | b"smessage" => {
                        let payload = parts.get(2).and_then(bytes).unwrap_or_default();
                        io.stats.bus_received += 1;
                        self.deliver(channel, payload, io);
                    }
                    b"subscribe" | b"ssubscribe" => self.confirmed(i, channel, io.rooms),
                    b"unsubscribe" | b"sunsubscribe" => {
                        let name = String::from_utf8_lossy(channel);
                        match self.unsubscribing.get_mut(&*name) {
                            Some(n) if *n > 1 => *n -= 1,
                            Some(_) => {
                                self.unsubscribing.remove(&*name);
                            }
                            None => {
                                return Err(format!("Redis dropped the subscription to {name}"))
                            }
                        }
                    }
                    b"pong" => s.ping_sent = None,
                    _ => {}
                }
            }
            RangeFrame::Error(_) => {
                return Err(format!(
                    "Redis refused: {}",
                    String::from_utf8_lossy(buf).trim()
                ))
            }
            RangeFrame::SimpleString(_) if s.subscriber.greeting > 0 => {
                let link = &mut s.subscriber;
                link.greeting -= 1;
                if link.greeting == 0 {
                    // Written whole before any reply came.
                    let len = std::mem::take(&mut link.greeting_len);
                    link.out.drain(..len);
                    link.written -= len.min(link.written);
                }
            }
            // PONG while subscribed to nothing.
            RangeFrame::SimpleString(_) => s.ping_sent = None,
            _ => {}
        }
        Ok(())
    }

    /// A message from a channel: into its room's batch, once.
    fn deliver(&mut self, channel: &[u8], payload: &[u8], io: &mut BusIo<'_>) {
        let Some(name) = room_of(channel, &self.prefix) else {
            return;
        };
        let Some(id) = io.rooms.find(name).filter(|&id| io.rooms.is_occupied(id)) else {
            return;
        };
        let Some(env) = envelope::read(payload) else {
            io.stats.bus_malformed += 1;
            return;
        };
        let (_, rb) = io.rooms.bus_mut(id);
        if !matches!(rb.sub, Sub::Active(_)) {
            // Sent before the room's members subscribed.
            return;
        }
        if env.opcode == OP_TEXT && std::str::from_utf8(env.payload).is_err() {
            // A client would have to fail the connection on it.
            io.stats.bus_malformed += 1;
            return;
        }
        rb.heard += 1;
        let heard = rb.heard;
        match rb
            .seen
            .iter_mut()
            .find(|s| s.node == env.node && s.stream == env.stream)
        {
            Some(s) if env.seq <= s.seq => {
                // Written again after a reconnect, and already delivered.
                s.heard = heard;
                io.stats.bus_duplicates += 1;
                return;
            }
            Some(s) => {
                io.stats.bus_gaps = io.stats.bus_gaps.saturating_add(env.seq - s.seq - 1);
                s.seq = env.seq;
                s.heard = heard;
            }
            None => {
                // Its head is lost here if the stream began after this
                // room did (clocks of two hosts agree to NTP's precision),
                // unless the room forgot streams: this may be one of them.
                if env.stream > rb.since_us && !rb.forgot {
                    io.stats.bus_gaps = io.stats.bus_gaps.saturating_add(env.seq - 1);
                }
                if rb.seen.len() >= SEEN_PER_ROOM {
                    // The stream heard least recently goes.
                    let (i, _) = rb
                        .seen
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, s)| s.heard)
                        .expect("full");
                    rb.seen.swap_remove(i);
                    rb.forgot = true;
                }
                rb.seen.push(Seen {
                    node: env.node,
                    stream: env.stream,
                    seq: env.seq,
                    heard,
                });
            }
        }
        if env.node == self.node {
            let age = unix_micros().saturating_sub(env.sent_us);
            self.echo.observe(age as f64 / 1e6);
        }
        let prefixed = env.opcode == OP_TEXT && env.flags & envelope::FROM_CLIENT != 0;
        let prefix = if prefixed { io.prefix } else { b"" };
        io.rooms.push(id, env.opcode, prefix, env.payload);
    }

    /// A subscription confirmed: the room's held publishes may go.
    fn confirmed(&mut self, i: usize, channel: &[u8], rooms: &mut Rooms) {
        let s = &mut self.servers[i];
        if s.phase == Phase::Resubscribing {
            s.resubscribing = s.resubscribing.saturating_sub(1);
            if s.resubscribing == 0 {
                s.phase = Phase::Ready;
            }
        }
        let name = String::from_utf8_lossy(channel);
        if self.unsubscribing.contains_key(&*name) {
            // Confirms a subscription made before the room last emptied.
            return;
        }
        let Some(room) = room_of(channel, &self.prefix) else {
            return;
        };
        let Some(id) = rooms.find(room).filter(|&id| rooms.is_occupied(id)) else {
            return;
        };
        let (_, rb) = rooms.bus_mut(id);
        if rb.sub != Sub::Pending {
            return;
        }
        self.generations += 1;
        rb.sub = Sub::Active(self.generations);
        s.publisher.out.extend_from_slice(&rb.held);
        rb.held.clear();
        for mut c in rb.held_cmds.drain(..) {
            c.generation = self.generations;
            s.sent.push_back(c);
        }
    }

    /// Server `i` answered both greetings: subscribe every room with
    /// members; it is ready once Redis confirmed them all.
    fn resubscribe(&mut self, i: usize, rooms: &mut Rooms) {
        let mut channels = Vec::new();
        let mut c = Vec::new();
        for (_, name, rb) in rooms.each_bus_mut() {
            channel_of(&mut c, &self.prefix, name);
            if rb.sub == Sub::Off && self.server_of(self.slot_of(&c)) == Some(i) {
                rb.sub = Sub::Pending;
                if rb.since_us == 0 {
                    rb.since_us = unix_micros();
                }
                channels.push(c.clone());
            }
        }
        let s = &mut self.servers[i];
        s.resubscribing = channels.len();
        s.phase = if channels.is_empty() {
            Phase::Ready
        } else {
            Phase::Resubscribing
        };
        s.last_ping = Instant::now();
        for chunk in channels.chunks(self.verbs.batch) {
            let args: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            pack(
                &mut self.cmd,
                self.verbs.subscribe,
                &args,
                &mut s.subscriber.out,
            );
        }
    }

    /// Reads the publisher's replies: one per command, in order.
    fn read_replies(&mut self, i: usize, io: &mut BusIo<'_>) -> Result<(), String> {
        let mut input = std::mem::take(&mut self.servers[i].publisher.input);
        let result = loop {
            let link = &mut self.servers[i].publisher;
            match link.fill(&mut input) {
                Ok(0) => {
                    link.readable = false;
                    break Ok(());
                }
                Ok(n) => io.stats.bus_received_bytes += n as u64,
                Err(e) => break Err(e),
            }
            let mut pos = 0;
            let (mut answered, mut published) = (0, 0);
            let mut failed = None;
            loop {
                match decode_range(&input[pos..]) {
                    Ok(Some((frame, used))) => {
                        let at = pos;
                        pos += used;
                        match self.on_reply(i, &input[at..pos], &frame, io.rooms, io.stats) {
                            Ok((bytes, publishes)) => {
                                answered += bytes;
                                published += publishes;
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        failed = Some(format!("unreadable reply from Redis: {e}"));
                        break;
                    }
                }
            }
            input.drain(..pos);
            // Answered commands leave the buffer in one move per read.
            let link = &mut self.servers[i].publisher;
            link.out.drain(..answered);
            link.written -= answered;
            self.buffered -= published;
            if let Some(e) = failed {
                break Err(e);
            }
        };
        self.servers[i].publisher.input = input;
        result
    }

    /// One reply on a publisher socket; returns the bytes now answered at
    /// the front of the out buffer, and how many of them are publishes.
    fn on_reply(
        &mut self,
        i: usize,
        buf: &[u8],
        frame: &RangeFrame,
        rooms: &Rooms,
        stats: &mut Stats,
    ) -> Result<(usize, usize), String> {
        let s = &mut self.servers[i];
        if s.publisher.greeting > 0 {
            if let RangeFrame::Error(_) = frame {
                return Err(format!(
                    "Redis refused the greeting: {}",
                    String::from_utf8_lossy(buf).trim()
                ));
            }
            let link = &mut s.publisher;
            link.greeting -= 1;
            if link.greeting == 0 {
                return Ok((std::mem::take(&mut link.greeting_len), 0));
            }
            return Ok((0, 0));
        }
        let Some(&sent) = s.sent.front() else {
            return Err("Redis answered a command never sent".into());
        };
        match frame {
            RangeFrame::Integer(n) => {
                if *n == 0
                    && sent.generation != 0
                    && generation(rooms, sent.room) == Some(sent.generation)
                {
                    // Subscribed, and yet the publish reached nobody, this
                    // node included: the subscription died without a word.
                    // Nobody has the message, so it is kept and published
                    // again once the bus is back.
                    return Err("a publish reached no subscriber, not even this node".into());
                }
                s.sent.pop_front();
                if let Some(ack) = sent.ack {
                    self.acks.push((ack, *n));
                }
                Ok((sent.len as usize, sent.len as usize))
            }
            RangeFrame::Error(_) => {
                let text = String::from_utf8_lossy(buf).trim().to_string();
                if retryable(&text) {
                    // Kept, to be written again once the bus is back (a
                    // MOVED slot, once the cluster's map is read again).
                    return Err(format!("Redis refused a publish: {text}"));
                }
                // Refused for good (an ACL, a bad argument): written again
                // it would be refused again, so this one message is dropped.
                s.sent.pop_front();
                if let Some(ack) = sent.ack {
                    self.acks.push((ack, -1));
                }
                stats.bus_undelivered += 1;
                if self.refused.as_deref() != Some(text.as_str()) {
                    tracing::warn!(redis = %self.url, why = %text, "Redis refused a publish: message dropped");
                    self.refused = Some(text);
                }
                Ok((sent.len as usize, sent.len as usize))
            }
            _ => Err("an unexpected reply to a publish".into()),
        }
    }

    /// Subscribes rooms that gained members and unsubscribes those that
    /// lost them, then writes what each socket has to send (publishes only
    /// to a ready server). Called once per iteration, after the fan-out.
    pub fn end_of_iteration(
        &mut self,
        rooms: &mut Rooms,
        stats: &mut Stats,
        registry: &Registry,
        now: Instant,
    ) {
        // A room goes to its server once that server is subscribing; before
        // that, the server's resubscription covers it.
        let subscribing = |bus: &Bus, channel: &[u8]| {
            bus.server_of(bus.slot_of(channel))
                .filter(|&i| bus.servers[i].phase >= Phase::Resubscribing)
        };
        let mut channel = Vec::new();
        rooms.take_occupied(&mut self.occupied);
        for &id in &self.occupied {
            if !rooms.is_occupied(id) {
                continue;
            }
            let (name, rb) = rooms.bus_mut(id);
            channel_of(&mut channel, &self.prefix, name);
            if rb.sub != Sub::Off {
                continue;
            }
            if let Some(i) = subscribing(self, &channel) {
                rb.sub = Sub::Pending;
                if rb.since_us == 0 {
                    rb.since_us = unix_micros();
                }
                let out = &mut self.servers[i].subscriber.out;
                pack(&mut self.cmd, self.verbs.subscribe, &[&channel], out);
            }
        }
        let vacated: Vec<_> = rooms.take_vacated().collect();
        for v in vacated {
            channel_of(&mut channel, &self.prefix, &v.name);
            if v.bus.sub != Sub::Off {
                if let Some(i) = subscribing(self, &channel) {
                    *self
                        .unsubscribing
                        .entry(String::from_utf8_lossy(&channel).into())
                        .or_default() += 1;
                    let out = &mut self.servers[i].subscriber.out;
                    pack(&mut self.cmd, self.verbs.unsubscribe, &[&channel], out);
                }
            }
            // Nobody here hears them, but other nodes' members must.
            let mut at = 0;
            for c in &v.bus.held_cmds {
                let len = c.len as usize;
                let sent = Sent {
                    generation: 0,
                    ..*c
                };
                self.send(sent, &v.bus.held[at..at + len]);
                at += len;
            }
        }
        self.write(true, rooms, stats, registry, now);
    }

    /// Writes this iteration's publishes now, before the loop's flushes:
    /// a message's trip through Redis then starts at once instead of after
    /// a slice of its clients' writes.
    pub fn write_publishes(
        &mut self,
        rooms: &mut Rooms,
        stats: &mut Stats,
        registry: &Registry,
        now: Instant,
    ) {
        self.write(false, rooms, stats, registry, now);
    }

    /// Writes what each socket has to send: publishes only to a ready
    /// server (the greeting ahead of them always), and, with
    /// `subscriptions`, the subscription commands too.
    fn write(
        &mut self,
        subscriptions: bool,
        rooms: &mut Rooms,
        stats: &mut Stats,
        registry: &Registry,
        now: Instant,
    ) {
        let mut failed = None;
        for s in &mut self.servers {
            // Publishes wait until every room is subscribed again; the
            // greeting ahead of them does not.
            let upto = match s.phase {
                Phase::Ready => s.publisher.out.len(),
                _ => s.publisher.greeting_len,
            };
            let r = if subscriptions {
                s.subscriber.flush(usize::MAX, stats)
            } else {
                Ok(())
            }
            .and_then(|()| s.publisher.flush(upto, stats));
            if let Err(e) = r {
                failed = Some(e);
                break;
            }
        }
        if let Some(why) = failed {
            self.fail(rooms, registry, why, now);
        }
    }

    /// Timers: reconnects when the backoff is over, connect deadlines,
    /// pings and their answers. Called every sweep.
    pub fn tick(&mut self, rooms: &mut Rooms, registry: &Registry, now: Instant) {
        match self.state {
            State::Down(at) if now >= at => {
                let started = match self.cluster.is_some() {
                    true => self.ask_for_slots(registry, now),
                    false => self.connect(registry, now),
                };
                if let Err(why) = started {
                    self.fail(rooms, registry, why, now);
                }
            }
            State::Connecting(by) | State::Discovering(by) if now >= by => {
                let why = format!("no answer within {CONNECT_TIMEOUT:?}");
                self.fail(rooms, registry, why, now);
            }
            State::Up => {
                let silent = self.servers.iter().any(|s| {
                    s.ping_sent
                        .is_some_and(|t| now.duration_since(t) >= PING_TIMEOUT)
                });
                if silent {
                    let why = format!("a subscription did not answer PING in {PING_TIMEOUT:?}");
                    self.fail(rooms, registry, why, now);
                    return;
                }
                for s in &mut self.servers {
                    if s.ping_sent.is_none() && now.duration_since(s.last_ping) >= PING_EVERY {
                        s.ping_sent = Some(now);
                        s.last_ping = now;
                        pack(&mut self.cmd, "PING", &[], &mut s.subscriber.out);
                    }
                }
            }
            _ => {}
        }
    }

    /// Connects to the next seed to ask it for the cluster's slot map.
    fn ask_for_slots(&mut self, registry: &Registry, now: Instant) -> Result<(), String> {
        let Some(c) = &mut self.cluster else {
            return Ok(());
        };
        let seed = c.seeds[c.next_seed % c.seeds.len()];
        c.next_seed = c.next_seed.wrapping_add(1);
        c.asking = seed;
        tracing::debug!(seed = %seed, "bus asking for the cluster's slots");
        self.state = State::Discovering(now + CONNECT_TIMEOUT);
        let probe = &mut c.probe;
        probe.close(registry);
        probe.out.clear();
        probe.open(seed, registry)
    }

    /// Drives the seed's connection: once connected, asks `CLUSTER SLOTS`
    /// (after `AUTH`); returns the slot ranges once they arrived.
    fn discover(&mut self, stats: &mut Stats) -> Result<Option<Vec<SlotRange>>, String> {
        let Some(c) = &mut self.cluster else {
            return Ok(None);
        };
        let probe = &mut c.probe;
        if !probe.connected {
            if !(probe.readable || probe.writable) {
                return Ok(None);
            }
            probe.check_connected()?;
            if !probe.connected {
                return Ok(None);
            }
            let n = pack_auth(&mut self.cmd, &self.url, &mut probe.out);
            pack(&mut self.cmd, "CLUSTER", &[b"SLOTS"], &mut probe.out);
            probe.greeting = n;
            probe.flush(usize::MAX, stats)?;
        }
        let mut input = std::mem::take(&mut probe.input);
        let result = loop {
            match decode_range(&input) {
                Ok(Some((frame, used))) => {
                    if probe.greeting > 0 {
                        if let RangeFrame::Error(_) = frame {
                            break Err(format!(
                                "Redis refused the greeting: {}",
                                String::from_utf8_lossy(&input[..used]).trim()
                            ));
                        }
                        probe.greeting -= 1;
                        input.drain(..used);
                        continue;
                    }
                    let ranges = cluster::parse_slots(&input[..used], &frame, c.asking.ip());
                    break ranges.map(Some);
                }
                Ok(None) => {
                    if !probe.readable {
                        break Ok(None);
                    }
                    match probe.fill(&mut input) {
                        Ok(0) => probe.readable = false,
                        Ok(n) => stats.bus_received_bytes += n as u64,
                        Err(e) => break Err(e),
                    }
                }
                Err(e) => break Err(format!("unreadable reply from Redis: {e}")),
            }
        };
        probe.input = input;
        result
    }

    /// Takes the cluster's masters as the servers, moves every publish
    /// kept for Redis to its slot's new owner (in order: a channel's
    /// commands share a slot, so they stay in order), and connects.
    fn adopt(
        &mut self,
        ranges: &[SlotRange],
        registry: &Registry,
        now: Instant,
    ) -> Result<(), String> {
        let Some(c) = &mut self.cluster else {
            return Ok(());
        };
        c.probe.close(registry);
        let masters = c.adopt(ranges, MAX_SERVERS)?;
        if masters != self.servers.iter().map(|s| s.addr).collect::<Vec<_>>() {
            tracing::info!(masters = ?masters, "bus cluster map");
        }
        let old = std::mem::take(&mut self.servers);
        self.servers = masters
            .iter()
            .enumerate()
            .map(|(i, &addr)| Server::new(addr, i, now))
            .collect();
        let unrouted = std::mem::take(&mut self.unrouted);
        let unrouted_sent = std::mem::take(&mut self.unrouted_sent);
        let kept = old
            .into_iter()
            .map(|s| (s.publisher.out, s.sent))
            .chain(std::iter::once((unrouted, unrouted_sent)));
        for (out, sent) in kept {
            let mut at = 0;
            for c in sent {
                let len = c.len as usize;
                self.send(c, &out[at..at + len]);
                at += len;
            }
        }
        self.connect(registry, now)
    }

    fn connect(&mut self, registry: &Registry, now: Instant) -> Result<(), String> {
        tracing::debug!(redis = %self.url, "bus connecting");
        self.state = State::Connecting(now + CONNECT_TIMEOUT);
        for s in &mut self.servers {
            s.phase = Phase::Connecting;
            for link in [&mut s.publisher, &mut s.subscriber] {
                link.open(s.addr, registry)?;
            }
        }
        Ok(())
    }

    /// Drops every connection and schedules a reconnect. Publishes Redis
    /// has not answered stay, to be written again; rooms are subscribed
    /// again once the servers answer.
    fn fail(&mut self, rooms: &mut Rooms, registry: &Registry, why: String, now: Instant) {
        for s in &mut self.servers {
            s.reset(registry);
        }
        if let Some(c) = &mut self.cluster {
            c.probe.close(registry);
        }
        for (_, _, rb) in rooms.each_bus_mut() {
            rb.sub = Sub::Off;
        }
        self.unsubscribing.clear();
        self.input_left = false;
        // The backoff starts over only after the bus stayed up a while: a
        // bus that fails again at once must not be retried every 100 ms.
        if self
            .up_since
            .take()
            .is_some_and(|t| now.duration_since(t) >= STABLE_AFTER)
        {
            self.backoff = BACKOFF_MIN;
        }
        // The backoff plus up to half of it again, at most the maximum:
        // nodes that lost Redis together do not come back in step.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let jitter = (self.backoff / 2).mul_f64((self.rng % 1000) as f64 / 1000.0);
        let delay = (self.backoff + jitter).min(BACKOFF_MAX);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.state = State::Down(now + delay);
        if self.down_reason.is_none() {
            if self.was_up {
                tracing::warn!(redis = %self.url, why = %why, "bus down: holding client messages until it is back");
            } else {
                tracing::warn!(redis = %self.url, why = %why, "bus unavailable: retrying");
            }
            self.down_reason = Some(why);
        } else {
            tracing::debug!(redis = %self.url, why = %why, retry_in = ?delay, "bus still down");
        }
    }
}

/// What [`Bus::service`] works with, lent by the loop.
pub struct BusIo<'a> {
    /// The rooms, whose batches the subscription fills.
    pub rooms: &'a mut Rooms,
    /// Counters.
    pub stats: &'a mut Stats,
    /// Batch bytes past which the subscription waits for the next iteration.
    pub cap: usize,
    /// For deregistering sockets that fail.
    pub registry: &'a Registry,
    /// This iteration's clock.
    pub now: Instant,
    /// `--prefix`, put before text messages.
    pub prefix: &'a [u8],
}

/// The commands of classic or sharded pub/sub.
#[derive(Debug, Clone, Copy)]
struct Verbs {
    publish: &'static str,
    subscribe: &'static str,
    unsubscribe: &'static str,
    /// Channels per subscribe command: a sharded one takes channels of one
    /// slot only.
    batch: usize,
}

const CLASSIC: Verbs = Verbs {
    publish: "PUBLISH",
    subscribe: "SUBSCRIBE",
    unsubscribe: "UNSUBSCRIBE",
    batch: 1024,
};

const SHARDED: Verbs = Verbs {
    publish: "SPUBLISH",
    subscribe: "SSUBSCRIBE",
    unsubscribe: "SUNSUBSCRIBE",
    batch: 1,
};

/// The socket that asks a cluster seed for the slot map.
const PROBE_TOKEN: usize = TOKEN_TOP + 1 - 2 * MAX_SERVERS - 1;

impl Server {
    fn new(addr: SocketAddr, index: usize, now: Instant) -> Self {
        Server {
            addr,
            phase: Phase::Idle,
            publisher: Link::new(Token(TOKEN_TOP - 2 * index), true),
            subscriber: Link::new(Token(TOKEN_TOP - 2 * index - 1), false),
            sent: VecDeque::new(),
            resubscribing: 0,
            ping_sent: None,
            last_ping: now,
        }
    }

    /// Both sockets are connected: log in, name them, pick the database.
    fn greet(&mut self, cmd: &mut redis::Cmd, url: &RedisUrl, node: u64, select: bool) {
        self.phase = Phase::Greeting;
        for (link, role) in [(&mut self.publisher, "pub"), (&mut self.subscriber, "sub")] {
            // What a greeting reply is answered before: nothing else may
            // sit ahead of it in the buffer.
            let mut greeting = Vec::new();
            let mut n = pack_auth(cmd, url, &mut greeting);
            if select && url.db != 0 && role == "pub" {
                pack(
                    cmd,
                    "SELECT",
                    &[url.db.to_string().as_bytes()],
                    &mut greeting,
                );
                n += 1;
            }
            let name = format!("herald-{node:016x}-{role}");
            pack(cmd, "CLIENT", &[b"SETNAME", name.as_bytes()], &mut greeting);
            n += 1;
            link.greeting = n;
            link.greeting_len = greeting.len();
            // Before the publishes kept from the last connection.
            link.out.splice(0..0, greeting);
            link.written = 0;
        }
    }

    fn reset(&mut self, registry: &Registry) {
        self.phase = Phase::Idle;
        self.resubscribing = 0;
        self.ping_sent = None;
        for link in [&mut self.publisher, &mut self.subscriber] {
            link.close(registry);
            // A greeting not answered is sent again, whole, next time.
            link.out.drain(..std::mem::take(&mut link.greeting_len));
        }
        // Subscriptions are made again; publishes are kept.
        self.subscriber.out.clear();
    }
}

/// Packs the `AUTH` that `url`'s credentials call for, if any, onto `out`;
/// returns the commands packed (0 or 1).
fn pack_auth(cmd: &mut redis::Cmd, url: &RedisUrl, out: &mut Vec<u8>) -> u32 {
    match (&url.username, &url.password) {
        (Some(u), Some(p)) => pack(cmd, "AUTH", &[u.as_bytes(), p.as_bytes()], out),
        (None, Some(p)) => pack(cmd, "AUTH", &[p.as_bytes()], out),
        _ => return 0,
    };
    1
}

/// The channel of room `name` (empty: the lobby), into `out`.
fn channel_of(out: &mut Vec<u8>, prefix: &str, name: &str) {
    out.clear();
    out.extend_from_slice(prefix.as_bytes());
    if name.is_empty() {
        out.extend_from_slice(b":lobby");
    } else {
        out.extend_from_slice(b":room:");
        out.extend_from_slice(name.as_bytes());
    }
}

/// The room a channel carries (`None` inside: the lobby); `None` for a
/// channel that is not one of `prefix`'s.
fn room_of<'c>(channel: &'c [u8], prefix: &str) -> Option<Option<&'c str>> {
    let rest = channel.strip_prefix(prefix.as_bytes())?;
    if rest == b":lobby" {
        return Some(None);
    }
    let name = rest.strip_prefix(b":room:")?;
    std::str::from_utf8(name).ok().map(Some)
}

fn resolve(url: &RedisUrl) -> io::Result<SocketAddr> {
    (url.host.as_str(), url.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{} resolves to no address", url.host)))
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A node id no other process is likely to draw: the kernel's randomness,
/// or, failing that, the clock and the process id.
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_ne_bytes(b);
    }
    unix_micros() ^ (u64::from(std::process::id()) << 32)
}

/// Whether Redis refused a publish for a reason a reconnect (or a fresh
/// cluster map) can cure.
fn retryable(error: &str) -> bool {
    const PASSING: [&str; 9] = [
        "-MOVED",
        "-ASK",
        "-TRYAGAIN",
        "-CLUSTERDOWN",
        "-LOADING",
        "-BUSY",
        "-MASTERDOWN",
        "-NOAUTH",
        "-READONLY",
    ];
    PASSING.iter().any(|p| error.starts_with(p))
}

/// A new stream's name: its start time, made unique.
fn next_stream(last: &mut u64, now_us: u64) -> u64 {
    *last = now_us.max(*last + 1);
    *last
}

/// The subscription number room `id` is active under, if it is.
fn generation(rooms: &Rooms, id: u32) -> Option<u32> {
    match rooms.bus(id)?.sub {
        Sub::Active(g) => Some(g),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_name_rooms_and_back() {
        let mut c = Vec::new();
        channel_of(&mut c, "herald", "");
        assert_eq!(c, b"herald:lobby");
        assert_eq!(room_of(&c, "herald"), Some(None));
        channel_of(&mut c, "herald", "a.b-c");
        assert_eq!(c, b"herald:room:a.b-c");
        assert_eq!(room_of(&c, "herald"), Some(Some("a.b-c")));
        assert_eq!(room_of(&c, "other"), None);
        assert_eq!(room_of(b"heraldx:lobby", "herald"), None);
    }

    #[test]
    fn a_publish_is_packed_as_redis_reads_it() {
        let mut cmd = redis::Cmd::new();
        let mut out = b"x".to_vec();
        let n = pack(&mut cmd, "PUBLISH", &[b"ch", b"\x00\r\n"], &mut out);
        assert_eq!(
            &out[1..],
            b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$3\r\n\x00\r\n\r\n"
        );
        assert_eq!(n, out.len() - 1);
    }
}
