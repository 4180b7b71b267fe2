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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::{ServerConfig, ServerConnection};

    /// A client session (trusting anything) and a server session, handshaken in memory.
    fn pair() -> (ClientConnection, ServerConnection) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = PrivatePkcs8KeyDer::from(made.signing_key.serialize_der());
        let provider = Arc::new(crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![made.cert.der().clone()], PrivateKeyDer::Pkcs8(key))
            .unwrap();
        let mut server = ServerConnection::new(Arc::new(server)).unwrap();
        let url = "wss://localhost:1/".parse().unwrap();
        let config = client_config(&Trust::Insecure, false).unwrap();
        let mut client = *session(Some(&config), &url).unwrap().unwrap();
        while client.is_handshaking() || server.is_handshaking() {
            server.read_tls(&mut &wire(&mut client)[..]).unwrap();
            server.process_new_packets().unwrap();
            client.read_tls(&mut &wire(&mut server)[..]).unwrap();
            client.process_new_packets().unwrap();
        }
        (client, server)
    }

    /// Everything `conn` has to send.
    fn wire<D>(conn: &mut rustls::ConnectionCommon<D>) -> Vec<u8> {
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    /// A socket's receive queue: one read takes what fits, then `WouldBlock` (or the
    /// end-of-file once `eof`); it counts the reads.
    struct Queue {
        data: Vec<u8>,
        eof: bool,
        reads: usize,
    }

    impl Queue {
        fn new(data: Vec<u8>, eof: bool) -> Queue {
            Queue {
                data,
                eof,
                reads: 0,
            }
        }
    }

    impl Read for Queue {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            if self.data.is_empty() && !self.eof {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data.drain(..n);
            Ok(n)
        }
    }

    /// Reads plaintext through `inbox` until it says `WouldBlock` (`None`) or end (`Some`).
    fn drain(inbox: &mut Inbox, q: &mut Queue, tls: &mut ClientConnection) -> (Vec<u8>, bool) {
        let (mut got, mut dst) = (Vec::new(), [0u8; 3000]);
        loop {
            match inbox.read(q, tls, &mut dst) {
                Ok(0) => return (got, true),
                Ok(n) => got.extend_from_slice(&dst[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (got, false),
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn large_reads_are_decrypted_whole_and_an_empty_socket_is_not_read_again() {
        let (mut client, mut server) = pair();
        // Far more than the 16 KiB of plaintext rustls holds at once, and than one socket
        // read takes.
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        server.set_buffer_limit(None);
        server.writer().write_all(&sent).unwrap();
        let mut q = Queue::new(wire(&mut server), false);
        let mut inbox = Inbox::default();
        inbox.start(false);
        let (got, eof) = drain(&mut inbox, &mut q, &mut client);
        assert_eq!((got.len(), eof), (sent.len(), false));
        assert!(got == sent);
        // Two full reads, then a short one: the queue is empty, and the next edge will say
        // so, so it is not read again.
        assert_eq!(q.reads, 3);
    }

    #[test]
    fn data_and_close_notify_in_one_read_are_the_data_then_the_end() {
        let (mut client, mut server) = pair();
        server.writer().write_all(b"last words").unwrap();
        server.send_close_notify();
        let mut q = Queue::new(wire(&mut server), false);
        let mut inbox = Inbox::default();
        inbox.start(false);
        assert_eq!(
            drain(&mut inbox, &mut q, &mut client),
            (b"last words".to_vec(), true)
        );
        // A hang-up without close_notify is an end as well.
        let (mut client, _server) = pair();
        let mut q = Queue::new(Vec::new(), true);
        inbox.start(true);
        assert_eq!(drain(&mut inbox, &mut q, &mut client), (Vec::new(), true));
    }

    #[test]
    fn a_corrupt_record_is_a_tls_failure() {
        let (mut client, mut server) = pair();
        server.writer().write_all(b"hello").unwrap();
        let mut data = wire(&mut server);
        let last = data.len() - 1;
        data[last] ^= 1;
        let mut q = Queue::new(data, false);
        let mut inbox = Inbox::default();
        inbox.start(false);
        let e = inbox.read(&mut q, &mut client, &mut [0; 64]).unwrap_err();
        assert_eq!(failure("read", &e), "tls: cannot decrypt peer's message");
        let plain = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(failure("read", &plain), "read: connection reset");
    }
}
