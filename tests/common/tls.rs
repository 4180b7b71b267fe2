//! TLS for the tests of herald's own TLS (`--tls-cert`, `--tls-key`):
//! self-signed certificates made by `rcgen` and written as PEM files into
//! a temporary directory, rustls clients that trust exactly them, and
//! wss:// and https:// exchanges over `rustls::StreamOwned` on a blocking
//! socket with [`TIMEOUT`] on reads and writes.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned, SupportedProtocolVersion,
};
use tungstenite::{Message, WebSocket};

use super::{read_head_exact, read_http_response, tcp, upgrade_request, HttpResponse, TempDir};

/// A self-signed certificate for `localhost` and `127.0.0.1`, and its key.
pub struct TestCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The certificate, DER: what a client trusts and what it is shown.
    pub der: CertificateDer<'static>,
}

impl TestCert {
    /// A fresh certificate and key (each call a different pair).
    pub fn new() -> Self {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("rcgen: a self-signed certificate");
        TestCert {
            cert_pem: made.cert.pem(),
            key_pem: made.signing_key.serialize_pem(),
            der: made.cert.der().clone(),
        }
    }
}

/// `cert.pem` and `key.pem` in a temporary directory (removed on drop):
/// the paths herald is given and, on SIGHUP, reads again.
pub struct CertFiles {
    /// `--tls-cert`.
    pub cert: PathBuf,
    /// `--tls-key`.
    pub key: PathBuf,
    dir: TempDir,
}

impl CertFiles {
    /// The files, holding `cert`'s certificate and key.
    pub fn new(cert: &TestCert) -> Self {
        let dir = TempDir::new("tls");
        let files = CertFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            dir,
        };
        files.write(&cert.cert_pem, &cert.key_pem);
        files
    }

    /// Replaces both files' contents, each by a rename: a reader sees the
    /// old file or the new one, never half of one.
    pub fn write(&self, cert_pem: &str, key_pem: &str) {
        for (path, text) in [(&self.cert, cert_pem), (&self.key, key_pem)] {
            let tmp = path.with_extension("new");
            fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
            fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
        }
    }

    /// A file in the same directory (removed with it).
    pub fn other(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// `--tls-cert CERT --tls-key KEY`.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }
}

/// A rustls client that trusts the certificates `trusted` only, offers
/// ALPN `http/1.1`, and speaks the protocol `versions` (TLS 1.3 and 1.2 if
/// empty).
pub fn client_config(
    trusted: &[&TestCert],
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in trusted {
        roots
            .add(cert.der.clone())
            .expect("trust the test certificate");
    }
    let versions = if versions.is_empty() {
        &[&rustls::version::TLS13, &rustls::version::TLS12][..]
    } else {
        versions
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS stream over a blocking socket.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A WebSocket client over TLS.
pub type WssClient = WebSocket<TlsStream>;

/// A client session for `localhost`, not started.
pub fn client_session(config: &Arc<ClientConfig>) -> ClientConnection {
    let name = ServerName::try_from("localhost").expect("server name");
    ClientConnection::new(config.clone(), name).expect("client session")
}

/// Runs the TLS handshake over `sock` (already connected, with its
/// timeouts set); panics if it fails.
pub fn tls_over(sock: TcpStream, config: &Arc<ClientConfig>) -> TlsStream {
    let mut stream = StreamOwned::new(client_session(config), sock);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .unwrap_or_else(|e| panic!("TLS handshake failed: {e}"));
    }
    stream
}

/// A TLS connection to `addr`, handshake done.
pub fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> TlsStream {
    tls_over(tcp(addr), config)
}

/// A wss:// client on `path` (`/`, `/rooms/NAME`) over `stream`.
pub fn wss_over(stream: TlsStream, path: &str) -> WssClient {
    let url = format!("wss://localhost{path}");
    let (ws, resp) = tungstenite::client(url.as_str(), stream)
        .unwrap_or_else(|e| panic!("WebSocket handshake for {url} failed: {e}"));
    assert_eq!(resp.status(), 101, "upgrade answered with {resp:?}");
    ws
}

/// A wss:// client on `path` of `addr`.
pub fn wss_connect(addr: SocketAddr, config: &Arc<ClientConfig>, path: &str) -> WssClient {
    wss_over(tls_connect(addr, config), path)
}

/// Sends a text message on any WebSocket.
pub fn send<S: Read + Write>(ws: &mut WebSocket<S>, text: &str) {
    ws.send(Message::text(text))
        .unwrap_or_else(|e| panic!("sending {} bytes: {e}", text.len()));
}

/// The next message on any WebSocket, which must be text.
pub fn recv<S: Read + Write>(ws: &mut WebSocket<S>) -> String {
    match ws.read() {
        Ok(Message::Text(t)) => t.as_str().to_owned(),
        Ok(other) => panic!("expected a text message, got {other:?}"),
        Err(e) => panic!("expected a text message, got error: {e}"),
    }
}

/// Sends `request` over a fresh TLS connection and reads one response
/// (its `Content-Length` body); the stream is returned, still open.
pub fn https_exchange(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    request: &[u8],
) -> (HttpResponse, TlsStream) {
    let mut s = tls_connect(addr, config);
    s.write_all(request).expect("write request");
    s.flush().expect("flush request");
    let resp = read_http_response(&mut s, false);
    (resp, s)
}

/// A wss:// connection upgraded by hand on `/`: the TLS stream after the
/// `101`, with no WebSocket client over it (nothing buffered, no read
/// buffer held), for tests that only keep connections open.
pub fn wss_upgraded(addr: SocketAddr, config: &Arc<ClientConfig>) -> TlsStream {
    let mut s = tls_connect(addr, config);
    s.write_all(upgrade_request("13", "").as_bytes())
        .expect("send upgrade");
    let head = read_head_exact(&mut s).unwrap_or_else(|e| panic!("upgrade response: {e}"));
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    s
}

/// `GET path` over TLS with `Connection: close`: the response.
pub fn https_get(addr: SocketAddr, config: &Arc<ClientConfig>, path: &str) -> HttpResponse {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    https_exchange(addr, config, request.as_bytes()).0
}

/// Reads raw bytes from `s` until EOF or a reset; returns them, or the
/// error if the read timed out ([`TIMEOUT`] unless the caller set less).
pub fn read_to_close(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(got),
            Err(e) => return Err(e),
        }
    }
}

/// The address herald logged for `--tls-listen` (`TLS listening addr=…`).
pub fn logged_tls_addr(line: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .and_then(|a| a.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no addr= in {line:?}"))
}

/// Whether `e`, read through rustls, is only the end of a stream the
/// peer closed without close_notify or reset.
pub fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}
