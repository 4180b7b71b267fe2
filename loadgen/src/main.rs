//! `loadgen`: the command line. Everything else is in the library.

use clap::{Args, Parser, Subcommand, ValueEnum};
use loadgen::config::{parse_local_addrs, Broadcast, Config, PublishVia, Scenario};
use loadgen::handshake::WsUrl;
use loadgen::procs::{child_args, run_parent, StdioLink};
use loadgen::run::{run, run_shard, Timing};
use loadgen::tls::{self, Trust};
use loadgen::{plot, report};
use rustls::ClientConfig;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Load generator for WebSocket broadcast servers (herald, or any server that, like the Node.js `ws`
/// chat server herald reimplements, relays every message to every client). Exit status: 0 when everything arrived once and in order, 1 when anything
/// was lost, duplicated, reordered, malformed or misrouted (another room's), a receiver saw
/// its room's messages interleaved otherwise than the room's other receivers (order
/// mismatch), or fewer clients connected than asked (none at all: loadgen stops once
/// connecting is over, and says why in one line instead of the report), 2 on a usage or
/// I/O error.
#[derive(Parser, Debug)]
#[command(name = "loadgen", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Clients publish; every delivery is timed and sequence-checked.
    Broadcast {
        #[command(flatten)]
        common: Common,
        /// Clients 0..P publish (they receive too).
        #[arg(long, default_value_t = 1)]
        publishers: u32,
        /// Bytes per published message (at least 43).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Seconds of the measured window.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Total messages per second over all publishers, evenly spaced (open loop);
        /// 0 = saturation, each publisher keeping --window messages in flight.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Messages each publisher keeps in flight when --rate is 0.
        #[arg(long, default_value_t = 16)]
        window: u32,
        /// What the server puts before each message relayed from a client (not used
        /// with --publish-via http: a publish is broadcast exactly as sent).
        #[arg(long, default_value = "Message from server: ")]
        prefix: String,
        /// How publishers send: text frames on their WebSocket, or `POST /publish` on one
        /// kept-alive HTTP connection each (herald's backend publishing; see --token).
        #[arg(long, value_enum, default_value_t = Via::Ws)]
        publish_via: Via,
        /// Bearer token for --publish-via http (herald's --publish-token).
        #[arg(long, value_name = "TOKEN")]
        token: Option<String>,
        /// Spread the clients over N rooms: client i joins <its URL's path>rooms/r{i % N}, and
        /// receives only its room's publishers (with --publish-via http, publisher j posts
        /// to /publish?room=r{j % N}). A delivery from another room counts as misrouted.
        #[arg(long, value_name = "N")]
        rooms: Option<u32>,
        /// Seconds of publishing before the measured window.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Longest wait, in seconds, for deliveries in flight when publishing ends.
        #[arg(long, default_value_t = 5.0)]
        drain: f64,
        /// Write the latency distribution (HdrHistogram .hgrm format, milliseconds).
        #[arg(long, value_name = "FILE")]
        hgrm: Option<PathBuf>,
        /// Draw the latency-by-percentile curve into an SVG file.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
        /// Read the server's herald_frames_per_write histogram from GET /metrics on the
        /// --url's address (loopback only) at both ends of the window: writes per delivery
        /// and frames per write. With several --url, every distinct address is read once and
        /// the counts are summed into one figure for all nodes. Left out of the report when
        /// any server does not have it. Over HTTPS for wss:// URLs, trusting what --ca or
        /// --insecure trusts.
        #[arg(long)]
        server_metrics: bool,
    },
    /// Open, handshake and close connections; reports handshakes/s and their latency. Over
    /// wss:// each one is a full TLS handshake (TCP connect, TLS without session
    /// resumption, WebSocket upgrade), timed from connect() to the checked 101.
    Connect {
        #[command(flatten)]
        common: Common,
        /// Stop after this many seconds even if --clients handshakes are not done.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// Open --clients connections and hold them (server memory per connection).
    Idle {
        #[command(flatten)]
        common: Common,
        /// Seconds to hold the connections once all are open.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Spread the connections over N rooms: client i joins <URL path>rooms/r{i % N}
        /// (idle members of other rooms, next to a broadcast elsewhere).
        #[arg(long, value_name = "N")]
        rooms: Option<u32>,
    },
    /// Draw several .hgrm files as one latency-by-percentile SVG.
    Plot {
        /// Output SVG file.
        #[arg(long, value_name = "FILE.svg")]
        out: PathBuf,
        /// Chart title.
        #[arg(long, default_value = "Latency by percentile")]
        title: String,
        /// Logarithmic latency axis (for curves orders of magnitude apart).
        #[arg(long)]
        log_latency: bool,
        /// Curves as LABEL=FILE.hgrm (or just FILE.hgrm).
        #[arg(required = true)]
        inputs: Vec<String>,
    },
}

/// `--publish-via`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// Text frames on the publisher's WebSocket.
    Ws,
    /// `POST /publish` requests on an extra HTTP/1.1 connection per publisher.
    Http,
}

#[derive(Args, Debug)]
struct Common {
    /// Server URL, ws://HOST:PORT/PATH or wss://HOST:PORT/PATH (HOST an IP address or
    /// localhost; wss:// needs --ca or --insecure, its --publish-via http publishers speak
    /// HTTPS, and in broadcast and idle later connections may resume the TLS sessions of
    /// earlier ones, which connect never does). Repeat it to load several servers (nodes sharing rooms): client i
    /// connects to the (i mod n)-th --url, and publisher j (client j) publishes through the
    /// (j mod n)-th, over its WebSocket or HTTP alike; the same with --procs. The order
    /// check (order mismatch) compares the receivers of each room across all URLs and all
    /// processes.
    #[arg(
        long = "url",
        value_name = "URL",
        default_value = "ws://127.0.0.1:8080/"
    )]
    urls: Vec<WsUrl>,
    /// For wss:// URLs: trust the certificates in this PEM file (the server's CA, or its
    /// self-signed certificate); the certificate must name the URL's host (SNI is the
    /// host; an IP address must be among the certificate's IP addresses).
    #[arg(long, value_name = "PATH")]
    ca: Option<PathBuf>,
    /// For wss:// URLs: accept any server certificate, for any name (the handshake's
    /// signatures are still checked). For test servers with throwaway certificates.
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,
    /// Connections to open (connect: handshakes to do).
    #[arg(long, default_value_t = 1000)]
    clients: u32,
    /// Worker threads, each with its own event loop and share of the clients.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Source addresses, e.g. 127.0.0.1-127.0.0.8, used round-robin (beyond ~28k
    /// connections to one server address).
    #[arg(long, value_name = "RANGE")]
    local_addrs: Option<String>,
    /// Connections each thread starts per batch.
    #[arg(long, default_value_t = 64)]
    batch: u32,
    /// Milliseconds between a thread's batches.
    #[arg(long, default_value_t = 1.0)]
    batch_interval_ms: f64,
    /// Most handshakes in progress per thread (keep it at or below the server's backlog).
    #[arg(long, default_value_t = 128)]
    max_pending: u32,
    /// Seconds a connection may take from connect() to a checked 101.
    #[arg(long, default_value_t = 5.0)]
    connect_timeout: f64,
    /// Seconds to wait for all connections to open before starting anyway.
    #[arg(long, default_value_t = 120.0)]
    connect_phase_timeout: f64,
    /// Largest frame payload accepted from the server, bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_frame: u64,
    /// Server process to sample from /proc (CPU per delivery, memory per connection).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Another process whose CPU time over the measured window is reported on its own (the
    /// JSON's "also"), such as a second node or the Redis behind them; repeatable.
    #[arg(long, value_name = "PID")]
    also_pid: Vec<u32>,
    /// Spread the clients over this many loadgen processes (one process may open only as
    /// many sockets as its open-file limit allows; threads share that limit).
    #[arg(long, default_value_t = 1)]
    procs: u32,
    /// Internal: run as shard I of K under a parent started with --procs.
    #[arg(long, hide = true, value_name = "I/K")]
    shard: Option<String>,
    /// Print one JSON object on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// No live line each second.
    #[arg(long, short)]
    quiet: bool,
}

fn secs(s: f64) -> u64 {
    (s.max(0.0) * 1e9) as u64
}

/// `--rooms`: at least 1, under a URL path without a query (0: not given).
fn check_rooms(rooms: Option<u32>, common: &Common) -> Result<u32, String> {
    if rooms == Some(0) {
        return Err("--rooms must be at least 1".into());
    }
    if rooms.is_some() && common.urls.iter().any(|u| u.path.contains('?')) {
        return Err("--rooms needs a --url without a query (rooms go under its path)".into());
    }
    let urls = common.urls.len() as u32;
    // Shards would repeat what their parent already said.
    if let Some(n) = rooms.filter(|&n| gcd(n, urls) > 1 && common.shard.is_none()) {
        eprintln!(
            "loadgen: warning: --rooms {n} and {urls} --url share a factor: each room's \
             clients connect to only {} of the URLs",
            urls / gcd(n, urls)
        );
    }
    Ok(rooms.unwrap_or(0))
}

fn gcd(a: u32, b: u32) -> u32 {
    match b {
        0 => a,
        _ => gcd(b, a % b),
    }
}

/// The TLS configuration `c`'s URLs need: `None` when none is `wss://`. `connect` resumes
/// no session, so that each of its handshakes is a full one.
fn tls_config(c: &Common, scenario: &Scenario) -> Result<Option<Arc<ClientConfig>>, String> {
    let trust = match (&c.ca, c.insecure) {
        (Some(path), _) => Some(Trust::Ca(path.clone())),
        (None, true) => Some(Trust::Insecure),
        (None, false) => None,
    };
    match (c.urls.iter().any(|u| u.tls), trust) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err("--ca and --insecure apply to wss:// URLs only".into()),
        (true, None) => Err(
            "wss:// needs --ca PATH (a PEM file with the server's CA or self-signed \
             certificate) or --insecure (accept any certificate)"
                .into(),
        ),
        (true, Some(trust)) => {
            let resume = !matches!(scenario, Scenario::Connect);
            tls::client_config(&trust, resume).map(Some)
        }
    }
}

fn config(c: &Common, scenario: Scenario) -> Result<Config, String> {
    if c.threads == 0 || c.clients == 0 || c.batch == 0 || c.max_pending == 0 || c.procs == 0 {
        return Err(
            "--threads, --procs, --clients, --batch and --max-pending must be positive".into(),
        );
    }
    let shard = match &c.shard {
        None => (0, 1),
        Some(s) => s
            .split_once('/')
            .and_then(|(i, k)| Some((i.parse().ok()?, k.parse().ok()?)))
            .filter(|&(i, k): &(u32, u32)| i < k)
            .ok_or_else(|| format!("--shard {s}: expected I/K with I < K"))?,
    };
    Ok(Config {
        urls: c.urls.clone(),
        clients: c.clients,
        threads: c.threads,
        local_addrs: match &c.local_addrs {
            Some(s) => parse_local_addrs(s)?,
            None => Vec::new(),
        },
        batch: c.batch,
        batch_interval_ns: (c.batch_interval_ms * 1e6) as u64,
        max_pending: c.max_pending,
        connect_timeout_ns: secs(c.connect_timeout),
        max_frame: c.max_frame,
        tls: tls_config(c, &scenario)?,
        scenario,
        shard,
    })
}

fn timing(c: &Common, duration: f64, warmup: f64, drain: f64) -> Timing {
    Timing {
        warmup_ns: secs(warmup),
        duration_ns: secs(duration),
        drain_ns: secs(drain),
        connect_phase_ns: secs(c.connect_phase_timeout),
        server_pid: c.server_pid,
        also_pids: c.also_pid.clone(),
        server_metrics: false,
        live: !c.quiet,
    }
}

fn main() -> ExitCode {
    match real_main(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs the command; `Ok(false)` when the run measured a failure.
fn real_main(cli: Cli) -> Result<bool, String> {
    let (common, cfg, timing, outputs) = match cli.command {
        Command::Plot {
            out,
            title,
            log_latency,
            inputs,
        } => {
            let mut series = Vec::new();
            for input in inputs {
                let (label, file) = match input.split_once('=') {
                    Some((l, f)) => (l.to_string(), f.to_string()),
                    None => (input.clone(), input.clone()),
                };
                let text = std::fs::read_to_string(&file).map_err(|e| format!("{file}: {e}"))?;
                series.push((
                    label,
                    report::parse_hgrm(&text).map_err(|e| format!("{file}: {e}"))?,
                ));
            }
            plot::draw(&out, &title, &series, log_latency)?;
            return Ok(true);
        }
        Command::Broadcast {
            common,
            publishers,
            size,
            duration,
            rate,
            window,
            prefix,
            publish_via,
            token,
            rooms,
            warmup,
            drain,
            hgrm,
            plot,
            server_metrics,
        } => {
            if size < loadgen::message::HEADER_LEN {
                return Err(format!(
                    "--size must be at least {} bytes",
                    loadgen::message::HEADER_LEN
                ));
            }
            if publishers == 0 || publishers > common.clients {
                return Err("--publishers must be between 1 and --clients".into());
            }
            if rate == 0.0 && window == 0 {
                return Err("--rate 0 needs a --window of at least 1".into());
            }
            let via = match (publish_via, token) {
                (Via::Ws, None) => PublishVia::Ws,
                (Via::Ws, Some(_)) => return Err("--token needs --publish-via http".into()),
                (Via::Http, token) => PublishVia::Http { token },
            };
            let b = Broadcast {
                rooms: check_rooms(rooms, &common)?,
                publishers,
                size,
                rate,
                window,
                prefix: prefix.into_bytes(),
                via,
            };
            if server_metrics && !common.urls.iter().all(|u| u.addr.ip().is_loopback()) {
                return Err(
                    "--server-metrics reads the server's /metrics: loopback --url only".into(),
                );
            }
            let cfg = config(&common, Scenario::Broadcast(b))?;
            let t = Timing {
                server_metrics,
                ..timing(&common, duration, warmup, drain)
            };
            (common, cfg, t, (hgrm, plot))
        }
        Command::Connect { common, duration } => {
            if common.procs > 1 {
                return Err("--procs applies to broadcast and idle".into());
            }
            let cfg = config(&common, Scenario::Connect)?;
            let t = timing(&common, duration, 0.0, 0.0);
            (common, cfg, t, (None, None))
        }
        Command::Idle {
            common,
            duration,
            rooms,
        } => {
            let rooms = check_rooms(rooms, &common)?;
            let cfg = config(&common, Scenario::Idle { rooms })?;
            let t = timing(&common, duration, 0.0, 0.0);
            (common, cfg, t, (None, None))
        }
    };
    if cfg.shard.1 > 1 {
        let mut link = StdioLink::default();
        let outcome = run_shard(cfg, timing, Some(&mut link)).map_err(|e| e.to_string())?;
        StdioLink::result(&outcome);
        return Ok(true);
    }
    let outcome = if common.procs > 1 {
        let args: Vec<String> = std::env::args().skip(1).collect();
        run_parent(cfg, timing, common.procs, &child_args(&args))
    } else {
        run(cfg, timing)
    }
    .map_err(|e| e.to_string())?;
    // A table of zeros (and a steal warning about an empty window) would bury the cause.
    if let Some(line) = report::no_client(&outcome) {
        eprintln!("loadgen: {line}");
        return Ok(false);
    }
    if common.json {
        report::write_table(&outcome, &mut std::io::stderr()).map_err(|e| e.to_string())?;
        println!("{}", report::to_json(&outcome));
    } else {
        report::write_table(&outcome, &mut std::io::stdout()).map_err(|e| e.to_string())?;
    }
    let (hgrm, svg) = outputs;
    if let Some(path) = hgrm {
        let mut f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        report::write_hgrm(&outcome.stats.latency, &mut f)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = svg {
        let hosts: Vec<String> = (outcome.cfg.urls.iter())
            .map(|u| format!("{}://{}", u.scheme(), u.host))
            .collect();
        let title = format!("Delivery latency, {}", hosts.join(", "));
        let series = vec![(
            format!("{} clients", outcome.cfg.clients),
            report::points(&outcome.stats.latency),
        )];
        plot::draw(&path, &title, &series, false)?;
    }
    Ok(report::problems(&outcome).is_empty())
}
