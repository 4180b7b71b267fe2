//! Rooms: `ws://HOST/` is the lobby, `ws://HOST/rooms/NAME` a room. A
//! message reaches every open client of its room (sender included, with the
//! prefix) and no other room; names are checked; `--max-rooms` is a limit
//! with a 503; a room emptied and joined again starts afresh; `POST
//! /publish?room=NAME` reaches that room only and counts its members; the
//! room metrics move exactly.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{eventually, metric};
use common::{http_exchange, recv_text, send_text, tcp, Client, TestServer, PREFIX, TIMEOUT};
use tungstenite::Message;

/// A WebSocket client on `path`, handshake done.
fn join(addr: SocketAddr, path: &str) -> Client {
    let (ws, resp) = tungstenite::client(format!("ws://{addr}{path}"), tcp(addr))
        .unwrap_or_else(|e| panic!("joining {path}: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// Nothing more arrives on `ws` within a short wait.
fn hears_nothing(ws: &mut Client) {
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    match ws.read() {
        Err(tungstenite::Error::Io(e)) if common::is_timeout(&e) => {}
        other => panic!("expected silence, got {other:?}"),
    }
    ws.get_ref().set_read_timeout(Some(TIMEOUT)).unwrap();
}

#[test]
fn a_message_reaches_its_room_and_no_other() {
    let server = TestServer::start(&[]);
    let addr = server.addr;
    let mut lobby = [join(addr, "/"), join(addr, "/")];
    let mut red = [join(addr, "/rooms/red"), join(addr, "/rooms/red")];
    let mut blue = [join(addr, "/rooms/blue"), join(addr, "/rooms/blue")];

    send_text(&mut red[0], "to red");
    for ws in &mut red {
        assert_eq!(recv_text(ws), format!("{PREFIX}to red"));
    }
    send_text(&mut blue[1], "to blue");
    for ws in &mut blue {
        assert_eq!(recv_text(ws), format!("{PREFIX}to blue"));
    }
    // The lobby is the chat of the Node.js server herald reimplements, unchanged.
    send_text(&mut lobby[0], "to the lobby");
    for ws in &mut lobby {
        assert_eq!(recv_text(ws), format!("{PREFIX}to the lobby"));
    }
    for ws in lobby.iter_mut().chain(&mut red).chain(&mut blue) {
        hears_nothing(ws);
    }
    assert_eq!(metric(addr, "herald_rooms"), 3);
    assert_eq!(metric(addr, "herald_room_joins_total"), 6);
}

#[test]
fn room_names_are_checked() {
    let server = TestServer::start(&[]);
    let addr = server.addr;
    for ok in ["a", "Room-1", "x.y_z~w", &"n".repeat(64)] {
        let mut ws = join(addr, &format!("/rooms/{ok}"));
        send_text(&mut ws, ok);
        assert_eq!(recv_text(&mut ws), format!("{PREFIX}{ok}"));
    }
    // (A space or a raw non-ASCII byte in the path is already a malformed
    // request line; the rest reach the room check.)
    for bad in ["", "a%20b", "a/b", "a:b", &"n".repeat(65)] {
        let req = format!(
            "GET /rooms/{bad} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let r = http_exchange(addr, req.as_bytes());
        assert_eq!(r.status, 400, "{bad:?}: {r:?}");
        assert!(r.text().contains("invalid room name"), "{r:?}");
    }
    // The page of a room is the chat page.
    let page = http_exchange(addr, b"GET /rooms/red HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("WebSocket Chat"));
}

#[test]
fn past_max_rooms_a_new_room_gets_503_and_an_emptied_room_frees_its_place() {
    let server = TestServer::start(&["--max-rooms", "2"]);
    let addr = server.addr;
    let mut a = join(addr, "/rooms/a");
    let _b = join(addr, "/rooms/b");
    // More members of existing rooms, and the lobby, are always welcome.
    let _a2 = join(addr, "/rooms/a");
    let _lobby = join(addr, "/");
    let req = "GET /rooms/c HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
               Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let r = http_exchange(addr, req.as_bytes());
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.text().trim_end(), "room limit reached");

    // Room b empties: it is gone, and c may be created.
    drop(_b);
    eventually(TIMEOUT, "room b is gone", || {
        (metric(addr, "herald_room_leaves_total") == 1).then_some(())
    });
    let mut c = join(addr, "/rooms/c");
    send_text(&mut c, "in c");
    assert_eq!(recv_text(&mut c), format!("{PREFIX}in c"));
    hears_nothing(&mut a);
}

#[test]
fn a_room_emptied_and_joined_again_starts_afresh() {
    let server = TestServer::start(&[]);
    let addr = server.addr;
    let mut first = join(addr, "/rooms/r");
    send_text(&mut first, "before");
    assert_eq!(recv_text(&mut first), format!("{PREFIX}before"));
    first.close(None).unwrap();
    while first.read().is_ok() {}
    eventually(TIMEOUT, "the room is gone", || {
        (metric(addr, "herald_rooms") == 0).then_some(())
    });
    let mut again = join(addr, "/rooms/r");
    let mut other = join(addr, "/rooms/r");
    send_text(&mut other, "after");
    for ws in [&mut again, &mut other] {
        assert_eq!(recv_text(ws), format!("{PREFIX}after"));
    }
}

#[test]
fn publish_to_a_room_reaches_that_room_only_and_counts_its_members() {
    let server = TestServer::start(&["--publish-token", "t"]);
    let addr = server.addr;
    let mut red = [join(addr, "/rooms/red"), join(addr, "/rooms/red")];
    let mut lobby = join(addr, "/");
    let publish = |path: &str, body: &str| {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        http_exchange(addr, req.as_bytes())
    };
    let r = publish("/publish?room=red", "news");
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.text().trim_end(), r#"{"recipients":2}"#);
    for ws in &mut red {
        assert!(matches!(common::recv(ws), Message::Text(t) if t.as_str() == "news"));
    }
    hears_nothing(&mut lobby);
    // A room without members reaches no one; the lobby is the default.
    let r = publish("/publish?room=empty", "void");
    assert_eq!(r.text().trim_end(), r#"{"recipients":0}"#);
    let r = publish("/publish", "hello lobby");
    assert_eq!(r.text().trim_end(), r#"{"recipients":1}"#);
    assert_eq!(recv_text(&mut lobby), "hello lobby");
    assert_eq!(publish("/publish?room=a/b", "x").status, 400);
    for ws in &mut red {
        hears_nothing(ws);
    }
}
