//! Every message any client sends reaches every open client, the sender
//! included: text with the prefix, binary unchanged, in each publisher's order.

mod common;

use std::thread;

use common::{connect, connect_many, recv, recv_text, send_text, split, TestServer, PREFIX};
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
    const PUBLISHERS: usize = 4;
    const LISTENERS: usize = 2;
    const PER_PUBLISHER: usize = 2_500;
    const TOTAL: usize = PUBLISHERS * PER_PUBLISHER;

    let server = TestServer::start(&[]);
    // Every client is connected (and so a recipient) before anyone publishes.
    let clients = connect_many(server.addr, PUBLISHERS + LISTENERS);

    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for (i, ws) in clients.into_iter().enumerate() {
        let (writer, mut reader) = split(ws);
        if i < PUBLISHERS {
            writers.push(writer);
        }
        readers.push(thread::spawn(move || {
            let mut next = [0usize; PUBLISHERS];
            for n in 0..TOTAL {
                let text = recv_text(&mut reader);
                let body = text.strip_prefix(PREFIX).unwrap_or_else(|| {
                    panic!("client {i}: message {n} lacks the prefix: {text:?}")
                });
                let (p, seq) = body
                    .split_once('#')
                    .and_then(|(p, s)| Some((p.parse::<usize>().ok()?, s.parse::<usize>().ok()?)))
                    .unwrap_or_else(|| panic!("client {i}: unexpected message {text:?}"));
                assert!(p < PUBLISHERS, "client {i}: unknown publisher in {text:?}");
                assert_eq!(
                    seq, next[p],
                    "client {i}: publisher {p}'s messages out of order or lost"
                );
                next[p] += 1;
            }
            next
        }));
    }

    let publishers: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(p, mut ws)| {
            thread::spawn(move || {
                for seq in 0..PER_PUBLISHER {
                    ws.write(Message::text(format!("{p}#{seq}")))
                        .expect("publish");
                    if seq % 64 == 63 {
                        ws.flush().expect("flush");
                    }
                }
                ws.flush().expect("flush");
                ws // kept open until every reader is done
            })
        })
        .collect();

    let publishers: Vec<_> = publishers
        .into_iter()
        .map(|t| t.join().expect("publisher panicked"))
        .collect();
    for (i, r) in readers.into_iter().enumerate() {
        let counts = r
            .join()
            .unwrap_or_else(|_| panic!("reader {i} failed (see its panic above)"));
        assert_eq!(counts, [PER_PUBLISHER; PUBLISHERS], "client {i}");
    }
    drop(publishers);
}
