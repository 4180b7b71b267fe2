//! Hostile WebSocket clients, on raw sockets after a real handshake:
//! frames that announce more than the limit (refused from the header,
//! before the payload), invalid UTF-8 caught in the first fragment, every
//! reserved bit and opcode, oversized control frames, invalid close codes,
//! floods of tiny fragments and of pings, data after a close frame. Each
//! offender gets the close code RFC 6455 gives for its fault, and the
//! clients around it keep receiving.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::thread;

use common::{
    connect, eventually, masked_frame, metric, raw_websocket, read_until_close_frame, recv_text,
    send_text, tcp_tiny_receive_buffer, Client, ServerFrame, TestServer, PREFIX, TIMEOUT,
    UNLIMITED,
};

/// Opens a WebSocket, writes `bytes` in one go and returns the close frame
/// herald answers with, checking that nothing came before it and that
/// herald then ends the connection.
fn close_for(addr: SocketAddr, bytes: &[u8]) -> ServerFrame {
    let mut s = raw_websocket(addr);
    // herald may hang up before it read everything: a failed write is fine.
    let _ = s.write_all(bytes);
    let (before, close) = read_until_close_frame(&mut s);
    assert!(before.is_empty(), "frames before the close: {before:?}");
    common::expect_eof(&mut s);
    close
}

/// Checks the close code for each case, then that a client connected
/// throughout still gets broadcasts.
fn each_closed_with(server: &TestServer, cases: &[(&str, Vec<u8>)], code: u16) {
    let mut bystander = connect(server.addr);
    for (what, bytes) in cases {
        let close = close_for(server.addr, bytes);
        assert_eq!(close.close_code(), code, "{what}: {}", close.close_reason());
    }
    still_served(server.addr, &mut bystander);
}

/// A message from a new client reaches `bystander`, and nothing else did
/// before it.
fn still_served(addr: SocketAddr, bystander: &mut Client) {
    let mut sender = connect(addr);
    send_text(&mut sender, "still served");
    assert_eq!(recv_text(bystander), format!("{PREFIX}still served"));
}

/// A client frame header (masked) announcing `len` payload bytes, with its
/// mask key, and no payload.
fn header_only(first: u8, len: u64) -> Vec<u8> {
    let mut out = vec![first, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[1, 2, 3, 4]);
    out
}

#[test]
fn a_frame_announcing_more_than_the_limit_is_refused_from_its_header() {
    // No payload follows the headers: a server that waited for it (or
    // tried to buffer it) would never answer, and the read would time out.
    let server = TestServer::start(&["--max-message-size", "1KiB"]);
    let mut just_over = vec![0x81, 0x80 | 126];
    just_over.extend_from_slice(&1025u16.to_be_bytes());
    just_over.extend_from_slice(&[1, 2, 3, 4]);
    let cases = [
        ("1 GiB text frame", header_only(0x81, 1 << 30)),
        ("1 GiB binary frame", header_only(0x82, 1 << 30)),
        ("first fragment of 2^62 bytes", header_only(0x01, 1 << 62)),
        ("1025 bytes in a 16-bit length", just_over),
    ];
    each_closed_with(&server, &cases, 1009);
    let over = close_for(server.addr, &header_only(0x81, 1 << 30));
    assert_eq!(over.close_reason(), "message too big");
}

#[test]
fn a_64_bit_length_with_its_top_bit_set_is_refused() {
    // RFC 6455 §5.2: the most significant bit of a 64-bit length must be 0.
    let server = TestServer::start(&[]);
    let cases = [("length 2^63", header_only(0x82, 1 << 63))];
    each_closed_with(&server, &cases, 1009);
}

#[test]
fn invalid_utf8_is_caught_in_the_first_fragment_without_waiting_for_the_rest() {
    let server = TestServer::start(&[]);
    let cases = [
        (
            "0xFF in an unfinished message",
            masked_frame(0x01, b"ok \xff"),
        ),
        ("an overlong encoding", masked_frame(0x01, b"\xc0\xaf")),
        (
            "a surrogate half (CESU-8)",
            masked_frame(0x01, b"\xed\xa0\x80"),
        ),
        (
            "a code point past U+10FFFF",
            masked_frame(0x01, b"\xf4\x90\x80\x80"),
        ),
    ];
    each_closed_with(&server, &cases, 1007);
}

#[test]
fn valid_utf8_split_inside_a_character_across_fragments_is_relayed_whole() {
    let server = TestServer::start(&[]);
    let mut a = connect(server.addr);
    // € is E2 82 AC; 😀 is F0 9F 98 80: both cut inside the character.
    let mut frames = masked_frame(0x01, b"price: \xe2");
    frames.extend(masked_frame(0x00, b"\x82\xac, mood: \xf0\x9f"));
    frames.extend(masked_frame(0x00, b"\x98"));
    frames.extend(masked_frame(0x80, b"\x80"));
    common::send_raw(&mut a, &frames);
    assert_eq!(recv_text(&mut a), format!("{PREFIX}price: €, mood: 😀"));
}

#[test]
fn invalid_utf8_in_a_close_reason_gets_1007() {
    let server = TestServer::start(&[]);
    let cases = [("close reason 0xFF", masked_frame(0x88, b"\x03\xe8bad \xff"))];
    each_closed_with(&server, &cases, 1007);
}

#[test]
fn every_reserved_bit_and_opcode_and_misplaced_frame_gets_1002() {
    let server = TestServer::start(&[]);
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for (bit, name) in [(0x40, "RSV1"), (0x20, "RSV2"), (0x10, "RSV3")] {
        cases.push((format!("{name} on text"), masked_frame(0x81 | bit, b"x")));
        cases.push((format!("{name} on ping"), masked_frame(0x89 | bit, b"x")));
    }
    for opcode in (0x3..=0x7).chain(0xB..=0xF) {
        cases.push((
            format!("opcode {opcode:#x}"),
            masked_frame(0x80 | opcode, b""),
        ));
    }
    let fragmented_close = masked_frame(0x08, b"\x03\xe8");
    let mut text_inside_fragments = masked_frame(0x01, b"part one");
    text_inside_fragments.extend(masked_frame(0x81, b"a new message"));
    let mut binary_inside_text = masked_frame(0x01, b"part one");
    binary_inside_text.extend(masked_frame(0x82, b"\x00"));
    cases.extend([
        ("unmasked binary".into(), common::unmasked_frame(0x82, b"x")),
        ("unmasked close".into(), common::unmasked_frame(0x88, b"")),
        ("fragmented close".into(), fragmented_close),
        ("fragmented pong".into(), masked_frame(0x0A, b"p")),
        (
            "continuation without a start".into(),
            masked_frame(0x00, b"x"),
        ),
        (
            "a new text inside a fragmented one".into(),
            text_inside_fragments,
        ),
        (
            "a binary inside a fragmented text".into(),
            binary_inside_text,
        ),
        (
            "a ping of 126 bytes".into(),
            masked_frame(0x89, &[b'p'; 126]),
        ),
        (
            "a close of 126 bytes".into(),
            masked_frame(0x88, &[b'c'; 126]),
        ),
        (
            "a pong of 65536 bytes".into(),
            masked_frame(0x8A, &[0; 65536]),
        ),
        (
            "HTTP after the 101".into(),
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        ),
    ]);
    let cases: Vec<(&str, Vec<u8>)> = cases.iter().map(|(w, b)| (w.as_str(), b.clone())).collect();
    each_closed_with(&server, &cases, 1002);
}

#[test]
fn invalid_close_codes_get_1002_and_valid_ones_are_echoed() {
    let server = TestServer::start(&[]);
    let close = |code: u16| masked_frame(0x88, &code.to_be_bytes());
    let mut invalid = vec![(
        "a one-byte close payload".to_owned(),
        masked_frame(0x88, b"\x03"),
    )];
    for code in [
        0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000, 65535,
    ] {
        invalid.push((format!("close code {code}"), close(code)));
    }
    let invalid: Vec<(&str, Vec<u8>)> = invalid
        .iter()
        .map(|(w, b)| (w.as_str(), b.clone()))
        .collect();
    each_closed_with(&server, &invalid, 1002);

    for code in [1000, 1001, 1003, 1007, 1011, 3000, 4999] {
        let answer = close_for(server.addr, &close(code));
        assert_eq!(answer.close_code(), code);
    }
    // A close without a payload is answered with one without a code.
    let answer = close_for(server.addr, &masked_frame(0x88, b""));
    assert_eq!(answer.close_code(), 1005, "{answer:?}");
}

#[test]
fn a_flood_of_tiny_fragments_is_cut_at_max_fragments() {
    let server = TestServer::start(&["--max-fragments", "100"]);
    let fragments = |n: usize| {
        let mut out = masked_frame(0x01, b"f");
        for i in 1..n {
            let last = i == n - 1;
            // Pings between fragments are allowed and do not count.
            out.extend(masked_frame(0x89, b""));
            out.extend(masked_frame(if last { 0x80 } else { 0x00 }, b"f"));
        }
        out
    };
    // 100 fragments make one message; 101 are one too many.
    let mut ok = connect(server.addr);
    common::send_raw(&mut ok, &fragments(100));
    let mut pongs = 0;
    loop {
        match common::recv(&mut ok) {
            tungstenite::Message::Pong(_) => pongs += 1,
            tungstenite::Message::Text(t) => {
                assert_eq!(t.as_str(), format!("{PREFIX}{}", "f".repeat(100)));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    // One pong is owed at a time (RFC 6455 §5.5.3): pings that arrive
    // together are answered once.
    assert!((1..=99).contains(&pongs), "{pongs} pongs for 99 pings");
    let cases = [("101 fragments", fragments(101))];
    each_closed_with(&server, &cases, 1009);
    let close = close_for(server.addr, &fragments(101));
    assert_eq!(
        close.close_reason(),
        "more than 100 fragments in one message"
    );
}

#[test]
fn the_default_fragment_cap_is_4096() {
    let server = TestServer::start(&[]);
    // 4097 one-byte fragments: 28 KiB on the wire, a 4 KiB message.
    let mut flood = masked_frame(0x02, b"f");
    for _ in 0..4096 {
        flood.extend(masked_frame(0x00, b"f"));
    }
    let cases = [("4097 fragments", flood)];
    each_closed_with(&server, &cases, 1009);
}

#[test]
fn an_empty_fragment_that_ends_a_read_counts_at_once() {
    // The fragment cap must count a frame as soon as its header is in,
    // even when no payload byte follows it in the same read.
    let server = TestServer::start(&["--max-fragments", "100", "--prefix", ""]);
    let mut sender = connect(server.addr);
    // 101 fragments, the last an empty final one.
    let mut over = masked_frame(0x01, b"f");
    for _ in 0..99 {
        over.extend(masked_frame(0x00, b"f"));
    }
    over.extend(masked_frame(0x80, b""));
    common::send_raw(&mut sender, &over);
    match common::recv(&mut sender) {
        tungstenite::Message::Close(Some(c)) => assert_eq!(u16::from(c.code), 1009),
        other => panic!("a message in 101 fragments was answered with {other:?}, not 1009"),
    }

    // 100 empty fragments, each in its own write: one message within the
    // cap, which must not be held against the next message.
    let mut ok = connect(server.addr);
    common::send_raw(&mut ok, &masked_frame(0x01, b""));
    for i in 1..100 {
        let first = if i == 99 { 0x80 } else { 0x00 };
        common::send_raw(&mut ok, &masked_frame(first, b""));
    }
    assert_eq!(recv_text(&mut ok), "");
    send_text(&mut ok, "next");
    assert_eq!(recv_text(&mut ok), "next");
}

#[test]
fn a_ping_flood_from_a_client_that_does_not_read_costs_a_few_pongs() {
    // No rate limit, so the whole flood reaches the pong logic at once.
    let server = TestServer::start(
        &[
            &["--max-queued-bytes", "64KiB", "--send-buffer", "8KiB"][..],
            &UNLIMITED,
        ]
        .concat(),
    );
    let addr = server.addr;
    let mut bystander = connect(addr);
    let mut flooder = tcp_tiny_receive_buffer(addr);
    flooder
        .write_all(common::upgrade_request("13", "").as_bytes())
        .unwrap();
    let (head, _) = common::read_head(&mut flooder).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");

    // 5000 pings of 125 bytes would ask for 640 KiB of pongs, ten times the
    // limit, if each were answered; a few wait, the newest answering the
    // latest ping.
    const PINGS: usize = 5000;
    let mut writer = flooder.try_clone().unwrap();
    let flood = thread::spawn(move || {
        for i in 0..PINGS {
            let ping = masked_frame(0x89, format!("{i:0125}").as_bytes());
            writer
                .write_all(&ping)
                .expect("herald reads the whole flood");
        }
    });
    flood.join().unwrap();
    // Once herald has read the last ping, only what the socket could not
    // take is queued: the pongs allowed to wait, and one partly sent.
    let most = (u64::from(herald::queue::MAX_WAITING_PONGS) + 1) * 127;
    eventually(TIMEOUT, "the flood is read and its pongs coalesced", || {
        let queued = metric(addr, "herald_queued_bytes");
        (queued <= most).then_some(())
    });
    assert_eq!(metric(addr, "herald_slow_consumers_total"), 0);
    still_served(addr, &mut bystander);

    // The flooder gets whole pongs, in ping order, far fewer than it asked
    // for, ending with the answer to its last ping.
    flooder
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let mut pongs = Vec::new();
    while let Ok(f) = common::read_frame(&mut flooder) {
        if f.first == 0x81 {
            continue; // the bystander's broadcast
        }
        assert_eq!(f.first, 0x8A);
        pongs.push(
            String::from_utf8(f.payload)
                .unwrap()
                .parse::<usize>()
                .unwrap(),
        );
    }
    assert!(pongs.len() < PINGS / 2, "{} pongs", pongs.len());
    assert!(pongs.windows(2).all(|w| w[0] < w[1]), "{pongs:?}");
    assert_eq!(pongs.last(), Some(&(PINGS - 1)));
    still_served(addr, &mut bystander);
}

#[test]
fn data_after_a_close_frame_is_never_relayed() {
    let server = TestServer::start(&[]);
    let mut bystander = connect(server.addr);
    let mut bytes = masked_frame(0x88, b"\x03\xe8bye");
    bytes.extend(masked_frame(0x81, b"sent after close"));
    bytes.extend(b"\xff\xff garbage");
    let answer = close_for(server.addr, &bytes);
    assert_eq!(
        (answer.close_code(), answer.close_reason().as_str()),
        (1000, "bye")
    );
    // The bystander's next message is the next real one.
    still_served(server.addr, &mut bystander);
}
