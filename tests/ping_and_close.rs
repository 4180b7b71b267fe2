//! Control frames: a ping is answered with a pong to its sender only, and
//! the close handshake a client starts is completed by the server.

mod common;

use common::{
    connect, drain, masked_frame, recv, recv_text, send_raw, send_text, Ending, TestServer, PREFIX,
};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Bytes, Message};

#[test]
fn ping_gets_a_pong_with_the_same_payload_and_is_not_broadcast() {
    let server = TestServer::start(&[]);
    let (mut a, mut b) = (connect(server.addr), connect(server.addr));

    a.send(Message::Ping(Bytes::from_static(b"are you there?")))
        .expect("send ping");
    match recv(&mut a) {
        Message::Pong(p) => assert_eq!(p.as_ref(), b"are you there?"),
        other => panic!("expected a pong, got {other:?}"),
    }

    // b's next message is a's text: nothing from the ping reached it.
    send_text(&mut a, "after the ping");
    assert_eq!(recv_text(&mut b), format!("{PREFIX}after the ping"));
    assert_eq!(recv_text(&mut a), format!("{PREFIX}after the ping"));
}

#[test]
fn a_pong_between_broadcasts_leaves_every_frame_whole() {
    // The pong enters the same queue as broadcasts; the stream must stay
    // well-formed and in order around it. Pings that arrive together are
    // answered once, for the latest (RFC 6455 §5.5.3), so the pongs are
    // fewer than the pings but in order, and the last ping is answered.
    let server = TestServer::start(&[]);
    let mut a = connect(server.addr);
    let mut burst = Vec::new();
    for i in 0..50 {
        burst.extend(masked_frame(0x81, format!("m{i}").as_bytes()));
        burst.extend(masked_frame(0x89, format!("p{i}").as_bytes()));
    }
    send_raw(&mut a, &burst);
    let mut texts = 0;
    let mut pongs: Vec<usize> = Vec::new();
    while texts < 50 || pongs.last() != Some(&49) {
        match recv(&mut a) {
            Message::Text(t) => {
                assert_eq!(t.as_str(), format!("{PREFIX}m{texts}"));
                texts += 1;
            }
            Message::Pong(p) => {
                let n = std::str::from_utf8(&p).unwrap();
                let n: usize = n.strip_prefix('p').unwrap().parse().unwrap();
                assert!(
                    pongs.last().is_none_or(|&last| n > last),
                    "{n} after {pongs:?}"
                );
                pongs.push(n);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn client_initiated_close_is_answered_with_the_same_code_then_tcp_closes() {
    let server = TestServer::start(&[]);
    let (mut a, mut b) = (connect(server.addr), connect(server.addr));

    a.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .expect("send close");
    // drain() returns only once the server also closed TCP.
    let (messages, ending) = drain(&mut a);
    assert!(messages.is_empty(), "{messages:?}");
    assert_eq!(ending, Ending::Close(1000));

    // The others carry on.
    send_text(&mut b, "still on");
    assert_eq!(recv_text(&mut b), format!("{PREFIX}still on"));
}

#[test]
fn close_with_an_application_code_is_echoed() {
    let server = TestServer::start(&[]);
    let mut a = connect(server.addr);
    a.close(Some(CloseFrame {
        code: CloseCode::from(4000),
        reason: "".into(),
    }))
    .expect("send close");
    assert_eq!(drain(&mut a).1, Ending::Close(4000));
}
