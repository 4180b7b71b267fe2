//! loadgen's frame parser reads what tungstenite (a reference implementation) encodes,
//! and tungstenite reads what loadgen's client encoder masks.

use loadgen::frame::{self, Frame};
use std::io::Cursor;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame as TFrame;
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

/// What a parsed frame held, owned.
#[derive(Debug, PartialEq, Eq)]
struct Owned {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl From<Frame<'_>> for Owned {
    fn from(f: Frame<'_>) -> Owned {
        Owned {
            fin: f.fin,
            opcode: f.opcode,
            payload: f.payload.to_vec(),
        }
    }
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Server frames as tungstenite formats them, with what each must parse to.
fn reference_stream() -> (Vec<u8>, Vec<Owned>) {
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    let mut push = |f: TFrame, fin: bool, opcode: u8, p: Vec<u8>| {
        f.format(&mut wire).unwrap();
        expected.push(Owned {
            fin,
            opcode,
            payload: p,
        });
    };
    // All three length encodings, at their edges.
    for len in [0, 1, 85, 125, 126, 127, 1000, 65535, 65536, 70_000] {
        let p = payload(len, len as u8);
        push(
            TFrame::message(p.clone(), OpCode::Data(Data::Text), true),
            true,
            frame::OP_TEXT,
            p,
        );
    }
    // A fragmented binary message: start, continuation, final continuation.
    let parts = [payload(10, 1), payload(300, 2), payload(70_000, 3)];
    push(
        TFrame::message(parts[0].clone(), OpCode::Data(Data::Binary), false),
        false,
        frame::OP_BINARY,
        parts[0].clone(),
    );
    push(
        TFrame::message(parts[1].clone(), OpCode::Data(Data::Continue), false),
        false,
        frame::OP_CONTINUATION,
        parts[1].clone(),
    );
    // Control frames may come between fragments.
    push(
        TFrame::ping(b"are you there".to_vec()),
        true,
        frame::OP_PING,
        b"are you there".to_vec(),
    );
    push(
        TFrame::message(parts[2].clone(), OpCode::Data(Data::Continue), true),
        true,
        frame::OP_CONTINUATION,
        parts[2].clone(),
    );
    push(TFrame::pong(Vec::new()), true, frame::OP_PONG, Vec::new());
    push(
        TFrame::ping(payload(125, 9)),
        true,
        frame::OP_PING,
        payload(125, 9),
    );
    let close = TFrame::close(None);
    push(close, true, frame::OP_CLOSE, Vec::new());
    (wire, expected)
}

/// Parses `wire` as if it arrived in reads of `chunk` bytes, carrying incomplete tails.
fn parse_in_chunks(wire: &[u8], chunk: usize) -> Vec<Owned> {
    let mut out = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    for piece in wire.chunks(chunk) {
        pending.extend_from_slice(piece);
        let mut pos = 0;
        while let Some((f, used)) = frame::parse(&pending[pos..], 1 << 20).unwrap() {
            out.push(Owned::from(f));
            pos += used;
        }
        pending.drain(..pos);
    }
    assert!(pending.is_empty(), "{} bytes left unparsed", pending.len());
    out
}

#[test]
fn parses_every_length_encoding_fragment_and_control_frame() {
    let (wire, expected) = reference_stream();
    assert_eq!(parse_in_chunks(&wire, wire.len()), expected);
}

#[test]
fn parses_the_same_whatever_the_read_boundaries() {
    let (wire, expected) = reference_stream();
    for chunk in [1, 2, 3, 7, 64, 1000, 4096, 65537] {
        assert_eq!(
            parse_in_chunks(&wire, chunk),
            expected,
            "reads of {chunk} bytes"
        );
    }
}

#[test]
fn a_masked_frame_from_tungstenite_is_rejected() {
    // A client-role frame is masked: a server must never send one.
    let mut f = TFrame::message(b"masked".to_vec(), OpCode::Data(Data::Text), true);
    f.header_mut().mask = Some([1, 2, 3, 4]);
    let mut wire = Vec::new();
    f.format(&mut wire).unwrap();
    assert_eq!(frame::parse(&wire, 1 << 20), Err(frame::FrameError::Masked));
}

#[test]
fn tungstenite_reads_loadgens_masked_client_frames() {
    let mut wire = Vec::new();
    let sizes = [0usize, 64, 125, 126, 65535, 65536, 100_000];
    for (i, &len) in sizes.iter().enumerate() {
        let text: String = (0..len)
            .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
            .collect();
        frame::encode_masked(
            frame::OP_TEXT,
            text.as_bytes(),
            [i as u8, 0x5A, 0xC3, 7],
            &mut wire,
        );
    }
    frame::encode_masked(frame::OP_PONG, b"pong!", [1, 2, 3, 4], &mut wire);
    frame::encode_masked(
        frame::OP_CLOSE,
        &1000u16.to_be_bytes(),
        [9, 9, 9, 9],
        &mut wire,
    );
    let mut ws = WebSocket::from_raw_socket(Cursor::new(wire), Role::Server, None);
    for (i, &len) in sizes.iter().enumerate() {
        match ws.read().unwrap() {
            Message::Text(t) => {
                assert_eq!(t.len(), len);
                assert!(t
                    .bytes()
                    .enumerate()
                    .all(|(j, b)| b == b'a' + ((i + j) % 26) as u8));
            }
            other => panic!("expected text, got {other:?}"),
        }
    }
    assert_eq!(ws.read().unwrap(), Message::Pong(b"pong!".to_vec().into()));
    match ws.read().unwrap() {
        Message::Close(Some(c)) => assert_eq!(u16::from(c.code), 1000),
        other => panic!("expected close, got {other:?}"),
    }
}
