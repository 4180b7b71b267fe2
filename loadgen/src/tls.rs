//! TLS for `wss://` URLs: the client configuration a run's connections share, one session
//! per connection, and driving a session over a non-blocking socket from a worker's loop.
//!
//! A `ws://` connection has no session and never reaches this module: its reads and
//! writes go to the socket as they always did.

use crate::handshake::WsUrl;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{self, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore};
use rustls::{Error, SignatureScheme};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which server certificates a run accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Those that chain to a certificate in this PEM file (a CA, or the server's own
    /// self-signed certificate), for the URL's host.
    Ca(PathBuf),
    /// Any certificate for any name; the handshake's signatures are still checked, so the
    /// cryptography costs what it does with a real verifier, less the chain's checks.
    Insecure,
}

/// The configuration every TLS connection of a run shares: ring's algorithms, TLS 1.3 and
/// 1.2, ALPN `http/1.1`, and `trust`. Without `resume` every handshake is a full one
/// (`connect` measures those); with it, later connections may resume the sessions of
/// earlier ones, as a browser would.
///
/// # Errors
/// When the CA file cannot be read or holds no usable certificate.
pub fn client_config(trust: &Trust, resume: bool) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let mut config = match trust {
        Trust::Ca(path) => builder
            .with_root_certificates(roots(path)?)
            .with_no_client_auth(),
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// The certificates in the PEM file at `path`, as trust anchors.
fn roots(path: &Path) -> Result<RootCertStore, String> {
    let what = |e: &dyn std::fmt::Display| format!("--ca {}: {e}", path.display());
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| what(&e))? {
        store
            .add(cert.map_err(|e| what(&e))?)
            .map_err(|e| what(&e))?;
    }
    if store.is_empty() {
        return Err(what(&"no CERTIFICATE in it"));
    }
    Ok(store)
}

/// Accepts whatever certificate the server shows (`--insecure`), but checks that the
/// server signed the handshake with its key: a server that only pretends to do TLS still
/// fails, and the client spends the same signature checks as with a real verifier.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A new session for a connection to `url`: `None` for a `ws://` URL. SNI is the URL's
/// host (an IP address is sent as none, as RFC 6066 wants, and checked against the
/// certificate's IP addresses).
///
/// # Errors
/// When `url` is `wss://` and the run has no TLS configuration, or rustls refuses.
pub fn session(
    config: Option<&Arc<ClientConfig>>,
    url: &WsUrl,
) -> Result<Option<Box<ClientConnection>>, String> {
    if !url.tls {
        return Ok(None);
    }
    let config = config.ok_or("tls: wss:// without --ca or --insecure")?;
    let name = ServerName::try_from(url.hostname())
        .map_err(|e| format!("tls: {}: {e}", url.hostname()))?
        .to_owned();
    let mut tls = ClientConnection::new(config.clone(), name).map_err(|e| format!("tls: {e}"))?;
    // Unlimited, as the plaintext path's output buffer is: what the socket cannot take yet
    // waits in the session instead of in the connection's buffer.
    tls.set_buffer_limit(None);
    Ok(Some(Box::new(tls)))
}

/// Encrypts `out` (then empties it) and writes what the session has to send to `stream`
/// until it has all gone or the socket is full: everything queued in one iteration goes
/// into the session first, so it leaves in as few records and writes as it can.
///
/// # Errors
/// A write error, or the session's refusal.
pub fn write_out(
    stream: &mut impl Write,
    tls: &mut ClientConnection,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    if !out.is_empty() {
        tls.writer().write_all(out)?;
        out.clear();
    }
    while tls.wants_write() {
        match tls.write_tls(stream) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Size of [`Inbox`]'s buffer: what one `read` from a socket may take.
const INBOX: usize = 128 * 1024;

/// Ciphertext read from a socket and not yet fed to its session. One serves a worker's
/// every connection: each read loop starts with [`Inbox::start`], and what it leaves
/// unread is dropped there, never fed to the next connection's session.
///
/// It reads sockets in large pieces, like the plaintext path, rather than rustls's 4 KiB
/// reads: a busy receiver then costs one `read` per event, not one per 4 KiB.
#[derive(Debug, Default)]
pub struct Inbox {
    buf: Vec<u8>,
    /// `buf[fed..got]` is still to be fed to the session.
    fed: usize,
    got: usize,
    /// The last read of the socket was short: its receive queue is empty (edge-triggered
    /// readiness reports what comes later), so the next read can be skipped.
    drained: bool,
    /// The peer hung up: read on to the end-of-file, since that edge will not come again.
    hung_up: bool,
}

impl Inbox {
    /// Starts a read loop on one connection (`hung_up`: the event said the peer closed).
    pub fn start(&mut self, hung_up: bool) {
        if self.buf.is_empty() {
            self.buf = vec![0; INBOX];
        }
        (self.fed, self.got, self.drained, self.hung_up) = (0, 0, false, hung_up);
    }

    /// Reads plaintext into `dst` like [`Read::read`] on a non-blocking socket: from what
    /// `tls` has decrypted, else after reading and decrypting more from `stream`.
    /// `Ok(0)` at the end of the stream, with or without the server's `close_notify`;
    /// `WouldBlock` once the socket has no more.
    ///
    /// # Errors
    /// A read error, or the session's (a bad certificate, a failed handshake, a corrupt
    /// record: see [`failure`]).
    pub fn read(
        &mut self,
        stream: &mut impl Read,
        tls: &mut ClientConnection,
        dst: &mut [u8],
    ) -> io::Result<usize> {
        loop {
            match tls.reader().read(dst) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.fed == self.got {
                if self.drained {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let n = stream.read(&mut self.buf)?;
                if n == 0 {
                    return Ok(0);
                }
                (self.fed, self.got) = (0, n);
                self.drained = n < self.buf.len() && !self.hung_up;
            }
            // One record piece at a time: rustls refuses more ciphertext while 16 KiB of
            // plaintext wait, so plaintext is read out between pieces.
            match tls.read_tls(&mut &self.buf[self.fed..self.got])? {
                // After the server's close_notify nothing more is read.
                0 => self.fed = self.got,
                n => self.fed += n,
            }
            if let Err(e) = tls.process_new_packets() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

/// Why an I/O operation `op` (`read`, `write`, ...) failed, as a countable reason: the
/// session's error as `tls: ...` (`tls: invalid peer certificate: UnknownIssuer`), any
/// other as `op: ...`.
pub fn failure(op: &str, e: &io::Error) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(tls) => format!("tls: {tls}"),
        None => format!("{op}: {}", crate::net::describe(e)),
    }
}
