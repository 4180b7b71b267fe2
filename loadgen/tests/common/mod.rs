//! A small seed-compatible broadcast server for tests, built on tungstenite and threads,
//! that can tamper with what it relays: drop, duplicate, swap or misroute chosen
//! deliveries, or change their interleaving. Like herald, it routes by the upgrade's path: clients on the same path
//! (`/` is the lobby, `/rooms/NAME` a room) hear each other and no one else.

#![allow(dead_code)] // each test file uses a part

use loadgen::config::{Broadcast, Config, PublishVia, Scenario};
use loadgen::frame;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::Message;

/// What the server does to one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Never send it.
    Drop,
    /// Send it twice.
    Duplicate,
    /// Send it after the same publisher's next message instead of before.
    SwapWithNext,
    /// Send it after the next message to this receiver, whichever publisher's: with
    /// several publishers, another interleaving with each publisher's order intact.
    DelayPastNext,
    /// Send it to this receiver even though it is in another room.
    Misroute,
}

/// A receiver a delivery is planned for.
#[derive(Debug, Clone, Copy)]
pub struct Receiver {
    /// Its number, in accept order.
    pub index: usize,
    /// Whether it is in the publisher's room (only those get the message untampered).
    pub in_room: bool,
}

/// The prefix the test server puts before each relayed message, as the seed does.
pub const PREFIX: &str = "Message from server: ";

/// A running test server.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Pongs received (the server pings each client once, right after the handshake).
    pub pongs: Arc<AtomicU64>,
    /// The path of each upgrade request, in accept order.
    pub paths: Arc<Mutex<Vec<String>>>,
    /// The `Host` header of each upgrade request, in accept order.
    pub hosts: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    /// The server's `ws://` URL.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }
}

/// What the connection threads tell the relay thread; rooms are the upgrade paths.
enum Event {
    Join(TcpStream, String),
    Relay(String, String),
}

/// Starts a server for `clients` connections that relays every text message to every
/// client of the sender's room, sender included, applying `plan(receiver, publisher, seq)`
/// (receivers numbered in accept order; publisher and sequence read from loadgen's stamp
/// in a message of `size` bytes).
pub fn start(
    clients: usize,
    size: usize,
    plan: impl Fn(usize, u32, u64) -> Option<Tamper> + Send + 'static,
) -> TestServer {
    start_routed(clients, size, move |r: Receiver, p, seq| {
        r.in_room.then(|| plan(r.index, p, seq)).flatten()
    })
}

/// [`start`], with a plan that sees every receiver, those of other rooms too: they get a
/// delivery only when the plan says [`Tamper::Misroute`].
pub fn start_routed(
    clients: usize,
    size: usize,
    plan: impl Fn(Receiver, u32, u64) -> Option<Tamper> + Send + 'static,
) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let pongs = Arc::new(AtomicU64::new(0));
    let paths = Arc::new(Mutex::new(Vec::new()));
    let hosts = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel::<Event>();
    let (counter, seen, seen_hosts) = (pongs.clone(), paths.clone(), hosts.clone());
    thread::spawn(move || {
        for _ in 0..clients {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let (mut path, mut host) = (String::new(), String::new());
            // tungstenite's callback signature fixes the (large) error type.
            #[allow(clippy::result_large_err)]
            let ask = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                path = req.uri().path().to_string();
                let h = req.headers().get("host").and_then(|h| h.to_str().ok());
                host = h.unwrap_or_default().to_string();
                Ok(resp)
            };
            let Ok(mut ws) = tungstenite::accept_hdr(stream, ask) else {
                continue;
            };
            seen.lock().unwrap().push(path.clone());
            seen_hosts.lock().unwrap().push(host);
            let mut writer = ws.get_ref().try_clone().unwrap();
            let mut ping = Vec::new();
            frame::encode_unmasked(true, frame::OP_PING, b"hi", &mut ping);
            writer.write_all(&ping).unwrap();
            tx.send(Event::Join(writer, path.clone())).unwrap();
            let (tx, pongs) = (tx.clone(), counter.clone());
            thread::spawn(move || loop {
                match ws.read() {
                    Ok(Message::Text(t)) => {
                        let _ = tx.send(Event::Relay(path.clone(), t.to_string()));
                    }
                    Ok(Message::Pong(_)) => {
                        pongs.fetch_add(1, Relaxed);
                    }
                    Ok(Message::Close(_)) => {
                        // tungstenite queued the reply: send it, then close first, as a
                        // server should.
                        let _ = ws.flush();
                        let _ = ws.get_ref().shutdown(Shutdown::Both);
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        // Closes the socket for the writer's clone as well.
                        let _ = ws.get_ref().shutdown(Shutdown::Both);
                        return;
                    }
                }
            });
        }
    });
    thread::spawn(move || {
        let mut writers: Vec<(TcpStream, String)> = Vec::new();
        // A delivery held back, with the publisher whose next message releases it (`None`:
        // anyone's).
        let mut held: Vec<Option<(Option<u32>, Vec<u8>)>> = Vec::new();
        for event in rx {
            let (room, text) = match event {
                Event::Join(w, room) => {
                    writers.push((w, room));
                    held.push(None);
                    continue;
                }
                Event::Relay(room, text) => (room, text),
            };
            let stamp = loadgen::message::decode(text.as_bytes(), size);
            let mut wire = Vec::new();
            frame::encode_unmasked(
                true,
                frame::OP_TEXT,
                format!("{PREFIX}{text}").as_bytes(),
                &mut wire,
            );
            for (i, (w, theirs)) in writers.iter_mut().enumerate() {
                let to = Receiver {
                    index: i,
                    in_room: *theirs == room,
                };
                let action = stamp.and_then(|s| plan(to, s.publisher, s.seq));
                if !to.in_room {
                    if action == Some(Tamper::Misroute) {
                        let _ = w.write_all(&wire);
                    }
                    continue;
                }
                let untampered = matches!(action, None | Some(Tamper::Misroute));
                let _ = match action {
                    None | Some(Tamper::Misroute) => w.write_all(&wire),
                    Some(Tamper::Drop) => Ok(()),
                    Some(Tamper::Duplicate) => w.write_all(&wire).and_then(|_| w.write_all(&wire)),
                    Some(Tamper::SwapWithNext) => {
                        held[i] = stamp.map(|s| (Some(s.publisher), wire.clone()));
                        continue;
                    }
                    Some(Tamper::DelayPastNext) => {
                        held[i] = Some((None, wire.clone()));
                        continue;
                    }
                };
                let from = stamp.map(|s| s.publisher);
                let releases = |h: &(Option<u32>, Vec<u8>)| h.0.is_none() || h.0 == from;
                if untampered && held[i].as_ref().is_some_and(releases) {
                    let (_, h) = held[i].take().expect("checked");
                    let _ = w.write_all(&h);
                }
            }
        }
    });
    TestServer {
        addr,
        pongs,
        paths,
        hosts,
    }
}

/// Starts a server that answers every upgrade request with `response` and then waits
/// for the client to hang up.
pub fn start_raw(response: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(response.as_bytes());
                let _ = s.read(&mut buf);
            });
        }
    });
    addr
}

/// A broadcast configuration for `clients` clients of `url` with one publisher.
pub fn broadcast_config(url: &str, clients: u32, rate: f64, window: u32) -> Config {
    Config {
        urls: vec![url.parse().unwrap()],
        clients,
        threads: 1,
        local_addrs: Vec::new(),
        batch: 64,
        batch_interval_ns: 1_000_000,
        max_pending: 128,
        connect_timeout_ns: 5_000_000_000,
        max_frame: 1 << 20,
        scenario: Scenario::Broadcast(Broadcast {
            publishers: 1,
            size: 64,
            rate,
            window,
            prefix: PREFIX.as_bytes().to_vec(),
            via: PublishVia::Ws,
            rooms: 0,
        }),
        shard: (0, 1),
        tls: None,
    }
}

/// Timing for a short test run: `secs` of measurement, no warm-up.
pub fn short_timing(secs: f64) -> loadgen::run::Timing {
    loadgen::run::Timing {
        warmup_ns: 0,
        duration_ns: (secs * 1e9) as u64,
        drain_ns: 1_000_000_000,
        connect_phase_ns: 10_000_000_000,
        server_pid: None,
        also_pids: Vec::new(),
        server_metrics: false,
        live: false,
    }
}

/// Runs the `loadgen` binary: a 1-second `broadcast` of 4 clients at 100 messages/s
/// against `url`, plus `extra`; returns its exit status and JSON report.
pub fn cli(url: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    cli_of(4, url, extra)
}

/// [`cli`] with `clients` clients.
pub fn cli_of(clients: u32, url: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["broadcast", "--url", url, "--rate", "100"])
        .args(["--clients", &clients.to_string()])
        .args(["--duration", "1", "--warmup", "0", "--json", "--quiet"])
        .args(extra)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), json)
}

/// The token the in-process herald takes publishes with.
pub const TOKEN: &str = "s3cret";

/// Runs `body` against a herald serving on 127.0.0.1:0 (`POST /publish` enabled with
/// [`TOKEN`]), then shuts herald down.
pub fn with_herald(body: impl FnOnce(String)) {
    with_herald_tls(None, body)
}

/// [`with_herald`], speaking TLS on its port with `tls`, the paths of a PEM certificate
/// and its key, when given: `body` then gets a `wss://localhost:PORT/` URL.
pub fn with_herald_tls(tls: Option<(PathBuf, PathBuf)>, body: impl FnOnce(String)) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = match tls {
        None => format!("ws://127.0.0.1:{port}/"),
        Some(_) => format!("wss://localhost:{port}/"),
    };
    let shutdown = herald::Shutdown::new();
    let handle = shutdown.clone();
    let (tls_cert, tls_key) = tls.unzip();
    let cfg = herald::Config {
        publish_token: Some(TOKEN.into()),
        tls_cert,
        tls_key,
        ..herald::Config::default()
    };
    let server = thread::spawn(move || herald::run(listener, cfg, handle));
    body(url);
    shutdown.trigger();
    server.join().unwrap().unwrap();
}
