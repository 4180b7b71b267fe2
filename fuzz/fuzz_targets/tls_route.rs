//! Fuzzes the way into herald over TLS with herald's own session code:
//! `herald::fuzzing::Session` (hidden; `src/tls.rs`) is the session that
//! serves, rustls' unbuffered server connection with herald's reading
//! (carried records, plaintext kept for the next read, the first-byte check
//! for plain HTTP, the alerts of a failed session) and flushing (the write
//! queue sealed, sealed bytes kept while the socket takes only part of them,
//! the backlog, the closing close_notify), over `fuzzing::Net`, a socket in
//! memory. The plaintext that comes out is routed by `herald::http::route`
//! the way `src/conn/http_session.rs` routes it (pipelined requests one
//! after another, a publish body skipped, nothing after an upgrade or an
//! error answer), and every answer is queued on the session.
//!
//! Input: eight control bytes, then the payload.
//!
//! - byte 0: bits 0-4 the route configuration (as the `route` target; bit 2
//!   draining), bit 5 the mode (below), bit 6 TLS 1.2 (else 1.3), bit 7 a
//!   close_notify from the client after the payload;
//! - byte 1: arrival size: the client's bytes arrive `byte1 × 16` at a time
//!   (all at once for 0), each arrival one readiness event; the client
//!   also writes its plaintext in pieces of that size;
//! - byte 2: an XOR mask for one byte of the client's stream (0: none);
//! - bytes 3-4: that byte's offset (big-endian);
//! - byte 5: bits 0-6 the read size: 0 as the loop reads (16 KiB for HTTP,
//!   64 KiB once upgraded), else at most `n²` bytes (at least 6), as when
//!   the loop's budget for the iteration is nearly spent; bit 7 a TLS 1.3
//!   key update the client asks for after the handshake (the server's own
//!   key update then waits before the answers it seals);
//! - byte 6: bytes the socket takes per write (0: no limit): a partial write;
//! - byte 7: bits 0-6 the socket's room, `× 16` bytes (0: unbounded): a
//!   write past it would block, and the client reading what was written
//!   frees it again (a writable event when a write had blocked); bit 7 a
//!   lazy client, which reads the socket once per round (after the
//!   server's reads of what arrived), so that output is still pending when
//!   the next bytes are read; else the client reads as the server writes
//!   and the output drains after each arrival.
//!
//! Modes:
//!
//! - raw (bit 5 clear): the payload is what a client sends on the wire,
//!   then it closes. Reaches the first-byte check, rustls' record and
//!   handshake parsers, the carried bytes, the alerts. Checked: no
//!   handshake and no plaintext ever; plain HTTP only on an uppercase first
//!   byte; what the server wrote is whole TLS records.
//! - handshake (bit 5 set): a real rustls client (trusting the test CA)
//!   shakes hands, sends the payload as plaintext, a close_notify with bit
//!   7, then closes. Checked: the handshake completes and is counted once;
//!   after each piece has arrived the server has read all of it (readiness
//!   is edge-triggered: what a read leaves behind is not reported again);
//!   the server reads exactly the payload, or a prefix of it after an error
//!   answer or a corrupted byte (never a byte the client did not send); the
//!   client decrypts exactly the answers queued, then the server's
//!   close_notify.
//!
//! In both modes, at every read: `wire` is what the socket gave, a read
//! that said `drained` is followed by one that blocks; at every flush: one
//! that finished leaves no backlog and nothing sealed, one that did not
//! finish stopped on a full socket (else no writable event would come);
//! whenever the client has read the socket, the answers it has plus the
//! backlog cover all that was queued; and the output always drains.
#![no_main]

mod common;

use std::io::{Read as _, Write as _};
use std::sync::{Arc, OnceLock};

use herald::fuzzing::{self, Net, Read, Session};
use herald::http::{route, Phase, Route, RouteConfig, MAX_HEAD_LEN};
use libfuzzer_sys::fuzz_target;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};

/// A test-only CA and a server certificate it signed for `localhost`
/// (P-256, valid until 2126): `fuzz/tls/`.
const CA: &[u8] = include_bytes!("../tls/ca.pem");
const CERT: &[u8] = include_bytes!("../tls/server.pem");
const KEY: &[u8] = include_bytes!("../tls/server.key");

/// What herald reads at once while waiting for a request head
/// (`HTTP_READ` in `src/conn/http_session.rs`).
const HTTP_READ: usize = 2 * MAX_HEAD_LEN;
/// What it reads at once on an upgraded connection (`READ_BUF_LEN` in
/// `src/server.rs`), and the smallest read it makes (`MIN_READ`).
const READ_BUF_LEN: usize = 64 * 1024;
const MIN_READ: usize = 6;
/// The largest TLS record on the wire (TLS 1.2's ciphertext limit).
const MAX_RECORD: usize = 16 * 1024 + 2048;
/// Events (arrivals, client reads) after which an input is a hang.
const MAX_EVENTS: usize = 1 << 20;

/// `TLS_ROUTE_TRACE=1` prints how each input ended (to read the seeds).
fn trace(what: std::fmt::Arguments<'_>) {
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("TLS_ROUTE_TRACE").is_some_and(|v| v == "1")) {
        eprintln!("tls_route: {what}");
    }
}

/// herald's configuration, from the embedded pair.
fn server_config() -> Arc<ServerConfig> {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| fuzzing::server_config(CERT, KEY).expect("fuzz/tls/server.{pem,key}"))
        .clone()
}

/// A client that trusts the test CA and speaks only TLS 1.2 or only 1.3.
fn client_config(tls12: bool) -> Arc<ClientConfig> {
    static CONFIGS: OnceLock<[Arc<ClientConfig>; 2]> = OnceLock::new();
    let configs = CONFIGS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(CA) {
            roots.add(ca.expect("fuzz/tls/ca.pem")).expect("a CA");
        }
        let make = |version: &'static rustls::SupportedProtocolVersion| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[version])
                .expect("protocol version")
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            // A full handshake every time: resuming a session an earlier
            // input left would make an input's bytes depend on the ones
            // before it.
            config.resumption = rustls::client::Resumption::disabled();
            Arc::new(config)
        };
        [make(&rustls::version::TLS13), make(&rustls::version::TLS12)]
    });
    configs[usize::from(tls12)].clone()
}

/// The control bytes.
struct Controls {
    bits: u8,
    /// Bytes per arrival and per client write.
    chunk: usize,
    mask: u8,
    offset: usize,
    /// At most this much per read (0: the loop's size).
    read_cap: usize,
    key_update: bool,
    /// `Net::per_write`.
    per_write: usize,
    /// The socket's room after the client read it.
    room: usize,
    lazy: bool,
}

impl Controls {
    fn parse(input: &[u8]) -> Option<(Self, &[u8])> {
        let [bits, chunk, mask, hi, lo, read, per_write, room, payload @ ..] = input else {
            return None;
        };
        let controls = Controls {
            bits: *bits,
            chunk: match *chunk {
                0 => usize::MAX,
                n => usize::from(n) * 16,
            },
            mask: *mask,
            offset: usize::from(u16::from_be_bytes([*hi, *lo])),
            read_cap: match usize::from(read & 0x7f) {
                0 => 0,
                n => (n * n).max(MIN_READ),
            },
            key_update: read & 0x80 != 0,
            per_write: usize::from(*per_write),
            room: match usize::from(room & 0x7f) {
                0 => usize::MAX,
                n => n * 16,
            },
            lazy: room & 0x80 != 0,
        };
        Some((controls, payload))
    }
}

/// The HTTP side: plaintext kept and routed as `route_request` does.
struct Http {
    cfg: RouteConfig,
    phase: Phase,
    buf: Vec<u8>,
    pos: usize,
    /// Body bytes of a publish still to skip.
    body: usize,
    /// An upgrade ended the HTTP session: the connection is a WebSocket.
    upgraded: bool,
    /// An error answer: the connection is closing, and its session is
    /// not read any more.
    rejected: bool,
}

impl Http {
    fn new(bits: u8) -> Self {
        Http {
            cfg: common::config(bits),
            phase: if bits & 4 != 0 {
                Phase::Draining
            } else {
                Phase::Serving
            },
            buf: Vec::new(),
            pos: 0,
            body: 0,
            upgraded: false,
            rejected: false,
        }
    }

    /// Takes `data`; returns the answers to queue.
    fn input(&mut self, mut data: &[u8]) -> Vec<u8> {
        let mut answers = Vec::new();
        if self.upgraded || self.rejected {
            return answers;
        }
        let skip = self.body.min(data.len());
        self.body -= skip;
        data = &data[skip..];
        self.buf.extend_from_slice(data);
        while !self.upgraded && !self.rejected && self.body == 0 && self.pos < self.buf.len() {
            let input = &self.buf[self.pos..];
            match route(input, &self.cfg, self.phase) {
                Route::Incomplete => {
                    assert!(input.len() < MAX_HEAD_LEN, "waits past the head limit");
                    break;
                }
                Route::Upgrade { response, .. } => {
                    assert_eq!(self.phase, Phase::Serving, "upgraded while draining");
                    answers.extend_from_slice(&response);
                    self.upgraded = true;
                }
                Route::Get { head_len, .. } => {
                    assert!(head_len > 0 && head_len <= input.len().min(MAX_HEAD_LEN));
                    answers.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                    self.pos += head_len;
                }
                Route::Publish {
                    head_len, body_len, ..
                } => {
                    assert!(self.cfg.publish_token.is_some(), "publish without a token");
                    assert!(head_len > 0 && head_len <= input.len().min(MAX_HEAD_LEN));
                    assert!(body_len <= self.cfg.max_body);
                    let start = self.pos + head_len;
                    let here = (self.buf.len() - start).min(body_len);
                    self.body = body_len - here;
                    self.pos = start + here;
                    answers
                        .extend_from_slice(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
                }
                Route::Reject(status, reason) => {
                    assert!((400..600).contains(&status.code()));
                    assert!(!reason.is_empty() && !reason.contains('\n'));
                    trace(format_args!("rejected: {} {reason}", status.code()));
                    answers.extend_from_slice(reason.as_bytes());
                    self.rejected = true;
                }
            }
        }
        // Drops what was routed, as herald does.
        self.buf.drain(..self.pos);
        self.pos = 0;
        answers
    }
}

/// How a connection ended.
#[derive(Debug, PartialEq)]
enum End {
    /// End of file or close_notify: closing, the close_notify follows the
    /// last answer.
    Eof,
    /// Plain HTTP on the TLS port: herald drops the session and answers
    /// 400 in plain text.
    PlainHttp,
    /// A TLS error (why): the alert is sealed, the queue dropped.
    Broken(String),
    /// An HTTP error answer: closing, the session is read no more.
    Rejected,
}

/// The rustls client at the other end.
struct Client {
    conn: ClientConnection,
    /// The plaintext it decrypted.
    answers: Vec<u8>,
    /// False once it failed (on a corrupted byte: the server's alert).
    ok: bool,
    /// The server's close_notify came.
    closed: bool,
}

impl Client {
    fn new(tls12: bool) -> Self {
        let name = ServerName::try_from("localhost").expect("a name");
        Client {
            conn: ClientConnection::new(client_config(tls12), name).expect("a client"),
            answers: Vec::new(),
            ok: true,
            closed: false,
        }
    }

    /// Takes what the server wrote.
    fn receive(&mut self, mut wire: &[u8]) {
        while self.ok && !wire.is_empty() {
            if self.conn.read_tls(&mut wire).is_err() {
                self.ok = false;
                break;
            }
            match self.conn.process_new_packets() {
                Ok(state) => self.closed |= state.peer_has_closed(),
                Err(_) => self.ok = false,
            }
            let _ = self.conn.reader().read_to_end(&mut self.answers);
        }
    }
}

/// The client's bytes on their way to the server, one byte corrupted at
/// `offset` (with a non-zero `mask`).
struct Path {
    sent: usize,
    mask: u8,
    offset: usize,
    corrupted: bool,
}

impl Path {
    fn carry(&mut self, mut bytes: Vec<u8>, to: &mut Vec<u8>) {
        if self.mask != 0 && (self.sent..self.sent + bytes.len()).contains(&self.offset) {
            bytes[self.offset - self.sent] ^= self.mask;
            self.corrupted = true;
        }
        self.sent += bytes.len();
        to.extend_from_slice(&bytes);
    }
}

/// One connection: herald's session and its socket, the HTTP side, and the
/// client (none in raw mode).
struct Link {
    ctl: Controls,
    session: Session,
    net: Net,
    /// What the client sent that has not arrived, from `pending_at` on.
    pending: Vec<u8>,
    pending_at: usize,
    path: Path,
    http: Http,
    buf: Vec<u8>,
    /// Every plaintext byte the session gave.
    plaintext: Vec<u8>,
    /// Every answer queued for the client.
    queued: Vec<u8>,
    ended: Option<End>,
    handshakes: u32,
    /// The last flush hit a full socket: only a writable event flushes.
    blocked: bool,
    client: Option<Client>,
    /// What the server wrote, in raw mode (there is no client to take it).
    raw_out: Vec<u8>,
    /// Bytes the client took from the socket.
    delivered: usize,
    events: usize,
    flushes: usize,
    writable: usize,
}

impl Link {
    fn new(ctl: Controls, client: Option<Client>) -> Self {
        let net = Net {
            per_write: ctl.per_write,
            room: ctl.room,
            ..Net::default()
        };
        Link {
            session: Session::new(server_config()).expect("a session"),
            net,
            pending: Vec::new(),
            pending_at: 0,
            path: Path {
                sent: 0,
                mask: ctl.mask,
                offset: ctl.offset,
                corrupted: false,
            },
            http: Http::new(ctl.bits),
            buf: vec![0; READ_BUF_LEN],
            plaintext: Vec::new(),
            queued: Vec::new(),
            ended: None,
            handshakes: 0,
            blocked: false,
            client,
            raw_out: Vec::new(),
            delivered: 0,
            events: 0,
            flushes: 0,
            writable: 0,
            ctl,
        }
    }

    fn tick(&mut self) {
        self.events += 1;
        assert!(self.events < MAX_EVENTS, "the connection does not settle");
    }

    /// Something moved since the last look.
    fn progress(&self) -> [usize; 5] {
        [
            self.path.sent,
            self.net.arrived.len(),
            self.net.at,
            self.net.written.len(),
            self.delivered,
        ]
    }

    /// What the client has to send goes on its way (through `path`).
    fn client_sends(&mut self) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        let mut bytes = Vec::new();
        while client.conn.wants_write() {
            client.conn.write_tls(&mut bytes).expect("writing to a Vec");
        }
        if !bytes.is_empty() {
            self.path.carry(bytes, &mut self.pending);
        }
    }

    /// The next piece of what the client sent arrives: one readiness
    /// event. False when nothing is on its way.
    fn arrive(&mut self) -> bool {
        let left = self.pending.len() - self.pending_at;
        if left == 0 {
            return false;
        }
        let n = left.min(self.ctl.chunk);
        let at = self.pending_at;
        self.net
            .arrived
            .extend_from_slice(&self.pending[at..at + n]);
        self.pending_at += n;
        if self.pending_at == self.pending.len() {
            self.pending.clear();
            self.pending_at = 0;
        }
        self.on_readable();
        true
    }

    /// A readiness event: the reads, then the loop's flush (unless a write
    /// blocked); an eager client reads until the output has left.
    fn on_readable(&mut self) {
        self.tick();
        self.read_all();
        if !self.blocked {
            self.flush();
        }
        if !self.ctl.lazy {
            while self.blocked {
                self.client_reads();
            }
        }
    }

    /// Reads as the loop does: an HTTP connection until the socket would
    /// block, an upgraded one until a short read too.
    fn read_all(&mut self) {
        let mut drained = false;
        while self.ended.is_none() {
            let most = if self.http.upgraded {
                READ_BUF_LEN
            } else {
                HTTP_READ
            };
            let cap = match self.ctl.read_cap {
                0 => most,
                n => n.min(most),
            };
            let at = self.net.at;
            let read = self.session.read(&mut self.net, &mut self.buf[..cap]);
            if self.session.just_connected() {
                self.handshakes += 1;
            }
            if drained && !self.net.closed {
                assert_eq!(read, Read::Blocked, "a drained read was followed by more");
            }
            match read {
                Read::Data {
                    plain,
                    wire,
                    drained: now,
                } => {
                    assert!(plain <= cap);
                    assert!(plain > 0 || wire > 0, "a read of nothing");
                    assert_eq!(self.net.at - at, wire, "`wire` is not what was read");
                    drained = now;
                    let plain = &self.buf[..plain];
                    self.plaintext.extend_from_slice(plain);
                    let answers = self.http.input(plain);
                    if !answers.is_empty() {
                        self.queued.extend_from_slice(&answers);
                        self.session.queue(&answers);
                    }
                    if self.http.rejected {
                        self.ended = Some(End::Rejected);
                    } else if drained && self.http.upgraded {
                        break;
                    }
                }
                Read::Blocked => break,
                Read::Eof => self.ended = Some(End::Eof),
                Read::PlainHttp => self.ended = Some(End::PlainHttp),
                Read::Broken(why) => self.ended = Some(End::Broken(why)),
            }
        }
        assert!(self.handshakes <= 1, "a handshake counted twice");
    }

    /// A flush as the loop makes it: the closing one once the connection
    /// ended (herald drops the session of a plain HTTP client).
    fn flush(&mut self) {
        if self.ended == Some(End::PlainHttp) {
            return;
        }
        let last = self.ended.is_some();
        self.flushes += 1;
        let done = match self.session.flush(&mut self.net, last) {
            Ok(done) => done,
            Err(e) => panic!("a flush failed: {e}"),
        };
        if done {
            assert_eq!(self.session.backlog(), 0, "a finished flush left a backlog");
            assert!(!self.session.wants_write(), "a finished flush left bytes");
        } else {
            assert_eq!(
                self.net.room, 0,
                "a flush stopped with room in the socket: no writable event would come"
            );
        }
        self.blocked = !done;
    }

    /// The client reads what the socket holds, which frees its room: a
    /// writable event if a write had blocked.
    fn client_reads(&mut self) {
        self.tick();
        let bytes = std::mem::take(&mut self.net.written);
        self.delivered += bytes.len();
        self.net.room = self.ctl.room;
        match self.client.as_mut() {
            Some(client) => client.receive(&bytes),
            None => self.raw_out.extend_from_slice(&bytes),
        }
        if let Some(client) = &self.client {
            if client.ok && !matches!(self.ended, Some(End::Broken(_))) {
                assert!(
                    self.queued.starts_with(&client.answers),
                    "the client decrypted what was never queued"
                );
                assert!(
                    client.answers.len() + self.session.backlog() >= self.queued.len(),
                    "answers left the backlog before they reached the client"
                );
            }
        }
        if self.blocked {
            self.writable += 1;
            self.flush();
        }
    }

    /// What is still on its way arrives, then the client's end of file;
    /// the output drains.
    fn finish(&mut self) {
        while self.ended.is_none() && self.arrive() {}
        self.net.closed = true;
        self.on_readable();
        assert!(
            self.ended.is_some(),
            "the connection has not ended after the end of file"
        );
        while self.blocked || !self.net.written.is_empty() {
            self.client_reads();
        }
        if self.ended != Some(End::PlainHttp) {
            assert_eq!(self.session.backlog(), 0, "the output did not drain");
            assert!(!self.session.wants_write(), "sealed bytes were left");
        }
    }

    fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("a client")
    }
}

/// Checks that `out` is whole TLS records.
fn whole_records(mut out: &[u8]) {
    while !out.is_empty() {
        let [kind, _, _, hi, lo, rest @ ..] = out else {
            panic!("a partial record header: {out:?}");
        };
        assert!((20..=23).contains(kind), "a record of type {kind}");
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        assert!(len <= MAX_RECORD, "a record of {len} bytes");
        assert!(rest.len() >= len, "a partial record");
        out = &rest[len..];
    }
}

/// Raw mode: `payload` is the wire.
fn raw(ctl: Controls, payload: &[u8]) {
    let mut s = Link::new(ctl, None);
    s.pending.extend_from_slice(payload);
    s.finish();
    trace(format_args!(
        "raw: {} wire bytes, ended {:?}, {} bytes out in {} flushes ({} on writable)",
        payload.len(),
        s.ended,
        s.raw_out.len(),
        s.flushes,
        s.writable,
    ));
    assert_eq!(s.handshakes, 0, "random bytes completed a handshake");
    assert!(s.plaintext.is_empty(), "plaintext without a handshake");
    if s.ended == Some(End::PlainHttp) {
        assert!(payload[0].is_ascii_uppercase());
    }
    whole_records(&s.raw_out);
}

/// Handshake mode.
fn handshake(ctl: Controls, payload: &[u8]) {
    let tls12 = ctl.bits & 0x40 != 0;
    let close_notify = ctl.bits & 0x80 != 0;
    let chunk = ctl.chunk;
    let key_update = ctl.key_update;
    let mut s = Link::new(ctl, Some(Client::new(tls12)));

    // The handshake: each side's flights to the other until both are done,
    // or nothing moves.
    loop {
        let before = s.progress();
        s.client_sends();
        while s.ended.is_none() && s.arrive() {}
        s.client_reads();
        let done = !s.client().conn.is_handshaking() && s.handshakes == 1;
        if done || !s.client().ok || s.ended.is_some() || s.progress() == before {
            break;
        }
    }
    if !s.path.corrupted {
        assert!(s.client().ok, "the client failed without a corrupted byte");
        assert_eq!(s.ended, None, "the server ended the handshake");
        assert!(!s.client().conn.is_handshaking(), "the client is not done");
        assert_eq!(s.handshakes, 1, "the handshake is not counted once");
    }

    if key_update && s.client().ok {
        // Refused under TLS 1.2.
        let _ = s.client().conn.refresh_traffic_keys();
    }

    // The payload, in writes of `chunk` bytes; each has been read whole
    // once it has arrived.
    let mut written = 0;
    for piece in payload.chunks(chunk) {
        if !s.client().ok || s.ended.is_some() {
            break;
        }
        s.client()
            .conn
            .writer()
            .write_all(piece)
            .expect("the client takes plaintext");
        written += piece.len();
        s.client_sends();
        while s.ended.is_none() && s.arrive() {}
        if s.ended.is_none() && !s.path.corrupted {
            assert_eq!(
                s.plaintext.len(),
                written,
                "bytes that arrived were left unread until the next event"
            );
        }
        s.client_reads();
    }
    if s.client().ok && close_notify {
        s.client().conn.send_close_notify();
        s.client_sends();
    }
    s.finish();

    let ended = s.ended.as_ref().expect("ended");
    let client = s.client.as_ref().expect("a client");
    trace(format_args!(
        "handshake (TLS 1.{}): {} handshakes, payload {} bytes, read {}, upgraded {}, \
         ended {ended:?}, {} answer bytes queued, {} received, close_notify {}, \
         {} bytes out in {} flushes ({} on writable), corrupted {}",
        if tls12 { 2 } else { 3 },
        s.handshakes,
        payload.len(),
        s.plaintext.len(),
        s.http.upgraded,
        s.queued.len(),
        client.answers.len(),
        client.closed,
        s.delivered,
        s.flushes,
        s.writable,
        s.path.corrupted
    ));
    assert!(
        payload.starts_with(&s.plaintext),
        "the server read bytes the client never sent"
    );
    if !s.path.corrupted {
        assert!(client.ok, "the client failed");
        assert_eq!(
            client.answers, s.queued,
            "the client got other answers than queued"
        );
        assert!(client.closed, "no close_notify after the last answer");
        if *ended != End::Rejected {
            assert_eq!(*ended, End::Eof);
            assert_eq!(s.plaintext.len(), payload.len(), "the server missed bytes");
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((ctl, payload)) = Controls::parse(input) else {
        return;
    };
    if ctl.bits & 0x20 == 0 {
        if !payload.is_empty() {
            raw(ctl, payload);
        }
    } else {
        handshake(ctl, payload);
    }
});
