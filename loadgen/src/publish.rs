//! Publishing over HTTP (`--publish-via http`): `POST /publish` requests on one kept-alive
//! HTTP/1.1 connection per publisher, as a backend publishes to herald, and the check of
//! every answer (`202` with `{"recipients":N}`).
//!
//! Requests are pipelined; the answers come back in order, so the publisher matches each
//! to the oldest request still unanswered.

use crate::handshake::{self, HandshakeError, WsUrl};

/// The path publishes go to.
pub const PATH: &str = "/publish";

/// Everything of a publish request before its body, which is always `size` bytes: built
/// once per publisher, so each request costs two copies. `room`: the room to publish to
/// (`?room=NAME`; the lobby without).
pub fn request_head(url: &WsUrl, token: Option<&str>, size: usize, room: Option<&str>) -> Vec<u8> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let query = room.map_or(String::new(), |r| format!("?room={r}"));
    format!(
        "POST {PATH}{query} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: text/plain\r\n\
         Content-Length: {size}\r\n\r\n",
        url.host
    )
    .into_bytes()
}

/// One answer to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The `recipients` of a `{"recipients":N}` body, if the body is that.
    pub recipients: Option<u64>,
}

/// Largest answer body read (herald's are a few bytes; error pages are short too).
const MAX_BODY: usize = 64 * 1024;

/// Reads the first whole answer in `buf`: `Ok(None)` while it is incomplete, else the
/// answer and the bytes it took.
///
/// # Errors
/// The reason the bytes are not an HTTP answer this client can read (publish errors are
/// counted by it).
pub fn parse_answer(buf: &[u8]) -> Result<Option<(Answer, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let malformed = || "publish: malformed HTTP answer".to_string();
    let head = match handshake::parse_head(&mut resp, buf) {
        Ok(Some(n)) => n,
        Ok(None) => return Ok(None),
        Err(HandshakeError::TooLong) => return Err("publish: answer head over 16 KiB".into()),
        Err(_) => return Err(malformed()),
    };
    let status = resp.code.ok_or_else(malformed)?;
    let len = handshake::header(resp.headers, "content-length")
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok())
        .filter(|&n| n <= MAX_BODY)
        .ok_or("publish: answer without a usable Content-Length")?;
    let Some(body) = buf.get(head..head + len) else {
        return Ok(None);
    };
    let recipients = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("recipients")?.as_u64());
    Ok(Some((Answer { status, recipients }, head + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_the_token_type_and_length() {
        let url: WsUrl = "ws://127.0.0.1:9001/chat".parse().unwrap();
        let head = request_head(&url, Some("t0k"), 64, None);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /publish HTTP/1.1\r\nHost: 127.0.0.1:9001\r\nAuthorization: Bearer t0k\r\n\
             Content-Type: text/plain\r\nContent-Length: 64\r\n\r\n"
        );
        let head = request_head(&url, None, 43, None);
        assert!(!String::from_utf8(head).unwrap().contains("Authorization"));
        let head = request_head(&url, None, 43, Some("r3"));
        assert!(String::from_utf8(head)
            .unwrap()
            .starts_with("POST /publish?room=r3 HTTP/1.1\r\n"));
    }

    #[test]
    fn answers_in_a_pipelined_stream() {
        let accepted = herald::http::response(
            "202 Accepted",
            "application/json",
            b"{\"recipients\":1000}\n",
            true,
        );
        let refused = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 5\r\n\r\nnope\n";
        let mut wire = accepted.clone();
        wire.extend_from_slice(refused);
        let (a, used) = parse_answer(&wire).unwrap().unwrap();
        assert_eq!(
            (a, used),
            (
                Answer {
                    status: 202,
                    recipients: Some(1000)
                },
                accepted.len()
            )
        );
        let (b, used2) = parse_answer(&wire[used..]).unwrap().unwrap();
        assert_eq!(
            (b.status, b.recipients, used + used2),
            (401, None, wire.len())
        );
        for cut in 1..accepted.len() {
            assert_eq!(parse_answer(&accepted[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(parse_answer(b"HTTP/1.1 202 Accepted\r\n\r\n").is_err());
        assert!(parse_answer(b"SSH-2.0\r\n\r\n").is_err());
    }
}
