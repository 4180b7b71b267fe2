//! Helpers for the Redis backplane tests (`tests/bus.rs`,
//! `tests/bus_cluster.rs`): herald nodes with the bus on, clients in rooms,
//! `/readyz` and `POST /publish`, and the check that every client of a room
//! received the same sequence with nothing lost.
//!
//! Every wait is bounded by a socket timeout or a deadline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tungstenite::Message;

use super::{
    eventually, http_exchange, is_timeout, metric, recv_text, split, tcp, Client, HeraldProcess,
    HttpResponse, PREFIX, TIMEOUT,
};

/// The publish token every bus node is started with.
pub const TOKEN: &str = "bus-token";

/// The text a sender gets, unprefixed, for a message the bus could not take.
pub const NOTICE: &str = "herald: message not delivered (bus unavailable)";

/// How soon after Redis is back herald must be ready and carry traffic.
pub const BACK_WITHIN: Duration = Duration::from_secs(2);

/// A herald node with publishing on (`--publish-token TOKEN`) and `flags`
/// (`--redis URL`, …); `HERALD_REDIS` from the test's environment is removed.
pub fn node(flags: &[&str]) -> HeraldProcess {
    HeraldProcess::builder()
        .env_remove("HERALD_REDIS")
        .flags(&["--publish-token", TOKEN])
        .flags(flags)
        .start()
}

/// The WebSocket path of `room` (`None`: the lobby).
pub fn room_path(room: Option<&str>) -> String {
    room.map_or("/".to_owned(), |r| format!("/rooms/{r}"))
}

/// The bus channel of `room` (`None`: the lobby) under `prefix`.
pub fn channel(prefix: &str, room: Option<&str>) -> String {
    room.map_or(format!("{prefix}:lobby"), |r| format!("{prefix}:room:{r}"))
}

/// A WebSocket client on `path` (`/` or `/rooms/NAME`), handshake done.
pub fn join(addr: SocketAddr, path: &str) -> Client {
    let (ws, resp) = tungstenite::client(format!("ws://{addr}{path}"), tcp(addr))
        .unwrap_or_else(|e| panic!("joining {path} on {addr}: {e}"));
    assert_eq!(resp.status(), 101, "joining {path} on {addr}: {resp:?}");
    ws
}

/// `GET path`, the connection closed after the answer.
pub fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    http_exchange(addr, req.as_bytes())
}

/// Waits (at most `within`) until `GET path` answers `status`.
pub fn wait_status(addr: SocketAddr, path: &str, status: u16, within: Duration) {
    eventually(
        within,
        &format!("GET {path} on {addr} answers {status}"),
        || (get(addr, path).status == status).then_some(()),
    );
}

/// Waits (at most `within`) until the sample `series` of `addr` reads `value`.
pub fn wait_metric(addr: SocketAddr, series: &str, value: u64, within: Duration) {
    eventually(within, &format!("{series} {value} on {addr}"), || {
        (metric(addr, series) == value).then_some(())
    });
}

/// An authorised `POST /publish[?room=ROOM]` of `body`.
pub fn post(addr: SocketAddr, room: Option<&str>, body: &str) -> HttpResponse {
    let query = room.map_or(String::new(), |r| format!("?room={r}"));
    let req = format!(
        "POST /publish{query} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http_exchange(addr, req.as_bytes())
}

/// The connection is open and served: a ping is answered with its pong.
/// Returns the texts that arrived before the pong (herald's pings are
/// skipped).
pub fn ping_pong(ws: &mut Client) -> Vec<String> {
    let payload = b"still there?".to_vec();
    ws.send(Message::Ping(payload.clone().into()))
        .unwrap_or_else(|e| panic!("sending a ping: {e}"));
    let mut texts = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Pong(p)) if p.as_ref() == payload.as_slice() => return texts,
            Ok(Message::Text(t)) => texts.push(t.as_str().to_owned()),
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            other => panic!("expected the pong, got {other:?}"),
        }
    }
}

/// No message reaches any of `clients` within `quiet` (one deadline for all).
pub fn all_hear_nothing(clients: &mut [Client], quiet: Duration) {
    let until = Instant::now() + quiet;
    for (i, c) in clients.iter_mut().enumerate() {
        let left = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        c.get_ref().set_read_timeout(Some(left)).unwrap();
        match c.read() {
            Err(tungstenite::Error::Io(e)) if is_timeout(&e) => {}
            other => panic!("client {i}: expected silence, got {other:?}"),
        }
        c.get_ref().set_read_timeout(Some(TIMEOUT)).unwrap();
    }
}

/// Clients that read on threads of their own, each until it has `n` texts.
pub struct Readers(Vec<JoinHandle<(Client, Vec<String>)>>);

impl Readers {
    /// Each of `clients` reads `n` texts on its own thread.
    pub fn spawn(clients: Vec<Client>, n: usize) -> Self {
        Readers(
            clients
                .into_iter()
                .map(|mut ws| {
                    thread::spawn(move || {
                        let texts = (0..n).map(|_| recv_text(&mut ws)).collect();
                        (ws, texts)
                    })
                })
                .collect(),
        )
    }

    /// Waits for every reader; returns the clients and what each read.
    pub fn join(self) -> (Vec<Client>, Vec<Vec<String>>) {
        self.0
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.join()
                    .unwrap_or_else(|_| panic!("reader {i} failed (see its panic above)"))
            })
            .unzip()
    }
}

/// `n` numbered messages `TAG#SEQ`: what the sender sends and, prefixed,
/// what every member receives.
pub fn numbered(tag: &str, n: usize) -> (Vec<String>, Vec<String>) {
    let texts: Vec<String> = (0..n).map(|seq| format!("{tag}#{seq}")).collect();
    let received = texts.iter().map(|t| format!("{PREFIX}{t}")).collect();
    (texts, received)
}

/// Splits each client into a writer and a reader over the same socket
/// (before anything can have arrived for it).
pub fn split_all(clients: Vec<Client>) -> (Vec<Client>, Vec<Client>) {
    clients.into_iter().map(split).unzip()
}

/// Sends `texts` on `writer` from a thread; the thread returns the writer,
/// to be kept open until the readers are done.
pub fn send_on_thread(mut writer: Client, texts: Vec<String>) -> JoinHandle<Client> {
    thread::spawn(move || {
        for t in texts {
            writer
                .send(Message::text(t.as_str()))
                .unwrap_or_else(|e| panic!("sending {t:?}: {e}"));
        }
        writer
    })
}

/// Every client of a room read the same sequence, and that sequence is
/// exactly the messages of `sent` (one list for each source, in the order
/// it sent them, as clients receive them): each source's messages all
/// there, in its order, and nothing else (nothing from another room).
pub fn assert_same_sequence(room: &str, received: &[Vec<String>], sent: &[Vec<String>]) {
    let mut source_of = HashMap::new();
    for (s, texts) in sent.iter().enumerate() {
        for (seq, t) in texts.iter().enumerate() {
            assert!(
                source_of.insert(t.as_str(), (s, seq)).is_none(),
                "{room}: {t:?} sent twice; the test's messages must be unique"
            );
        }
    }
    let first = &received[0];
    let mut next = vec![0usize; sent.len()];
    for (n, t) in first.iter().enumerate() {
        let &(s, seq) = source_of
            .get(t.as_str())
            .unwrap_or_else(|| panic!("{room}: message {n} {t:?} was not sent to this room"));
        assert_eq!(
            seq, next[s],
            "{room}: source {s}'s messages lost or out of order at {t:?}"
        );
        next[s] += 1;
    }
    assert_eq!(first.len(), source_of.len(), "{room}: messages lost");
    for (i, seq) in received.iter().enumerate().skip(1) {
        if let Some(n) = (0..seq.len().max(first.len())).find(|&n| seq.get(n) != first.get(n)) {
            panic!(
                "{room}: client {i} differs from client 0 at message {n}: {:?} against {:?}",
                seq.get(n),
                first.get(n)
            );
        }
    }
}
