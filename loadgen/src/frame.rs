//! RFC 6455 framing as a client sees it: parsing the server's (unmasked) frames straight
//! out of a read buffer, and encoding the client's (masked) frames.
//!
//! The parser borrows: a [`Frame`] is a view into the caller's buffer, so parsing a batch
//! of frames from one `read` allocates nothing.

/// Opcode of a continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const OP_PONG: u8 = 0xA;

/// One frame, borrowed from the buffer it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// FIN bit: this frame ends its message.
    pub fin: bool,
    /// The 4-bit opcode (one of the `OP_*` constants).
    pub opcode: u8,
    /// The payload (server frames are unmasked, so these are the payload's bytes).
    pub payload: &'a [u8],
}

/// Why a frame is a protocol violation (the connection cannot continue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A reserved bit is set (no extension was negotiated).
    ReservedBits,
    /// The server masked its frame (RFC 6455 5.1: servers must not).
    Masked,
    /// The opcode is reserved.
    BadOpcode(u8),
    /// A control frame is fragmented or longer than 125 bytes.
    BadControl,
    /// A 64-bit length with its most significant bit set.
    BadLength,
    /// The payload is longer than the configured maximum.
    TooLarge(u64),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::ReservedBits => write!(f, "reserved bits set"),
            FrameError::Masked => write!(f, "masked server frame"),
            FrameError::BadOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            FrameError::BadControl => write!(f, "fragmented or oversized control frame"),
            FrameError::BadLength => write!(f, "64-bit length with the top bit set"),
            FrameError::TooLarge(n) => write!(f, "frame of {n} bytes over the limit"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Parses the frame at the start of `buf`.
///
/// Returns `Ok(None)` while `buf` holds less than a whole frame, else the frame and the
/// number of bytes it occupies.
///
/// # Errors
/// A [`FrameError`] when the bytes cannot be a valid server frame.
#[inline]
pub fn parse(buf: &[u8], max_payload: u64) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let (b0, b1) = match buf {
        [b0, b1, ..] => (*b0, *b1),
        _ => return Ok(None),
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    let (len, header) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(FrameError::BadLength);
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (n as u64, 2),
    };
    if opcode >= OP_CLOSE {
        if opcode > OP_PONG {
            return Err(FrameError::BadOpcode(opcode));
        }
        if !fin || len > 125 {
            return Err(FrameError::BadControl);
        }
    } else if opcode > OP_BINARY {
        return Err(FrameError::BadOpcode(opcode));
    }
    if len > max_payload {
        return Err(FrameError::TooLarge(len));
    }
    let end = header + len as usize;
    match buf.get(header..end) {
        Some(payload) => Ok(Some((
            Frame {
                fin,
                opcode,
                payload,
            },
            end,
        ))),
        None => Ok(None),
    }
}

/// Appends one masked client frame (FIN set) to `out`.
///
/// `mask` is the masking key; RFC 6455 wants it unpredictable, which matters against
/// proxies, not here, so callers draw it from a fast PRNG.
pub fn encode_masked(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.reserve(14 + payload.len());
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// XORs `data` with the repeating 4-byte `mask` (masking and unmasking are the same).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// Appends one unmasked (server-style) frame to `out`; used by tests and benches to
/// produce what a server would send.
pub fn encode_unmasked(fin: bool, opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_headers_and_payloads_wait_for_more() {
        let mut buf = Vec::new();
        encode_unmasked(true, OP_TEXT, &[b'x'; 300], &mut buf);
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut], 1 << 20), Ok(None), "cut at {cut}");
        }
        let (frame, used) = parse(&buf, 1 << 20).unwrap().unwrap();
        assert_eq!((used, frame.payload.len()), (buf.len(), 300));
    }

    #[test]
    fn protocol_violations_are_errors() {
        assert_eq!(parse(&[0x81, 0x80], 99), Err(FrameError::Masked));
        assert_eq!(parse(&[0xC1, 0x00], 99), Err(FrameError::ReservedBits));
        assert_eq!(parse(&[0x83, 0x00], 99), Err(FrameError::BadOpcode(3)));
        assert_eq!(parse(&[0x09, 0x00], 99), Err(FrameError::BadControl));
        assert_eq!(
            parse(&[0x89, 126, 0, 200], 999),
            Err(FrameError::BadControl)
        );
        assert_eq!(parse(&[0x81, 100], 99), Err(FrameError::TooLarge(100)));
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(parse(&huge, u64::MAX), Err(FrameError::BadLength));
    }

    #[test]
    fn masking_round_trips_and_marks_the_frame() {
        let mut out = Vec::new();
        encode_masked(OP_TEXT, b"hello, masked world", [1, 2, 3, 4], &mut out);
        assert_eq!(out[1], 0x80 | 19);
        let mut body = out[6..].to_vec();
        apply_mask(&mut body, [1, 2, 3, 4]);
        assert_eq!(body, b"hello, masked world");
    }
}
