//! What one run does, as the command line described it.

use crate::handshake::WsUrl;
use std::net::IpAddr;

/// Settings shared by every worker thread of a run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The servers to load (at least one): client `i` connects to `urls[i % len]`, so
    /// publisher `j`, client `j`, publishes through `urls[j % len]` (see [`Config::url_of`]).
    pub urls: Vec<WsUrl>,
    /// Connections to open (for `connect`: handshakes to complete).
    pub clients: u32,
    /// Worker threads; client `i` belongs to worker `i % threads`.
    pub threads: usize,
    /// Source addresses, used round-robin by client index (empty: the kernel picks).
    pub local_addrs: Vec<IpAddr>,
    /// Connections each worker starts per batch.
    pub batch: u32,
    /// Time between a worker's batches.
    pub batch_interval_ns: u64,
    /// Most handshakes one worker keeps in progress at once.
    pub max_pending: u32,
    /// A connection not open this long after `connect()` fails with a timeout.
    pub connect_timeout_ns: u64,
    /// Largest frame payload accepted from the server.
    pub max_frame: u64,
    /// What the open connections do.
    pub scenario: Scenario,
    /// This process's part of a run split over several processes: (index, count). A
    /// process opens the clients `i` with `i % count == index`; (0, 1) is a whole run.
    pub shard: (u32, u32),
    /// What connections to `wss://` URLs speak TLS with (see [`crate::tls::client_config`]);
    /// `None` when every URL is `ws://`.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Config {
    /// The clients this process opens, in order.
    pub fn my_clients(&self) -> impl Iterator<Item = u32> + '_ {
        let (index, count) = self.shard;
        (index..self.clients).step_by(count.max(1) as usize)
    }

    /// The URL client `client` (or publisher `client`, over either path) connects to.
    #[inline]
    pub fn url_of(&self, client: u32) -> &WsUrl {
        &self.urls[client as usize % self.urls.len()]
    }

    /// The path client `client`'s WebSocket asks for: its URL's, or with rooms, its room's
    /// under it (`/` and room 7 give `/rooms/r7`).
    pub fn ws_path(&self, client: u32) -> std::borrow::Cow<'_, str> {
        let base = &self.url_of(client).path;
        let rooms = match &self.scenario {
            Scenario::Broadcast(b) => b.rooms,
            Scenario::Idle { rooms } => *rooms,
            Scenario::Connect => 0,
        };
        if rooms == 0 {
            return base.as_str().into();
        }
        let slash = if base.ends_with('/') { "" } else { "/" };
        format!("{base}{slash}rooms/{}", room_name(client % rooms)).into()
    }

    /// The source address of client `client`'s connections (`None`: the kernel picks).
    pub fn local_addr(&self, client: u32) -> Option<IpAddr> {
        (!self.local_addrs.is_empty())
            .then(|| self.local_addrs[client as usize % self.local_addrs.len()])
    }
}

/// The scenario a run plays once its connections are open.
#[derive(Debug, Clone)]
pub enum Scenario {
    /// Publish and measure every delivery.
    Broadcast(Broadcast),
    /// Open, handshake and close connections as fast as allowed.
    Connect,
    /// Hold the connections open, client `i` in room `i % rooms` (0: on the URL given).
    Idle {
        /// Rooms the connections are spread over.
        rooms: u32,
    },
}

/// The `broadcast` scenario's parameters.
#[derive(Debug, Clone)]
pub struct Broadcast {
    /// Clients `0..publishers` also publish.
    pub publishers: u32,
    /// Bytes of each published message.
    pub size: usize,
    /// Total messages per second over all publishers; 0 means saturation with `window`.
    pub rate: f64,
    /// Messages each publisher keeps in flight when `rate` is 0.
    pub window: u32,
    /// What the server puts before each message it relays from a client.
    pub prefix: Vec<u8>,
    /// How publishers hand their messages to the server.
    pub via: PublishVia,
    /// Rooms the clients are spread over, client `i` in room `i % rooms` (0: none, every
    /// client on the URL given).
    pub rooms: u32,
}

/// The name room `room` has on the server: `r7`.
pub fn room_name(room: u32) -> String {
    format!("r{room}")
}

/// The path publishers take to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishVia {
    /// Text frames on the publisher's own WebSocket (the only way in for a server without `POST /publish`).
    Ws,
    /// `POST /publish` on one extra kept-alive HTTP/1.1 connection per publisher (herald's
    /// way in for backends); the WebSocket then only receives.
    Http {
        /// Sent as `Authorization: Bearer TOKEN` (no header without one).
        token: Option<String>,
    },
}

impl PublishVia {
    /// `ws` or `http`, as the command line spells it.
    pub fn name(&self) -> &'static str {
        match self {
            PublishVia::Ws => "ws",
            PublishVia::Http { .. } => "http",
        }
    }
}

impl Broadcast {
    /// How many groups delivery is accounted in: the rooms, or 1 without rooms (everyone
    /// receives every publisher).
    #[inline]
    pub fn room_count(&self) -> u32 {
        self.rooms.max(1)
    }

    /// The room client `client` is in (0 without rooms).
    #[inline]
    pub fn room_of(&self, client: u32) -> u32 {
        client % self.room_count()
    }

    /// How many publishers room `room` has: `room`, `room + N`, ... below `publishers`. A
    /// receiver's trackers are indexed by `publisher / N`, so it keeps only its room's.
    pub fn publishers_in(&self, room: u32) -> u32 {
        match self.publishers.checked_sub(room + 1) {
            Some(after) => after / self.room_count() + 1,
            None => 0,
        }
    }

    /// When publisher `id`'s message `seq` is due, in an open-loop run starting at
    /// `start_ns`: the `rate` is spread evenly, publishers interleaved.
    pub fn due_ns(&self, start_ns: u64, id: u32, seq: u64) -> u64 {
        let slot = seq as f64 * self.publishers as f64 + id as f64;
        start_ns + (slot * 1e9 / self.rate) as u64
    }

    /// What every delivery starts with: the server's prefix for messages relayed from a
    /// client, nothing for a publish (a server sends a publish body exactly as given).
    #[inline]
    pub fn delivered_prefix(&self) -> &[u8] {
        match self.via {
            PublishVia::Ws => &self.prefix,
            PublishVia::Http { .. } => &[],
        }
    }
}

/// Parses `127.0.0.1-127.0.0.8` (a range in the last octet) or a comma-separated list.
///
/// # Errors
/// A message naming the part that is not an address.
pub fn parse_local_addrs(s: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = |e: std::net::AddrParseError| format!("{part}: {e}");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (std::net::Ipv4Addr, std::net::Ipv4Addr) =
                    (a.parse().map_err(bad)?, b.parse().map_err(bad)?);
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a || b - a > 255 {
                    return Err(format!("{part}: empty or over 256 addresses"));
                }
                out.extend((a..=b).map(|v| IpAddr::V4(v.into())));
            }
            None => out.push(part.parse().map_err(bad)?),
        }
    }
    Ok(out)
}

/// Configurations for unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// `publishers` publishing 64-byte messages on their WebSockets at `rate` in all (0:
    /// saturation with a window of 1), without rooms.
    pub(crate) fn broadcast(publishers: u32, rate: f64) -> Broadcast {
        Broadcast {
            publishers,
            size: 64,
            rate,
            window: u32::from(rate == 0.0),
            prefix: vec![],
            via: PublishVia::Ws,
            rooms: 0,
        }
    }

    /// `clients` clients of `url` playing `scenario`, on one thread, in one process.
    pub(crate) fn config(url: &str, clients: u32, scenario: Scenario) -> Config {
        Config {
            urls: vec![url.parse().unwrap()],
            clients,
            threads: 1,
            local_addrs: vec![],
            batch: 1,
            batch_interval_ns: 0,
            max_pending: 1,
            connect_timeout_ns: 0,
            max_frame: 0,
            scenario,
            shard: (0, 1),
            tls: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{broadcast, config};
    use super::*;

    #[test]
    fn local_addr_ranges() {
        let v = parse_local_addrs("127.0.0.1-127.0.0.8").unwrap();
        assert_eq!(v.len(), 8);
        assert_eq!(v[7], "127.0.0.8".parse::<IpAddr>().unwrap());
        assert_eq!(parse_local_addrs("127.0.0.2, ::1").unwrap().len(), 2);
        assert!(parse_local_addrs("127.0.0.9-127.0.0.1").is_err());
        assert!(parse_local_addrs("nope").is_err());
    }

    #[test]
    fn open_loop_schedule_interleaves_publishers() {
        let b = broadcast(2, 1000.0);
        assert_eq!(b.due_ns(0, 0, 0), 0);
        assert_eq!(b.due_ns(0, 1, 0), 1_000_000);
        assert_eq!(b.due_ns(0, 0, 1), 2_000_000);
        assert_eq!(b.due_ns(5, 1, 10), 5 + 21_000_000);
    }

    #[test]
    fn rooms_split_clients_and_publishers() {
        let mut b = broadcast(5, 0.0);
        assert_eq!(
            (b.room_count(), b.room_of(7), b.publishers_in(0)),
            (1, 0, 5)
        );
        b.rooms = 3;
        // Publishers 0..5 in rooms 0,1,2,0,1: two, two, one.
        let counts: Vec<u32> = (0..3).map(|r| b.publishers_in(r)).collect();
        assert_eq!(counts, [2, 2, 1]);
        // More rooms than publishers: the rooms past the last publisher have none.
        b.rooms = 8;
        assert_eq!((b.publishers_in(4), b.publishers_in(5)), (1, 0));
        let mut cfg = config("ws://127.0.0.1:8080/", 10, Scenario::Broadcast(b.clone()));
        assert_eq!(cfg.ws_path(15), "/rooms/r7");
        cfg.urls = vec!["ws://127.0.0.1:8080/chat".parse().unwrap()];
        assert_eq!(cfg.ws_path(2), "/chat/rooms/r2");
        b.rooms = 0;
        cfg.scenario = Scenario::Broadcast(b);
        assert_eq!(cfg.ws_path(2), "/chat");
        // Idle connections spread the same way.
        cfg.scenario = Scenario::Idle { rooms: 4 };
        assert_eq!(cfg.ws_path(6), "/chat/rooms/r2");
        cfg.scenario = Scenario::Idle { rooms: 0 };
        assert_eq!(cfg.ws_path(6), "/chat");
    }

    #[test]
    fn clients_and_publishers_take_the_urls_in_turn() {
        let mut b = broadcast(3, 0.0);
        b.rooms = 3;
        let mut cfg = config("ws://127.0.0.1:8080/", 10, Scenario::Broadcast(b));
        cfg.urls.push("ws://127.0.0.2:8081/chat".parse().unwrap());
        let hosts: Vec<&str> = (0..4).map(|i| cfg.url_of(i).host.as_str()).collect();
        assert_eq!(
            hosts,
            [
                "127.0.0.1:8080",
                "127.0.0.2:8081",
                "127.0.0.1:8080",
                "127.0.0.2:8081"
            ]
        );
        // Each room path goes under the path of the client's own URL.
        assert_eq!(cfg.ws_path(4), "/rooms/r1");
        assert_eq!(cfg.ws_path(5), "/chat/rooms/r2");
    }
}
