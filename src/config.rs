//! Configuration: the command line and the values the server runs with.
//!
//! Every limit and socket option is a flag; [`Config::default`] is the
//! embedded default configuration that `herald` runs with when given none.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// What herald does with a message a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Send it to every open client of its room, the sender included (the chat of the
    /// Node.js `ws` server herald reimplements).
    Broadcast,
    /// Send it back to its sender only, verbatim and with the same opcode
    /// (for conformance suites such as Autobahn).
    Echo,
}

/// What happens to a client whose queue would pass `--max-queued-bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SlowConsumer {
    /// Close it with 1008 (its unsent messages are dropped).
    Close,
    /// Drop whole messages for it until it catches up, then tell it how
    /// many it lost in a text message `herald: N messages dropped`.
    Drop,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `key=value` text, one event a line.
    Text,
    /// One JSON object a line.
    Json,
}

/// herald's configuration. `Config::default()` is what `herald` runs with
/// when no flag is given.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "herald",
    version,
    about = "A low-latency WebSocket broadcast server: every message any client sends \
             goes to every open client.",
    after_help = "Sizes take a byte count with an optional KiB, MiB or GiB suffix \
                  (16777216 or 16MiB). Durations take seconds with an optional ms or s \
                  suffix (10, 10s, 250ms). Log levels come from RUST_LOG (default info)."
)]
pub struct Config {
    /// Address to listen on: IP:PORT, or HOST:PORT with a host name
    /// resolved once at start (herald listens on its first IPv4 address, or
    /// its first address if it has no IPv4 one).
    #[arg(long, value_name = "ADDR", value_parser = parse_listen, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// What to do with client messages.
    #[arg(long, value_enum, default_value_t = Mode::Broadcast)]
    pub mode: Mode,

    /// Text put before every relayed text message; empty relays verbatim.
    /// Binary messages are never prefixed.
    #[arg(long, default_value = "Message from server: ")]
    pub prefix: String,

    /// Open connections (HTTP and WebSocket) at most; the next one gets 503.
    #[arg(long, default_value_t = 65_536)]
    pub max_connections: usize,

    /// Largest message (after reassembly) a client may send; larger gets close 1009.
    #[arg(long, value_parser = parse_size, default_value = "64KiB")]
    pub max_message_size: usize,

    /// Bytes queued for one client at most; a client past it is closed with 1008.
    #[arg(long, value_parser = parse_size, default_value = "4MiB")]
    pub max_queued_bytes: usize,

    /// Connections flushed per loop iteration before sockets are read again
    /// (0: every one with bytes, then read). A message read while a round of
    /// flushes is under way joins the queues not yet flushed and leaves in
    /// the same write as the messages before it.
    #[arg(long, default_value_t = 512)]
    pub flush_slice: usize,

    /// Flush each slice of the round through io_uring: one `io_uring_enter`
    /// submits a `sendmsg` per connection (readiness still comes from
    /// epoll). Where io_uring is unavailable (`kernel.io_uring_disabled`,
    /// an old kernel) herald says so once and writes with `sendmsg(2)`.
    #[arg(long)]
    pub io_uring: bool,

    /// What to do with a client past --max-queued-bytes.
    #[arg(long, value_enum, default_value_t = SlowConsumer::Close)]
    pub slow_consumer: SlowConsumer,

    /// Frames per second one WebSocket client may send (data, fragments and
    /// control frames alike); past it the client is not read until it has
    /// allowance again. 0 disables.
    #[arg(long, value_name = "MSGS", default_value_t = 1000)]
    pub client_rate: u32,

    /// Frames a WebSocket client may send at once before --client-rate paces it.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub client_burst: u32,

    /// Bytes per second read from one WebSocket client at most (a second's
    /// worth may come at once); 0 disables.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "4MiB")]
    pub client_bandwidth: usize,

    /// Fragments one message may arrive in at most; more gets close 1009.
    #[arg(long, default_value_t = 4096)]
    pub max_fragments: usize,

    /// Time a client has to send a complete HTTP request head (and, on a
    /// kept-alive HTTP connection, the next one).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub handshake_timeout: Duration,

    /// Send a ping to a WebSocket client silent this long, in whole seconds
    /// (keepalive is checked once a second); 0 disables.
    #[arg(long, value_parser = parse_whole_seconds, default_value = "30s")]
    pub ping_interval: Duration,

    /// Close (1001) a WebSocket client silent this long, pongs included, in
    /// whole seconds; 0 disables.
    #[arg(long, value_parser = parse_whole_seconds, default_value = "120s")]
    pub idle_timeout: Duration,

    /// Browser origins allowed to open a WebSocket (repeatable): an exact
    /// origin (`https://chat.example.com`), a host (chat.example.com) or a
    /// suffix pattern (*.example.com). None given: every origin is allowed.
    #[arg(long = "allow-origin", value_name = "PATTERN")]
    pub allow_origins: Vec<String>,

    /// Reject (403) upgrade requests that carry no Origin header.
    #[arg(long)]
    pub require_origin: bool,

    /// Serve TLS with this certificate chain (PEM), with --tls-key: the
    /// listener (or --tls-listen) speaks https:// and wss:// only. SIGHUP
    /// loads the pair again for new connections.
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,

    /// Serve TLS on this address, besides plain HTTP on --listen (for a
    /// health checker or a publisher on loopback). Needs --tls-cert and
    /// --tls-key; without it, --listen itself speaks TLS.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub tls_listen: Option<SocketAddr>,

    /// Also serve the metrics, /healthz and /readyz, and nothing else, on
    /// this address: each node's own, where several share --listen with
    /// --reuse-port (a scrape of the shared port reaches any one of them).
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub metrics_listen: Option<SocketAddr>,

    /// Path of the Prometheus metrics endpoint; empty disables it.
    #[arg(long, default_value = "/metrics")]
    pub metrics_path: String,

    /// Enables POST /publish for requests with `Authorization: Bearer TOKEN`.
    #[arg(long, env = "HERALD_PUBLISH_TOKEN", hide_env_values = true)]
    pub publish_token: Option<String>,

    /// Rooms (`/rooms/NAME`) at most besides the lobby; the first join of one
    /// more gets 503.
    #[arg(long, default_value_t = 100_000)]
    pub max_rooms: usize,

    /// Send --feed lines to this room instead of the lobby.
    #[arg(long, value_name = "NAME", value_parser = parse_room)]
    pub feed_room: Option<String>,

    /// Broadcast every line of this file or named pipe (`-` for standard input).
    #[arg(long, value_name = "PATH")]
    pub feed: Option<String>,

    /// Share every room with the other herald nodes on this Redis
    /// (`redis://[user:pass@]host:port[/db]`): each broadcast is published
    /// to the room's channel and delivered when it comes back, so every
    /// client of a room, on every node, sees one order. Unset: one process.
    #[arg(long, env = "HERALD_REDIS", value_name = "URL", value_parser = parse_redis_url,
          conflicts_with = "redis_cluster", hide_env_values = true)]
    pub redis: Option<RedisUrl>,

    /// The same over a Redis Cluster with sharded pub/sub (SPUBLISH,
    /// SSUBSCRIBE): one or more of its nodes, comma-separated
    /// (`host:port` or `redis://` URLs); the rest is discovered.
    #[arg(long, env = "HERALD_REDIS_CLUSTER", value_name = "URL[,URL...]",
          value_parser = parse_redis_url, value_delimiter = ',', hide_env_values = true)]
    pub redis_cluster: Vec<RedisUrl>,

    /// Names the bus channels: PREFIX:lobby and PREFIX:room:NAME. Nodes that
    /// share a prefix share their rooms.
    #[arg(long, value_name = "PREFIX", default_value = "herald")]
    pub redis_prefix: String,

    /// Client messages held for the bus while it is down or behind, in
    /// bytes; past it the sender is told its message was not delivered.
    #[arg(long, value_name = "BYTES", value_parser = parse_size, default_value = "1MiB")]
    pub bus_buffer: usize,

    /// Once herald closes a connection (a close frame or a final HTTP
    /// answer), how long the client has to take its last bytes and close.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub close_timeout: Duration,

    /// On SIGINT/SIGTERM, how long to wait for clients to answer close 1001.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub shutdown_timeout: Duration,

    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log every HTTP request at info (method, path, status, bytes); without
    /// it, requests are logged at debug.
    #[arg(long)]
    pub access_log: bool,

    /// How often to log a summary line at info (connections opened and closed
    /// by reason, rejections, slow and throttled clients), when anything
    /// happened; per-connection lines are at debug. 0 disables.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub log_summary_interval: Duration,

    #[command(flatten)]
    /// Socket options for the listener and every accepted socket.
    pub socket: SocketOptions,
}

/// Socket options, applied with socket2 to the listener and to every accepted socket.
#[derive(Debug, Clone, clap::Args)]
pub struct SocketOptions {
    /// listen(2) backlog: connections the kernel holds before herald accepts them.
    #[arg(long, default_value_t = 1024)]
    pub backlog: i32,

    /// TCP_NODELAY: send small frames at once instead of waiting to coalesce (true|false).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub nodelay: bool,

    /// SO_SNDBUF for accepted sockets (the kernel doubles it); unset keeps the kernel's autotuning.
    #[arg(long, value_parser = parse_size)]
    pub send_buffer: Option<usize>,

    /// SO_RCVBUF for the listener and accepted sockets; unset keeps autotuning.
    #[arg(long, value_parser = parse_size)]
    pub recv_buffer: Option<usize>,

    /// SO_REUSEPORT on the listener, so several herald processes can share a port.
    #[arg(long)]
    pub reuse_port: bool,

    /// TCP keepalive: idle time before the first probe (SO_KEEPALIVE, TCP_KEEPIDLE).
    #[arg(long, value_parser = parse_duration)]
    pub keepalive: Option<Duration>,

    /// TCP keepalive: time between probes (TCP_KEEPINTVL); needs --keepalive.
    #[arg(long, value_parser = parse_duration, requires = "keepalive")]
    pub keepalive_interval: Option<Duration>,

    /// TCP keepalive: unanswered probes before the peer is dead (TCP_KEEPCNT); needs --keepalive.
    #[arg(long, requires = "keepalive")]
    pub keepalive_retries: Option<u32>,

    /// TCP_USER_TIMEOUT: drop a connection whose sent data stays unacknowledged this long.
    #[arg(long, value_parser = parse_duration)]
    pub user_timeout: Option<Duration>,

    /// TCP_NOTSENT_LOWAT: unsent bytes the kernel holds before reporting writable.
    #[arg(long, value_parser = parse_size)]
    pub notsent_lowat: Option<usize>,

    /// TCP_QUICKACK on accepted sockets (the kernel may clear it again).
    #[arg(long)]
    pub quickack: bool,

    /// TCP_CONGESTION for the listener and accepted sockets (e.g. reno, cubic, bbr; see
    /// net.ipv4.tcp_available_congestion_control); unset keeps the system default.
    #[arg(long, value_name = "NAME")]
    pub congestion: Option<String>,

    /// SO_BUSY_POLL in microseconds on accepted sockets (needs CAP_NET_ADMIN).
    #[arg(long)]
    pub busy_poll: Option<u32>,

    /// IP_TOS byte for accepted IPv4 sockets (e.g. 0x10 or 16 for low delay).
    #[arg(long, value_parser = parse_u32)]
    pub tos: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["herald"])
    }
}

impl Default for SocketOptions {
    fn default() -> Self {
        Config::default().socket
    }
}

/// Parses a byte count with an optional `KiB`, `MiB` or `GiB` suffix.
///
/// # Errors
/// A one-line message naming the accepted forms.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let (num, mult) = [
        ("gib", 1usize << 30),
        ("mib", 1 << 20),
        ("kib", 1 << 10),
        ("b", 1),
    ]
    .iter()
    .find_map(|(suf, m)| lower.strip_suffix(suf).map(|n| (n.trim(), *m)))
    .unwrap_or((lower.as_str(), 1));
    num.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size {s:?}: expected bytes, e.g. 65536, 64KiB or 16MiB"))
}

/// Parses seconds with an optional `s` or `ms` suffix.
///
/// # Errors
/// A one-line message naming the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim().to_ascii_lowercase();
    let bad = || format!("invalid duration {s:?}: expected seconds, e.g. 10, 10s or 250ms");
    if let Some(ms) = t.strip_suffix("ms") {
        return ms
            .trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| bad());
    }
    let secs = t.strip_suffix('s').unwrap_or(&t).trim();
    secs.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0 && *v < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(bad)
}

/// Parses a duration that must be whole seconds (keepalive runs on a
/// one-second clock, so `250ms` would silently become 0 or 1 s).
///
/// # Errors
/// A one-line message, for anything [`parse_duration`] refuses too.
pub fn parse_whole_seconds(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.subsec_nanos() != 0 {
        return Err(format!(
            "{s:?} is not a whole number of seconds: keepalive is checked once a second, \
             e.g. 1s, 30s or 0 to disable"
        ));
    }
    Ok(d)
}

/// Parses `--listen`: an IP address and port, or a host name and port
/// resolved now (its first IPv4 address, else its first address).
///
/// # Errors
/// A one-line message: no port, or a name that does not resolve.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(s)
        .map_err(|e| format!("invalid address {s:?}: expected IP:PORT or HOST:PORT ({e})"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// Parses a room name.
///
/// # Errors
/// A one-line message naming the allowed characters.
pub fn parse_room(s: &str) -> Result<String, String> {
    if crate::http::valid_room_name(s.as_bytes()) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid room name {s:?}: 1 to 64 of A-Z a-z 0-9 . _ ~ -"
        ))
    }
}

/// Where a Redis server is and how to log in: parsed from
/// `redis://[user:pass@]host:port[/db]` by the `redis` crate.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `AUTH` user (Redis 6 ACL), if any.
    pub username: Option<String>,
    /// `AUTH` password, if any.
    pub password: Option<String>,
    /// The database `SELECT`ed (pub/sub ignores it; kept for the URL's sake).
    pub db: i64,
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out of logs.
        write!(f, "{self}")
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match (&self.username, &self.password) {
            (Some(u), Some(_)) => format!("{u}:***@"),
            (None, Some(_)) => ":***@".into(),
            (Some(u), None) => format!("{u}@"),
            (None, None) => String::new(),
        };
        let db = if self.db == 0 {
            String::new()
        } else {
            format!("/{}", self.db)
        };
        write!(f, "redis://{auth}{}:{}{db}", self.host, self.port)
    }
}

/// Parses a Redis URL (`redis://…`, or `host:port` for short).
///
/// # Errors
/// A one-line message naming the accepted form.
pub fn parse_redis_url(s: &str) -> Result<RedisUrl, String> {
    use redis::{ConnectionAddr, IntoConnectionInfo};
    let t = s.trim();
    let full = if t.contains("://") {
        t.to_string()
    } else {
        format!("redis://{t}")
    };
    let bad = |why: String| {
        format!("invalid Redis URL {s:?}: {why}; expected redis://[user:pass@]host:port[/db]")
    };
    if !full.starts_with("redis://") {
        return Err(bad("only redis:// is supported".into()));
    }
    let info = full
        .as_str()
        .into_connection_info()
        .map_err(|e| bad(e.to_string()))?;
    let ConnectionAddr::Tcp(host, port) = info.addr() else {
        return Err(bad("not a TCP address".into()));
    };
    let r = info.redis_settings();
    Ok(RedisUrl {
        host: host.clone(),
        port: *port,
        username: r.username().map(str::to_string),
        password: r.password().map(str::to_string),
        db: r.db(),
    })
}

/// Parses a decimal or `0x` hexadecimal number.
///
/// # Errors
/// A one-line message.
pub fn parse_u32(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => t.parse(),
    };
    r.map_err(|_| format!("invalid number {s:?}"))
}

impl Config {
    /// Refuses values that would leave herald unable to do its job, with the
    /// reason; clap has already checked each value's form.
    ///
    /// # Errors
    /// The first such value, as one line naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        let at_least_one = [
            (
                "--max-message-size",
                self.max_message_size,
                "no message could be sent",
            ),
            (
                "--max-connections",
                self.max_connections,
                "no client could connect",
            ),
            (
                "--max-queued-bytes",
                self.max_queued_bytes,
                "no message could be queued",
            ),
            (
                "--max-fragments",
                self.max_fragments,
                "no message could arrive",
            ),
        ];
        for (flag, value, why) in at_least_one {
            if value == 0 {
                return Err(format!("{flag} 0: {why}; give at least 1"));
            }
        }
        if self.client_rate > 0 && self.client_burst == 0 {
            return Err(
                "--client-burst 0 with --client-rate on: no client could send a frame; \
                 give at least 1, or --client-rate 0 to turn the limit off"
                    .into(),
            );
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err("--tls-cert without --tls-key: give both".into()),
            (None, Some(_)) => return Err("--tls-key without --tls-cert: give both".into()),
            (None, None) if self.tls_listen.is_some() => {
                return Err("--tls-listen needs --tls-cert and --tls-key".into())
            }
            _ => {}
        }
        if self.handshake_timeout.is_zero() {
            return Err("--handshake-timeout 0: no request could arrive in time".into());
        }
        // Room for one short message with its envelope and command.
        const MIN_BUS_BUFFER: usize = 256;
        let bus = self.redis.is_some() || !self.redis_cluster.is_empty();
        if bus && self.bus_buffer < MIN_BUS_BUFFER {
            return Err(format!(
                "--bus-buffer {}: no message would fit with its envelope; give at least \
                 {MIN_BUS_BUFFER} bytes",
                self.bus_buffer
            ));
        }
        Ok(())
    }

    /// A one-line summary of the effective configuration for the start-up log.
    pub fn summary(&self) -> String {
        let s = &self.socket;
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        format!(
            "mode={} prefix={:?} max_connections={} max_message_size={} max_queued_bytes={} \
             flush_slice={} io_uring={} slow_consumer={} client_rate={} client_burst={} client_bandwidth={} \
             max_fragments={} ping_interval={:?} idle_timeout={:?} \
             allow_origins={:?} require_origin={} metrics_path={:?} publish={} feed={} feed_room={} max_rooms={} \
             redis={} redis_cluster={} redis_prefix={:?} bus_buffer={} metrics_listen={} tls={} tls_listen={} \
             handshake_timeout={:?} close_timeout={:?} shutdown_timeout={:?} backlog={} nodelay={} send_buffer={} \
             recv_buffer={} reuse_port={} keepalive={} keepalive_interval={} keepalive_retries={} \
             user_timeout={} notsent_lowat={} quickack={} congestion={} busy_poll={} tos={}",
            flag_value(self.mode),
            self.prefix,
            self.max_connections,
            self.max_message_size,
            self.max_queued_bytes,
            self.flush_slice,
            self.io_uring,
            flag_value(self.slow_consumer),
            self.client_rate,
            self.client_burst,
            self.client_bandwidth,
            self.max_fragments,
            self.ping_interval,
            self.idle_timeout,
            self.allow_origins,
            self.require_origin,
            self.metrics_path,
            if self.publish_token.is_some() {
                "on"
            } else {
                "off"
            },
            match self.feed.as_deref() {
                None => "off",
                Some("-") => "stdin",
                Some(path) => path,
            },
            self.feed_room.as_deref().unwrap_or("-"),
            self.max_rooms,
            opt(self.redis.as_ref().map(RedisUrl::to_string)),
            if self.redis_cluster.is_empty() {
                "-".into()
            } else {
                let urls: Vec<String> = self.redis_cluster.iter().map(RedisUrl::to_string).collect();
                urls.join(",")
            },
            self.redis_prefix,
            self.bus_buffer,
            opt(self.metrics_listen.map(|a| a.to_string())),
            if self.tls_cert.is_some() { "on" } else { "off" },
            opt(self.tls_listen.map(|a| a.to_string())),
            self.handshake_timeout,
            self.close_timeout,
            self.shutdown_timeout,
            s.backlog,
            s.nodelay,
            opt(s.send_buffer.map(|v| v.to_string())),
            opt(s.recv_buffer.map(|v| v.to_string())),
            s.reuse_port,
            opt(s.keepalive.map(|v| format!("{v:?}"))),
            opt(s.keepalive_interval.map(|v| format!("{v:?}"))),
            opt(s.keepalive_retries.map(|v| v.to_string())),
            opt(s.user_timeout.map(|v| format!("{v:?}"))),
            opt(s.notsent_lowat.map(|v| v.to_string())),
            s.quickack,
            s.congestion.as_deref().unwrap_or("-"),
            opt(s.busy_poll.map(|v| v.to_string())),
            opt(s.tos.map(|v| format!("{v:#x}"))),
        )
    }
}

/// How a value of a `ValueEnum` flag is typed on the command line.
fn flag_value(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map_or_else(String::new, |p| p.get_name().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16777216"), Ok(16 << 20));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("64kib"), Ok(64 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("12 potatoes").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-3").is_err());
    }

    #[test]
    fn values_that_make_herald_useless_are_refused_with_the_flag_and_the_reason() {
        let with = |args: &[&str]| {
            let mut all = vec!["herald"];
            all.extend_from_slice(args);
            Config::parse_from(all).validate()
        };
        assert_eq!(with(&[]), Ok(()));
        let e = with(&["--max-message-size", "0"]).unwrap_err();
        assert!(
            e.starts_with("--max-message-size 0: no message could be sent"),
            "{e}"
        );
        assert!(with(&["--max-connections", "0"]).is_err());
        assert!(with(&["--client-burst", "0"]).is_err());
        assert_eq!(with(&["--client-burst", "0", "--client-rate", "0"]), Ok(()));
        let e = with(&["--redis", "redis://127.0.0.1:6379", "--bus-buffer", "100"]).unwrap_err();
        assert!(
            e.starts_with("--bus-buffer 100: no message would fit"),
            "{e}"
        );
    }

    #[test]
    fn keepalive_takes_whole_seconds_and_says_why_not_250ms() {
        assert_eq!(parse_whole_seconds("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_whole_seconds("0"), Ok(Duration::ZERO));
        assert_eq!(parse_whole_seconds("2000ms"), Ok(Duration::from_secs(2)));
        let e = parse_whole_seconds("250ms").unwrap_err();
        assert!(e.contains("whole number of seconds"), "{e}");
        assert!(parse_whole_seconds("1.5").is_err());
    }

    #[test]
    fn listen_takes_a_host_name() {
        assert_eq!(
            parse_listen("127.0.0.1:80"),
            Ok("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(parse_listen("[::1]:80"), Ok("[::1]:80".parse().unwrap()));
        assert_eq!(
            parse_listen("localhost:8080"),
            Ok("127.0.0.1:8080".parse().unwrap())
        );
        assert!(parse_listen("localhost").is_err(), "no port");
    }

    #[test]
    fn the_start_up_line_says_values_as_they_are_typed() {
        let c = Config::parse_from(["herald", "--slow-consumer", "drop", "--feed", "-"]);
        let s = c.summary();
        assert!(s.starts_with("mode=broadcast "), "{s}");
        assert!(s.contains(" slow_consumer=drop "), "{s}");
        assert!(s.contains(" feed=stdin "), "{s}");
        assert!(Config::default().summary().contains(" feed=off "));
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::default();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.prefix, "Message from server: ");
        assert_eq!(c.max_message_size, 64 << 10);
        assert_eq!(c.max_queued_bytes, 4 << 20);
        assert!(c.socket.nodelay);
        assert_eq!(c.mode, Mode::Broadcast);
        assert_eq!((c.client_rate, c.client_burst), (1000, 2000));
        assert_eq!(c.client_bandwidth, 4 << 20);
    }
}
