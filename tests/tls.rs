//! herald's own TLS (`--tls-cert`, `--tls-key`, `--tls-listen`), end to
//! end: the real binary on a free port, certificates made by `rcgen` for
//! the test, rustls clients (and `openssl s_client` for a renegotiation)
//! on real sockets.
//!
//! * the seed's broadcast over wss:// (in order, a 200 KiB message, a
//!   burst of small ones to a client with a tiny receive buffer, rooms);
//! * the page, `/healthz`, `/metrics` and `POST /publish` over https://;
//! * TLS 1.2 and 1.3, ALPN `http/1.1`; `--tls-listen` beside plain HTTP;
//! * flags that cannot serve: exit 2 with one line, before listening;
//! * SIGHUP: new handshakes get the new pair, open ones keep theirs, a bad
//!   pair is refused and the one in use kept;
//! * hostile input, each ending only its own connection;
//! * herald's memory per idle TLS connection.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::tls::{
    client_config, client_session, https_exchange, https_get, logged_tls_addr, read_to_close, recv,
    send, tls_connect, tls_over, wss_connect, wss_over, wss_upgraded, CertFiles, TestCert,
    TlsStream, WssClient,
};
use common::{
    connect, eventually, http_exchange, masked_frame, metric, reset, sample, status_kib, tcp,
    tcp_with_buffers, upgrade_request, HeraldProcess, PREFIX, TIMEOUT, UNLIMITED,
};
use rustls::{ClientConfig, ProtocolVersion};

/// herald serving TLS on `--listen` with a fresh certificate, and a
/// client configuration that trusts it.
struct Tls {
    herald: HeraldProcess,
    cert: TestCert,
    client: Arc<ClientConfig>,
    /// Removed after herald is gone (fields drop in order).
    _files: CertFiles,
}

impl Tls {
    fn start(extra: &[&str]) -> Self {
        let cert = TestCert::new();
        let files = CertFiles::new(&cert);
        let herald = start_herald(&files, extra);
        let client = client_config(&[&cert], &[]);
        Tls {
            herald,
            cert,
            client,
            _files: files,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.herald.addr
    }

    /// A wss:// client on `path`.
    fn wss(&self, path: &str) -> WssClient {
        wss_connect(self.addr(), &self.client, path)
    }

    /// The metrics, scraped over https://.
    fn scrape(&self) -> String {
        let resp = https_get(self.addr(), &self.client, "/metrics");
        assert_eq!(resp.status, 200, "{resp:?}");
        resp.text().to_owned()
    }

    /// Stops herald (SIGTERM) and checks it exits 0 without a panic.
    fn finish(self) {
        assert_clean_exit(self.herald);
    }
}

/// herald with `files` as its pair and `extra` flags.
fn start_herald(files: &CertFiles, extra: &[&str]) -> HeraldProcess {
    let pair = files.flags();
    let pair: Vec<&str> = pair.iter().map(String::as_str).collect();
    HeraldProcess::builder().flags(&pair).flags(extra).start()
}

/// SIGTERM; herald must exit 0 and its log must hold no panic.
fn assert_clean_exit(herald: HeraldProcess) {
    let (status, log) = herald.stop(TIMEOUT);
    let panics: Vec<&String> = log.iter().filter(|l| l.contains("panicked")).collect();
    assert!(panics.is_empty(), "herald panicked: {panics:#?}");
    assert!(status.success(), "herald exited {status}; log: {log:#?}");
}

/// Every client sends in turn; every client reads every message, in order.
fn assert_all_hear_each_other(clients: &mut [WssClient], tag: &str) {
    for round in 0..3 {
        for i in 0..clients.len() {
            let text = format!("{tag} {round} from {i}");
            send(&mut clients[i], &text);
            for (j, c) in clients.iter_mut().enumerate() {
                assert_eq!(recv(c), format!("{PREFIX}{text}"), "client {j}");
            }
        }
    }
}

// ---- the seed's flow over wss:// ----

#[test]
fn every_wss_client_gets_every_message_in_order() {
    // With --io-uring, TLS connections are flushed beside the ring's writes.
    for variant in [&[][..], &["--io-uring"]] {
        let tls = Tls::start(variant);
        let mut clients: Vec<WssClient> = (0..3).map(|_| tls.wss("/")).collect();
        assert_all_hear_each_other(&mut clients, "hello");
        drop(clients);
        tls.finish();
    }
}

#[test]
fn a_large_message_and_a_burst_reach_a_client_with_a_tiny_receive_buffer_whole_and_in_order() {
    let mut flags = vec!["--max-message-size", "256KiB"];
    flags.extend(UNLIMITED);
    let tls = Tls::start(&flags);
    let addr = tls.addr();
    // The tiny receive buffer makes herald's writes partial: sealed records
    // wait in the session (up to its 64 KiB) and the rest in the queue.
    let tiny = tls_over(tcp_with_buffers(addr, Some(4096), None), &tls.client);
    let mut clients = vec![tls.wss("/"), wss_over(tiny, "/"), tls.wss("/")];

    let large: String = (0..200 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    send(&mut clients[0], &large);
    // Its sender's copy first: the others' stays queued behind it, and the
    // burst (from another client) is read only after the large message.
    let want_large = format!("{PREFIX}{large}");
    assert!(recv(&mut clients[0]) == want_large, "the sender's copy");
    const BURST: usize = 5_000;
    for seq in 0..BURST {
        clients[2]
            .write(tungstenite::Message::text(format!(
                "burst {seq:05} {}",
                "x".repeat(80)
            )))
            .expect("write");
    }
    clients[2].flush().expect("flush");

    for (i, c) in clients.iter_mut().enumerate() {
        if i > 0 {
            let got = recv(c);
            assert!(
                got == want_large,
                "client {i}: the large message came as {} bytes",
                got.len()
            );
        }
        for seq in 0..BURST {
            let want = format!("{PREFIX}burst {seq:05} {}", "x".repeat(80));
            assert_eq!(recv(c), want, "client {i}, burst message {seq}");
        }
    }
    drop(clients);
    tls.finish();
}

#[test]
fn a_wss_client_paced_by_client_bandwidth_gets_all_it_sent_through() {
    // A second's worth (128 KiB) at once, then 128 KiB a second: the
    // plaintext rustls has decrypted waits in the session while the
    // client is not read, and must be taken up without a new socket event.
    let tls = Tls::start(&[
        "--client-bandwidth",
        "128KiB",
        "--max-message-size",
        "128KiB",
    ]);
    let mut ws = tls.wss("/");
    let started = Instant::now();
    let texts: Vec<String> = (0..3)
        .map(|n| format!("{n}{}", "p".repeat(100 * 1024)))
        .collect();
    for text in &texts {
        ws.write(tungstenite::Message::text(text.as_str()))
            .expect("write");
    }
    ws.flush().expect("flush");
    for (n, text) in texts.iter().enumerate() {
        let got = recv(&mut ws);
        assert!(
            got == format!("{PREFIX}{text}"),
            "message {n}: {} bytes",
            got.len()
        );
    }
    // 300 KiB at 128 KiB a second, the first 128 KiB at once: paced.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not paced: {:?}",
        started.elapsed()
    );
    drop(ws);
    tls.finish();
}

#[test]
fn rooms_over_wss_keep_to_themselves() {
    let tls = Tls::start(&[]);
    let mut red = vec![tls.wss("/rooms/red"), tls.wss("/rooms/red")];
    let mut blue = vec![tls.wss("/rooms/blue")];
    let mut lobby = vec![tls.wss("/")];
    send(&mut red[1], "to red");
    for c in red.iter_mut() {
        assert_eq!(recv(c), format!("{PREFIX}to red"));
    }
    send(&mut blue[0], "to blue");
    assert_eq!(recv(&mut blue[0]), format!("{PREFIX}to blue"));
    // Neither room's message reached the lobby: its first is its own.
    send(&mut lobby[0], "to the lobby");
    assert_eq!(recv(&mut lobby[0]), format!("{PREFIX}to the lobby"));
    // Nor did blue's or the lobby's reach red: red's next is red's.
    send(&mut red[0], "red again");
    for c in red.iter_mut() {
        assert_eq!(recv(c), format!("{PREFIX}red again"));
    }
    drop((red, blue, lobby));
    tls.finish();
}

/// Reads until the server's close frame and the end of the session;
/// returns the code. The session must end with close_notify: a clean EOF
/// through rustls, not a TCP close it reports as truncation.
fn read_close(ws: &mut WssClient) -> u16 {
    let mut code = None;
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(frame)) => {
                code = Some(u16::from(frame.expect("a close code").code));
            }
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => {
                return code.expect("the session ended without a close frame")
            }
            Err(e) => panic!("after close {code:?}: {e} (no close_notify?)"),
        }
    }
}

#[test]
fn a_wss_client_closes_politely_and_sigterm_closes_the_others_with_1001() {
    let tls = Tls::start(&["--shutdown-timeout", "30s"]);
    let mut clients: Vec<WssClient> = (0..3).map(|_| tls.wss("/")).collect();
    // One leaves with the close handshake: 1000 back, then close_notify.
    let mut leaving = clients.pop().expect("a client");
    leaving
        .close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        }))
        .expect("send close");
    assert_eq!(read_close(&mut leaving), 1000);
    assert_all_hear_each_other(&mut clients, "after a leave");

    let Tls { mut herald, .. } = tls;
    herald.signal(libc::SIGTERM);
    let started = Instant::now();
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(read_close(c), 1001, "client {i}");
    }
    drop(clients);
    let status = herald.wait(TIMEOUT);
    assert!(status.success(), "{status}");
    // Well before --shutdown-timeout: herald had every reply.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(herald.count_in_log("panicked"), 0, "{:#?}", herald.log());
}

#[test]
fn a_wss_client_that_never_reads_is_closed_at_the_queue_limit_and_the_others_get_everything() {
    let mut flags = vec!["--max-queued-bytes", "256KiB", "--send-buffer", "16KiB"];
    flags.extend(UNLIMITED);
    let tls = Tls::start(&flags);
    // Never read: a tiny receive buffer, upgraded, then left alone.
    let mut stuck = tls_over(tcp_with_buffers(tls.addr(), Some(4096), None), &tls.client);
    stuck
        .write_all(upgrade_request("13", "").as_bytes())
        .expect("send upgrade");
    let mut healthy = tls.wss("/");
    const MESSAGES: usize = 2_000;
    let filler = "z".repeat(1000);
    for seq in 0..MESSAGES {
        let text = format!("{seq} {filler}");
        send(&mut healthy, &text);
        assert_eq!(
            recv(&mut healthy),
            format!("{PREFIX}{text}"),
            "message {seq}"
        );
    }
    let metrics = tls.scrape();
    assert_eq!(
        sample(&metrics, "herald_slow_consumers_total"),
        1,
        "{metrics}"
    );
    // The stuck client's session was ended: its socket reaches EOF once
    // what herald had sent is read.
    stuck.sock.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let rest = read_to_close(&mut stuck.sock).expect("the stuck client closed");
    assert!(
        rest.len() < 2 * 1024 * 1024,
        "{} bytes reached the stuck client",
        rest.len()
    );
    drop((healthy, stuck));
    tls.finish();
}

#[test]
fn past_max_connections_a_tls_newcomer_is_turned_away_at_once() {
    let tls = Tls::start(&["--max-connections", "2"]);
    let mut open = vec![tls.wss("/"), tls.wss("/")];
    let started = Instant::now();
    let mut newcomer = rustls::StreamOwned::new(client_session(&tls.client), tcp(tls.addr()));
    let mut failed = None;
    while failed.is_none() && started.elapsed() < TIMEOUT {
        if let Err(e) = newcomer.conn.complete_io(&mut newcomer.sock) {
            failed = Some(e);
        } else if !newcomer.conn.is_handshaking() {
            panic!("a TLS handshake past --max-connections completed");
        }
    }
    let failed = failed.expect("the newcomer neither served nor refused");
    // Closed when accepted: not after the 1 s a plain newcomer has to take
    // its 503 (a TLS one could not read it before its handshake).
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "refused only after {:?}: {failed}",
        started.elapsed()
    );
    assert_all_hear_each_other(&mut open, "the two admitted");
    drop(open);
    tls.finish();
}

// ---- https:// ----

#[test]
fn https_serves_the_page_health_metrics_and_publish() {
    const TOKEN: &str = "tls-token";
    let tls = Tls::start(&["--publish-token", TOKEN]);
    let (addr, client) = (tls.addr(), &tls.client);

    let page = https_get(addr, client, "/");
    assert_eq!(page.status_line, "HTTP/1.1 200 OK");
    assert_eq!(
        page.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.text(), herald::http::CHAT_PAGE);

    let health = https_get(addr, client, "/healthz");
    assert_eq!(health.status, 200, "{health:?}");

    // Each scrape is a handshake of its own, counted before it is answered.
    let before = sample(&tls.scrape(), "herald_tls_handshakes_total");
    let mut listeners = vec![tls.wss("/"), tls.wss("/")];
    let after = tls.scrape();
    assert_eq!(
        sample(&after, "herald_tls_handshakes_total"),
        before + 3,
        "two wss clients and one scrape: {after}"
    );
    assert_eq!(sample(&after, "herald_tls_failures_total"), 0, "{after}");

    let body = "published over https";
    let request = format!(
        "POST /publish HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (resp, _) = https_exchange(addr, client, request.as_bytes());
    assert_eq!(resp.status, 202, "{resp:?} {:?}", resp.text());
    assert_eq!(resp.text().trim(), "{\"recipients\":2}");
    for c in listeners.iter_mut() {
        assert_eq!(recv(c), body);
    }
    // Without the token: 401, nothing published.
    let unauthorised = request.replace(TOKEN, "wrong");
    let (resp, _) = https_exchange(addr, client, unauthorised.as_bytes());
    assert_eq!(resp.status, 401, "{resp:?}");
    send(&mut listeners[0], "after");
    for c in listeners.iter_mut() {
        assert_eq!(recv(c), format!("{PREFIX}after"));
    }
    drop(listeners);
    tls.finish();
}

// ---- versions, ALPN ----

#[test]
fn tls_1_2_and_tls_1_3_both_negotiate_http_1_1() {
    let tls = Tls::start(&[]);
    for (version, want) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let config = client_config(&[&tls.cert], &[version]);
        let stream = tls_connect(tls.addr(), &config);
        assert_eq!(stream.conn.protocol_version(), Some(want));
        assert_eq!(
            stream.conn.alpn_protocol(),
            Some(&b"http/1.1"[..]),
            "{want:?}"
        );
        let mut ws = wss_over(stream, "/");
        send(&mut ws, &format!("over {want:?}"));
        assert_eq!(recv(&mut ws), format!("{PREFIX}over {want:?}"));
    }
    tls.finish();
}

// ---- --tls-listen ----

#[test]
fn tls_listen_serves_wss_beside_plain_ws_to_the_same_rooms() {
    let cert = TestCert::new();
    let files = CertFiles::new(&cert);
    let mut herald = start_herald(&files, &["--tls-listen", "127.0.0.1:0"]);
    let line = herald.expect_line("the TLS address", |l| l.contains("TLS listening"));
    let tls_addr = logged_tls_addr(&line);
    let plain_addr = herald.addr;
    assert_ne!(tls_addr, plain_addr);
    let client = client_config(&[&cert], &[]);

    // Plain on --listen, TLS on --tls-listen, each refusing the other.
    let health = http_exchange(plain_addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(health.status, 200, "{health:?}");
    let health = https_get(tls_addr, &client, "/healthz");
    assert_eq!(health.status, 200, "{health:?}");
    let wrong = http_exchange(tls_addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(wrong.status, 400, "plain HTTP on --tls-listen: {wrong:?}");

    let mut secure = wss_connect(tls_addr, &client, "/rooms/mix");
    let (mut plain, resp) =
        tungstenite::client(format!("ws://{plain_addr}/rooms/mix"), tcp(plain_addr))
            .expect("ws:// handshake");
    assert_eq!(resp.status(), 101);
    let mut lobby = connect(plain_addr);
    for (who, text) in [(0, "from wss"), (1, "from ws"), (0, "wss again")] {
        if who == 0 {
            send(&mut secure, text);
        } else {
            send(&mut plain, text);
        }
        assert_eq!(recv(&mut secure), format!("{PREFIX}{text}"));
        assert_eq!(recv(&mut plain), format!("{PREFIX}{text}"));
    }
    // The lobby, on the plain port, heard none of the room.
    send(&mut lobby, "lobby");
    assert_eq!(recv(&mut lobby), format!("{PREFIX}lobby"));
    drop((secure, plain, lobby));
    assert_clean_exit(herald);
    drop(files);
}

// ---- flags that cannot serve ----

/// Runs herald with `flags` on a free port; it must exit 2 within
/// [`TIMEOUT`] with nothing listening there. Returns its standard error.
fn refused(flags: &[&str]) -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--listen")
        .arg(addr.to_string())
        .args(flags)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald");
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald {flags:?} did not exit within {TIMEOUT:?}");
        }
        // Nothing may listen while it decides.
        assert!(
            TcpStream::connect(addr).is_err(),
            "herald {flags:?} listened on {addr}"
        );
        thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert_eq!(
        status.code(),
        Some(2),
        "herald {flags:?}: {status}; {stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");
    stderr
}

/// herald refused `flags` with exactly one line, which says each of `says`.
fn refused_in_one_line(flags: &[&str], says: &[&str]) {
    let stderr = refused(flags);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "herald {flags:?} wrote {lines:#?}");
    assert!(lines[0].starts_with("herald: "), "{}", lines[0]);
    for s in says {
        assert!(lines[0].contains(s), "{:?} does not say {s:?}", lines[0]);
    }
}

#[test]
fn certificates_that_cannot_serve_exit_2_with_one_line_before_listening() {
    let a = TestCert::new();
    let b = TestCert::new();
    let files = CertFiles::new(&a);
    let (cert, key) = (
        files.cert.display().to_string(),
        files.key.display().to_string(),
    );
    let missing = files.other("absent", "").with_file_name("absent.pem");
    let missing = missing.display().to_string();
    let b_key = files.other("b-key.pem", &b.key_pem).display().to_string();
    let no_pem = files
        .other("no-pem.txt", "just some text\n")
        .display()
        .to_string();
    let ec_key_as_cert = files
        .other("key-as-cert.pem", &a.key_pem)
        .display()
        .to_string();

    let with = |c: &str, k: &str| ["--tls-cert", c, "--tls-key", k].map(str::to_owned);
    let run = |flags: [String; 4], says: &[&str]| {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        refused_in_one_line(&flags, says);
    };
    run(
        with(&missing, &key),
        &["--tls-cert", &missing, "No such file"],
    );
    run(
        with(&cert, &missing),
        &["--tls-key", &missing, "No such file"],
    );
    run(
        with(&cert, &b_key),
        &["--tls-key", &b_key, "does not go with", &cert],
    );
    run(
        with(&no_pem, &key),
        &["--tls-cert", &no_pem, "no PEM certificate"],
    );
    run(
        with(&ec_key_as_cert, &key),
        &["--tls-cert", &ec_key_as_cert],
    );
    run(with(&cert, &no_pem), &["--tls-key", &no_pem, "private key"]);
    run(with(&cert, &cert), &["--tls-key", &cert, "private key"]);

    // Half a pair is refused by the flag check (clap's error, exit 2).
    let only_cert = refused(&["--tls-cert", &cert]);
    assert!(
        only_cert.contains("--tls-cert without --tls-key"),
        "{only_cert}"
    );
    let only_key = refused(&["--tls-key", &key]);
    assert!(
        only_key.contains("--tls-key without --tls-cert"),
        "{only_key}"
    );
    let listen_only = refused(&["--tls-listen", "127.0.0.1:0"]);
    assert!(
        listen_only.contains("--tls-listen needs --tls-cert and --tls-key"),
        "{listen_only}"
    );
}

// ---- SIGHUP ----

/// The certificate `stream`'s server presented.
fn presented(stream: &TlsStream) -> Vec<u8> {
    stream
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a peer certificate")
        .to_vec()
}

#[test]
fn sighup_gives_new_handshakes_the_new_pair_and_keeps_open_sessions_and_a_bad_pair_is_refused() {
    let a = TestCert::new();
    let b = TestCert::new();
    let files = CertFiles::new(&a);
    let mut herald = start_herald(&files, &[]);
    let addr = herald.addr;
    let either = client_config(&[&a, &b], &[]);

    let first = tls_connect(addr, &either);
    assert_eq!(presented(&first), a.der.to_vec(), "before the reload");
    let mut clients = vec![wss_over(first, "/")];

    // New files alone change nothing: herald reads them on SIGHUP only.
    files.write(&b.cert_pem, &b.key_pem);
    assert_eq!(presented(&tls_connect(addr, &either)), a.der.to_vec());
    herald.signal(libc::SIGHUP);
    herald.expect_line("the reload", |l| {
        l.contains("TLS certificate and key reloaded")
    });
    let second = tls_connect(addr, &either);
    assert_eq!(presented(&second), b.der.to_vec(), "after the reload");
    // A client trusting only the old certificate is refused now.
    let only_a = client_config(&[&a], &[]);
    let mut refused = rustls::StreamOwned::new(client_session(&only_a), tcp(addr));
    let outcome = refused.conn.complete_io(&mut refused.sock);
    assert!(
        outcome.is_err(),
        "a client trusting only A completed a handshake with B"
    );

    clients.push(wss_over(second, "/"));
    assert_all_hear_each_other(&mut clients, "across the reload");

    // A bad pair (B's certificate with A's key): refused, B kept.
    files.write(&b.cert_pem, &a.key_pem);
    herald.signal(libc::SIGHUP);
    let warning = herald.expect_line("the refusal", |l| l.contains("TLS reload refused"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("does not go with"), "{warning}");
    assert_eq!(presented(&tls_connect(addr, &either)), b.der.to_vec());
    clients.push(wss_connect(addr, &either, "/"));
    assert_all_hear_each_other(&mut clients, "after a refused reload");

    // And an unreadable one: refused too.
    std::fs::remove_file(&files.key).expect("remove the key");
    herald.signal(libc::SIGHUP);
    eventually(TIMEOUT, "a second refusal", || {
        (herald.count_in_log("TLS reload refused") == 2).then_some(())
    });
    assert_eq!(presented(&tls_connect(addr, &either)), b.der.to_vec());
    assert_all_hear_each_other(&mut clients, "after an unreadable key");
    drop(clients);
    assert_clean_exit(herald);
    drop(files);
}

// ---- hostile input ----

/// herald with `--handshake-timeout 1s`, its metrics on a plain port of
/// their own (a scrape is then no TLS handshake), and a wss:// client
/// connected before any abuse.
struct Watched {
    // Dropped first, so herald's shutdown does not wait for its reply.
    bystander: WssClient,
    tls: Tls,
    metrics: SocketAddr,
}

/// The handshake deadline of the hostile tests.
const DEADLINE: Duration = Duration::from_secs(1);

impl Watched {
    fn start() -> Self {
        let mut tls = Tls::start(&[
            "--handshake-timeout",
            "1s",
            "--metrics-listen",
            "127.0.0.1:0",
        ]);
        let line = tls.herald.expect_line("the metrics address", |l| {
            l.contains("metrics and health listening")
        });
        let metrics = logged_tls_addr(&line);
        let bystander = tls.wss("/");
        Watched {
            bystander,
            tls,
            metrics,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.tls.addr()
    }

    fn failures(&self) -> u64 {
        metric(self.metrics, "herald_tls_failures_total")
    }

    /// The bytes of a ClientHello.
    fn client_hello(&self) -> Vec<u8> {
        let mut session = client_session(&self.tls.client);
        let mut hello = Vec::new();
        session.write_tls(&mut hello).expect("a ClientHello");
        assert_eq!(hello[0], 0x16, "a handshake record");
        hello
    }

    /// The bystander still gets broadcasts, a newcomer is served, and herald
    /// holds no connection but the bystander's (and the scrape's); then
    /// herald exits cleanly.
    fn assert_undisturbed(mut self) {
        send(&mut self.bystander, "still here");
        assert_eq!(recv(&mut self.bystander), format!("{PREFIX}still here"));
        let mut newcomer = self.tls.wss("/");
        send(&mut newcomer, "newcomer");
        assert_eq!(recv(&mut self.bystander), format!("{PREFIX}newcomer"));
        assert_eq!(recv(&mut newcomer), format!("{PREFIX}newcomer"));
        drop(newcomer);
        let metrics = self.metrics;
        eventually(TIMEOUT, "only the bystander and the scrape open", || {
            (metric(metrics, "herald_connections_open") == 2).then_some(())
        });
        drop(self.bystander);
        self.tls.finish();
    }
}

/// `reply` is TLS alert records (content type 21) and nothing else;
/// returns the level of the first (1 warning, 2 fatal).
fn assert_alert(reply: &[u8], what: &str) -> u8 {
    assert!(
        reply.len() >= 7,
        "{what}: closed without an alert: {reply:?}"
    );
    let mut at = 0;
    while at < reply.len() {
        assert_eq!(
            reply[at], 0x15,
            "{what}: not an alert record at {at}: {reply:?}"
        );
        let len = usize::from(u16::from_be_bytes([reply[at + 3], reply[at + 4]]));
        at += 5 + len;
    }
    assert_eq!(at, reply.len(), "{what}: a partial record: {reply:?}");
    reply[5]
}

#[test]
fn plain_http_on_the_tls_port_gets_a_plain_400_naming_tls() {
    let watched = Watched::start();
    for request in [
        &b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
        upgrade_request("13", "").as_bytes(),
    ] {
        let resp = http_exchange(watched.addr(), request);
        assert_eq!(resp.status, 400, "{resp:?}");
        assert_eq!(
            resp.text(),
            "this port speaks TLS: use https:// or wss://\n"
        );
        assert_eq!(resp.header("Connection"), Some("close"));
    }
    assert_eq!(watched.failures(), 0, "a plain request is no TLS failure");
    watched.assert_undisturbed();
}

#[test]
fn garbage_on_the_tls_port_gets_an_alert_and_a_close() {
    let watched = Watched::start();
    let mut noise = Vec::with_capacity(2048);
    let mut x: u32 = 0x9e37_79b9;
    noise.push(0);
    while noise.len() < 2048 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    // Each with whether rustls seals a fatal alert for it: for a handshake
    // message announced larger than it takes it seals none, and the
    // session ends with herald's close_notify.
    let garbage: [(&str, &[u8], bool); 4] = [
        ("random bytes", &noise, true),
        (
            "lower-case text",
            b"get / http/1.1\r\nhost: x\r\n\r\n",
            true,
        ),
        (
            "a 6 MB handshake message announced",
            b"\x16\x03\x01\x00\x05hello",
            false,
        ),
        (
            "a record longer than TLS allows",
            b"\x16\x03\x01\xff\xff",
            true,
        ),
    ];
    for (n, (what, bytes, fatal)) in garbage.iter().enumerate() {
        let mut s = tcp(watched.addr());
        s.write_all(bytes).expect("write garbage");
        let reply = read_to_close(&mut s).unwrap_or_else(|e| panic!("{what}: not closed: {e}"));
        let level = assert_alert(&reply, what);
        let want = if *fatal { 2 } else { 1 };
        assert_eq!(level, want, "{what}: the alert's level: {reply:?}");
        let failures = watched.failures();
        assert_eq!(failures, n as u64 + 1, "{what}: herald_tls_failures_total");
    }
    watched.assert_undisturbed();
}

#[test]
fn a_truncated_client_hello_then_silence_is_closed_at_the_handshake_deadline() {
    let watched = Watched::start();
    let hello = watched.client_hello();
    let mut s = tcp(watched.addr());
    let sent = Instant::now();
    s.write_all(&hello[..hello.len() / 2])
        .expect("half a ClientHello");
    let reply = read_to_close(&mut s).expect("closed before TIMEOUT");
    let took = sent.elapsed();
    assert!(
        took >= DEADLINE - Duration::from_millis(100),
        "closed after {took:?}, before the deadline"
    );
    assert!(took < DEADLINE * 4, "closed only after {took:?}");
    assert!(reply.is_empty() || reply[0] == 0x15, "{reply:?}");
    watched.assert_undisturbed();
}

/// A client's last message and its close_notify in one TCP segment: herald
/// handles the message and ends the session at once (a regression: the
/// read that held both was taken as draining the socket, and the session
/// stayed open until the next event, a ping or the idle timeout).
#[test]
fn a_close_notify_arriving_with_data_ends_the_session_at_once() {
    let tls = Tls::start(&[]);
    let mut bystander = tls.wss("/");
    let mut ws = tls.wss("/");
    let stream = ws.get_mut();
    stream
        .conn
        .writer()
        .write_all(&masked_frame(0x81, b"last words"))
        .expect("seal");
    stream.conn.send_close_notify();
    let mut wire = Vec::new();
    while stream.conn.wants_write() {
        stream.conn.write_tls(&mut wire).expect("records");
    }
    stream
        .sock
        .write_all(&wire)
        .expect("one write: data and close_notify");
    // The message was handled: the other client hears it.
    assert_eq!(recv(&mut bystander), format!("{PREFIX}last words"));
    // herald ends the session (its close_notify, then EOF) well before the
    // 30 s ping: the read ends instead of timing out.
    stream
        .sock
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    loop {
        match stream.conn.read_tls(&mut stream.sock) {
            Ok(0) => break,
            Ok(_) => {
                let state = stream.conn.process_new_packets().expect("valid records");
                if state.peer_has_closed() {
                    break;
                }
            }
            Err(e) if common::tls::is_closed(&e) => break,
            Err(e) => panic!("herald did not end the session within 2 s: {e}"),
        }
    }
    tls.finish();
}

#[test]
fn a_corrupt_record_after_the_handshake_ends_that_session_with_an_alert() {
    let mut watched = Watched::start();
    for (n, version) in [&rustls::version::TLS13, &rustls::version::TLS12]
        .into_iter()
        .enumerate()
    {
        let config = client_config(&[&watched.tls.cert], &[version]);
        let mut ws = wss_connect(watched.addr(), &config, "/");
        // A text frame sealed as the client would, then one byte of its
        // ciphertext flipped.
        let stream = ws.get_mut();
        stream
            .conn
            .writer()
            .write_all(&masked_frame(0x81, b"corrupted"))
            .expect("seal");
        let mut record = Vec::new();
        stream.conn.write_tls(&mut record).expect("a record");
        assert_eq!(record[0], 0x17, "application data");
        let middle = record.len() - 10;
        record[middle] ^= 0x40;
        stream
            .sock
            .write_all(&record)
            .expect("send the corrupt record");
        let mut buf = [0u8; 64];
        let err = stream
            .read(&mut buf)
            .expect_err("herald answered a corrupt record with data");
        assert!(
            err.to_string().contains("BadRecordMac"),
            "{version:?}: expected a bad_record_mac alert, got {err}"
        );
        assert_eq!(watched.failures(), n as u64 + 1);
    }
    // The corrupt message reached nobody: the bystander's next is this.
    send(&mut watched.bystander, "after");
    assert_eq!(recv(&mut watched.bystander), format!("{PREFIX}after"));
    watched.assert_undisturbed();
}

#[test]
fn resets_in_mid_handshake_leave_nothing_behind() {
    let watched = Watched::start();
    let hello = watched.client_hello();
    for _ in 0..20 {
        // Half a ClientHello, then a reset.
        let mut s = tcp(watched.addr());
        s.write_all(&hello[..hello.len() / 2])
            .expect("half a ClientHello");
        reset(s);
        // A whole ClientHello, the server's first flight begun, a reset.
        let mut s = tcp(watched.addr());
        s.write_all(&hello).expect("a ClientHello");
        let mut first = [0u8; 1];
        s.read_exact(&mut first).expect("the server's first flight");
        assert_eq!(first[0], 0x16, "a handshake record");
        reset(s);
    }
    watched.assert_undisturbed();
}

#[test]
fn connections_that_finish_the_handshake_and_say_nothing_are_closed_at_the_deadline() {
    let watched = Watched::start();
    const SILENT: usize = 100;
    let opened = Instant::now();
    let mut silent: Vec<TlsStream> = (0..SILENT)
        .map(|_| tls_connect(watched.addr(), &watched.tls.client))
        .collect();
    let all_open = opened.elapsed();
    for (i, s) in silent.iter_mut().enumerate() {
        // Closed without a word: no request came (the TCP end is raw: no
        // session ever carried data).
        let rest = read_to_close(&mut s.sock).unwrap_or_else(|e| panic!("silent {i}: {e}"));
        let took = opened.elapsed();
        assert!(
            took >= DEADLINE - Duration::from_millis(100),
            "silent {i} closed after {took:?}"
        );
        assert!(
            rest.is_empty() || rest[0] == 0x17 || rest[0] == 0x15,
            "{rest:?}"
        );
    }
    let took = opened.elapsed();
    assert!(
        took < all_open + DEADLINE * 3,
        "{SILENT} silent connections (opened in {all_open:?}) were closed only after {took:?}"
    );
    watched.assert_undisturbed();
}

#[test]
fn a_tls_1_2_renegotiation_is_refused_without_harm() {
    let watched = Watched::start();
    let mut openssl = Command::new("/usr/bin/openssl")
        .args(["s_client", "-tls1_2", "-connect"])
        .arg(watched.addr().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl s_client");
    let mut stdin = openssl.stdin.take().expect("stdin");
    // s_client reads its standard input once the session is up; the line
    // "R" asks for a renegotiation. Standard input stays open, so only
    // the server's answer can end s_client.
    stdin.write_all(b"R\n").expect("ask to renegotiate");
    let deadline = Instant::now() + TIMEOUT;
    while openssl.try_wait().expect("try_wait").is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    let _ = openssl.kill();
    let out = openssl.wait_with_output().expect("openssl output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("TLSv1.2"),
        "no TLS 1.2 session: {stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("RENEGOTIATING"),
        "no renegotiation tried: {stderr}"
    );
    // herald's no_renegotiation alert, as OpenSSL reports it.
    assert!(
        stderr.contains("no renegotiation"),
        "the renegotiation was not refused: {stderr}"
    );
    watched.assert_undisturbed();
}

// ---- memory ----

/// Idle connections measured, after [`WARM`] opened first (the allocator's
/// arenas, rustls' session cache of 256 entries: filled before the
/// baseline).
const IDLE: usize = 2_000;
const WARM: usize = 300;

/// The target for an idle TLS connection (issue 14).
const TLS_IDLE_TARGET: f64 = 8.0 * 1024.0;

/// What the test allows: the target itself. Measured with rustls'
/// buffered `ServerConnection` (b9a69d7): 8.16 to 8.18 KiB, over it, of
/// which its 4 KiB receive buffer (`DeframerVecBuffer`, kept while the
/// session lives). With the unbuffered API, which keeps received bytes only
/// while a record is incomplete: 4.15 KiB (against 0.63 KiB plain); what is
/// left is rustls' session state (the connection, two AES-GCM key states
/// of 560 bytes, the traffic state).
const TLS_IDLE_BOUND: f64 = TLS_IDLE_TARGET;

/// herald's resident memory per connection `open` makes, in bytes: its
/// RSS after [`IDLE`] of them less its RSS before, over `IDLE`. The
/// connections are held until it returns.
fn rss_per_connection<S>(herald: &HeraldProcess, mut open: impl FnMut() -> S) -> f64 {
    let pid = herald.pid();
    let warm: Vec<S> = (0..WARM).map(|_| open()).collect();
    let settled = || {
        // herald has answered every upgrade; let its loop finish the iteration.
        thread::sleep(Duration::from_millis(200));
        status_kib(pid, "VmRSS")
    };
    let before = settled();
    let idle: Vec<S> = (0..IDLE).map(|_| open()).collect();
    let after = settled();
    drop((warm, idle));
    after.saturating_sub(before) as f64 * 1024.0 / IDLE as f64
}

#[test]
fn an_idle_wss_connection_costs_herald_little_memory() {
    let tls = Tls::start(&[]);
    let (addr, client) = (tls.addr(), tls.client.clone());
    let per_tls = rss_per_connection(&tls.herald, || wss_upgraded(addr, &client));

    let plain = HeraldProcess::start(&[]);
    let plain_addr = plain.addr;
    let per_plain = rss_per_connection(&plain, || common::raw_websocket(plain_addr));
    eprintln!(
        "herald's RSS per idle WebSocket: {:.2} KiB over TLS (target {:.0} KiB), {:.2} KiB plain \
         ({IDLE} connections)",
        per_tls / 1024.0,
        TLS_IDLE_TARGET / 1024.0,
        per_plain / 1024.0
    );
    assert!(
        per_tls > per_plain,
        "TLS ({per_tls:.0} B) cheaper than plain ({per_plain:.0} B)? The measure is off"
    );
    assert!(
        per_tls <= TLS_IDLE_BOUND,
        "an idle TLS connection costs herald {:.2} KiB (bound {:.1} KiB)",
        per_tls / 1024.0,
        TLS_IDLE_BOUND / 1024.0
    );
    tls.finish();
    assert_clean_exit(plain);
}
