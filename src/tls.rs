//! TLS on herald's own port (`--tls-cert`, `--tls-key`): a connection's
//! byte stream through a rustls [`ServerConnection`], driven by the loop
//! like the plain socket is, without blocking.
//!
//! Everything above the transport (HTTP session, WebSocket session, write
//! queue, fan-out) is the same for plain and TLS connections: a broadcast
//! is still encoded once per room per iteration. Only reading and flushing
//! differ. A flush seals everything the connection's queue holds in one
//! call (rustls joins the slices into as few records as the record size
//! allows) and the records leave in one vectored write.
//!
//! The crypto provider is *ring*: it builds with the C compiler the machine
//! already has (aws-lc-rs needs a longer native build); docs/design.md
//! says what was measured.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

use crate::nonblock::{interrupted, would_block};
use crate::queue::{Flushed, WriteQueue};
use crate::stats::WriteTally;

/// At most this many sealed bytes wait in a connection's TLS session: what
/// the socket has not taken stays in the write queue, where the queue's
/// limits and the slow-consumer policy see it. Four full records.
const SEALED_LIMIT: usize = 64 * 1024;

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
        let mut conn = ServerConnection::new(self.config.clone())?;
        conn.set_buffer_limit(Some(SEALED_LIMIT));
        Ok(Tls {
            conn,
            held: 0,
            notified: false,
            first: true,
            connected: false,
        })
    }
}

/// The rustls configuration for a certificate chain and key in PEM files:
/// TLS 1.3 and 1.2, ALPN `http/1.1`, no client certificates.
fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let cert_pem = read(cert, "--tls-cert")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no PEM certificate in it",
            cert.display()
        ));
    }
    let key_pem = read(key, "--tls-key")?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "--tls-key {}: no PKCS#8, PKCS#1 or SEC1 private key in it ({e})",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            format!(
                "--tls-key {} does not go with --tls-cert {}: {e}",
                key.display(),
                cert.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

/// One connection's TLS session.
pub(crate) struct Tls {
    conn: ServerConnection,
    /// Plaintext handed to the session since its sealed bytes last left:
    /// counted as the client's backlog (at most [`SEALED_LIMIT`]).
    held: usize,
    /// close_notify is sealed (after the connection's last bytes).
    notified: bool,
    /// Nothing has been read yet: the first bytes tell a TLS client from
    /// a plain HTTP one.
    first: bool,
    /// The handshake completed (and was counted).
    connected: bool,
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
    /// Reads the socket once (what the session holds first), decrypts,
    /// and puts up to `buf.len()` bytes of plaintext into `buf`.
    pub fn read(&mut self, stream: &TcpStream, buf: &mut [u8]) -> TlsRead {
        // Plaintext left from the last read comes first, without a syscall.
        let ready = self.take_plaintext(buf);
        if ready > 0 {
            // The socket was not read: it may hold more.
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
            Err(e) if would_block(&e) => return TlsRead::Blocked,
            Err(e) if interrupted(&e) => return TlsRead::Interrupted,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return TlsRead::Broken(rustls::Error::General(e.to_string()))
            }
            Err(e) => return TlsRead::Failed(e),
        };
        if std::mem::take(&mut self.first) && socket.first.is_some_and(|b| b.is_ascii_uppercase()) {
            // A TLS record starts with its content type (22 for a
            // handshake); a method name is a plain HTTP client.
            return TlsRead::PlainHttp;
        }
        let (closed, decrypted) = match self.conn.process_new_packets() {
            Ok(state) => (state.peer_has_closed(), state.plaintext_bytes_to_read()),
            Err(e) => return TlsRead::Broken(e),
        };
        let plain = self.take_plaintext(buf);
        let left = decrypted - plain;
        if plain == 0 && closed {
            return TlsRead::Eof;
        }
        TlsRead::Read {
            plain,
            wire,
            // A close_notify read with data is acted on by the next
            // read (which says EOF): the loop must make it.
            drained: socket.short && left == 0 && !closed,
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

    /// Moves decrypted bytes into `buf`; returns how many.
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

    /// Whether sealed bytes wait for the socket.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Plaintext sealed but not yet on the wire, for the backlog.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Writes what the session has sealed, then seals what `queue` holds
    /// and writes that, until both are empty or the socket would block.
    /// With `last`, a close_notify follows the queue's last bytes.
    ///
    /// Each seal takes the whole queue in one call (up to
    /// [`SEALED_LIMIT`]), so the iteration's messages become as few
    /// records as the record size allows; each write sends every sealed
    /// record in one `sendmsg`.
    pub fn flush(
        &mut self,
        queue: &mut WriteQueue,
        stream: &TcpStream,
        tally: &mut WriteTally,
        last: bool,
    ) -> io::Result<Flushed> {
        loop {
            while self.conn.wants_write() {
                match self.conn.write_tls(&mut SendTo(stream)) {
                    Ok(_) => {}
                    Err(e) if would_block(&e) => return Ok(Flushed::Blocked),
                    Err(e) if interrupted(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            self.held = 0;
            if queue.is_empty() {
                if last && !self.notified {
                    self.notified = true;
                    self.conn.send_close_notify();
                    continue;
                }
                return Ok(Flushed::Empty);
            }
            let before = queue.queued();
            let mut seal = Seal {
                conn: &mut self.conn,
                held: &mut self.held,
            };
            queue.flush(&mut seal, tally)?;
            if queue.queued() == before && !self.conn.wants_write() {
                // Nothing sealed and nothing to send: the session takes no
                // data yet (it cannot, once the handshake is done).
                return Ok(Flushed::Blocked);
            }
        }
    }
}

/// The socket as rustls reads it: notes whether the read took less than
/// asked (the socket is drained) and the first byte of the first read.
struct Recv<'a> {
    stream: &'a TcpStream,
    short: bool,
    first: Option<u8>,
}

impl Read for Recv<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (&mut &*self.stream).read(buf)?;
        self.short = n < buf.len();
        if self.first.is_none() && n > 0 {
            self.first = Some(buf[0]);
        }
        Ok(n)
    }
}

/// The socket as rustls writes it: `sendmsg`, as plain connections write.
struct SendTo<'a>(&'a TcpStream);

impl Write for SendTo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        socket2::SockRef::from(self.0).send_vectored_with_flags(bufs, 0)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The queue's bytes into the session: what it takes is sealed; a full
/// session (its [`SEALED_LIMIT`]) reads as `WouldBlock`, so the queue stops
/// and its bytes wait there.
struct Seal<'a> {
    conn: &'a mut ServerConnection,
    held: &'a mut usize,
}

impl Write for Seal<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self.conn.writer().write_vectored(bufs)? {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => {
                *self.held += n;
                Ok(n)
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
