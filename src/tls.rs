//! TLS on herald's own port (`--tls-cert`, `--tls-key`): a connection's
//! byte stream through rustls' unbuffered server session, driven by the
//! loop like the plain socket is, without blocking.
//!
//! Everything above the transport (HTTP session, WebSocket session, write
//! queue, fan-out) is the same for plain and TLS connections: a broadcast
//! is still encoded once per room per iteration. Only reading and flushing
//! differ. A flush seals what the connection's queue holds, up to
//! [`SEAL_LEN`] at a time, in one call (rustls cuts it into as few records
//! as the record size allows) and the records leave in one write.
//!
//! Why the unbuffered API: rustls' buffered `ServerConnection` keeps a
//! 4 KiB receive buffer for the life of every session, which put an idle
//! TLS connection over its 8 KiB budget (docs/tls.md). Here the bytes in
//! flight live in buffers the loop owns once ([`Scratch`]); a session keeps
//! bytes of its own only while something is pending: the start of a record
//! not yet complete, plaintext the reader has not taken, sealed bytes the
//! socket has not taken.
//!
//! The crypto provider is *ring*: it builds with the C compiler the machine
//! already has, in half the CPU time of aws-lc-rs and to a binary a third
//! the size (docs/tls.md says what was measured).

use std::cell::RefCell;
use std::fs;
use std::io::{self, IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncodeTlsData, EncryptError, WriteTraffic};
use rustls::ServerConfig;

use crate::nonblock::{interrupted, would_block};
use crate::queue::{Flushed, WriteQueue};
use crate::stats::WriteTally;

/// At most this much plaintext is sealed at once: what the socket has not
/// taken of it stays with the session (counted as the client's backlog),
/// and the rest stays in the write queue, where the queue's limits and the
/// slow-consumer policy see it. Four full records.
const SEAL_LEN: usize = 64 * 1024;

/// Room for [`SEAL_LEN`] sealed: four records' headers, nonces and tags,
/// and a handshake message rustls may put before them (a key update).
const SEALED_LEN: usize = SEAL_LEN + 1024;

/// At most this many bytes of the socket are read at once.
const READ_LEN: usize = 64 * 1024;

/// At most this many received bytes wait for the rest of their record or
/// handshake message: a handshake message of the largest size TLS allows
/// (64 KiB) in records, and a record after it. Past it the session fails.
const CARRY_LIMIT: usize = 96 * 1024;

/// A close_notify alert in the clear: what a session that rustls gave up
/// on before encryption began says when rustls has no alert of its own.
const PLAIN_CLOSE_NOTIFY: [u8; 7] = [21, 3, 3, 0, 2, 1, 0];

/// The loop's buffers for bytes in flight, shared by every session on the
/// thread (one loop, one thread): a session borrows them for one read or
/// one flush and keeps only what is left over.
struct Scratch {
    /// Carried bytes, then what the socket gave.
    input: Box<[u8]>,
    /// The queue's bytes gathered for one seal.
    plain: Box<[u8]>,
    /// What one seal made.
    sealed: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        input: vec![0; CARRY_LIMIT + READ_LEN].into_boxed_slice(),
        plain: vec![0; SEAL_LEN].into_boxed_slice(),
        sealed: vec![0; SEALED_LEN],
    });
}

/// The byte stream under a session: the socket, or bytes in memory (the
/// fuzz target).
pub(crate) trait Wire {
    /// Reads what the stream has, up to `buf.len()` bytes; 0 at its end.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes what the stream takes of `buf`.
    fn send(&mut self, buf: &[u8]) -> io::Result<usize>;
}

impl Wire for &TcpStream {
    #[inline]
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&mut &**self).read(buf)
    }
    #[inline]
    fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&mut &**self).write(buf)
    }
}

/// The certificate and key (`--tls-cert`, `--tls-key`), as loaded, and the
/// files to load them from again on SIGHUP.
pub(crate) struct Acceptor {
    config: Arc<ServerConfig>,
    cert: PathBuf,
    key: PathBuf,
}

impl Acceptor {
    /// Loads the pair.
    ///
    /// # Errors
    /// A one-line reason: a file missing or unreadable, no certificate or
    /// no key in it, or a key that does not belong to the certificate.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        Ok(Acceptor {
            config: server_config(cert, key)?,
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })
    }

    /// Reads the files again: new handshakes use the new pair, open
    /// connections keep the session they have. A bad new pair changes
    /// nothing.
    ///
    /// # Errors
    /// The reason the new pair was refused.
    pub fn reload(&mut self) -> Result<(), String> {
        self.config = server_config(&self.cert, &self.key)?;
        Ok(())
    }

    /// A session for a connection just accepted.
    pub fn accept(&self) -> Result<Tls, rustls::Error> {
        Tls::new(self.config.clone())
    }
}

/// The rustls configuration for a certificate chain and key in PEM files.
fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let cert_pem = read(cert, "--tls-cert")?;
    let key_pem = read(key, "--tls-key")?;
    let named = |flag: &str, path: &Path| format!("{flag} {}", path.display());
    config_from_pem(
        &cert_pem,
        &key_pem,
        &named("--tls-cert", cert),
        &named("--tls-key", key),
    )
}

/// The rustls configuration for a certificate chain and key in PEM, named
/// in errors as `cert_name` and `key_name`: TLS 1.3 and 1.2, ALPN
/// `http/1.1`, no client certificates.
fn config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{cert_name}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{cert_name}: no PEM certificate in it"));
    }
    let key_der = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("{key_name}: no PKCS#8, PKCS#1 or SEC1 private key in it ({e})"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| format!("{key_name} does not go with {cert_name}: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

/// One connection's TLS session.
pub(crate) struct Tls {
    conn: UnbufferedServerConnection,
    /// Received bytes waiting for the rest of their record (at most
    /// [`CARRY_LIMIT`]); empty, without memory, between records.
    carried: Vec<u8>,
    /// Decrypted bytes the reader had no room for, from `plain_at` on.
    plain: Vec<u8>,
    plain_at: usize,
    /// Sealed bytes the socket has not taken, from `sealed_at` on.
    sealed: Vec<u8>,
    sealed_at: usize,
    /// Plaintext in `sealed`: counted as the client's backlog (at most
    /// [`SEAL_LEN`]).
    held: usize,
    /// close_notify is sealed (after the connection's last bytes), or the
    /// session failed and said all it will.
    notified: bool,
    /// Nothing has been read yet: the first bytes tell a TLS client from
    /// a plain HTTP one.
    first: bool,
    /// The handshake completed (and was counted).
    connected: bool,
    /// The peer's close_notify arrived: nothing more is read.
    peer_closed: bool,
    /// rustls refused the peer's input: nothing more is sealed.
    failed: bool,
}

/// What one read of a TLS connection came to.
pub(crate) enum TlsRead {
    /// `plain` bytes of plaintext are in the caller's buffer (possibly 0:
    /// handshake records), after `wire` bytes were read from the socket;
    /// `drained` when the socket gave less than asked and the session
    /// holds no more plaintext (the next read would only block).
    Read {
        plain: usize,
        wire: usize,
        drained: bool,
    },
    /// The socket has nothing for now.
    Blocked,
    /// Interrupted by a signal: read again.
    Interrupted,
    /// The peer closed (EOF or close_notify).
    Eof,
    /// The first bytes were plain HTTP, not TLS.
    PlainHttp,
    /// The peer broke the protocol; an alert is sealed, to be flushed.
    Broken(rustls::Error),
    /// The socket failed.
    Failed(io::Error),
}

impl Tls {
    fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(Tls {
            conn: UnbufferedServerConnection::new(config)?,
            carried: Vec::new(),
            plain: Vec::new(),
            plain_at: 0,
            sealed: Vec::new(),
            sealed_at: 0,
            held: 0,
            notified: false,
            first: true,
            connected: false,
            peer_closed: false,
            failed: false,
        })
    }

    /// Reads the socket once (what the session holds first), decrypts,
    /// and puts up to `buf.len()` bytes of plaintext into `buf`.
    pub fn read<W: Wire>(&mut self, wire: &mut W, buf: &mut [u8]) -> TlsRead {
        // Plaintext left from the last read comes first, without a syscall.
        if self.plain_at < self.plain.len() {
            let n = buf.len().min(self.plain.len() - self.plain_at);
            buf[..n].copy_from_slice(&self.plain[self.plain_at..self.plain_at + n]);
            self.plain_at += n;
            if self.plain_at == self.plain.len() {
                self.plain = Vec::new();
                self.plain_at = 0;
            }
            // The socket was not read: it may hold more.
            return TlsRead::Read {
                plain: n,
                wire: 0,
                drained: false,
            };
        }
        if self.peer_closed || self.failed {
            return TlsRead::Eof;
        }
        SCRATCH.with_borrow_mut(|s| self.read_socket(wire, buf, &mut s.input))
    }

    fn read_socket<W: Wire>(&mut self, wire: &mut W, buf: &mut [u8], input: &mut [u8]) -> TlsRead {
        let carried = self.carried.len();
        let asked = buf.len().min(READ_LEN);
        let got = match wire.recv(&mut input[carried..carried + asked]) {
            Ok(0) => return TlsRead::Eof,
            Ok(n) => n,
            Err(e) if would_block(&e) => return TlsRead::Blocked,
            Err(e) if interrupted(&e) => return TlsRead::Interrupted,
            Err(e) => return TlsRead::Failed(e),
        };
        if std::mem::take(&mut self.first) && input[0].is_ascii_uppercase() {
            // A TLS record starts with its content type (22 for a
            // handshake); a method name is a plain HTTP client.
            return TlsRead::PlainHttp;
        }
        input[..carried].copy_from_slice(&self.carried);
        let end = carried + got;
        let mut start = 0;
        let mut plain = 0;
        let failure = loop {
            let status = self.conn.process_tls_records(&mut input[start..end]);
            let discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(e) => {
                    start += discard;
                    break Some(e);
                }
            };
            match state {
                ConnectionState::ReadTraffic(mut records) => {
                    let mut broken = None;
                    while let Some(record) = records.next_record() {
                        let record = match record {
                            Ok(record) => record,
                            Err(e) => {
                                broken = Some(e);
                                break;
                            }
                        };
                        let payload = record.payload;
                        let n = (buf.len() - plain).min(payload.len());
                        buf[plain..plain + n].copy_from_slice(&payload[..n]);
                        plain += n;
                        // Once one record did not fit, every later one
                        // follows it here, in order.
                        self.plain.extend_from_slice(&payload[n..]);
                    }
                    if broken.is_some() {
                        start += discard;
                        break broken;
                    }
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    if let Err(e) = encode(&mut data, &mut self.sealed) {
                        break Some(e);
                    }
                }
                // Sent by the next flush, before anything sealed after.
                ConnectionState::TransmitTlsData(data) => data.done(),
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.peer_closed = true;
                    start += discard;
                    break None;
                }
                // The handshake needs more, or it is done and every record
                // that came is read.
                _ => {
                    start += discard;
                    break None;
                }
            }
            start += discard;
        };
        // rustls' contract: bytes it did not discard are passed to it again,
        // first, in its next call (it keeps offsets into them).
        let left = &input[start..end];
        if left.is_empty() {
            self.carried = Vec::new();
        } else {
            self.carried.clear();
            self.carried.extend_from_slice(left);
        }
        if let Some(e) = failure {
            return self.fail(e);
        }
        if self.carried.len() > CARRY_LIMIT {
            return self.fail(rustls::Error::General(
                "a record or handshake message too large to take".into(),
            ));
        }
        if plain == 0 && self.peer_closed {
            return TlsRead::Eof;
        }
        TlsRead::Read {
            plain,
            wire: got,
            // A close_notify read with data is acted on by the next
            // read (which says EOF): the loop must make it.
            drained: got < asked && self.plain.is_empty() && !self.peer_closed,
        }
    }

    /// Ends the session on `e`: what rustls has to say about it (a fatal
    /// alert) is sealed; mid-handshake, a close_notify in the clear if it
    /// has nothing to say. rustls is not asked to read again: after an
    /// error only the records it queued are taken from it.
    fn fail(&mut self, e: rustls::Error) -> TlsRead {
        self.failed = true;
        self.notified = true;
        let before = self.sealed.len();
        // A queued record is handed out before rustls looks at input.
        while self.conn.wants_write() {
            let status = self.conn.process_tls_records(&mut self.carried);
            let sealed = match status.state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => encode(&mut data, &mut self.sealed),
                _ => break,
            };
            if sealed.is_err() {
                break;
            }
        }
        if self.sealed.len() == before && self.conn.is_handshaking() {
            self.sealed.extend_from_slice(&PLAIN_CLOSE_NOTIFY);
        }
        self.carried = Vec::new();
        TlsRead::Broken(e)
    }

    /// Runs rustls on the carried bytes until it can send application
    /// data, sealing the handshake records it makes on the way (a key
    /// update, a session ticket), then `f` with it. `None` when it cannot
    /// send (mid-handshake, or closed).
    fn with_traffic<R>(
        &mut self,
        f: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>) -> R,
    ) -> Result<Option<R>, rustls::Error> {
        let mut f = Some(f);
        loop {
            let status = self.conn.process_tls_records(&mut self.carried);
            let discard = status.discard;
            let done = match status.state? {
                ConnectionState::EncodeTlsData(mut data) => {
                    encode(&mut data, &mut self.sealed)?;
                    None
                }
                ConnectionState::TransmitTlsData(data) => {
                    data.done();
                    None
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    Some(f.take().map(|f| f(&mut traffic)))
                }
                _ => Some(None),
            };
            self.carried.drain(..discard);
            if let Some(done) = done {
                return Ok(done);
            }
        }
    }

    /// True once, when the handshake has just completed.
    pub fn just_connected(&mut self) -> bool {
        if self.connected || self.conn.is_handshaking() {
            return false;
        }
        self.connected = true;
        true
    }

    /// Whether sealed bytes wait for the socket.
    pub fn wants_write(&self) -> bool {
        self.sealed_at < self.sealed.len()
    }

    /// Plaintext sealed but not yet on the wire, for the backlog.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Writes what the session has sealed, then seals what `queue` holds
    /// and writes that, until both are empty or the socket would block.
    /// With `last`, a close_notify follows the queue's last bytes.
    ///
    /// Each seal takes up to [`SEAL_LEN`] of the queue in one call, so the
    /// iteration's messages become as few records as the record size
    /// allows, and each write sends every record of a seal.
    pub fn flush<W: Wire>(
        &mut self,
        queue: &mut WriteQueue,
        wire: &mut W,
        tally: &mut WriteTally,
        last: bool,
    ) -> io::Result<Flushed> {
        loop {
            while self.sealed_at < self.sealed.len() {
                match wire.send(&self.sealed[self.sealed_at..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => self.sealed_at += n,
                    Err(e) if would_block(&e) => return Ok(Flushed::Blocked),
                    Err(e) if interrupted(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            if self.sealed.capacity() > 0 {
                self.sealed = Vec::new();
                self.sealed_at = 0;
            }
            self.held = 0;
            if self.failed {
                // A failed session sends nothing more: what waits is dropped.
                queue.flush(&mut Discard, tally)?;
                return Ok(Flushed::Empty);
            }
            if queue.is_empty() {
                if last && !self.notified {
                    self.notified = true;
                    self.seal_close_notify();
                    continue;
                }
                return Ok(Flushed::Empty);
            }
            if self.conn.is_handshaking() {
                // The session takes no data yet.
                return Ok(Flushed::Blocked);
            }
            let done = SCRATCH.with_borrow_mut(|s| self.seal(queue, wire, tally, s))?;
            if let Some(flushed) = done {
                return Ok(flushed);
            }
        }
    }

    /// Seals up to [`SEAL_LEN`] of `queue` and writes the records, keeping
    /// what the socket does not take. `Some` when the flush is over.
    fn seal<W: Wire>(
        &mut self,
        queue: &mut WriteQueue,
        wire: &mut W,
        tally: &mut WriteTally,
        s: &mut Scratch,
    ) -> io::Result<Option<Flushed>> {
        let mut gather = Gather {
            buf: &mut s.plain,
            len: 0,
        };
        queue.flush(&mut gather, tally)?;
        let len = gather.len;
        let plain = &s.plain[..len];
        let n = self.encrypt(plain, &mut s.sealed)?;
        let records = &s.sealed[..n];
        if self.wants_write() {
            // A handshake message rustls made goes first.
            self.sealed.extend_from_slice(records);
            self.held = plain.len();
            return Ok(None);
        }
        let mut at = 0;
        while at < records.len() {
            match wire.send(&records[at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => at += n,
                Err(e) if would_block(&e) => {
                    self.sealed.extend_from_slice(&records[at..]);
                    self.held = plain.len();
                    return Ok(Some(Flushed::Blocked));
                }
                Err(e) if interrupted(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Seals `plain` into `out` (grown if a key update makes it too
    /// small); returns the sealed length.
    fn encrypt(&mut self, plain: &[u8], out: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            let sealed = self
                .with_traffic(|traffic| traffic.encrypt(plain, out))
                .map_err(io::Error::other)?;
            match sealed {
                Some(Ok(n)) => return Ok(n),
                Some(Err(EncryptError::InsufficientSize(e))) => out.resize(e.required_size, 0),
                Some(Err(e)) => return Err(io::Error::other(e.to_string())),
                None => return Err(io::Error::other("the TLS session cannot send")),
            }
        }
    }

    /// Seals a close_notify after everything sealed so far (none
    /// mid-handshake: there is nothing to seal it with).
    fn seal_close_notify(&mut self) {
        let mut alert = [0u8; 64];
        if let Ok(Some(Ok(n))) = self.with_traffic(|traffic| traffic.queue_close_notify(&mut alert))
        {
            self.sealed.extend_from_slice(&alert[..n]);
        }
    }
}

/// Appends a handshake record rustls made to `out`.
fn encode(
    data: &mut EncodeTlsData<'_, ServerConnectionData>,
    out: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    let at = out.len();
    let need = match data.encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(e)) => e.required_size,
        Err(e) => return Err(rustls::Error::General(e.to_string())),
    };
    out.resize(at + need, 0);
    data.encode(&mut out[at..])
        .map(drop)
        .map_err(|e| rustls::Error::General(e.to_string()))
}

/// The queue's bytes copied into one buffer to be sealed at once: a full
/// buffer reads as `WouldBlock`, so the queue stops and its bytes wait.
struct Gather<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Write for Gather<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let start = self.len;
        for b in bufs {
            let n = b.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
            self.len += n;
            if n < b.len() {
                break;
            }
        }
        match self.len - start {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Takes everything and keeps nothing: the queue of a failed session.
struct Discard;

impl Write for Discard {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Ok(bufs.iter().map(|b| b.len()).sum())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// herald's TLS session as the loop drives it, over bytes in memory, for
/// the fuzz target (`fuzz/fuzz_targets/tls_route.rs`): the code under test
/// is the code that serves, not a copy. Not a stable interface.
#[doc(hidden)]
pub mod fuzzing {
    use std::io;
    use std::sync::Arc;

    use rustls::ServerConfig;

    use super::{Tls, TlsRead, Wire};
    use crate::frame::Frame;
    use crate::queue::{Flushed, Kind, WriteQueue};
    use crate::stats::WriteTally;

    /// A server configuration as herald builds it (ring, TLS 1.3 and 1.2,
    /// ALPN `http/1.1`), from a PEM certificate chain and key.
    ///
    /// # Errors
    /// The reason the pair cannot serve, as herald says it.
    pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, String> {
        super::config_from_pem(cert_pem, key_pem, "certificate", "key")
    }

    /// The network, in memory: what the client sent and what the server
    /// wrote.
    #[derive(Debug, Default)]
    pub struct Net {
        /// Bytes that have arrived and not been read, from `at` on.
        pub arrived: Vec<u8>,
        /// Where the server's reading stands in `arrived`.
        pub at: usize,
        /// The client has closed: once `arrived` is read, reads give 0.
        pub closed: bool,
        /// What the server wrote, in order.
        pub written: Vec<u8>,
        /// At most this many bytes taken per write (0: no limit); a full
        /// [`Net::room`] reads as `WouldBlock`.
        pub per_write: usize,
        /// How much more the socket takes before it would block
        /// (`usize::MAX`: unbounded).
        pub room: usize,
    }

    impl Wire for Net {
        fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let left = self.arrived.len() - self.at;
            if left == 0 {
                return if self.closed {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let n = left.min(buf.len());
            buf[..n].copy_from_slice(&self.arrived[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }

        fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut n = buf.len().min(self.room);
            if self.per_write > 0 {
                n = n.min(self.per_write);
            }
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.room = self.room.saturating_sub(n);
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }

    /// What one [`Session::read`] came to (as the loop sees it).
    #[derive(Debug, PartialEq, Eq)]
    pub enum Read {
        /// `plain` bytes of plaintext in the buffer after `wire` bytes read;
        /// `drained`: the next read would only block.
        Data {
            /// Plaintext bytes put in the buffer.
            plain: usize,
            /// Bytes read from the network.
            wire: usize,
            /// The next read would only block.
            drained: bool,
        },
        /// Nothing has arrived.
        Blocked,
        /// The client closed.
        Eof,
        /// The first bytes were plain HTTP.
        PlainHttp,
        /// The client broke the protocol (why); an alert is sealed.
        Broken(String),
    }

    /// One connection's session with its write queue.
    pub struct Session {
        tls: Tls,
        queue: WriteQueue,
        tally: WriteTally,
    }

    impl Session {
        /// A session as herald accepts one.
        ///
        /// # Errors
        /// rustls refused to make the session.
        pub fn new(config: Arc<ServerConfig>) -> Result<Self, String> {
            Ok(Session {
                tls: Tls::new(config).map_err(|e| e.to_string())?,
                queue: WriteQueue::new(),
                tally: WriteTally::default(),
            })
        }

        /// One read, as the loop makes it, into `buf`.
        pub fn read(&mut self, net: &mut Net, buf: &mut [u8]) -> Read {
            loop {
                return match self.tls.read(net, buf) {
                    TlsRead::Read {
                        plain,
                        wire,
                        drained,
                    } => Read::Data {
                        plain,
                        wire,
                        drained,
                    },
                    TlsRead::Blocked => Read::Blocked,
                    TlsRead::Interrupted => continue,
                    TlsRead::Eof => Read::Eof,
                    TlsRead::PlainHttp => Read::PlainHttp,
                    TlsRead::Broken(e) => Read::Broken(e.to_string()),
                    TlsRead::Failed(e) => Read::Broken(e.to_string()),
                };
            }
        }

        /// True once, when the handshake has just completed.
        pub fn just_connected(&mut self) -> bool {
            self.tls.just_connected()
        }

        /// Queues `bytes` (an answer) to be sealed by the next flush.
        pub fn queue(&mut self, bytes: &[u8]) {
            self.queue.push(Frame::from_bytes(bytes), Kind::Own);
        }

        /// Flushes as the loop does (with `last`, a close_notify after the
        /// queue); true when everything left.
        ///
        /// # Errors
        /// The session could not seal or the network failed.
        pub fn flush(&mut self, net: &mut Net, last: bool) -> io::Result<bool> {
            let flushed = self
                .tls
                .flush(&mut self.queue, net, &mut self.tally, last)?;
            Ok(flushed == Flushed::Empty)
        }

        /// Plaintext queued or sealed and not yet on the network.
        pub fn backlog(&self) -> usize {
            self.queue.queued() + self.tls.held()
        }

        /// Whether sealed bytes wait for the network.
        pub fn wants_write(&self) -> bool {
            self.tls.wants_write()
        }
    }
}
