//! loadgen against herald itself: its parser reads herald's encoder, and a short
//! end-to-end run against an in-process herald loses nothing.

mod common;

use common::{broadcast_config, short_timing};
use loadgen::frame;
use std::net::TcpListener;
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

/// Runs `body` against a herald serving on 127.0.0.1:0, then shuts herald down.
fn with_herald(body: impl FnOnce(String)) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let shutdown = herald::Shutdown::new();
    let handle = shutdown.clone();
    let server = thread::spawn(move || herald::run(listener, herald::Config::default(), handle));
    body(url);
    shutdown.trigger();
    server.join().unwrap().unwrap();
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
