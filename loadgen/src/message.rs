//! The payload loadgen publishes, and how a delivery is recognised.
//!
//! A published message is ASCII text of exactly `size` bytes (servers prefix text, and the
//! Node.js `ws` chat server herald reimplements (`benches/peers/node/server.js`) stringifies
//! what it receives, so the payload must be valid UTF-8):
//!
//! ```text
//! P<publisher: 8 hex>S<sequence: 16 hex>T<intended send time, ns: 16 hex>....
//! ```
//!
//! padded with `.` to `size`. A delivery is the server's prefix followed by that message.

/// Bytes of the fixed header of a message; the smallest valid `--size`.
pub const HEADER_LEN: usize = 1 + 8 + 1 + 16 + 1 + 16;

/// The fields a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the publishing client (0-based, below `--publishers`).
    pub publisher: u32,
    /// The publisher's sequence number, from 0, one per message.
    pub seq: u64,
    /// When the message was meant to be sent (`clock::now_ns`): latency is measured from
    /// here, so a stalled sender does not hide the stall (coordinated omission).
    pub intended_ns: u64,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 0xF) as usize];
        v >>= 4;
    }
}

/// Writes `stamp` into `out` (whose length is the message size, at least [`HEADER_LEN`]).
pub fn encode(stamp: Stamp, out: &mut [u8]) {
    assert!(out.len() >= HEADER_LEN, "message shorter than its header");
    out[0] = b'P';
    put_hex(&mut out[1..9], stamp.publisher as u64);
    out[9] = b'S';
    put_hex(&mut out[10..26], stamp.seq);
    out[26] = b'T';
    put_hex(&mut out[27..43], stamp.intended_ns);
    out[HEADER_LEN..].fill(b'.');
}

/// Decodes 8 lower-case hex digits (most significant first) eight bytes at a time
/// (SWAR), or `None` if any byte is not `0-9a-f`.
#[inline]
fn hex8(digits: &[u8]) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let x = u64::from_le_bytes(digits.try_into().ok()?);
    // Per byte, bit 7 of `(x + (0x80 - lo)) & !(x + (0x80 - hi))` says lo <= b < hi;
    // valid only while no byte has bit 7 set (no carry crosses into the next byte).
    let between = |lo: u64, hi: u64| (x + (0x80 - lo) * ONES) & !(x + (0x80 - hi) * ONES);
    let valid =
        (between(b'0' as u64, b'9' as u64 + 1) | between(b'a' as u64, b'f' as u64 + 1)) & !x & HIGH;
    if valid != HIGH {
        return None;
    }
    // '0'..'9' -> 0..9 (low nibble); 'a'..'f' -> 1..6 + 9 (bit 6 set).
    let nibbles = (x & (0x0F * ONES)) + ((x >> 6) & ONES) * 9;
    // First digit in the top byte, then fold neighbouring nibbles, bytes and halves.
    let mut v = nibbles.swap_bytes();
    v = (v | (v >> 4)) & 0x00FF_00FF_00FF_00FF;
    v = (v | (v >> 8)) & 0x0000_FFFF_0000_FFFF;
    v = (v | (v >> 16)) & 0xFFFF_FFFF;
    Some(v as u32)
}

/// Decodes 16 lower-case hex digits.
#[inline]
fn hex16(digits: &[u8]) -> Option<u64> {
    Some((hex8(&digits[..8])? as u64) << 32 | hex8(&digits[8..16])? as u64)
}

/// Reads the stamp of a message (the payload after the server's prefix).
///
/// Returns `None` unless `msg` is exactly `size` bytes with a well-formed header.
#[inline]
pub fn decode(msg: &[u8], size: usize) -> Option<Stamp> {
    if msg.len() != size || size < HEADER_LEN {
        return None;
    }
    if msg[0] != b'P' || msg[9] != b'S' || msg[26] != b'T' {
        return None;
    }
    Some(Stamp {
        publisher: hex8(&msg[1..9])?,
        seq: hex16(&msg[10..26])?,
        intended_ns: hex16(&msg[27..43])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let stamp = Stamp {
            publisher: 0xdead_beef,
            seq: u64::MAX - 7,
            intended_ns: 1_234_567_890_123,
        };
        let mut buf = [0u8; 64];
        encode(stamp, &mut buf);
        assert!(buf.is_ascii());
        assert_eq!(decode(&buf, 64), Some(stamp));
        assert_eq!(decode(&buf[..63], 64), None, "truncated");
        let mut bad = buf;
        bad[5] = b'g';
        assert_eq!(decode(&bad, 64), None, "not hex");
        bad = buf;
        bad[5] = b'A';
        assert_eq!(decode(&bad, 64), None, "upper-case is not what we send");
    }

    #[test]
    fn hex_decoding_accepts_exactly_lower_case_hex() {
        for v in [0u32, 1, 9, 10, 15, 16, 0x0123_4567, 0x89ab_cdef, u32::MAX] {
            let text = format!("{v:08x}");
            assert_eq!(hex8(text.as_bytes()), Some(v), "{text}");
        }
        for b in 0..=255u8 {
            let mut text = *b"00000000";
            text[3] = b;
            let expect = (b as char).to_digit(16).filter(|_| !b.is_ascii_uppercase());
            assert_eq!(hex8(&text), expect.map(|d| d << 16), "byte {b:#x}");
        }
    }
}
