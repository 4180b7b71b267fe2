//! Every message any client sends reaches every open client, the sender
//! included: text with the prefix, binary unchanged, in each publisher's order.

mod common;

use std::time::Duration;

use common::{
    connect, connect_many, publish_concurrently, recv, recv_text, send_text, TestServer, PREFIX,
};
use tungstenite::Message;

#[test]
fn text_reaches_every_client_including_the_sender_with_the_prefix() {
    let server = TestServer::start(&[]);
    let mut clients = connect_many(server.addr, 5);

    send_text(&mut clients[2], "hello, herald");
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            recv_text(c),
            "Message from server: hello, herald",
            "client {i}"
        );
    }

    // A second sender, with non-ASCII text: still exact, still to everyone.
    send_text(&mut clients[0], "héllo ✓");
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(recv_text(c), format!("{PREFIX}héllo ✓"), "client {i}");
    }
}

#[test]
fn binary_reaches_every_client_unchanged_and_unprefixed() {
    let server = TestServer::start(&[]);
    let mut clients = connect_many(server.addr, 4);
    // Long enough for the 16-bit length encoding; every byte value.
    let payload: Vec<u8> = (0..=255u8).cycle().take(1000).collect();

    clients[1]
        .send(Message::binary(payload.clone()))
        .expect("send binary");
    for (i, c) in clients.iter_mut().enumerate() {
        match recv(c) {
            Message::Binary(b) => assert_eq!(b.as_ref(), payload.as_slice(), "client {i}"),
            other => panic!("client {i}: expected binary, got {other:?}"),
        }
    }
}

#[test]
fn custom_and_empty_prefixes() {
    let server = TestServer::start(&["--prefix", "> "]);
    let mut a = connect(server.addr);
    send_text(&mut a, "hi");
    assert_eq!(recv_text(&mut a), "> hi");

    let server = TestServer::start(&["--prefix", ""]);
    let mut a = connect(server.addr);
    send_text(&mut a, "verbatim");
    assert_eq!(recv_text(&mut a), "verbatim");
}

#[test]
fn a_fragmented_message_is_reassembled_before_broadcast() {
    let server = TestServer::start(&[]);
    let (mut sender, mut other) = (connect(server.addr), connect(server.addr));
    // "Hel" (text, not final), "lo, " (continuation), "world" (continuation, final).
    let mut frames = common::masked_frame(0x01, b"Hel");
    frames.extend(common::masked_frame(0x00, b"lo, "));
    frames.extend(common::masked_frame(0x80, b"world"));
    common::send_raw(&mut sender, &frames);

    assert_eq!(recv_text(&mut other), format!("{PREFIX}Hello, world"));
    assert_eq!(recv_text(&mut sender), format!("{PREFIX}Hello, world"));
}

/// 4 publishers × 2,500 messages, sent concurrently, plus 2 clients that
/// only listen. Every client, publishers included, reads on its own thread
/// while the publishers write, and must see all 10,000 messages, each
/// publisher's in the order it sent them.
#[test]
fn ten_thousand_messages_from_four_publishers_arrive_complete_and_in_order_everywhere() {
    let server = TestServer::start(&[]);
    let seen = publish_concurrently(server.addr, 6, 4, 2_500, 64, Duration::ZERO);
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.len(), 10_000, "client {i}");
    }
}
