//! The HTTP front door: request heads (one after another on a kept-alive
//! connection), parsed without blocking, answered with a WebSocket upgrade,
//! the chat page, health, metrics, a publish or a status.
//!
//! [`route`] is a pure function of the bytes received so far (given the
//! configuration and the server's [`Phase`]), so the whole front door can
//! be fuzzed and property-tested without sockets.

use crate::frame::Frame;

/// The chat page, compiled into the binary.
pub const CHAT_PAGE: &str = include_str!("page.html");

/// Request heads larger than this get 431.
pub const MAX_HEAD_LEN: usize = 8 * 1024;

/// Headers beyond this count get 431.
pub const MAX_HEADERS: usize = 64;

/// Longest room name, in bytes.
pub const MAX_ROOM_NAME: usize = 64;

/// Whether `name` is a room name: 1 to [`MAX_ROOM_NAME`] bytes of
/// `A-Z a-z 0-9 . _ ~ -` (URL-unreserved, so a name needs no escaping in a
/// path or a query, and is printed as is in logs).
pub fn valid_room_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ROOM_NAME
        && name
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'~' | b'-'))
}

const BAD_ROOM: &str = "invalid room name: 1 to 64 of A-Z a-z 0-9 . _ ~ -";

/// What the front door needs to know besides the bytes.
#[derive(Debug, Clone, Default)]
pub struct RouteConfig {
    /// Allowed browser origins (`--allow-origin`), as [`origin_allowed`]
    /// matches them; empty allows all.
    pub allow_origins: Vec<String>,
    /// Reject upgrades without `Origin`.
    pub require_origin: bool,
    /// Path of the metrics endpoint, if enabled.
    pub metrics_path: Option<String>,
    /// The bearer token `POST /publish` needs; `None` disables the endpoint.
    pub publish_token: Option<String>,
    /// Largest body `POST /publish` accepts.
    pub max_body: usize,
}

/// Whether the server is taking new clients. State, not configuration:
/// it changes once, when shutdown begins, so it is passed to [`route`]
/// beside the [`RouteConfig`] the command line fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving: upgrades are accepted, connections kept alive.
    Serving,
    /// Shutting down: no new WebSockets, no connection kept alive, and
    /// health answers 503.
    Draining,
}

/// What to do with the bytes received so far on an HTTP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The head is not complete yet: read more.
    Incomplete,
    /// A valid WebSocket upgrade; answer with `response` (101) and switch
    /// protocols.
    Upgrade {
        /// The 101 response, `Sec-WebSocket-Accept` included.
        response: Vec<u8>,
        /// The room joined (`/rooms/NAME`); `None` is the lobby (`/`).
        room: Option<String>,
    },
    /// A request answered at once: the chat page, health or metrics.
    Get {
        /// Which resource.
        what: Resource,
        /// Bytes of the request head.
        head_len: usize,
        /// Whether to send the body (false for HEAD).
        body: bool,
        /// Whether the connection stays open for another request.
        keep_alive: bool,
    },
    /// `POST /publish`, authorised; `body_len` bytes follow the head.
    Publish {
        /// Bytes of the request head.
        head_len: usize,
        /// Bytes of the body (`Content-Length`), within the limit.
        body_len: usize,
        /// Broadcast as a binary frame (else text).
        binary: bool,
        /// Whether the connection stays open for another request.
        keep_alive: bool,
        /// The room published to (`?room=NAME`); `None` is the lobby.
        room: Option<String>,
    },
    /// An error status with a one-line reason, then close.
    Reject(Status, &'static str),
}

/// Resources served by plain GET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// The chat page.
    Page,
    /// `/healthz`: 200 while the process serves.
    Health,
    /// `/readyz`: 200 while it can also reach every other node (the bus is up).
    Ready,
    /// The Prometheus exposition.
    Metrics,
}

/// The method and path of a request head (`input` starts with its request
/// line), for the access log; `None` if the line is not complete or not
/// text.
pub fn request_line(input: &[u8]) -> Option<(&str, &str)> {
    let end = input.iter().position(|&b| b == b'\r' || b == b'\n')?;
    let line = std::str::from_utf8(&input[..end]).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    Some((method, target.split('?').next().unwrap_or(target)))
}

/// The status code of a response herald built (`HTTP/1.1 NNN ...`).
pub fn status_of(response: &[u8]) -> Option<u16> {
    std::str::from_utf8(response.get(9..12)?).ok()?.parse().ok()
}

/// The statuses the front door answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 400: malformed request or bad upgrade headers.
    BadRequest,
    /// 401: `POST /publish` without the right bearer token.
    Unauthorized,
    /// 403: an `Origin` that is not allowed.
    Forbidden,
    /// 404: no such path.
    NotFound,
    /// 405: the path exists, the method does not; carries the `Allow` value.
    MethodNotAllowed(&'static str),
    /// 408: the head did not arrive within the handshake timeout.
    RequestTimeout,
    /// 411: a body without `Content-Length`.
    LengthRequired,
    /// 413: a body over the limit.
    PayloadTooLarge,
    /// 415: a publish body that is neither text nor octet-stream.
    UnsupportedMediaType,
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
            Status::Unauthorized => 401,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed(_) => 405,
            Status::RequestTimeout => 408,
            Status::LengthRequired => 411,
            Status::PayloadTooLarge => 413,
            Status::UnsupportedMediaType => 415,
            Status::UpgradeRequired => 426,
            Status::HeadersTooLarge => 431,
            Status::Unavailable => 503,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Status::BadRequest => "Bad Request",
            Status::Unauthorized => "Unauthorized",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed(_) => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::LengthRequired => "Length Required",
            Status::PayloadTooLarge => "Payload Too Large",
            Status::UnsupportedMediaType => "Unsupported Media Type",
            Status::UpgradeRequired => "Upgrade Required",
            Status::HeadersTooLarge => "Request Header Fields Too Large",
            Status::Unavailable => "Service Unavailable",
        }
    }

    /// Headers this status must carry besides the common ones.
    fn extra_headers(self) -> String {
        match self {
            Status::MethodNotAllowed(allow) => format!("Allow: {allow}\r\n"),
            Status::Unauthorized => "WWW-Authenticate: Bearer\r\n".into(),
            Status::UpgradeRequired => "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n".into(),
            _ => String::new(),
        }
    }
}

/// A complete response with a body.
pub fn response(status: &str, content_type: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    response_with(status, "", content_type, body, true, keep_alive)
}

/// A complete response with a body, or its head alone for `HEAD`
/// (`send_body` false), with the `Content-Length` of the body either way.
pub fn reply(
    status: &str,
    content_type: &str,
    body: &[u8],
    send_body: bool,
    keep_alive: bool,
) -> Frame {
    Frame::from_vec(response_with(
        status,
        "",
        content_type,
        body,
        send_body,
        keep_alive,
    ))
}

fn response_with(
    status: &str,
    extra: &str,
    content_type: &str,
    body: &[u8],
    send_body: bool,
    keep_alive: bool,
) -> Vec<u8> {
    let conn = if keep_alive { "keep-alive" } else { "close" };
    let mut out = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nConnection: {conn}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if send_body {
        out.extend_from_slice(body);
    }
    out
}

/// The full response for an error status: a one-line plain-text reason,
/// and `Connection: close`.
pub fn error_response(status: Status, reason: &str) -> Frame {
    let line = format!("{} {}", status.code(), status.text());
    let body = format!("{reason}\n");
    Frame::from_vec(response_with(
        &line,
        &status.extra_headers(),
        "text/plain; charset=utf-8",
        body.as_bytes(),
        true,
        false,
    ))
}

/// The full response for the chat page.
pub fn page_response(body: bool, keep_alive: bool) -> Frame {
    Frame::from_vec(response_with(
        "200 OK",
        "",
        "text/html; charset=utf-8",
        CHAT_PAGE.as_bytes(),
        body,
        keep_alive,
    ))
}

/// A `text/plain` 200 or 503 (health), honouring HEAD.
pub fn text_response(ok: bool, text: &str, body: bool, keep_alive: bool) -> Frame {
    let status = if ok {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    Frame::from_vec(response_with(
        status,
        "",
        "text/plain; charset=utf-8",
        text.as_bytes(),
        body,
        keep_alive,
    ))
}

/// Decides what the request head at the start of `buf` asks for, in the
/// server's `phase`.
///
/// Never panics, whatever the bytes; bounded by [`MAX_HEAD_LEN`] and
/// [`MAX_HEADERS`].
pub fn route(buf: &[u8], cfg: &RouteConfig, phase: Phase) -> Route {
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
    let (path, query) = match target.split('#').next().unwrap_or("").split_once('?') {
        Some((path, query)) => (path, query),
        None => (target.split('#').next().unwrap_or(""), ""),
    };
    let h = Headers(req.headers);

    if version == 1 && h.get("host").is_none() {
        return Route::Reject(Status::BadRequest, "missing Host header");
    }
    if let Some(why) = h.repeated_singleton() {
        return Route::Reject(Status::BadRequest, why);
    }
    let content_length = match h.get("content-length") {
        None => None,
        Some(v) => match canonical_decimal(trim_ows(v)) {
            Some(n) => Some(n),
            None => return Route::Reject(Status::BadRequest, "invalid Content-Length"),
        },
    };
    let chunked = h.get("transfer-encoding").is_some();
    let keep_alive = if version == 1 {
        !h.has_token("connection", "close")
    } else {
        h.has_token("connection", "keep-alive")
    };

    if path == "/publish" && cfg.publish_token.is_some() {
        let room = match query.split('&').find_map(|p| p.strip_prefix("room=")) {
            None => None,
            Some(name) if valid_room_name(name.as_bytes()) => Some(name),
            Some(_) => return Route::Reject(Status::BadRequest, BAD_ROOM),
        };
        let mut route = route_publish(
            method,
            &h,
            content_length,
            chunked,
            head_len,
            keep_alive,
            cfg,
        );
        if let Route::Publish { room: to, .. } = &mut route {
            *to = room.map(String::from);
        }
        return route;
    }
    let room = match path.strip_prefix("/rooms/") {
        Some(name) if valid_room_name(name.as_bytes()) => Some(name),
        Some(_) => return Route::Reject(Status::BadRequest, BAD_ROOM),
        None => None,
    };
    let what = match path {
        "/" => Resource::Page,
        _ if room.is_some() => Resource::Page,
        "/healthz" => Resource::Health,
        "/readyz" => Resource::Ready,
        p if cfg.metrics_path.as_deref() == Some(p) => Resource::Metrics,
        _ => return Route::Reject(Status::NotFound, "no such path"),
    };
    let is_get = method == "GET";
    if !is_get && method != "HEAD" {
        return Route::Reject(
            Status::MethodNotAllowed("GET, HEAD"),
            "only GET and HEAD are allowed here",
        );
    }
    if chunked || content_length.is_some_and(|n| n > 0) {
        return Route::Reject(Status::BadRequest, "a GET request has no body");
    }
    let wants_upgrade = h.get("upgrade").is_some() || h.get("sec-websocket-key").is_some();
    if !(wants_upgrade && what == Resource::Page) {
        return Route::Get {
            what,
            head_len,
            body: is_get,
            keep_alive: keep_alive && phase == Phase::Serving,
        };
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
    match h.get("origin") {
        Some(origin) if !origin_allowed(origin, &cfg.allow_origins) => {
            return Route::Reject(Status::Forbidden, "origin not allowed")
        }
        None if cfg.require_origin => {
            return Route::Reject(Status::Forbidden, "an Origin header is required")
        }
        _ => {}
    }
    if buf.len() > head_len {
        // RFC 6455 §4.1: the client sends no frames before the 101.
        return Route::Reject(
            Status::BadRequest,
            "data sent before the handshake completed",
        );
    }
    if phase == Phase::Draining {
        return Route::Reject(Status::Unavailable, "server shutting down");
    }
    let accept = tungstenite::handshake::derive_accept_key(key);
    Route::Upgrade {
        response: format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes(),
        room: room.map(String::from),
    }
}

/// `POST /publish`: checks method, token, length and type, in that order,
/// so that an unauthorised client learns nothing about the limits.
fn route_publish(
    method: &str,
    h: &Headers<'_, '_>,
    content_length: Option<u64>,
    chunked: bool,
    head_len: usize,
    keep_alive: bool,
    cfg: &RouteConfig,
) -> Route {
    if method != "POST" {
        return Route::Reject(
            Status::MethodNotAllowed("POST"),
            "only POST is allowed here",
        );
    }
    let token = cfg.publish_token.as_deref().unwrap_or_default();
    let authorised = h
        .get("authorization")
        .and_then(|v| {
            // The scheme name is case-insensitive (RFC 9110 §11.1).
            let (scheme, rest) = v.split_at_checked(7)?;
            scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
        })
        .is_some_and(|t| constant_time_eq(t.trim_ascii(), token.as_bytes()));
    if !authorised {
        return Route::Reject(Status::Unauthorized, "a valid bearer token is required");
    }
    if chunked {
        return Route::Reject(
            Status::LengthRequired,
            "chunked bodies are not accepted; send Content-Length",
        );
    }
    let Some(len) = content_length else {
        return Route::Reject(Status::LengthRequired, "Content-Length is required");
    };
    if len > cfg.max_body as u64 {
        return Route::Reject(
            Status::PayloadTooLarge,
            "body larger than --max-message-size",
        );
    }
    let binary = match h.get("content-type").map(media_type) {
        None => false,
        Some(t) if t.eq_ignore_ascii_case(b"text/plain") => false,
        Some(t) if t.eq_ignore_ascii_case(b"application/octet-stream") => true,
        Some(_) => {
            return Route::Reject(
                Status::UnsupportedMediaType,
                "use text/plain or application/octet-stream",
            )
        }
    };
    Route::Publish {
        head_len,
        body_len: len as usize,
        binary,
        keep_alive,
        room: None,
    }
}

/// The media type of a `Content-Type` value, parameters stripped.
fn media_type(v: &[u8]) -> &[u8] {
    v.split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// Compares without an early exit, so timing does not reveal how much of
/// a guessed token is right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Whether `origin` (an `Origin` header value) matches one of the
/// `--allow-origin` patterns. No patterns: any value, even one that is not
/// an origin, is allowed.
///
/// The value must be an origin as browsers serialise it (RFC 6454 §6.2):
/// `scheme://host[:port]`, the host a DNS name (letters, digits, `-`, `_`),
/// an IPv4 address or a bracketed IPv6 address, the port 1 to 65535 without
/// leading zeros; optional whitespace (SP, HTAB) around it. Anything else,
/// `null` included, matches no pattern. The patterns:
///
/// - an exact origin, `https://a.example` (a trailing `/` is ignored):
///   scheme and host compared case-insensitively, the port exactly, an
///   absent port matching only an absent port;
/// - a host, `a.example`: that host, whatever the scheme and port;
/// - a suffix pattern, `*.example`: any host ending in `.example`, not
///   `example` itself.
///
/// A pattern that does not fit its form matches nothing.
pub fn origin_allowed(origin: &[u8], patterns: &[String]) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let Some(origin) = Origin::parse(origin) else {
        return false;
    };
    patterns.iter().any(|p| origin.matches(p))
}

/// An origin, parsed: the parts patterns are compared with.
struct Origin<'a> {
    scheme: &'a str,
    /// IPv6 addresses keep their brackets.
    host: &'a str,
    port: Option<u16>,
}

impl<'a> Origin<'a> {
    /// `scheme://host[:port]` and nothing else (see [`origin_allowed`]).
    fn parse(value: &'a [u8]) -> Option<Self> {
        let value = trim_ows(value);
        // Visible ASCII only: no whitespace inside, no control characters,
        // nothing a lenient reader might normalise into something else.
        if !value.iter().all(u8::is_ascii_graphic) {
            return None;
        }
        let value = std::str::from_utf8(value).ok()?;
        let (scheme, authority) = value.split_once("://")?;
        let scheme_ok = scheme.as_bytes().first()?.is_ascii_alphabetic()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !scheme_ok {
            return None;
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(rest) => {
                let (address, after) = rest.split_once(']')?;
                address.parse::<std::net::Ipv6Addr>().ok()?;
                (&authority[..address.len() + 2], after)
            }
            None => {
                let end = authority.find(':').unwrap_or(authority.len());
                let (host, after) = authority.split_at(end);
                if !is_dns_name_or_ipv4(host) {
                    return None;
                }
                (host, after)
            }
        };
        // A path, query, fragment or userinfo leaves a `/`, `?`, `#` or `@`
        // in the host or the port, and neither takes one.
        let port = match port {
            "" => None,
            p => {
                let n = canonical_decimal(p.strip_prefix(':')?.as_bytes())?;
                Some(u16::try_from(n).ok().filter(|&n| n != 0)?)
            }
        };
        Some(Origin { scheme, host, port })
    }

    fn matches(&self, pattern: &str) -> bool {
        if let Some(suffix) = pattern.strip_prefix("*.") {
            // The host is ASCII, so any byte index into it is a char boundary.
            let Some(cut) = self.host.len().checked_sub(suffix.len() + 1) else {
                return false;
            };
            let (head, tail) = self.host.split_at(cut);
            !head.is_empty() && tail.starts_with('.') && tail[1..].eq_ignore_ascii_case(suffix)
        } else if pattern.contains("://") {
            // Written as a URL (`https://a.example/`), still an origin.
            Origin::parse(pattern.trim_end_matches('/').as_bytes()).is_some_and(|p| {
                p.scheme.eq_ignore_ascii_case(self.scheme)
                    && p.host.eq_ignore_ascii_case(self.host)
                    && p.port == self.port
            })
        } else {
            self.host.eq_ignore_ascii_case(pattern)
        }
    }
}

/// Dot-separated labels of letters, digits, `-` and `_` (browsers allow
/// `_`, and it cannot delimit anything); all-digit last label: IPv4, in
/// the dotted-decimal form browsers serialise.
fn is_dns_name_or_ipv4(host: &str) -> bool {
    let labels_ok = host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    let last = host.rsplit('.').next().unwrap_or_default();
    labels_ok
        && (!last.bytes().all(|b| b.is_ascii_digit()) || host.parse::<std::net::Ipv4Addr>().is_ok())
}

/// `1*DIGIT` with no sign and no leading zero (but `0` itself), within
/// `u64`. Stricter than `str::parse`, which takes `+5`: a proxy that reads
/// a length differently from us is how requests get smuggled.
fn canonical_decimal(digits: &[u8]) -> Option<u64> {
    match digits {
        [] => None,
        [b'0', _, ..] => None,
        _ => digits.iter().try_fold(0u64, |n, &d| {
            if !d.is_ascii_digit() {
                return None;
            }
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        }),
    }
}

/// `v` without the optional whitespace (SP, HTAB) around a field value
/// (RFC 9110 §5.6.3); not `trim`, which also eats Unicode spaces.
fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
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

    /// The reason to refuse a request that repeats a header the front door
    /// reads once: which copy counts is where a proxy and herald could
    /// disagree. RFC 9112 §3.2 (`Host`), RFC 6454 §7.3 (`Origin`) and
    /// RFC 6455 §11.3 (the WebSocket headers) allow one of each.
    fn repeated_singleton(&self) -> Option<&'static str> {
        const SINGLETONS: [(&str, &str); 5] = [
            ("host", "repeated Host"),
            ("content-length", "repeated Content-Length"),
            ("origin", "repeated Origin"),
            ("sec-websocket-key", "repeated Sec-WebSocket-Key"),
            ("sec-websocket-version", "repeated Sec-WebSocket-Version"),
        ];
        SINGLETONS.iter().find_map(|&(name, why)| {
            let mut copies = self.0.iter().filter(|h| h.name.eq_ignore_ascii_case(name));
            (copies.next().is_some() && copies.next().is_some()).then_some(why)
        })
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

    fn cfg() -> RouteConfig {
        RouteConfig {
            metrics_path: Some("/metrics".into()),
            publish_token: Some("s3cret".into()),
            max_body: 1024,
            ..RouteConfig::default()
        }
    }

    fn upgrade(extra: &str) -> String {
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn code(req: &str, cfg: &RouteConfig) -> u16 {
        match route(req.as_bytes(), cfg, Phase::Serving) {
            Route::Reject(s, _) => s.code(),
            Route::Upgrade { .. } => 101,
            Route::Get { .. } => 200,
            Route::Publish { .. } => 202,
            Route::Incomplete => 0,
        }
    }

    #[test]
    fn upgrade_gets_the_rfc_accept_key() {
        match route(upgrade("").as_bytes(), &cfg(), Phase::Serving) {
            Route::Upgrade { response, .. } => {
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
        let c = cfg();
        let cases: &[(&str, u16)] = &[
            ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", 200),
            ("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200),
            ("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200),
            ("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404),
            ("POST / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
            ("GET / HTTP/1.1\r\n\r\n", 400),
            ("G\0T / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: banana\r\n\r\n", 400),
            ("GET /publish HTTP/1.1\r\nHost: x\r\n\r\n", 405),
            ("POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n", 401),
            (
                "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nContent-Length: 2\r\n\r\n",
                401,
            ),
            (
                "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n",
                411,
            ),
            (
                "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: 2000\r\n\r\n",
                413,
            ),
            (
                "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: 2\r\n\r\n",
                202,
            ),
        ];
        for (req, want) in cases {
            assert_eq!(code(req, &c), *want, "{req:?}");
        }
        let off = RouteConfig::default();
        assert_eq!(code("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &off), 404);
        assert_eq!(code("POST /publish HTTP/1.1\r\nHost: x\r\n\r\n", &off), 404);

        let v12 = upgrade("").replace("Version: 13", "Version: 12");
        assert_eq!(code(&v12, &c), 426);
        assert_eq!(code(&upgrade("").replace(KEY, "short"), &c), 400);
        let mut junk = upgrade("").into_bytes();
        junk.extend_from_slice(b"\x81\x80abcd");
        assert!(matches!(
            route(&junk, &c, Phase::Serving),
            Route::Reject(Status::BadRequest, _)
        ));
    }

    #[test]
    fn publish_content_types() {
        let c = cfg();
        let req = |ct: &str| {
            format!(
                "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\
                 Content-Length: 2\r\n{ct}\r\n"
            )
        };
        let binary = |r: Route| match r {
            Route::Publish { binary, .. } => Some(binary),
            _ => None,
        };
        assert_eq!(
            binary(route(req("").as_bytes(), &c, Phase::Serving)),
            Some(false)
        );
        let text = req("Content-Type: text/plain; charset=utf-8\r\n");
        assert_eq!(
            binary(route(text.as_bytes(), &c, Phase::Serving)),
            Some(false)
        );
        let bin = req("Content-Type: application/octet-stream\r\n");
        assert_eq!(
            binary(route(bin.as_bytes(), &c, Phase::Serving)),
            Some(true)
        );
        assert_eq!(code(&req("Content-Type: image/png\r\n"), &c), 415);
    }

    #[test]
    fn origins() {
        let pats: Vec<String> = vec![
            "https://chat.example.com".into(),
            "*.good.org".into(),
            "localhost".into(),
        ];
        assert!(origin_allowed(b"https://chat.example.com", &pats));
        assert!(!origin_allowed(b"http://chat.example.com", &pats));
        assert!(origin_allowed(b"https://a.good.org", &pats));
        assert!(origin_allowed(b"https://a.b.good.org:8443", &pats));
        assert!(!origin_allowed(b"https://good.org", &pats));
        assert!(!origin_allowed(b"https://evilgood.org", &pats));
        assert!(origin_allowed(b"http://localhost:8080", &pats));
        assert!(!origin_allowed(b"null", &pats));
        assert!(origin_allowed(b"https://anything", &[]));
        assert!(origin_allowed(b"null", &[]));

        // The bypasses: the raw text ends with an allowed host.
        for not_an_origin in [
            "https://evil.com?.good.org",
            "https://evil.com#.good.org",
            "https://evil.com/.good.org",
            "https://evil.com@a.good.org",
            "https://evil.com\\.good.org",
            "https://a.good.org/",
            "https://a.good.org:0",
            "https://a.good.org:65536",
            "https://a.good.org:080",
            "https://a.good.org:",
            "https://a..good.org",
            "https:// a.good.org",
            "ht tps://a.good.org",
            "1https://a.good.org",
            "https:/a.good.org",
            "https://a.good.org\u{a0}",
            "https://a.g\u{f6}od.org",
            "https://[::1",
            "https://[::1]x",
            "https://[a.good.org]",
            "https://1.2.3.999",
            "https://chat.example.com:443",
            "http://localhost:8080/",
        ] {
            assert!(
                !origin_allowed(not_an_origin.as_bytes(), &pats),
                "{not_an_origin:?}"
            );
        }
        for origin in [
            "HTTPS://A.GOOD.ORG:65535",
            " https://a.good.org\t",
            "https://my_host.good.org",
            "chrome-extension+x.1://a.good.org",
        ] {
            assert!(origin_allowed(origin.as_bytes(), &pats), "{origin:?}");
        }
        // Literal addresses: IPv6 bracketed, compared as written.
        let ips: Vec<String> = vec!["[::1]".into(), "http://127.0.0.1:8080/".into()];
        assert!(origin_allowed(b"http://[::1]:8080", &ips));
        assert!(origin_allowed(b"http://127.0.0.1:8080", &ips));
        assert!(!origin_allowed(b"http://127.0.0.1", &ips));
        assert!(!origin_allowed(b"http://[::2]", &ips));
        // A pattern that is not an origin matches nothing.
        let bad: Vec<String> = vec!["https://a.good.org/path".into()];
        assert!(!origin_allowed(b"https://a.good.org", &bad));

        let c = RouteConfig {
            allow_origins: pats,
            ..cfg()
        };
        assert_eq!(code(&upgrade("Origin: https://evil.com\r\n"), &c), 403);
        assert_eq!(code(&upgrade("Origin: https://x.good.org\r\n"), &c), 101);
        assert_eq!(code(&upgrade(""), &c), 101);
        let strict = RouteConfig {
            require_origin: true,
            ..c
        };
        assert_eq!(code(&upgrade(""), &strict), 403);
        let two = upgrade("Origin: https://x.good.org\r\nOrigin: https://x.good.org\r\n");
        assert_eq!(
            route(two.as_bytes(), &strict, Phase::Serving),
            Route::Reject(Status::BadRequest, "repeated Origin")
        );
        assert_eq!(
            route(two.as_bytes(), &cfg(), Phase::Serving),
            Route::Reject(Status::BadRequest, "repeated Origin")
        );
    }

    #[test]
    fn repeated_headers_the_front_door_reads_are_400() {
        let c = cfg();
        let cases = [
            (upgrade("Host: y\r\n"), "repeated Host"),
            (
                "GET /healthz HTTP/1.0\r\nHost: x\r\nHost: x\r\n\r\n".into(),
                "repeated Host",
            ),
            (
                upgrade(&format!("Sec-WebSocket-Key: {KEY}\r\n")),
                "repeated Sec-WebSocket-Key",
            ),
            (
                upgrade("sec-websocket-version: 13\r\n"),
                "repeated Sec-WebSocket-Version",
            ),
            (
                upgrade("Content-Length: 0\r\nContent-Length: 0\r\n"),
                "repeated Content-Length",
            ),
        ];
        for (req, why) in cases {
            assert_eq!(
                route(req.as_bytes(), &c, Phase::Serving),
                Route::Reject(Status::BadRequest, why),
                "{req:?}"
            );
        }
        // Other headers may repeat.
        assert_eq!(code(&upgrade("Upgrade: websocket\r\n"), &c), 101);
    }

    #[test]
    fn content_length_is_canonical_digits() {
        let c = cfg();
        let publish = |v: &str| {
            format!(
                "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\
                 Content-Length: {v}\r\n\r\n"
            )
        };
        for v in [
            "+5",
            "-5",
            "005",
            "00",
            "0x5",
            "5 5",
            "5,5",
            "\u{a0}5",
            "5\u{3000}",
            "\u{ff15}",
            "\u{665}",
            "",
            "18446744073709551616",
        ] {
            for req in [
                publish(v),
                format!("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: {v}\r\n\r\n"),
            ] {
                assert_eq!(
                    route(req.as_bytes(), &c, Phase::Serving),
                    Route::Reject(Status::BadRequest, "invalid Content-Length"),
                    "{v:?}"
                );
            }
        }
        for (v, n) in [("5", 5), (" \t5\t ", 5), ("0", 0), ("1024", 1024)] {
            match route(publish(v).as_bytes(), &c, Phase::Serving) {
                Route::Publish { body_len, .. } => assert_eq!(body_len, n, "{v:?}"),
                other => panic!("{v:?}: {other:?}"),
            }
        }
        assert_eq!(code(&publish("18446744073709551615"), &c), 413);
        assert_eq!(
            code("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", &c),
            200
        );
    }

    #[test]
    fn transfer_encoding_is_refused() {
        let c = cfg();
        let te = "Transfer-Encoding: chunked\r\n";
        assert_eq!(
            code(&format!("GET / HTTP/1.1\r\nHost: x\r\n{te}\r\n"), &c),
            400
        );
        assert_eq!(code(&upgrade(te), &c), 400);
        let publish = format!(
            "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n{te}\
             Content-Length: 2\r\n\r\n"
        );
        assert_eq!(code(&publish, &c), 411);
        let identity = publish.replace("chunked", "identity");
        assert_eq!(code(&identity, &c), 411);
    }

    #[test]
    fn head_limits() {
        let c = cfg();
        let partial = "GET / HTTP/1.1\r\nHost: x\r\n";
        assert_eq!(
            route(partial.as_bytes(), &c, Phase::Serving),
            Route::Incomplete
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_LEN));
        assert_eq!(code(&big, &c), 431);
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect();
        let req = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(
            route(req.as_bytes(), &c, Phase::Serving),
            Route::Reject(Status::HeadersTooLarge, "too many headers")
        );
    }

    #[test]
    fn draining_turns_new_clients_away() {
        let c = cfg();
        let health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        for (phase, upgraded, kept_alive) in [
            (Phase::Serving, true, true),
            (Phase::Draining, false, false),
        ] {
            match route(upgrade("").as_bytes(), &c, phase) {
                Route::Upgrade { .. } => assert!(upgraded, "{phase:?}"),
                Route::Reject(status, _) => {
                    assert!(!upgraded, "{phase:?}");
                    assert_eq!(status, Status::Unavailable);
                }
                other => panic!("{phase:?}: {other:?}"),
            }
            match route(health, &c, phase) {
                Route::Get { keep_alive, .. } => assert_eq!(keep_alive, kept_alive, "{phase:?}"),
                other => panic!("{phase:?}: {other:?}"),
            }
        }
    }
}
