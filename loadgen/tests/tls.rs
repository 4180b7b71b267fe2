//! loadgen over `wss://`: its TLS client against a real TLS WebSocket server (rustls and
//! tungstenite over real sockets, with a certificate made for the test), for trust through
//! `--ca` and `--insecure`, a certificate that must fail, the accounting of messages both
//! ways, and full handshakes for `connect`.

mod common;

use common::{broadcast_config, short_timing, with_herald_tls, PREFIX, TOKEN};
use loadgen::config::{Config, PublishVia, Scenario};
use loadgen::report::problems;
use loadgen::run::{run, Outcome};
use loadgen::tls::{client_config, Trust};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{HandshakeKind, ServerConfig, ServerConnection, StreamOwned};
use rustls::{ProtocolVersion, SupportedProtocolVersion};
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;
use tungstenite::{Message, WebSocket};

/// A self-signed certificate and its key, valid for `names`, the first of which is also
/// its subject's common name (so two certificates for different names are issued by
/// different "CAs").
struct Cert {
    der: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    /// The certificate as a PEM file, for `--ca`.
    pem: PathBuf,
    /// The key as a PEM file, for herald's `--tls-key`.
    key_pem: PathBuf,
}

impl Cert {
    fn new(names: &[&str]) -> Cert {
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        (params.distinguished_name).push(rcgen::DnType::CommonName, names[0]);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let file = |what: &str| {
            let n = NEXT_FILE.fetch_add(1, Relaxed);
            let name = format!("loadgen-tls-{}-{n}-{what}.pem", std::process::id());
            std::env::temp_dir().join(name)
        };
        let (pem, key_pem) = (file("cert"), file("key"));
        std::fs::write(&pem, cert.pem()).unwrap();
        std::fs::write(&key_pem, key.serialize_pem()).unwrap();
        Cert {
            der: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            pem,
            key_pem,
        }
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pem);
        let _ = std::fs::remove_file(&self.key_pem);
    }
}

static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// A running TLS broadcast server: like the seed, it relays every text message to every
/// client, sender included, as `Message from server: <msg>`.
struct TlsServer {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

/// What the server saw of its clients.
#[derive(Default)]
struct Seen {
    /// Handshakes completed in full, and by resuming an earlier session.
    full: AtomicU64,
    resumed: AtomicU64,
    /// Pongs received (the server pings each client once, right after the upgrade).
    pongs: AtomicU64,
    /// The protocol version of each connection, in the order they were upgraded.
    versions: Mutex<Vec<ProtocolVersion>>,
}

impl TlsServer {
    /// The `wss://` URL with `host` (`localhost` or `127.0.0.1`) and the server's port.
    fn url(&self, host: &str) -> String {
        format!("wss://{host}:{}/", self.addr.port())
    }
}

type Tls = StreamOwned<ServerConnection, TcpStream>;

/// Starts a server presenting `cert`; it serves any number of clients, each on a thread.
fn start(cert: &Cert) -> TlsServer {
    start_speaking(cert, rustls::DEFAULT_VERSIONS)
}

/// [`start`], with only the TLS `versions` given.
fn start_speaking(cert: &Cert, versions: &[&'static SupportedProtocolVersion]) -> TlsServer {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der.clone()],
            PrivateKeyDer::Pkcs8(cert.key.clone_key()),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let cfg = Arc::new(cfg);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let server = TlsServer {
        addr,
        seen: seen.clone(),
    };
    let (relay_tx, relay_rx) = mpsc::channel::<Relay>();
    thread::spawn(move || relay(relay_rx));
    thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            let conn = ServerConnection::new(cfg.clone()).unwrap();
            let (seen, relay_tx) = (seen.clone(), relay_tx.clone());
            thread::spawn(move || serve(StreamOwned::new(conn, tcp), &seen, relay_tx));
        }
    });
    server
}

/// What connection threads tell the relay thread.
enum Relay {
    /// A client joined; what to send it goes here.
    Join(Sender<String>),
    /// A client sent this text.
    Text(String),
}

/// Relays every text to every client that has joined.
fn relay(rx: Receiver<Relay>) {
    let mut clients: Vec<Sender<String>> = Vec::new();
    for event in rx {
        match event {
            Relay::Join(tx) => clients.push(tx),
            Relay::Text(text) => {
                let wire = format!("{PREFIX}{text}");
                clients.retain(|c| c.send(wire.clone()).is_ok());
            }
        }
    }
}

/// One client: the TLS handshake and the upgrade (blocking), then a loop that reads with
/// a short timeout and sends what the relay has for it in between.
fn serve(tls: Tls, seen: &Seen, relay: Sender<Relay>) {
    let Ok(mut ws) = tungstenite::accept(tls) else {
        return; // the client refused the certificate, or hung up
    };
    let conn = &ws.get_ref().conn;
    match conn.handshake_kind() {
        Some(HandshakeKind::Resumed) => seen.resumed.fetch_add(1, Relaxed),
        _ => seen.full.fetch_add(1, Relaxed),
    };
    let version = conn.protocol_version().expect("after the handshake");
    seen.versions.lock().unwrap().push(version);
    let (tx, rx) = mpsc::channel();
    if relay.send(Relay::Join(tx)).is_err()
        || ws.send(Message::Ping(b"hi".to_vec().into())).is_err()
    {
        return;
    }
    let timeout = Some(Duration::from_millis(2));
    ws.get_ref().sock.set_read_timeout(timeout).unwrap();
    loop {
        let mut wrote = false;
        while let Ok(text) = rx.try_recv() {
            if ws.write(Message::text(text)).is_err() {
                return;
            }
            wrote = true;
        }
        if wrote && ws.flush().is_err() {
            return;
        }
        match ws.read() {
            Ok(Message::Text(t)) => {
                let _ = relay.send(Relay::Text(t.to_string()));
            }
            Ok(Message::Pong(_)) => {
                seen.pongs.fetch_add(1, Relaxed);
            }
            Ok(Message::Close(_)) => return close(ws),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if timed_out(&e) => {}
            Err(_) => return,
        }
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Sends the Close reply tungstenite queued and a `close_notify`, then closes first, as a
/// server should.
fn close(mut ws: WebSocket<Tls>) {
    let _ = ws.flush();
    let tls = ws.get_mut();
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let _ = tls.sock.shutdown(Shutdown::Both);
}

/// `cfg` speaking TLS with `trust`, resuming sessions unless it is a `connect` run.
fn with_trust(mut cfg: Config, trust: Trust) -> Config {
    let resume = !matches!(cfg.scenario, Scenario::Connect);
    cfg.tls = Some(client_config(&trust, resume).unwrap());
    cfg
}

/// Runs `cfg` for a second, trusting `cert` through `--ca`.
fn run_trusting(cert: &Cert, cfg: Config) -> Outcome {
    let cfg = with_trust(cfg, Trust::Ca(cert.pem.clone()));
    run(cfg, short_timing(1.0)).unwrap()
}

#[test]
fn broadcast_over_wss_delivers_everything_once_and_in_order() {
    let cert = Cert::new(&["localhost"]);
    let server = start(&cert);
    let cfg = broadcast_config(&server.url("localhost"), 20, 0.0, 16);
    let out = run_trusting(&cert, cfg);
    let s = &out.stats;
    assert_eq!(s.connected, 20, "{:?}", s.failures);
    assert!(out.published > 16, "{}", out.published);
    assert!(out.drained);
    assert_eq!(problems(&out), Vec::<String>::new());
    assert_eq!(s.delivered, out.published * 20);
    assert_eq!(
        (s.lost, s.duplicates, s.reordered, s.malformed),
        (0, 0, 0, 0)
    );
    assert_eq!(s.pings, 20, "pings answered over TLS");
    assert_eq!(server.seen.pongs.load(Relaxed), 20);
    let json = loadgen::report::to_json(&out);
    assert_eq!(json["tls"], true);
    assert_eq!(json["url"], server.url("localhost"));
    let mut table = Vec::new();
    loadgen::report::write_table(&out, &mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(
        table.starts_with("loadgen broadcast wss://localhost:"),
        "{table}"
    );
    assert!(table.lines().next().unwrap().contains(", TLS, "), "{table}");
}

#[test]
fn a_tls_1_2_server_works_too() {
    // TLS 1.2 finishes the other way round (the server's Finished comes last), and its
    // signatures go through the --insecure verifier's other method.
    let cert = Cert::new(&["localhost"]);
    let server = start_speaking(&cert, &[&rustls::version::TLS12]);
    for trust in [Trust::Ca(cert.pem.clone()), Trust::Insecure] {
        let cfg = with_trust(
            broadcast_config(&server.url("localhost"), 10, 0.0, 16),
            trust,
        );
        let out = run(cfg, short_timing(0.5)).unwrap();
        assert_eq!(out.stats.connected, 10, "{:?}", out.stats.failures);
        assert!(out.published > 16, "{}", out.published);
        assert_eq!(problems(&out), Vec::<String>::new());
        assert_eq!(out.stats.delivered, out.published * 10);
    }
    assert_eq!(
        *server.seen.versions.lock().unwrap(),
        [ProtocolVersion::TLSv1_2; 20]
    );
}

#[test]
fn ws_and_wss_urls_mix() {
    let cert = Cert::new(&["localhost"]);
    let tls = start(&cert);
    let plain = common::start(2, 64, |_, _, _| None);
    let mut cfg = broadcast_config(&plain.url(), 4, 0.0, 1);
    cfg.urls.push(tls.url("localhost").parse().unwrap());
    cfg.scenario = Scenario::Idle { rooms: 0 };
    let out = run(with_trust(cfg, Trust::Insecure), short_timing(0.2)).unwrap();
    assert_eq!(out.stats.connected, 4, "{:?}", out.stats.failures);
    assert_eq!(out.stats.pings, 4, "both servers ping");
    assert_eq!(
        tls.seen.full.load(Relaxed) + tls.seen.resumed.load(Relaxed),
        2
    );
    assert_eq!(plain.paths.lock().unwrap().len(), 2);
}

#[test]
fn paced_messages_over_wss_are_all_timed() {
    // An IP address in the URL: sent as no SNI, checked against the certificate's IP
    // addresses.
    let cert = Cert::new(&["127.0.0.1"]);
    let server = start(&cert);
    let cfg = broadcast_config(&server.url("127.0.0.1"), 10, 200.0, 0);
    let out = run_trusting(&cert, cfg);
    assert!(out.published >= 180, "{}", out.published);
    assert_eq!(problems(&out), Vec::<String>::new());
    assert_eq!(out.stats.latency.len(), out.published * 10);
}

#[test]
fn connect_over_wss_does_a_full_handshake_every_time() {
    let cert = Cert::new(&["localhost"]);
    let server = start(&cert);
    let mut cfg = broadcast_config(&server.url("localhost"), 30, 0.0, 1);
    cfg.scenario = Scenario::Connect;
    cfg.max_pending = 4;
    let out = run(with_trust(cfg, Trust::Insecure), short_timing(10.0)).unwrap();
    assert_eq!(out.stats.connected, 30, "{:?}", out.stats.failures);
    assert_eq!(out.stats.failed(), 0);
    assert_eq!(out.stats.handshake.len(), 30);
    assert_eq!(
        (
            server.seen.full.load(Relaxed),
            server.seen.resumed.load(Relaxed)
        ),
        (30, 0)
    );
    // The server does resume sessions when offered: the zero above is loadgen's doing.
    let mut idle = broadcast_config(&server.url("localhost"), 10, 0.0, 1);
    idle.scenario = Scenario::Idle { rooms: 0 };
    // One at a time, so that later handshakes find the tickets of earlier ones.
    (idle.batch, idle.batch_interval_ns) = (1, 20_000_000);
    let out = run(with_trust(idle, Trust::Insecure), short_timing(0.2)).unwrap();
    assert_eq!(out.stats.connected, 10);
    assert!(
        server.seen.resumed.load(Relaxed) > 0,
        "no session was resumed"
    );
}

/// Runs the `loadgen` binary with `args` (a short quiet run with a JSON report).
fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .args(["--duration", "1", "--json", "--quiet"])
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn insecure_accepts_a_certificate_for_another_name() {
    let cert = Cert::new(&["herald.example"]);
    let server = start(&cert);
    let url = server.url("127.0.0.1");
    let out = loadgen(&["broadcast", "--url", &url, "--insecure", "--clients", "4"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["tls"], true);
    assert_eq!(json["connected"], 4);
    assert_eq!(json["lost"], 0);
    assert!(json["deliveries"].as_u64().unwrap() > 0);
    // The same server is refused with --ca: its certificate names another host.
    let ca = cert.pem.to_str().unwrap();
    let out = loadgen(&["idle", "--url", &url, "--ca", ca, "--clients", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "no client could connect to {url}: tls: invalid peer certificate: \
             certificate not valid for name \"127.0.0.1\""
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_wrong_ca_fails_every_handshake_with_the_reason() {
    let cert = Cert::new(&["localhost"]);
    let other = Cert::new(&["ca.example", "localhost"]);
    let server = start(&cert);
    let url = server.url("localhost");
    let ca = other.pem.to_str().unwrap();
    let out = loadgen(&["connect", "--url", &url, "--ca", ca, "--clients", "3"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line =
        format!("no client could connect to {url}: tls: invalid peer certificate: UnknownIssuer");
    assert!(stderr(&out).contains(&line), "{}", stderr(&out));
    // With the right one, the same run connects every client.
    let ca = cert.pem.to_str().unwrap();
    let out = loadgen(&["connect", "--url", &url, "--ca", ca, "--clients", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (json["connected"].as_u64(), json["tls"].as_bool()),
        (Some(3), Some(true))
    );
}

#[test]
fn wss_without_trust_is_a_usage_error() {
    let out = loadgen(&["idle", "--url", "wss://127.0.0.1:9/"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("--ca") && err.contains("--insecure"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // And the other way round: trust without a wss:// URL is a mistake too.
    let out = loadgen(&["idle", "--url", "ws://127.0.0.1:9/", "--insecure"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("wss://"), "{}", stderr(&out));
    // A CA file that holds no certificate.
    let out = loadgen(&["idle", "--url", "wss://127.0.0.1:9/", "--ca", "/dev/null"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--ca /dev/null"), "{}", stderr(&out));
}

/// Runs `body` against an in-process herald speaking TLS with a certificate for
/// `localhost`, with the certificate for `--ca`.
fn with_tls_herald(body: impl FnOnce(String, &Cert)) {
    let cert = Cert::new(&["localhost"]);
    let pair = (cert.pem.clone(), cert.key_pem.clone());
    with_herald_tls(Some(pair), |url| body(url, &cert));
}

#[test]
fn herald_over_wss_delivers_everything_in_order() {
    with_tls_herald(|url, cert| {
        let saturated = run_trusting(cert, broadcast_config(&url, 200, 0.0, 16));
        assert_eq!(
            saturated.stats.connected, 200,
            "{:?}",
            saturated.stats.failures
        );
        assert!(saturated.published > 16);
        assert!(saturated.drained);
        assert_eq!(problems(&saturated), Vec::<String>::new());
        assert_eq!(saturated.stats.delivered, saturated.published * 200);

        let paced = run_trusting(cert, broadcast_config(&url, 50, 500.0, 0));
        assert!(paced.published >= 450, "{}", paced.published);
        assert_eq!(problems(&paced), Vec::<String>::new());
        assert_eq!(paced.stats.latency.len(), paced.published * 50);
    });
}

#[test]
fn server_metrics_are_read_over_https_from_a_tls_herald() {
    with_tls_herald(|url, cert| {
        let cfg = with_trust(
            broadcast_config(&url, 20, 100.0, 0),
            Trust::Ca(cert.pem.clone()),
        );
        let mut timing = short_timing(0.5);
        timing.server_metrics = true;
        let run = run(cfg, timing).unwrap();
        assert_eq!(problems(&run), Vec::<String>::new());
        let w = run.server_writes.expect("herald's writes, read over https");
        assert!(w.writes > 0.0 && w.frames >= w.writes, "{w:?}");

        // The command line too, with the certificate trusted either way.
        let ca = cert.pem.to_str().unwrap();
        for trust in [&["--ca", ca][..], &["--insecure"][..]] {
            let args = [&["--server-metrics"][..], trust].concat();
            let (code, json) = common::cli(&url, &args);
            assert_eq!((code, &json["ok"]), (Some(0), &true.into()), "{json}");
            assert!(json["server"]["writes_per_delivery"].is_number(), "{json}");
        }
    });
}

#[test]
fn herald_takes_publishes_over_https() {
    with_tls_herald(|url, cert| {
        let mut cfg = broadcast_config(&url, 100, 0.0, 16);
        if let Scenario::Broadcast(b) = &mut cfg.scenario {
            b.via = PublishVia::Http {
                token: Some(TOKEN.into()),
            };
        }
        let out = run_trusting(cert, cfg);
        let s = &out.stats;
        assert_eq!(s.connected, 100, "{:?}", s.failures);
        assert!(out.published > 16);
        assert_eq!(problems(&out), Vec::<String>::new());
        assert_eq!(s.delivered, out.published * 100);
        assert_eq!(s.publish_answers, out.published);
        assert_eq!(s.recipients, (100, 100));
    });
}

#[test]
fn herald_over_wss_through_the_command_line() {
    with_tls_herald(|url, _| {
        // Over two processes: the children are given the trust flags too.
        let args = ["broadcast", "--url", &url, "--insecure", "--clients", "20"];
        let out = loadgen(&[&args[..], &["--rate", "200", "--procs", "2"]].concat());
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let got = |k: &str| json[k].as_u64();
        assert_eq!(json["tls"], true);
        assert_eq!(
            (got("procs"), got("connected"), got("lost")),
            (Some(2), Some(20), Some(0))
        );
        let out = loadgen(&["connect", "--url", &url, "--insecure", "--clients", "20"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["connected"], 20);
    });
}
