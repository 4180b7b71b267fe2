//! Encode-once WebSocket frames.
//!
//! A broadcast is encoded exactly once, straight into its room's batch
//! (`rooms.rs`); at the end of the iteration the batch becomes one
//! immutable [`Frame`], and every recipient's queue holds a clone of that
//! one handle.
//! Cloning is a non-atomic reference-count bump (the loop is
//! single-threaded), so fan-out costs no allocation and no copy per
//! recipient, and one queue entry however many messages the iteration had.
//!
//! Server frames are never masked (RFC 6455 §5.1), which is what makes one
//! encoding valid for every recipient.

use std::ops::Deref;
use std::rc::Rc;

/// WebSocket opcode of a text data frame.
pub const OP_TEXT: u8 = 0x1;
/// WebSocket opcode of a binary data frame.
pub const OP_BINARY: u8 = 0x2;
/// WebSocket opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// WebSocket opcode of a ping frame.
pub const OP_PING: u8 = 0x9;
/// WebSocket opcode of a pong frame.
pub const OP_PONG: u8 = 0xA;

/// Close code: a normal closure (RFC 6455 §7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: the endpoint is going away (shutdown, idle timeout).
pub const CLOSE_AWAY: u16 = 1001;
/// Close code: a protocol error.
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Close code: a Close frame that carried no code (RFC 6455 §7.4.1; never
/// sent, only reported).
pub const CLOSE_NO_STATUS: u16 = 1005;
/// Close code: data inconsistent with the message type (invalid UTF-8).
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code: a policy violation (herald: a slow consumer).
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: a message too big to process.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: the server hit an unexpected condition.
pub const CLOSE_INTERNAL: u16 = 1011;

/// Largest header a server frame can have: 2 bytes plus a 64-bit length.
pub const MAX_HEADER_LEN: usize = 10;

/// An immutable, shareable run of bytes ready for the wire: one or more
/// whole frames, or an HTTP response.
///
/// # Invariants
/// A `Frame` is never mutated after construction, so a partially written
/// frame can be resumed at any offset on any connection that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(Rc<[u8]>);

impl Frame {
    /// Wraps bytes that are already encoded (an HTTP response, or frames
    /// produced by tungstenite) without interpreting them.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Frame(Rc::from(bytes))
    }

    /// Takes ownership of an encoded buffer.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        Frame(Rc::from(bytes))
    }
}

impl Deref for Frame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// Length of the header for an unmasked frame carrying `payload_len` bytes.
pub fn header_len(payload_len: usize) -> usize {
    match payload_len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// Appends the header of a final (FIN set), unmasked frame to `out`.
pub fn write_header(out: &mut Vec<u8>, opcode: u8, payload_len: usize) {
    out.push(0x80 | (opcode & 0x0F));
    match payload_len {
        0..=125 => out.push(payload_len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(payload_len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(payload_len as u64).to_be_bytes());
        }
    }
}

/// The opcode and payload of one final, unmasked frame as [`encode`] made
/// it.
pub fn split(frame: &[u8]) -> (u8, &[u8]) {
    let len = match frame[1] & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    (frame[0] & 0x0F, &frame[len..])
}

/// Encodes one final data frame whose payload is `prefix` followed by
/// `payload`, in a single allocation sized exactly for it.
///
/// This is the whole per-broadcast cost of herald's fan-out: one allocation
/// and one copy of the payload, however many recipients there are.
pub fn encode(opcode: u8, prefix: &[u8], payload: &[u8]) -> Frame {
    let len = prefix.len() + payload.len();
    let mut out = Vec::with_capacity(header_len(len) + len);
    write_header(&mut out, opcode, len);
    out.extend_from_slice(prefix);
    out.extend_from_slice(payload);
    Frame::from_vec(out)
}

/// Encodes a close frame with a status code and a reason.
///
/// Control frames carry at most 125 bytes (RFC 6455 §5.5), so the reason is
/// cut to 123 bytes at a character boundary.
pub fn encode_close(code: u16, reason: &str) -> Frame {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut out = Vec::with_capacity(4 + reason.len());
    write_header(&mut out, OP_CLOSE, 2 + reason.len());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
    Frame::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    use tungstenite::protocol::frame::Frame as TFrame;

    fn tungstenite_bytes(opcode: OpCode, payload: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        TFrame::message(payload, opcode, true)
            .format(&mut out)
            .expect("format into a Vec");
        out
    }

    #[test]
    fn matches_tungstenite_for_every_length_encoding() {
        // 7-bit, 16-bit and 64-bit lengths, and each boundary of them.
        for len in [0usize, 1, 125, 126, 127, 1000, 0xFFFF, 0x10000, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let ours = encode(OP_TEXT, b"", &payload);
            assert_eq!(
                &ours[..],
                &tungstenite_bytes(OpCode::Data(Data::Text), payload.clone())[..],
                "text, len {len}"
            );
            let ours = encode(OP_BINARY, b"", &payload);
            assert_eq!(
                &ours[..],
                &tungstenite_bytes(OpCode::Data(Data::Binary), payload)[..],
                "binary, len {len}"
            );
        }
    }

    #[test]
    fn prefix_is_part_of_the_payload() {
        let ours = encode(OP_TEXT, b"Message from server: ", b"hi");
        let expected = tungstenite_bytes(
            OpCode::Data(Data::Text),
            b"Message from server: hi".to_vec(),
        );
        assert_eq!(&ours[..], &expected[..]);
        // 120 + 10 bytes crosses from the 7-bit into the 16-bit length form.
        let ours = encode(OP_TEXT, &[b'p'; 120], &[b'x'; 10]);
        let mut whole = vec![b'p'; 120];
        whole.extend_from_slice(&[b'x'; 10]);
        assert_eq!(
            &ours[..],
            &tungstenite_bytes(OpCode::Data(Data::Text), whole)[..]
        );
    }

    #[test]
    fn close_frame_matches_tungstenite_and_caps_reason() {
        use tungstenite::protocol::frame::coding::CloseCode;
        use tungstenite::protocol::CloseFrame;
        let mut expected = Vec::new();
        TFrame::close(Some(CloseFrame {
            code: CloseCode::Size,
            reason: "too big".into(),
        }))
        .format(&mut expected)
        .unwrap();
        assert_eq!(&encode_close(1009, "too big")[..], &expected[..]);

        let long = "é".repeat(100);
        let frame = encode_close(1008, &long);
        assert!(frame.len() <= 2 + 125);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }
}
