//! `--max-connections`: past the limit a connection is told 503 and closed,
//! and the connections already open are untouched.

mod common;

use common::{
    connect_many, http_exchange, recv_text, send_text, upgrade_request, TestServer, PREFIX,
};

#[test]
fn the_connection_past_the_limit_gets_503_while_the_first_two_keep_working() {
    let server = TestServer::start(&["--max-connections", "2"]);
    let mut clients = connect_many(server.addr, 2);

    // Both a WebSocket upgrade and a page request are turned away.
    for req in [
        upgrade_request("13", ""),
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n".into(),
    ] {
        let resp = http_exchange(server.addr, req.as_bytes());
        assert_eq!(resp.status, 503, "{resp:?}");
        assert_eq!(resp.header("Connection"), Some("close"), "{resp:?}");
    }

    for sender in 0..2 {
        let text = format!("from {sender}");
        send_text(&mut clients[sender], &text);
        for (i, c) in clients.iter_mut().enumerate() {
            assert_eq!(recv_text(c), format!("{PREFIX}{text}"), "client {i}");
        }
    }
}
