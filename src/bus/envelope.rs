//! The envelope a broadcast travels in over Redis: compact, binary,
//! versioned.
//!
//! ```text
//! offset  size  field
//!      0     1  version (1)
//!      1     1  WebSocket opcode of the message (1 text, 2 binary)
//!      2     1  flags: bit 0 set for a client's message, which each node
//!               prefixes with its --prefix (publishes and feed lines go as they are)
//!      3     8  node: the publishing process's random id
//!     11     8  stream: when that node began this stream (a room's life on
//!               that node), in microseconds since the Unix epoch, unique per node
//!     19     8  seq: 1, 2, 3… within the stream
//!     27     8  sent: microseconds since the Unix epoch, when the node published it
//!     35     …  the payload, as the client sent it (no prefix)
//! ```
//! All integers big-endian. The room is the channel, not a field.
//!
//! A node's sequence is counted per stream, not per node: a node publishes to
//! many channels and a receiver hears only those it subscribes to, so one
//! counter per node would show gaps that are only other rooms' messages. A
//! stream is one room's life on the publishing node (a room emptied and made
//! again is a new stream), so a receiver that tracks `(node, stream)` sees
//! every number in order, and a missing one is a lost message. A stream first
//! seen past its start lost its head here if it began after this node's room
//! did: so the stream is named by its start time.

/// The version this build writes and reads.
pub const VERSION: u8 = 1;

/// Bytes before the payload.
pub const HEADER_LEN: usize = 35;

/// Flag: a client's message, prefixed where it is delivered.
pub const FROM_CLIENT: u8 = 1;

/// One decoded envelope, its payload borrowed from the bytes it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The message's WebSocket opcode.
    pub opcode: u8,
    /// [`FROM_CLIENT`] or 0.
    pub flags: u8,
    /// The publishing node.
    pub node: u64,
    /// The publisher's stream for this room: when it began.
    pub stream: u64,
    /// Position in the stream, from 1.
    pub seq: u64,
    /// When it was published, in microseconds since the Unix epoch, by the
    /// publisher's clock (only compared with the same node's clock).
    pub sent_us: u64,
    /// The message as the client sent it.
    pub payload: &'a [u8],
}

impl Envelope<'_> {
    /// Appends the encoded envelope to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.reserve(HEADER_LEN + self.payload.len());
        out.push(VERSION);
        out.push(self.opcode);
        out.push(self.flags);
        out.extend_from_slice(&self.node.to_be_bytes());
        out.extend_from_slice(&self.stream.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.sent_us.to_be_bytes());
        out.extend_from_slice(self.payload);
    }
}

fn u64_be(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().expect("8 bytes"))
}

/// Decodes `bytes`; `None` for anything this version cannot read (too
/// short, another version, an opcode that is not data, a sequence number
/// or stream of 0).
pub fn read(bytes: &[u8]) -> Option<Envelope<'_>> {
    if bytes.len() < HEADER_LEN || bytes[0] != VERSION || !matches!(bytes[1], 1 | 2) {
        return None;
    }
    // Sequences start at 1; streams are start times, never 0.
    if u64_be(&bytes[19..27]) == 0 || u64_be(&bytes[11..19]) == 0 {
        return None;
    }
    let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().unwrap());
    Some(Envelope {
        opcode: bytes[1],
        flags: bytes[2],
        node: u64_at(3),
        stream: u64_at(11),
        seq: u64_at(19),
        sent_us: u64_at(27),
        payload: &bytes[HEADER_LEN..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_reads_back_what_was_written() {
        let e = Envelope {
            opcode: 2,
            flags: FROM_CLIENT,
            node: 0x0102_0304_0506_0708,
            stream: 7,
            seq: u64::MAX - 1,
            sent_us: 1_764_547_200_000_000,
            payload: b"\x00\xffhello",
        };
        let mut out = vec![0xAA];
        e.write(&mut out);
        assert_eq!(out.len(), 1 + HEADER_LEN + e.payload.len());
        assert_eq!(read(&out[1..]), Some(e));
    }

    #[test]
    fn what_this_version_cannot_read_is_refused() {
        let mut out = Vec::new();
        Envelope {
            opcode: 1,
            flags: 0,
            node: 1,
            stream: 1,
            seq: 1,
            sent_us: 0,
            payload: b"",
        }
        .write(&mut out);
        assert!(read(&out).is_some());
        assert!(read(&out[..HEADER_LEN - 1]).is_none());
        let mut other = out.clone();
        other[0] = 2;
        assert!(read(&other).is_none(), "another version");
        let mut control = out.clone();
        control[1] = 9;
        assert!(read(&control).is_none(), "a ping is not a broadcast");
    }
}
