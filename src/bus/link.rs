//! One non-blocking socket to a Redis server: connect, read chunks, write
//! what is queued, and the command packing every socket shares.

use std::io::{self, Read, Write};

use mio::net::TcpStream;
use std::net::SocketAddr;

use mio::{Interest, Registry, Token};

use crate::nonblock::{interrupted, would_block};
use crate::stats::Stats;

/// Bytes read from a Redis socket per call.
const READ_CHUNK: usize = 64 * 1024;

/// One socket to a Redis server.
pub(super) struct Link {
    pub(super) sock: Option<TcpStream>,
    pub(super) token: Token,
    pub(super) connected: bool,
    /// Readiness seen and not yet used up (edge-triggered).
    pub(super) readable: bool,
    pub(super) writable: bool,
    pub(super) input: Vec<u8>,
    /// Commands to write, and how much of them is written.
    pub(super) out: Vec<u8>,
    pub(super) written: usize,
    /// Replies to the greeting (AUTH, SELECT, CLIENT SETNAME) still due,
    /// and the greeting's bytes at the front of `out`.
    pub(super) greeting: u32,
    pub(super) greeting_len: usize,
    /// Commands stay in `out` once written, until answered (the
    /// publisher's); otherwise `out` is emptied when all is written.
    pub(super) retain: bool,
}

impl Link {
    pub(super) fn new(token: Token, retain: bool) -> Self {
        Link {
            retain,
            greeting_len: 0,
            sock: None,
            token,
            connected: false,
            readable: false,
            writable: false,
            input: Vec::new(),
            out: Vec::new(),
            written: 0,
            greeting: 0,
        }
    }

    /// Starts a non-blocking connect to `addr`, registered for both
    /// readinesses under this link's token.
    pub(super) fn open(&mut self, addr: SocketAddr, registry: &Registry) -> Result<(), String> {
        let mut sock = TcpStream::connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
        // Commands are written once per iteration, whole: no need to wait
        // for more.
        let _ = sock.set_nodelay(true);
        registry
            .register(
                &mut sock,
                self.token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register: {e}"))?;
        self.sock = Some(sock);
        Ok(())
    }

    /// Closes the socket; what is queued stays.
    pub(super) fn close(&mut self, registry: &Registry) {
        if let Some(mut sock) = self.sock.take() {
            let _ = registry.deregister(&mut sock);
        }
        self.connected = false;
        self.readable = false;
        self.writable = false;
        self.input.clear();
        self.greeting = 0;
        self.written = 0;
    }

    /// Whether a non-blocking connect finished; an error if it failed.
    pub(super) fn check_connected(&mut self) -> Result<(), String> {
        let Some(sock) = &self.sock else {
            return Ok(());
        };
        if let Ok(Some(e)) | Err(e) = sock.take_error() {
            return Err(format!("connect: {e}"));
        }
        match sock.peer_addr() {
            Ok(_) => {
                self.connected = true;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            Err(e) => Err(format!("connect: {e}")),
        }
    }

    /// Reads one chunk onto `input`; `Ok(0)` when the socket has nothing
    /// more now.
    pub(super) fn fill(&mut self, input: &mut Vec<u8>) -> Result<usize, String> {
        let Some(sock) = &mut self.sock else {
            return Ok(0);
        };
        let len = input.len();
        input.resize(len + READ_CHUNK, 0);
        loop {
            match sock.read(&mut input[len..]) {
                Ok(0) => {
                    input.truncate(len);
                    return Err("Redis closed the connection".into());
                }
                Ok(n) => {
                    input.truncate(len + n);
                    return Ok(n);
                }
                Err(e) if would_block(&e) => {
                    input.truncate(len);
                    return Ok(0);
                }
                Err(e) if interrupted(&e) => continue,
                Err(e) => {
                    input.truncate(len);
                    return Err(format!("read: {e}"));
                }
            }
        }
    }

    /// Writes what is not written yet of the first `upto` bytes, until the
    /// socket is full.
    pub(super) fn flush(&mut self, upto: usize, stats: &mut Stats) -> Result<(), String> {
        let upto = upto.min(self.out.len());
        let Some(sock) = &mut self.sock else {
            return Ok(());
        };
        if !self.connected {
            return Ok(());
        }
        while self.written < upto {
            match sock.write(&self.out[self.written..upto]) {
                Ok(0) => return Err("Redis stopped taking data".into()),
                Ok(n) => {
                    self.written += n;
                    stats.bus_sent_bytes += n as u64;
                }
                Err(e) if would_block(&e) => {
                    self.writable = false;
                    return Ok(());
                }
                Err(e) if interrupted(&e) => continue,
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        if !self.retain && self.greeting == 0 {
            self.out.clear();
            self.written = 0;
        }
        Ok(())
    }
}

/// Packs one command onto `out`; returns its length.
pub(super) fn pack(cmd: &mut redis::Cmd, verb: &str, args: &[&[u8]], out: &mut Vec<u8>) -> usize {
    cmd.clear();
    cmd.arg(verb);
    for a in args {
        cmd.arg(*a);
    }
    let before = out.len();
    cmd.write_packed_command(out);
    out.len() - before
}
