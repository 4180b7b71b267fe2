//! The HTTP front door: one request head per connection, parsed without
//! blocking, answered with a WebSocket upgrade, the chat page or a status.
//!
//! [`route`] is a pure function of the bytes received so far, so the whole
//! front door can be fuzzed and property-tested without sockets.

use crate::frame::Frame;

/// The chat page, compiled into the binary.
pub const CHAT_PAGE: &str = include_str!("page.html");

/// Request heads larger than this get 431.
pub const MAX_HEAD_LEN: usize = 8 * 1024;

/// Headers beyond this count get 431.
pub const MAX_HEADERS: usize = 64;

/// What to do with the bytes received so far on a fresh connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The head is not complete yet: read more.
    Incomplete,
    /// A valid WebSocket upgrade; answer with `response` (101) and switch
    /// protocols. `head_len` bytes belong to the request.
    Upgrade {
        /// The 101 response, `Sec-WebSocket-Accept` included.
        response: Vec<u8>,
    },
    /// `GET /` (or `HEAD /`): the chat page, then close.
    Page {
        /// Whether to send the body (false for HEAD).
        body: bool,
    },
    /// An error status with a one-line reason, then close.
    Reject(Status, &'static str),
}

/// The statuses the front door answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 400: malformed request or bad upgrade headers.
    BadRequest,
    /// 403: an `Origin` that is not allowed.
    Forbidden,
    /// 404: no such path.
    NotFound,
    /// 405: the path exists, the method does not.
    MethodNotAllowed,
    /// 408: the head did not arrive within the handshake timeout.
    RequestTimeout,
    /// 426: a WebSocket version other than 13.
    UpgradeRequired,
    /// 431: the head is too large or has too many headers.
    HeadersTooLarge,
    /// 503: at the connection limit or shutting down.
    Unavailable,
}

impl Status {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            Status::BadRequest => 400,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::UpgradeRequired => 426,
            Status::HeadersTooLarge => 431,
            Status::Unavailable => 503,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Status::BadRequest => "Bad Request",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::UpgradeRequired => "Upgrade Required",
            Status::HeadersTooLarge => "Request Header Fields Too Large",
            Status::Unavailable => "Service Unavailable",
        }
    }

    /// Headers this status must carry besides the common ones.
    fn extra_headers(self) -> &'static str {
        match self {
            Status::MethodNotAllowed => "Allow: GET, HEAD\r\n",
            Status::UpgradeRequired => "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n",
            _ => "",
        }
    }
}

/// The full response for an error status: a one-line plain-text reason,
/// and `Connection: close`.
pub fn error_response(status: Status, reason: &str) -> Frame {
    let body = format!("{reason}\n");
    Frame::from_vec(
        format!(
            "HTTP/1.1 {} {}\r\n{}Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            status.code(),
            status.text(),
            status.extra_headers(),
            body.len()
        )
        .into_bytes(),
    )
}

/// The full response for the chat page.
pub fn page_response(body: bool) -> Frame {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
        CHAT_PAGE.len()
    )
    .into_bytes();
    if body {
        out.extend_from_slice(CHAT_PAGE.as_bytes());
    }
    Frame::from_vec(out)
}

/// Decides what the request head in `buf` asks for.
///
/// Never panics, whatever the bytes; bounded by [`MAX_HEAD_LEN`] and
/// [`MAX_HEADERS`].
pub fn route(buf: &[u8]) -> Route {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD_LEN => n,
        Ok(httparse::Status::Complete(_)) => {
            return Route::Reject(Status::HeadersTooLarge, "request head too large")
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_LEN => {
            return Route::Reject(Status::HeadersTooLarge, "request head too large")
        }
        Ok(httparse::Status::Partial) => return Route::Incomplete,
        Err(httparse::Error::TooManyHeaders) => {
            return Route::Reject(Status::HeadersTooLarge, "too many headers")
        }
        Err(_) => return Route::Reject(Status::BadRequest, "malformed request head"),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Route::Reject(Status::BadRequest, "malformed request line");
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    let h = Headers(req.headers);

    if version == 1 && h.get("host").is_none() {
        return Route::Reject(Status::BadRequest, "missing Host header");
    }
    if h.count("content-length") > 1 {
        return Route::Reject(Status::BadRequest, "repeated Content-Length");
    }
    let has_body = match h.get("content-length") {
        None => false,
        Some(v) => match std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            Some(n) => n > 0,
            None => return Route::Reject(Status::BadRequest, "invalid Content-Length"),
        },
    } || h.get("transfer-encoding").is_some();

    match path {
        "/" => {}
        _ => return Route::Reject(Status::NotFound, "no such path"),
    }
    let is_get = method == "GET";
    if !is_get && method != "HEAD" {
        return Route::Reject(
            Status::MethodNotAllowed,
            "only GET and HEAD are allowed here",
        );
    }
    if has_body {
        return Route::Reject(Status::BadRequest, "a GET request has no body");
    }
    let wants_upgrade = h.get("upgrade").is_some() || h.get("sec-websocket-key").is_some();
    if !wants_upgrade {
        return Route::Page { body: is_get };
    }
    if !is_get {
        return Route::Reject(Status::BadRequest, "a WebSocket upgrade must use GET");
    }
    if version != 1 {
        return Route::Reject(Status::BadRequest, "a WebSocket upgrade needs HTTP/1.1");
    }
    if !h.has_token("upgrade", "websocket") {
        return Route::Reject(Status::BadRequest, "Upgrade header must be websocket");
    }
    if !h.has_token("connection", "upgrade") {
        return Route::Reject(Status::BadRequest, "Connection header must include Upgrade");
    }
    match h.get("sec-websocket-version") {
        Some(v) if v.trim_ascii() == b"13" => {}
        Some(_) => {
            return Route::Reject(
                Status::UpgradeRequired,
                "only WebSocket version 13 is supported",
            )
        }
        None => return Route::Reject(Status::BadRequest, "missing Sec-WebSocket-Version"),
    }
    let key = match h.get("sec-websocket-key") {
        Some(k) if is_valid_key(k.trim_ascii()) => k.trim_ascii(),
        Some(_) => return Route::Reject(Status::BadRequest, "invalid Sec-WebSocket-Key"),
        None => return Route::Reject(Status::BadRequest, "missing Sec-WebSocket-Key"),
    };
    if buf.len() > head_len {
        // RFC 6455 §4.1: the client sends no frames before the 101.
        return Route::Reject(
            Status::BadRequest,
            "data sent before the handshake completed",
        );
    }
    let accept = tungstenite::handshake::derive_accept_key(key);
    Route::Upgrade {
        response: format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes(),
    }
}

/// A 16-byte nonce in base64: 22 alphabet characters and `==`.
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// Case-insensitive header look-ups over httparse's parsed headers.
struct Headers<'h, 'b>(&'h [httparse::Header<'b>]);

impl<'b> Headers<'_, 'b> {
    fn get(&self, name: &str) -> Option<&'b [u8]> {
        self.0
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    fn count(&self, name: &str) -> usize {
        self.0
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    }

    /// Whether any header `name` lists `token` among its comma-separated values.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.0
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| h.value.split(|b| *b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn upgrade(extra: &str) -> String {
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    #[test]
    fn upgrade_gets_the_rfc_accept_key() {
        match route(upgrade("").as_bytes()) {
            Route::Upgrade { response } => {
                let r = String::from_utf8(response).unwrap();
                // The worked example of RFC 6455 §1.3.
                assert!(r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
                assert!(r.starts_with("HTTP/1.1 101 "));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn statuses() {
        let cases: &[(&str, Option<u16>)] = &[
            ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", None),
            ("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", Some(404)),
            ("POST / HTTP/1.1\r\nHost: x\r\n\r\n", Some(405)),
            ("GET / HTTP/1.1\r\n\r\n", Some(400)),
            ("G\0T / HTTP/1.1\r\n\r\n", Some(400)),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
                Some(400),
            ),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: banana\r\n\r\n",
                Some(400),
            ),
        ];
        for (req, want) in cases {
            let got = match route(req.as_bytes()) {
                Route::Reject(s, _) => Some(s.code()),
                Route::Page { .. } => None,
                other => panic!("{req:?}: {other:?}"),
            };
            assert_eq!(got, *want, "{req:?}");
        }
        let v12 = upgrade("").replace("Version: 13", "Version: 12");
        assert_eq!(
            route(v12.as_bytes()),
            Route::Reject(
                Status::UpgradeRequired,
                "only WebSocket version 13 is supported"
            )
        );
        let nokey = upgrade("").replace(KEY, "short");
        assert!(matches!(
            route(nokey.as_bytes()),
            Route::Reject(Status::BadRequest, _)
        ));
        let mut junk = upgrade("").into_bytes();
        junk.extend_from_slice(b"\x81\x80abcd");
        assert!(matches!(route(&junk), Route::Reject(Status::BadRequest, _)));
    }

    #[test]
    fn head_limits() {
        let partial = "GET / HTTP/1.1\r\nHost: x\r\n";
        assert_eq!(route(partial.as_bytes()), Route::Incomplete);
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_LEN));
        assert!(matches!(
            route(big.as_bytes()),
            Route::Reject(Status::HeadersTooLarge, _)
        ));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect();
        let req = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(
            route(req.as_bytes()),
            Route::Reject(Status::HeadersTooLarge, "too many headers")
        );
    }
}
