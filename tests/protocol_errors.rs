//! A client that breaks the protocol is closed with the code RFC 6455 gives
//! for its fault, and only it: the other clients keep receiving.
//!
//! The offending frames are written by hand on the socket, after a real
//! handshake, so nothing on the client side can tidy them up.

mod common;

use common::{
    connect, masked_frame, read_until_close, recv_text, send_raw, send_text, unmasked_frame,
    Client, TestServer, PREFIX,
};

/// Sends `bad` from a fresh client, expects close `code` on it, and checks
/// that a bystander connected before and a client connected after both
/// still get broadcasts.
fn offender_is_closed_with(server: &TestServer, bad: &[u8], code: u16) {
    let mut bystander = connect(server.addr);
    let mut offender = connect(server.addr);
    send_raw(&mut offender, bad);
    assert_eq!(read_until_close(&mut offender), code);

    let mut newcomer = connect(server.addr);
    send_text(&mut bystander, "still here");
    assert_eq!(recv_text(&mut bystander), format!("{PREFIX}still here"));
    assert_eq!(recv_text(&mut newcomer), format!("{PREFIX}still here"));
}

#[test]
fn oversized_message_gets_1009() {
    let server = TestServer::start(&["--max-message-size", "1KiB"]);
    let big = "x".repeat(1025);
    offender_is_closed_with(&server, &masked_frame(0x81, big.as_bytes()), 1009);
}

#[test]
fn oversized_message_in_fragments_gets_1009() {
    // Each fragment fits; the reassembled message does not.
    let server = TestServer::start(&["--max-message-size", "1KiB"]);
    let part = [b'y'; 600];
    let mut frames = masked_frame(0x01, &part);
    frames.extend(masked_frame(0x80, &part));
    offender_is_closed_with(&server, &frames, 1009);
}

#[test]
fn a_message_at_the_size_limit_is_broadcast() {
    // The limit counts the client's message, not herald's prefix.
    let server = TestServer::start(&["--max-message-size", "1KiB"]);
    let mut a = connect(server.addr);
    let exact = "z".repeat(1024);
    send_text(&mut a, &exact);
    assert_eq!(recv_text(&mut a), format!("{PREFIX}{exact}"));
}

#[test]
fn invalid_utf8_text_gets_1007() {
    let server = TestServer::start(&[]);
    // "ok " then a lone continuation byte and an invalid lead byte.
    offender_is_closed_with(&server, &masked_frame(0x81, b"ok \x80\xfe"), 1007);
}

#[test]
fn invalid_utf8_split_across_fragments_gets_1007() {
    let server = TestServer::start(&[]);
    // A 3-byte sequence (€ = E2 82 AC) cut short by the final fragment.
    let mut frames = masked_frame(0x01, b"price: \xe2\x82");
    frames.extend(masked_frame(0x80, b"!"));
    offender_is_closed_with(&server, &frames, 1007);
}

#[test]
fn unmasked_frame_gets_1002() {
    let server = TestServer::start(&[]);
    offender_is_closed_with(&server, &unmasked_frame(0x81, b"hello"), 1002);
}

#[test]
fn other_protocol_violations_get_1002() {
    let server = TestServer::start(&[]);
    let cases: [(&str, Vec<u8>); 4] = [
        ("reserved opcode 0x3", masked_frame(0x83, b"?")),
        ("RSV1 set without an extension", masked_frame(0xc1, b"hi")),
        (
            "continuation with nothing to continue",
            masked_frame(0x80, b"x"),
        ),
        ("fragmented ping", masked_frame(0x09, b"p")),
    ];
    for (what, bad) in cases {
        let mut offender: Client = connect(server.addr);
        send_raw(&mut offender, &bad);
        assert_eq!(read_until_close(&mut offender), 1002, "{what}");
    }
    offender_is_closed_with(&server, &masked_frame(0x83, b"?"), 1002);
}
