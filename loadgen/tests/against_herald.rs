//! loadgen against herald itself: its parser reads herald's encoder, and a short
//! end-to-end run against an in-process herald loses nothing, whether the publisher sends
//! on its WebSocket or through `POST /publish`.

mod common;

use common::{broadcast_config, cli, short_timing, with_herald, TOKEN};
use loadgen::config::{Config, PublishVia, Scenario};
use loadgen::frame;
use loadgen::report::problems;
use std::thread;

#[test]
fn parses_heralds_encoded_frames() {
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for len in [
        0usize, 1, 64, 104, 105, 125, 126, 1000, 65535, 65536, 70_000,
    ] {
        let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        let f = herald::frame::encode(herald::frame::OP_TEXT, b"Message from server: ", &payload);
        wire.extend_from_slice(&f);
        expected.push([b"Message from server: ".as_slice(), &payload].concat());
    }
    wire.extend_from_slice(&herald::frame::encode_close(1001, "going away"));
    let mut pos = 0;
    for want in &expected {
        let (f, used) = frame::parse(&wire[pos..], 1 << 20).unwrap().unwrap();
        assert_eq!((f.fin, f.opcode), (true, frame::OP_TEXT));
        assert_eq!(f.payload, &want[..]);
        pos += used;
    }
    let (close, used) = frame::parse(&wire[pos..], 1 << 20).unwrap().unwrap();
    assert_eq!(close.opcode, frame::OP_CLOSE);
    assert_eq!(&close.payload[..2], 1001u16.to_be_bytes());
    assert_eq!(&close.payload[2..], b"going away");
    assert_eq!(pos + used, wire.len());
}

#[test]
fn herald_delivers_everything_in_order() {
    with_herald(|url| {
        let saturated =
            loadgen::run::run(broadcast_config(&url, 200, 0.0, 16), short_timing(1.0)).unwrap();
        assert_eq!(saturated.stats.connected, 200);
        assert!(saturated.published > 16);
        assert!(saturated.drained);
        assert_eq!(loadgen::report::problems(&saturated), Vec::<String>::new());
        assert_eq!(saturated.stats.delivered, saturated.published * 200);

        let paced =
            loadgen::run::run(broadcast_config(&url, 50, 500.0, 0), short_timing(1.0)).unwrap();
        assert!(paced.published >= 450, "{}", paced.published);
        assert_eq!(loadgen::report::problems(&paced), Vec::<String>::new());
        assert_eq!(paced.stats.latency.len(), paced.published * 50);
    });
}

/// `cfg` publishing through `POST /publish` with `token`.
fn via_http(mut cfg: Config, token: &str) -> Config {
    if let Scenario::Broadcast(b) = &mut cfg.scenario {
        b.via = PublishVia::Http {
            token: Some(token.into()),
        };
    }
    cfg
}

#[test]
fn herald_delivers_http_publishes_in_order() {
    with_herald(|url| {
        let cfg = via_http(broadcast_config(&url, 200, 0.0, 16), TOKEN);
        let saturated = loadgen::run::run(cfg, short_timing(1.0)).unwrap();
        let s = &saturated.stats;
        assert_eq!(s.connected, 200);
        assert!(saturated.published > 16);
        assert!(saturated.drained);
        assert_eq!(problems(&saturated), Vec::<String>::new());
        assert_eq!(s.delivered, saturated.published * 200);
        assert_eq!((s.lost, s.reordered, s.malformed), (0, 0, 0));
        assert_eq!(
            s.publish_answers, saturated.published,
            "every publish got its 202"
        );
        assert_eq!(s.recipients, (200, 200), "each reached every client");

        let cfg = via_http(broadcast_config(&url, 50, 500.0, 0), TOKEN);
        let paced = loadgen::run::run(cfg, short_timing(1.0)).unwrap();
        assert!(paced.published >= 450, "{}", paced.published);
        assert_eq!(problems(&paced), Vec::<String>::new());
        assert_eq!(paced.stats.latency.len(), paced.published * 50);
        assert_eq!(paced.stats.publish_answers, paced.published);
    });
}

#[test]
fn a_wrong_token_fails_the_run() {
    with_herald(|url| {
        let cfg = via_http(broadcast_config(&url, 20, 0.0, 16), "wrong");
        let out = loadgen::run::run(cfg, short_timing(0.5)).unwrap();
        let s = &out.stats;
        assert_eq!(out.published, 0, "herald broadcast none of it");
        assert_eq!((s.delivered, s.lost, s.malformed), (0, 0, 0));
        assert_eq!(s.publish_errors.get("publish: HTTP 401"), Some(&1));
        assert_eq!(
            s.publish_failed(),
            16,
            "the 401, then herald closed: the rest of the window went unanswered"
        );
        assert!(problems(&out).contains(&"16 publishes failed".to_string()));

        let (code, json) = cli(&url, &["--publish-via", "http", "--token", "wrong"]);
        assert_eq!(code, Some(1));
        assert_eq!(json["ok"], false);
        assert_eq!(json["publish_via"], "http");
        assert_eq!(json["publish"]["errors"]["publish: HTTP 401"], 1);

        let (code, json) = cli(&url, &["--publish-via", "http", "--token", TOKEN]);
        assert_eq!((code, &json["ok"]), (Some(0), &true.into()), "{json}");
        assert_eq!(json["publish"]["answered_202"], json["published"]);
    });
}

/// `cfg` with its clients and publishers spread over `rooms` rooms.
fn in_rooms(mut cfg: Config, rooms: u32, publishers: u32) -> Config {
    if let Scenario::Broadcast(b) = &mut cfg.scenario {
        b.rooms = rooms;
        b.publishers = publishers;
    }
    cfg
}

#[test]
fn herald_keeps_each_room_to_itself() {
    with_herald(|url| {
        // 120 clients in 4 rooms of 30, a publisher in each: every message
        // reaches its 30, none crosses, by WebSocket and by POST /publish.
        for cfg in [
            in_rooms(broadcast_config(&url, 120, 0.0, 16), 4, 4),
            via_http(in_rooms(broadcast_config(&url, 120, 0.0, 16), 4, 4), TOKEN),
        ] {
            let run = loadgen::run::run(cfg, short_timing(1.0)).unwrap();
            let s = &run.stats;
            assert_eq!(s.connected, 120);
            assert!(run.published > 16);
            assert!(run.drained);
            assert_eq!(problems(&run), Vec::<String>::new());
            assert_eq!(s.misrouted, 0);
            assert_eq!(
                s.delivered,
                run.published * 30,
                "each message to its room of 30"
            );
        }
    });
}

/// herald's `herald_rooms` gauge, read from `GET /metrics` at `url`'s address.
fn rooms_on(url: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("ws://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("herald_rooms "))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn idle_connections_spread_over_rooms() {
    with_herald(|url| {
        // 30 idle connections over 3 rooms: herald holds 3 rooms while they
        // stay, and none once they left.
        let mut cfg = broadcast_config(&url, 30, 0.0, 1);
        cfg.scenario = Scenario::Idle { rooms: 3 };
        let idle = thread::spawn(move || loadgen::run::run(cfg, short_timing(2.0)).unwrap());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while rooms_on(&url) != Some(3) {
            assert!(std::time::Instant::now() < deadline, "{:?}", rooms_on(&url));
            thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = idle.join().unwrap();
        assert_eq!(out.stats.connected, 30);
        assert!(problems(&out).is_empty(), "{:?}", problems(&out));
    });
}
