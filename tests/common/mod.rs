//! Helpers shared by herald's integration tests: a server on a port-0
//! listener, the real binary on a free port ([`HeraldProcess`]),
//! tungstenite clients with read timeouts, raw HTTP exchanges and
//! hand-made WebSocket frames; [`hostile`] has what the hostile-client
//! tests add (raw frames read off plain sockets, metrics, `/proc`).
//!
//! Every wait is bounded by a socket or channel timeout: a test that would
//! hang fails with a message instead.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code, unused_imports)]

pub mod bus;
pub mod hostile;
mod process;
pub mod proxy;
pub mod redis;
pub mod tls;

pub use bus::all_hear_nothing;
pub use hostile::*;
pub use process::{HeraldBuilder, HeraldProcess};
pub use redis::{RedisCluster, RedisServer, TempDir};

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use clap::Parser;
use herald::{Config, Shutdown};
use socket2::{Domain, Protocol, Socket, Type};
use tungstenite::error::ProtocolError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role};
use tungstenite::{Error as WsError, Message, WebSocket};

/// How long any single wait (a read, a server stopping) may take before the
/// test fails. Generous, because a loaded CI machine is slow; a passing run
/// never waits this long.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The seed's prefix, herald's default.
pub const PREFIX: &str = "Message from server: ";

/// A WebSocket client over a blocking socket with [`TIMEOUT`] on reads and writes.
pub type Client = WebSocket<TcpStream>;

/// herald's configuration from command-line flags (`herald` is prepended).
pub fn config(flags: &[&str]) -> Config {
    Config::parse_from(std::iter::once("herald").chain(flags.iter().copied()))
}

/// `herald::run` on a thread, serving a listener bound to 127.0.0.1:0.
///
/// Dropping it triggers shutdown and waits (at most [`TIMEOUT`]) for the
/// loop to return; declare clients after the server so they are dropped,
/// and so disconnect, first.
pub struct TestServer {
    /// Where the server listens.
    pub addr: SocketAddr,
    shutdown: Shutdown,
    done: Receiver<io::Result<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server configured by `flags`.
    pub fn start(flags: &[&str]) -> Self {
        Self::with_config(config(flags))
    }

    /// Starts a server with `config` (its `listen` is ignored).
    pub fn with_config(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let shutdown = Shutdown::new();
        let (tx, done) = mpsc::channel();
        let handle = shutdown.clone();
        let thread = thread::Builder::new()
            .name("herald".into())
            .spawn(move || {
                let _ = tx.send(herald::run(listener, config, handle));
            })
            .expect("spawn server thread");
        TestServer {
            addr,
            shutdown,
            done,
            thread: Some(thread),
        }
    }

    /// Asks the server to shut down (close 1001 to every client) and returns at once.
    pub fn trigger_shutdown(&self) {
        self.shutdown.trigger();
    }

    /// Waits for `run` to return, at most `within`; panics if it does not.
    pub fn wait_stopped(mut self, within: Duration) -> io::Result<()> {
        let result = self.done.recv_timeout(within).unwrap_or_else(|e| match e {
            mpsc::RecvTimeoutError::Timeout => {
                panic!("herald::run did not return within {within:?}")
            }
            mpsc::RecvTimeoutError::Disconnected => {
                panic!("the server thread panicked (see above)")
            }
        });
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread panicked");
        }
        result
    }
}

impl Drop for TestServer {
    /// Stops the server and checks that it survived the test: a server
    /// thread that panicked or a `run` that failed fails the test too.
    fn drop(&mut self) {
        self.shutdown.trigger();
        let Some(t) = self.thread.take() else { return };
        let outcome = self.done.recv_timeout(TIMEOUT);
        if !matches!(outcome, Err(mpsc::RecvTimeoutError::Timeout)) {
            let _ = t.join();
        }
        if thread::panicking() {
            return; // the test already failed; do not abort it with a second panic
        }
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("herald::run returned an error: {e}"),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the server thread panicked during the test (see above)")
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("herald did not stop within {TIMEOUT:?} of shutdown")
            }
        }
    }
}

/// Opens a TCP connection with [`TIMEOUT`] on reads and writes.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A TCP connection with the given kernel buffer sizes (`None` leaves
/// the default) and [`TIMEOUT`] on reads and writes. Set before connecting,
/// so the window the peer sees is small from the start.
pub fn tcp_with_buffers(addr: SocketAddr, recv: Option<usize>, send: Option<usize>) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    if let Some(size) = recv {
        socket.set_recv_buffer_size(size).unwrap();
    }
    if let Some(size) = send {
        socket.set_send_buffer_size(size).unwrap();
    }
    socket
        .connect(&addr.into())
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// A TCP connection whose receive buffer is as small as the kernel allows,
/// so a client that stops reading backs up into herald's queue quickly.
pub fn tcp_tiny_receive_buffer(addr: SocketAddr) -> TcpStream {
    tcp_with_buffers(addr, Some(4096), None)
}

/// Whether this process may set up an io_uring instance (not where
/// `kernel.io_uring_disabled` forbids it, or the kernel has none): probed
/// with `io_uring_setup(2)`, the instance closed at once.
///
/// The probe runs on a thread of its own: the kernel tears a ring down
/// asynchronously and then notifies the threads that used it, which
/// interrupts a blocking read with a timeout (`EINTR`) in a test thread.
pub fn io_uring_allowed() -> bool {
    thread::spawn(|| {
        // struct io_uring_params: 120 bytes, all zeros asks for the defaults.
        let mut params = [0u64; 15];
        // SAFETY: io_uring_setup writes into `params`, which is large enough.
        let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()) };
        if fd < 0 {
            return false;
        }
        // SAFETY: `fd` is the descriptor just returned, owned by nobody else.
        unsafe { libc::close(fd as i32) };
        true
    })
    .join()
    .expect("io_uring probe")
}

/// herald's per-client rate limits off: tests that flood on purpose.
pub const UNLIMITED: [&str; 4] = ["--client-rate", "0", "--client-bandwidth", "0"];

/// Starts a server with `flags` and `extra` (a test's variant, such as
/// `--io-uring`); with `--io-uring` among them, checks that a ring is in use.
pub fn start_with(flags: &[&str], extra: &[&str]) -> TestServer {
    let all: Vec<&str> = flags.iter().chain(extra).copied().collect();
    let server = TestServer::start(&all);
    if extra.contains(&"--io-uring") {
        assert_io_uring_in_use();
    }
    server
}

/// Checks that a server started with `--io-uring` in this process really
/// writes through a ring: where io_uring is allowed, the process holds an
/// io_uring descriptor. Where it is not, the server fell back to
/// `sendmsg` and says so; the test then checks that path.
pub fn assert_io_uring_in_use() {
    if !io_uring_allowed() {
        eprintln!("io_uring is not allowed here: --io-uring falls back to sendmsg");
        return;
    }
    // The server sets its ring up on its own thread, maybe after `start`
    // returned.
    let ring_open = || {
        std::fs::read_dir("/proc/self/fd")
            .expect("read /proc/self/fd")
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .any(|target| target.to_string_lossy().contains("io_uring"))
    };
    eventually(TIMEOUT, "an io_uring instance (--io-uring given)", || {
        ring_open().then_some(())
    });
}

/// A WebSocket client on `/`, handshake done.
pub fn connect(addr: SocketAddr) -> Client {
    handshake(addr, tcp(addr))
}

/// `n` WebSocket clients, all upgraded before this returns.
pub fn connect_many(addr: SocketAddr, n: usize) -> Vec<Client> {
    (0..n).map(|_| connect(addr)).collect()
}

/// Runs the client handshake over an already connected `stream`; the
/// timeouts are (re)set to [`TIMEOUT`].
pub fn handshake(addr: SocketAddr, stream: TcpStream) -> Client {
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    let (ws, resp) = tungstenite::client(format!("ws://{addr}/"), stream)
        .unwrap_or_else(|e| panic!("WebSocket handshake with {addr} failed: {e}"));
    assert_eq!(resp.status(), 101, "upgrade answered with {resp:?}");
    ws
}

/// Splits a freshly connected client into a writer and a reader over the
/// same socket, so one thread can publish while another reads. Call it
/// before any message can have arrived (nothing buffered is carried over).
pub fn split(ws: Client) -> (Client, Client) {
    let reader = ws.get_ref().try_clone().expect("clone socket");
    (ws, WebSocket::from_raw_socket(reader, Role::Client, None))
}

/// Sends a text message.
pub fn send_text(ws: &mut Client, text: &str) {
    ws.send(Message::text(text))
        .unwrap_or_else(|e| panic!("sending {text:?}: {e}"));
}

/// The next message, whatever its kind; panics on timeout or error.
pub fn recv(ws: &mut Client) -> Message {
    ws.read()
        .unwrap_or_else(|e| panic!("expected a message, got error: {e}"))
}

/// The next message, which must be text.
pub fn recv_text(ws: &mut Client) -> String {
    match recv(ws) {
        Message::Text(t) => t.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Each client reads exactly `texts`, in this order, and nothing before them.
pub fn assert_each_receives(clients: &mut [Client], texts: &[String]) {
    for (i, c) in clients.iter_mut().enumerate() {
        for (n, want) in texts.iter().enumerate() {
            assert_eq!(&recv_text(c), want, "client {i}, message {n}");
        }
    }
}

/// Closes `ws` with the close handshake (1000, "bye") and waits for the
/// server to answer 1000 and end the connection.
pub fn close_politely(mut ws: Client) {
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .expect("send close");
    let (_, ending) = drain(&mut ws);
    assert_eq!(ending, Ending::Close(1000), "the server's close reply");
}

/// How a connection ended, seen from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The server sent a close frame with this code, then closed TCP.
    Close(u16),
    /// The connection ended (EOF or reset) without a close frame.
    Dropped(String),
}

/// Reads until the connection ends, answering a close frame as a client
/// must and waiting for the server to close TCP afterwards. Returns the
/// data messages read on the way and how it ended. Panics on a read
/// timeout (the server neither sent nor closed anything) or a malformed
/// stream.
pub fn drain(ws: &mut Client) -> (Vec<Message>, Ending) {
    let mut messages = Vec::new();
    let mut code = None;
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => {
                let frame = frame.expect("a close frame without a status code");
                code = Some(u16::from(frame.code));
            }
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => messages.push(m),
            Ok(_) => {}
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                let code = code.expect("connection closed without a close frame");
                return (messages, Ending::Close(code));
            }
            Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                return (messages, ended_abruptly(code, "EOF"));
            }
            Err(WsError::Io(e)) if is_timeout(&e) => match code {
                Some(c) => panic!("got close {c}, but the server never closed TCP"),
                None => panic!("timed out waiting for the connection to end"),
            },
            Err(WsError::Io(e)) => return (messages, ended_abruptly(code, &e.to_string())),
            Err(e) => panic!("malformed stream from the server: {e}"),
        }
    }
}

fn ended_abruptly(code: Option<u16>, how: &str) -> Ending {
    match code {
        // The close frame arrived; the TCP end was not graceful, but the code counts.
        Some(c) => Ending::Close(c),
        None => Ending::Dropped(how.to_owned()),
    }
}

/// Reads until the server's close frame (skipping data messages) and the
/// end of the connection; returns the close code.
pub fn read_until_close(ws: &mut Client) -> u16 {
    match drain(ws).1 {
        Ending::Close(code) => code,
        Ending::Dropped(how) => panic!("connection ended without a close frame: {how}"),
    }
}

/// Whether `e` is a socket read/write timeout.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A client-to-server frame made by hand: `first` is the FIN/RSV/opcode
/// byte, the payload is masked with a fixed key, and the length uses
/// whichever of the three encodings fits.
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = frame_header(first, 0x80, payload.len());
    out.extend_from_slice(&KEY);
    out.extend(payload.iter().zip(KEY.iter().cycle()).map(|(b, k)| b ^ k));
    out
}

/// A frame made by hand without a mask, which a client must never send.
pub fn unmasked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = frame_header(first, 0, payload.len());
    out.extend_from_slice(payload);
    out
}

fn frame_header(first: u8, mask_bit: u8, len: usize) -> Vec<u8> {
    let mut out = vec![first];
    match len {
        0..=125 => out.push(mask_bit | len as u8),
        126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out
}

/// Writes raw bytes on a client's socket, bypassing tungstenite.
pub fn send_raw(ws: &mut Client, bytes: &[u8]) {
    ws.get_mut()
        .write_all(bytes)
        .unwrap_or_else(|e| panic!("raw write: {e}"));
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    /// The numeric status.
    pub status: u16,
    /// The whole status line, e.g. `HTTP/1.1 404 Not Found`.
    pub status_line: String,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes; none for a HEAD request).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("body is not UTF-8")
    }
}

/// Sends `request` on a fresh connection and reads the response. If the
/// response says `Connection: close`, also checks that the server then
/// closes the connection (within [`TIMEOUT`]).
pub fn http_exchange(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut s = tcp(addr);
    s.write_all(request).expect("write request");
    let resp = read_http_response(&mut s, request.starts_with(b"HEAD "));
    if resp.header("Connection") == Some("close") {
        expect_eof(&mut s);
    }
    resp
}

/// Reads one response from `s`: the head, then `Content-Length` bytes of
/// body unless it answers a HEAD request. Reads nothing past it.
pub fn read_http_response(s: &mut impl Read, head_request: bool) -> HttpResponse {
    let raw = read_head_exact(s).unwrap_or_else(|e| panic!("reading the response head: {e}"));
    let mut resp = parse_head(&raw);
    if !head_request {
        let len: usize = resp
            .header("Content-Length")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no valid Content-Length in {resp:?}"));
        resp.body = vec![0; len];
        s.read_exact(&mut resp.body)
            .unwrap_or_else(|e| panic!("reading a {len}-byte body: {e}"));
    }
    resp
}

/// Reads an HTTP head byte by byte, so that nothing after it is consumed;
/// returns it without the blank line. Heads are small: the syscalls do not
/// matter.
///
/// # Errors
/// The socket's; EOF as `UnexpectedEof`, with what came so far.
pub fn read_head_exact(s: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) => return Err(eof_in_head(&raw)),
            Ok(_) => raw.push(byte[0]),
            Err(e) => {
                let got = String::from_utf8_lossy(&raw);
                return Err(io::Error::new(
                    e.kind(),
                    format!("{e} (got so far: {got:?})"),
                ));
            }
        }
    }
    raw.truncate(raw.len() - 4);
    Ok(raw)
}

/// Reads until the end of an HTTP response head, in chunks; returns the
/// head (without the blank line) and whatever bytes followed it, so a
/// caller can tell that nothing did.
///
/// # Errors
/// The socket's; EOF as `UnexpectedEof`.
pub fn read_head(s: &mut impl Read) -> io::Result<(String, Vec<u8>)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some((head, rest)) = split_head(&raw) {
            return Ok((String::from_utf8_lossy(head).into_owned(), rest.to_vec()));
        }
        match s.read(&mut buf)? {
            0 => return Err(eof_in_head(&raw)),
            n => raw.extend_from_slice(&buf[..n]),
        }
    }
}

/// `raw` split at its first blank line: the head without it, and the rest.
pub fn split_head(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((&raw[..end], &raw[end + 4..]))
}

/// A whole response read to the end of the connection: its head parsed,
/// everything after the head as the body.
pub fn parse_response(raw: &[u8]) -> HttpResponse {
    let (head, body) = split_head(raw)
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let mut resp = parse_head(head);
    resp.body = body.to_vec();
    resp
}

fn eof_in_head(raw: &[u8]) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("EOF inside a head: {:?}", String::from_utf8_lossy(raw)),
    )
}

/// The status code on the first line of `head` (any protocol version).
pub fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"))
}

/// Checks that the peer closes the connection with nothing more to say.
pub fn expect_eof(s: &mut TcpStream) {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => {}
        Ok(_) => panic!(
            "unexpected bytes after the response: {:?}",
            String::from_utf8_lossy(&rest)
        ),
        // A reset also ends the connection; the response was already read.
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server did not close the connection: {e}"),
    }
}

/// Parses a response head (without its final blank line).
pub fn parse_head(raw: &[u8]) -> HttpResponse {
    let head = std::str::from_utf8(raw).expect("head is not UTF-8");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_owned();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|l| {
            let (n, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {l:?}"));
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    HttpResponse {
        status,
        status_line,
        headers,
        body: Vec::new(),
    }
}

/// A well-formed upgrade request for `/`, with `extra` header lines (each
/// ending in `\r\n`) and the given `Sec-WebSocket-Version`.
pub fn upgrade_request(version: &str, extra: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\
         {extra}\r\n"
    )
}

/// Server-to-client frames read off a raw socket in whatever pieces the
/// kernel hands over. A read timeout loses nothing (the partial frame stays
/// buffered for the next call), so a reader can poll with a short timeout
/// and check a flag between reads.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Where the next unparsed frame starts in `buf`.
    start: usize,
    chunk: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// Reads frames from `inner`.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
            start: 0,
            chunk: vec![0; 64 * 1024],
        }
    }

    /// The next frame: its first header byte (FIN, RSV, opcode) and its
    /// payload, borrowed until the next call.
    ///
    /// # Errors
    /// The socket's: a timeout (call again; nothing is lost), EOF as
    /// `UnexpectedEof` (with the bytes of any partial frame counted), a reset.
    pub fn next_frame(&mut self) -> io::Result<(u8, &[u8])> {
        loop {
            if let Some((first, range)) = parse_server_frame(&self.buf[self.start..]) {
                let at = self.start;
                self.start += range.end;
                return Ok((first, &self.buf[at + range.start..at + range.end]));
            }
            // Only unparsed bytes are kept; moving them is cheap next to
            // the read that follows.
            self.buf.drain(..self.start);
            self.start = 0;
            let n = self.inner.read(&mut self.chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF with {} bytes of a frame buffered", self.buf.len()),
                ));
            }
            self.buf.extend_from_slice(&self.chunk[..n]);
        }
    }

    /// The socket.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

/// The first header byte and the payload's range in `b`, if `b` starts
/// with a complete unmasked frame; panics on a masked one.
fn parse_server_frame(b: &[u8]) -> Option<(u8, std::ops::Range<usize>)> {
    let (&first, rest) = b.split_first()?;
    let (&second, rest) = rest.split_first()?;
    assert_eq!(second & 0x80, 0, "the server masked a frame");
    let (len, header) = match second & 0x7F {
        126 => (
            u16::from_be_bytes(rest.get(..2)?.try_into().unwrap()) as usize,
            4,
        ),
        127 => {
            let len = u64::from_be_bytes(rest.get(..8)?.try_into().unwrap());
            (usize::try_from(len).expect("frame length"), 10)
        }
        n => (n as usize, 2),
    };
    assert!(len <= 64 << 20, "a {len}-byte frame from the server");
    (b.len() >= header + len).then_some((first, header..header + len))
}

/// Publishers `0..publishers` of `clients` fresh clients send `per_publisher`
/// messages `"P#SEQ"` each, concurrently, flushing every `burst` messages
/// (pausing `pause` after each burst), while every client, publishers
/// included, reads on its own thread. Each client must receive every
/// message, each publisher's in the order sent; returns what each client
/// saw, in order, as `(publisher, seq)`.
pub fn publish_concurrently(
    addr: SocketAddr,
    clients: usize,
    publishers: usize,
    per_publisher: usize,
    burst: usize,
    pause: Duration,
) -> Vec<Vec<(usize, usize)>> {
    let all = connect_many(addr, clients);
    let total = publishers * per_publisher;
    let mut writers: Vec<Client> = Vec::new();
    let mut readers = Vec::new();
    for (i, ws) in all.into_iter().enumerate() {
        let (writer, mut reader) = split(ws);
        if i < publishers {
            writers.push(writer);
        }
        readers.push(thread::spawn(move || {
            let mut next = vec![0usize; publishers];
            let mut seen = Vec::with_capacity(total);
            for n in 0..total {
                let text = recv_text(&mut reader);
                let body = text.strip_prefix(PREFIX).unwrap_or_else(|| {
                    panic!("client {i}: message {n} lacks the prefix: {text:?}")
                });
                let (p, seq) = body
                    .split_once('#')
                    .and_then(|(p, s)| Some((p.parse::<usize>().ok()?, s.parse::<usize>().ok()?)))
                    .unwrap_or_else(|| panic!("client {i}: unexpected message {text:?}"));
                assert!(p < publishers, "client {i}: unknown publisher in {text:?}");
                assert_eq!(
                    seq, next[p],
                    "client {i}: publisher {p}'s messages out of order or lost"
                );
                next[p] += 1;
                seen.push((p, seq));
            }
            seen
        }));
    }
    let senders: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(p, mut ws)| {
            thread::spawn(move || {
                for seq in 0..per_publisher {
                    ws.write(Message::text(format!("{p}#{seq}")))
                        .expect("publish");
                    if seq % burst == burst - 1 {
                        ws.flush().expect("flush");
                        thread::sleep(pause);
                    }
                }
                ws.flush().expect("flush");
                ws // kept open until every reader is done
            })
        })
        .collect();
    let senders: Vec<Client> = senders
        .into_iter()
        .map(|t| t.join().expect("publisher panicked"))
        .collect();
    let seen = readers
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.join()
                .unwrap_or_else(|_| panic!("reader {i} failed (see its panic above)"))
        })
        .collect();
    drop(senders);
    seen
}
