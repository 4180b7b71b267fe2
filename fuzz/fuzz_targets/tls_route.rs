//! Fuzzes the way into herald over TLS: bytes from the network into the
//! server side of a rustls session, configured as herald configures it
//! (ring, TLS 1.3 and 1.2, ALPN `http/1.1`, no client certificates), read
//! the way `src/tls.rs` reads it, and the plaintext that comes out routed by
//! `herald::http::route` the way `src/conn/http_session.rs` routes it
//! (pipelined requests one after another, a publish body skipped).
//!
//! herald's `tls` and `conn` modules are private, so the read step below
//! (`Session::read`) is a copy of `Tls::read`, kept line for line; a crash
//! here that is in the copy means the same crash in herald.
//!
//! Input: byte 0 picks the route configuration (bits 0-4, as the `route`
//! target) and the mode (bits 5-7), byte 1 how many bytes the socket gives
//! per read, bytes 2-4 a byte to corrupt on the way in (an XOR mask and a
//! 16-bit offset into the client's byte stream; mask 0 corrupts nothing),
//! the rest is the payload.
//!
//! - raw mode (bit 5 clear): the payload is what a client sends on the wire,
//!   then it closes. Reaches the first-byte check (plain HTTP on the TLS
//!   port), rustls's record and handshake parsers, and the alerts.
//! - handshake mode (bit 5 set): a real rustls client (TLS 1.2 with bit 6,
//!   else 1.3) shakes hands with the server through the copied read path,
//!   then sends the payload as plaintext (in writes of byte 1's size), then
//!   a close_notify with bit 7, then closes. Every request is routed and
//!   answered through the session. Checked besides not panicking: the
//!   handshake completes and is counted once; after each write has arrived
//!   the server has read all of it (readiness is edge-triggered: what a read
//!   leaves behind is not reported again); the server reads exactly the
//!   payload (a prefix of it after an error answer, or when a byte was
//!   corrupted); the client decrypts exactly the answers the server sealed.
//!
//! In both modes the socket gives what has arrived, which arrives byte 1
//! times 16 bytes at a time (all at once for 0), and each arrival is one
//! readiness event: the server reads as the loop does (an HTTP connection
//! until the socket would block, an upgraded one until a short read).
#![no_main]

mod common;

use std::io::{self, Read, Write};
use std::sync::{Arc, OnceLock};

use herald::http::{route, Phase, Route, RouteConfig, MAX_HEAD_LEN};
use libfuzzer_sys::fuzz_target;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

/// A test-only CA and a server certificate it signed for `localhost`
/// (P-256, valid until 2126): `fuzz/tls/`.
const CA: &[u8] = include_bytes!("../tls/ca.pem");
const CERT: &[u8] = include_bytes!("../tls/server.pem");
const KEY: &[u8] = include_bytes!("../tls/server.key");

/// As in `src/tls.rs`.
const SEALED_LIMIT: usize = 64 * 1024;
/// What herald reads at once while waiting for a request head
/// (`HTTP_READ` in `src/conn/http_session.rs`).
const HTTP_READ: usize = 2 * MAX_HEAD_LEN;

/// `TLS_ROUTE_TRACE=1` prints how each input ended (to read the seeds).
fn trace(what: std::fmt::Arguments<'_>) {
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("TLS_ROUTE_TRACE").is_some_and(|v| v == "1")) {
        eprintln!("tls_route: {what}");
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `server_config` of `src/tls.rs`, from the embedded pair.
fn server_config() -> Arc<ServerConfig> {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let chain = CertificateDer::pem_slice_iter(CERT)
                .collect::<Result<Vec<_>, _>>()
                .expect("fuzz/tls/server.pem");
            let key = PrivateKeyDer::from_pem_slice(KEY).expect("fuzz/tls/server.key");
            let mut config = ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .expect("protocol versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("the key goes with the certificate");
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
}

/// A client that trusts the test CA and speaks only `version`.
fn client_config(tls12: bool) -> Arc<ClientConfig> {
    static CONFIGS: OnceLock<[Arc<ClientConfig>; 2]> = OnceLock::new();
    let configs = CONFIGS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(CA) {
            roots.add(ca.expect("fuzz/tls/ca.pem")).expect("a CA");
        }
        let make = |version: &'static rustls::SupportedProtocolVersion| {
            let mut config = ClientConfig::builder_with_provider(provider())
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

/// The server's socket: of the bytes the client sent (`data`), those that
/// have arrived (`arrived`) and not been read (from `pos`); `WouldBlock`
/// when none are, end of file once the client closed and all were read.
struct Socket {
    data: Vec<u8>,
    pos: usize,
    arrived: usize,
    closed: bool,
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.arrived - self.pos;
        if left == 0 {
            return if self.closed && self.arrived == self.data.len() {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = left.min(buf.len());
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// `Recv` of `src/tls.rs`: notes a short read and the first byte.
struct Recv<'a> {
    stream: &'a mut Socket,
    short: bool,
    first: Option<u8>,
}

impl Read for Recv<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        self.short = n < buf.len();
        if self.first.is_none() && n > 0 {
            self.first = Some(buf[0]);
        }
        Ok(n)
    }
}

/// `TlsRead` of `src/tls.rs`.
#[derive(Debug)]
enum TlsRead {
    Read {
        plain: usize,
        wire: usize,
        drained: bool,
    },
    Blocked,
    Eof,
    PlainHttp,
    Broken,
    Failed,
}

/// `Tls` of `src/tls.rs`, reading side.
struct Session {
    conn: ServerConnection,
    first: bool,
    connected: bool,
}

impl Session {
    fn new() -> Self {
        let mut conn = ServerConnection::new(server_config()).expect("a session");
        conn.set_buffer_limit(Some(SEALED_LIMIT));
        Session {
            conn,
            first: true,
            connected: false,
        }
    }

    /// `Tls::read`, line for line.
    fn read(&mut self, stream: &mut Socket, buf: &mut [u8]) -> TlsRead {
        let ready = self.take_plaintext(buf);
        if ready > 0 {
            return TlsRead::Read {
                plain: ready,
                wire: 0,
                drained: false,
            };
        }
        let mut socket = Recv {
            stream,
            short: false,
            first: None,
        };
        let wire = match self.conn.read_tls(&mut socket) {
            Ok(0) => return TlsRead::Eof,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return TlsRead::Blocked,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return TlsRead::Broken,
            // The socket never fails: rustls's own complaints (its
            // plaintext buffer full) come this way.
            Err(_) => return TlsRead::Failed,
        };
        if std::mem::take(&mut self.first) && socket.first.is_some_and(|b| b.is_ascii_uppercase()) {
            return TlsRead::PlainHttp;
        }
        let (closed, decrypted) = match self.conn.process_new_packets() {
            Ok(state) => (state.peer_has_closed(), state.plaintext_bytes_to_read()),
            Err(_) => return TlsRead::Broken,
        };
        let plain = self.take_plaintext(buf);
        let left = decrypted - plain;
        if plain == 0 && closed {
            return TlsRead::Eof;
        }
        TlsRead::Read {
            plain,
            wire,
            drained: socket.short && left == 0 && !closed,
        }
    }

    /// `Tls::just_connected`.
    fn just_connected(&mut self) -> bool {
        if self.connected || self.conn.is_handshaking() {
            return false;
        }
        self.connected = true;
        true
    }

    /// `Tls::take_plaintext`.
    fn take_plaintext(&mut self, buf: &mut [u8]) -> usize {
        let mut got = 0;
        while got < buf.len() {
            match self.conn.reader().read(&mut buf[got..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        got
    }

    /// Seals `answer` as herald's `Seal` does (a full session takes 0
    /// bytes: the rest waits), sending what is sealed to `out` whenever
    /// the session is full.
    fn seal(&mut self, mut answer: &[u8], out: &mut Vec<u8>) {
        while !answer.is_empty() {
            match self.conn.writer().write(answer).expect("sealing") {
                0 => {
                    assert!(
                        self.conn.wants_write(),
                        "a full session with nothing to send"
                    );
                    self.send(out);
                }
                n => answer = &answer[n..],
            }
        }
    }

    /// What the session has sealed, onto `out` (the client's side).
    fn send(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            self.conn.write_tls(out).expect("writing to a Vec");
        }
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
    /// Takes `data`; returns the answers to seal.
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
            let decided = route(input, &self.cfg, self.phase);
            match decided {
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
    /// End of file or close_notify.
    Eof,
    /// Plain HTTP on the TLS port: answered 400 in plain text.
    PlainHttp,
    /// A TLS error: an alert is sealed.
    Broken,
    /// An HTTP error answer: closing, the session is read no more.
    Rejected,
    /// A read failed: closed at once.
    Failed,
}

/// The server side of one connection.
struct Server {
    session: Session,
    socket: Socket,
    chunk: usize,
    http: Http,
    /// Every plaintext byte the session gave.
    plaintext: Vec<u8>,
    /// Every answer sealed for the client.
    sealed: Vec<u8>,
    /// How the connection ended, once it did.
    ended: Option<End>,
    handshakes: u32,
}

impl Server {
    /// Lets the next `chunk` bytes the client sent arrive, and reads them
    /// (one readiness event); then the end of file, once every byte came.
    /// False when nothing is left to arrive.
    fn arrive(&mut self, out: &mut Vec<u8>) -> bool {
        let pending = self.socket.data.len() - self.socket.arrived;
        if pending == 0 {
            return false;
        }
        self.socket.arrived += pending.min(self.chunk);
        self.on_readable(out);
        true
    }

    /// Reads as the loop does on a readiness event: an HTTP connection
    /// until the socket would block, an upgraded one until a short read
    /// too; sends what it sealed to `out`, as the flush after the reads.
    fn on_readable(&mut self, out: &mut Vec<u8>) {
        let mut buf = vec![0; HTTP_READ];
        while self.ended.is_none() {
            let read = self.session.read(&mut self.socket, &mut buf);
            if self.session.just_connected() {
                self.handshakes += 1;
            }
            match read {
                TlsRead::Read {
                    plain,
                    wire,
                    drained,
                } => {
                    assert!(plain <= buf.len());
                    assert!(plain > 0 || wire > 0, "a read of nothing");
                    self.plaintext.extend_from_slice(&buf[..plain]);
                    let answers = self.http.input(&buf[..plain]);
                    self.sealed.extend_from_slice(&answers);
                    self.session.seal(&answers, out);
                    if self.http.rejected {
                        self.ended = Some(End::Rejected);
                    } else if drained && self.http.upgraded {
                        break;
                    }
                }
                TlsRead::Blocked => break,
                TlsRead::Eof => self.ended = Some(End::Eof),
                TlsRead::PlainHttp => self.ended = Some(End::PlainHttp),
                TlsRead::Broken => self.ended = Some(End::Broken),
                TlsRead::Failed => self.ended = Some(End::Failed),
            }
        }
        // The closing flush says close_notify after the last answer;
        // herald drops the session of a plain HTTP client, and closes a
        // failed socket without a flush.
        if self
            .ended
            .as_ref()
            .is_some_and(|e| !matches!(e, End::PlainHttp | End::Failed))
        {
            self.session.conn.send_close_notify();
        }
        self.session.send(out);
    }

    /// Every byte the client sent arrives, then its end of file.
    fn arrive_all(&mut self, out: &mut Vec<u8>) {
        while self.ended.is_none() && self.arrive(out) {}
        self.socket.closed = true;
        self.on_readable(out);
        assert!(
            self.ended.is_some(),
            "the connection has not ended after the end of file"
        );
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
    fn carry(&mut self, mut bytes: Vec<u8>, to: &mut Socket) {
        if self.mask != 0 && (self.sent..self.sent + bytes.len()).contains(&self.offset) {
            bytes[self.offset - self.sent] ^= self.mask;
            self.corrupted = true;
        }
        self.sent += bytes.len();
        to.data.extend_from_slice(&bytes);
    }
}

fn server(bits: u8, chunk: usize) -> Server {
    Server {
        session: Session::new(),
        socket: Socket {
            data: Vec::new(),
            pos: 0,
            arrived: 0,
            closed: false,
        },
        chunk,
        http: Http {
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
        },
        plaintext: Vec::new(),
        sealed: Vec::new(),
        ended: None,
        handshakes: 0,
    }
}

/// Raw mode: `payload` is the wire.
fn raw(bits: u8, chunk: usize, payload: &[u8]) {
    let mut s = server(bits, chunk);
    let mut out = Vec::new();
    s.socket.data.extend_from_slice(payload);
    s.arrive_all(&mut out);
    trace(format_args!(
        "raw: {} wire bytes, ended {:?}, {} plaintext bytes",
        payload.len(),
        s.ended,
        s.plaintext.len()
    ));
    if s.ended == Some(End::PlainHttp) {
        assert!(payload[0].is_ascii_uppercase());
        assert!(s.plaintext.is_empty());
    }
}

/// Moves what `client` has to send through `path`.
fn client_sends(client: &mut ClientConnection, path: &mut Path, to: &mut Socket) {
    let mut bytes = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut bytes).expect("writing to a Vec");
    }
    if !bytes.is_empty() {
        path.carry(bytes, to);
    }
}

/// The client takes what the server sent; false once it failed (on a
/// corrupted byte: the server answered with an alert).
fn client_receives(client: &mut ClientConnection, from: &mut Vec<u8>, got: &mut Vec<u8>) -> bool {
    let mut wire = &from[..];
    while !wire.is_empty() {
        if client.read_tls(&mut wire).is_err() || client.process_new_packets().is_err() {
            from.clear();
            return false;
        }
        let _ = client.reader().read_to_end(got);
    }
    from.clear();
    true
}

/// Handshake mode.
fn handshake(bits: u8, chunk: usize, mask: u8, offset: usize, payload: &[u8]) {
    let tls12 = bits & 0x40 != 0;
    let close_notify = bits & 0x80 != 0;
    let mut s = server(bits, chunk);
    let name = ServerName::try_from("localhost").expect("a name");
    let mut client = ClientConnection::new(client_config(tls12), name).expect("a client");
    let mut path = Path {
        sent: 0,
        mask,
        offset,
        corrupted: false,
    };
    let mut to_client = Vec::new();
    let mut answers = Vec::new();
    let mut client_ok = true;

    // The handshake: each side's flight to the other until both are done.
    for _ in 0..8 {
        client_sends(&mut client, &mut path, &mut s.socket);
        while s.ended.is_none() && s.arrive(&mut to_client) {}
        client_ok = client_receives(&mut client, &mut to_client, &mut answers);
        let done = !client.is_handshaking() && !s.session.conn.is_handshaking();
        if !client_ok || s.ended.is_some() || done {
            break;
        }
    }
    if !path.corrupted {
        assert!(client_ok, "the client failed without a corrupted byte");
        assert_eq!(s.ended, None, "the server ended the handshake");
        assert!(
            !client.is_handshaking() && !s.session.conn.is_handshaking(),
            "no handshake after 8 flights"
        );
        assert_eq!(s.handshakes, 1, "the handshake is counted once");
    }

    // The payload, in writes of `chunk` bytes; each has been read whole
    // once it has arrived.
    let mut written = 0;
    for piece in payload.chunks(chunk) {
        if !client_ok || s.ended.is_some() {
            break;
        }
        client
            .writer()
            .write_all(piece)
            .expect("the client takes plaintext");
        written += piece.len();
        client_sends(&mut client, &mut path, &mut s.socket);
        while s.ended.is_none() && s.arrive(&mut to_client) {}
        if s.ended.is_none() && !path.corrupted {
            assert_eq!(
                s.plaintext.len(),
                written,
                "bytes that arrived were left unread until the next event"
            );
        }
        client_ok = client_receives(&mut client, &mut to_client, &mut answers);
    }
    if client_ok && close_notify {
        client.send_close_notify();
        client_sends(&mut client, &mut path, &mut s.socket);
    }
    s.arrive_all(&mut to_client);
    if client_ok {
        client_ok = client_receives(&mut client, &mut to_client, &mut answers);
    }

    let ended = s.ended.as_ref().expect("ended");
    trace(format_args!(
        "handshake (TLS 1.{}): {} handshakes, payload {} bytes, read {}, upgraded {}, \
         ended {ended:?}, {} answer bytes sealed, {} received, corrupted {}",
        if tls12 { 2 } else { 3 },
        s.handshakes,
        payload.len(),
        s.plaintext.len(),
        s.http.upgraded,
        s.sealed.len(),
        answers.len(),
        path.corrupted
    ));
    assert!(
        payload.starts_with(&s.plaintext),
        "the server read bytes the client never sent"
    );
    if !path.corrupted {
        assert!(client_ok, "the client failed");
        assert_eq!(
            answers, s.sealed,
            "the client got other answers than sealed"
        );
        if *ended != End::Rejected {
            assert_eq!(*ended, End::Eof);
            assert_eq!(s.plaintext.len(), payload.len(), "the server missed bytes");
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let [bits, chunk, mask, hi, lo, payload @ ..] = input else {
        return;
    };
    let chunk = match *chunk {
        0 => usize::MAX,
        n => usize::from(n) * 16,
    };
    let offset = usize::from(u16::from_be_bytes([*hi, *lo]));
    if bits & 0x20 == 0 {
        if !payload.is_empty() {
            raw(*bits, chunk, payload);
        }
    } else {
        handshake(*bits, chunk, *mask, offset, payload);
    }
});
