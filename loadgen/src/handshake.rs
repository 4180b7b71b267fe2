//! The client side of the RFC 6455 opening handshake, and the `ws://` or `wss://` URL it
//! needs.

use sha1::{Digest, Sha1};

/// A parsed `ws://host:port/path` or `wss://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// The server's socket address (the host must be an IP literal or `localhost`).
    pub addr: std::net::SocketAddr,
    /// The `Host` header value.
    pub host: String,
    /// Path and query, at least `/`.
    pub path: String,
    /// `wss://`: the connection (and a publisher's HTTP connection) speaks TLS.
    pub tls: bool,
}

impl WsUrl {
    /// `ws` or `wss`.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "wss"
        } else {
            "ws"
        }
    }

    /// The host without its port or an IPv6 address's brackets: the name a TLS
    /// certificate must be valid for.
    pub fn hostname(&self) -> &str {
        let host = match self.host.rfind(']') {
            Some(i) => &self.host[..=i],
            None => self.host.rsplit_once(':').map_or(&*self.host, |(h, _)| h),
        };
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

impl std::fmt::Display for WsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme(), self.host, self.path)
    }
}

impl std::str::FromStr for WsUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (rest, tls, port) = match (s.strip_prefix("ws://"), s.strip_prefix("wss://")) {
            (Some(rest), _) => (rest, false, 80),
            (_, Some(rest)) => (rest, true, 443),
            _ => return Err(format!("{s}: only ws:// and wss:// URLs are supported")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let has_port = match authority.rfind(']') {
            Some(i) => authority[i..].contains(':'),
            None => authority.contains(':'),
        };
        let with_port = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:{port}")
        };
        let resolvable = with_port.replacen("localhost:", "127.0.0.1:", 1);
        let addr = resolvable
            .parse()
            .map_err(|e| format!("{s}: host must be an IP address or localhost ({e})"))?;
        Ok(WsUrl {
            addr,
            host: authority.to_string(),
            path: path.to_string(),
            tls,
        })
    }
}

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value a server must answer to `key`.
pub fn accept_for(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    data_encoding::BASE64.encode(&sha.finalize())
}

/// A fresh `Sec-WebSocket-Key` (16 bytes from `rand`, base64-encoded).
pub fn new_key(rand: &mut crate::rng::Rng) -> String {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&rand.next_u64().to_ne_bytes());
    nonce[8..].copy_from_slice(&rand.next_u64().to_ne_bytes());
    data_encoding::BASE64.encode(&nonce)
}

/// Appends the upgrade request for `path` on `url`'s host with `key` to `out`.
pub fn write_request(url: &WsUrl, path: &str, key: &str, out: &mut Vec<u8>) {
    use std::io::Write;
    write!(
        out,
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        path, url.host, key
    )
    .expect("writing to a Vec cannot fail");
}

/// Why a handshake failed; the `Display` text is the reason failures are counted by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The response is not valid HTTP.
    Malformed,
    /// A status other than 101.
    Status(u16),
    /// `Upgrade: websocket` or `Connection: upgrade` missing.
    NotUpgrade,
    /// `Sec-WebSocket-Accept` missing or wrong.
    BadAccept,
    /// The response head exceeds 16 KiB.
    TooLong,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Malformed => write!(f, "handshake: malformed HTTP response"),
            HandshakeError::Status(s) => write!(f, "handshake: HTTP status {s}"),
            HandshakeError::NotUpgrade => write!(f, "handshake: no Upgrade/Connection header"),
            HandshakeError::BadAccept => write!(f, "handshake: bad Sec-WebSocket-Accept"),
            HandshakeError::TooLong => write!(f, "handshake: response head over 16 KiB"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Parses the response head at the start of `buf` into `resp`: `Ok(None)` while it is
/// incomplete, else its length.
///
/// # Errors
/// [`HandshakeError::Malformed`] or [`HandshakeError::TooLong`] (over 16 KiB).
pub fn parse_head<'b>(
    resp: &mut httparse::Response<'_, 'b>,
    buf: &'b [u8],
) -> Result<Option<usize>, HandshakeError> {
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buf.len() > 16 * 1024 => Err(HandshakeError::TooLong),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(HandshakeError::Malformed),
    }
}

/// The value of the first header called `name` (any case).
pub fn header<'b>(headers: &[httparse::Header<'b>], name: &str) -> Option<&'b [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Checks the server's response in `buf` against the expected accept value.
///
/// Returns `Ok(None)` while the head is incomplete, else the head's length (bytes after it
/// are already WebSocket frames).
///
/// # Errors
/// A [`HandshakeError`] when the server refused or answered wrongly.
pub fn check_response(buf: &[u8], expected_accept: &str) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let Some(len) = parse_head(&mut resp, buf)? else {
        return Ok(None);
    };
    match resp.code {
        Some(101) => {}
        Some(code) => return Err(HandshakeError::Status(code)),
        None => return Err(HandshakeError::Malformed),
    }
    let header = |name: &str| header(resp.headers, name);
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(HandshakeError::NotUpgrade);
    }
    match header("sec-websocket-accept") {
        Some(v) if v.trim_ascii() == expected_accept.as_bytes() => Ok(Some(len)),
        _ => Err(HandshakeError::BadAccept),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_example_accept() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn urls() {
        let u: WsUrl = "ws://127.0.0.1:9001/chat?x=1".parse().unwrap();
        assert_eq!(u.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(
            (u.host.as_str(), u.path.as_str()),
            ("127.0.0.1:9001", "/chat?x=1")
        );
        let u: WsUrl = "ws://localhost:8080".parse().unwrap();
        assert_eq!((u.addr.port(), u.path.as_str()), (8080, "/"));
        let u: WsUrl = "ws://[::1]:7000/".parse().unwrap();
        assert_eq!(u.addr, "[::1]:7000".parse().unwrap());
        assert!("http://127.0.0.1/".parse::<WsUrl>().is_err());
        assert_eq!((u.hostname(), u.scheme()), ("::1", "ws"));
    }

    #[test]
    fn wss_urls() {
        let u: WsUrl = "wss://127.0.0.1/chat".parse().unwrap();
        assert_eq!(
            (u.addr.port(), u.tls, u.hostname()),
            (443, true, "127.0.0.1")
        );
        assert_eq!(u.to_string(), "wss://127.0.0.1/chat");
        let u: WsUrl = "wss://localhost:8443".parse().unwrap();
        assert_eq!((u.addr.port(), u.hostname()), (8443, "localhost"));
        assert_eq!(u.to_string(), "wss://localhost:8443/");
        let u: WsUrl = "wss://[::1]".parse().unwrap();
        assert_eq!((u.addr.port(), u.hostname()), (443, "::1"));
        let u: WsUrl = "ws://127.0.0.1:9001/".parse().unwrap();
        assert!(!u.tls);
    }

    #[test]
    fn responses() {
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                  Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        let accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        assert_eq!(check_response(ok.as_bytes(), accept), Ok(Some(ok.len())));
        assert_eq!(check_response(&ok.as_bytes()[..40], accept), Ok(None));
        assert_eq!(
            check_response(ok.as_bytes(), "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Err(HandshakeError::BadAccept)
        );
        let refused = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            check_response(refused, accept),
            Err(HandshakeError::Status(503))
        );
        assert_eq!(
            check_response(b"SSH-2.0\r\n\r\n", accept),
            Err(HandshakeError::Malformed)
        );
    }
}
