//! Turning an [`Outcome`] into the final table, one JSON object, an `.hgrm` file, and the
//! verdict (the exit status).

use crate::config::{PublishVia, Scenario};
use crate::run::Outcome;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::io::{self, Write};

/// `1234567.0` as `1.23M`.
pub fn si(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.2}G", v / 1e9),
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// Nanoseconds as milliseconds with three decimals.
pub fn ms(ns: u64) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}

/// Bytes in MiB.
fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// Percentiles reported for every histogram.
const QUANTILES: [(&str, f64); 6] = [
    ("p50", 0.5),
    ("p90", 0.9),
    ("p99", 0.99),
    ("p99_9", 0.999),
    ("p99_99", 0.9999),
    ("max", 1.0),
];

fn latency_json(h: &Histogram<u64>) -> Value {
    let mut m = serde_json::Map::new();
    for (name, q) in QUANTILES {
        m.insert(
            format!("{name}_ms"),
            json!(h.value_at_quantile(q) as f64 / 1e6),
        );
    }
    m.insert("mean_ms".into(), json!(h.mean() / 1e6));
    m.insert("count".into(), json!(h.len()));
    Value::Object(m)
}

/// The quantiles of the receivers' medians reported: `min` is the fastest-served receiver's
/// median, `max` the slowest's.
const CLIENT_QUANTILES: [(&str, f64); 5] = [
    ("min", 0.0),
    ("p10", 0.1),
    ("p50", 0.5),
    ("p90", 0.9),
    ("max", 1.0),
];

/// How unevenly the receivers were served: (p90 / p10, max / min) of their medians, `None`
/// when no receiver had a delivery in the window. A server that always serves the same
/// receivers last shows it here, not in the run's percentiles, which mix everyone.
pub fn client_p50_spread(h: &Histogram<u64>) -> Option<(f64, f64)> {
    if h.is_empty() {
        return None;
    }
    let ratio =
        |hi: f64, lo: f64| h.value_at_quantile(hi) as f64 / h.value_at_quantile(lo).max(1) as f64;
    Some((ratio(0.9, 0.1), ratio(1.0, 0.0)))
}

fn client_p50_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let mut m = serde_json::Map::new();
    for (name, q) in CLIENT_QUANTILES {
        m.insert(name.into(), json!(h.value_at_quantile(q) as f64 / 1e6));
    }
    m.insert("count".into(), json!(h.len()));
    Value::Object(m)
}

/// Why the run failed, if it did: what makes the exit status non-zero.
pub fn problems(o: &Outcome) -> Vec<String> {
    let s = &o.stats;
    let mut p = Vec::new();
    let connect_only = matches!(o.cfg.scenario, Scenario::Connect);
    if !connect_only && s.connected < o.cfg.clients as u64 {
        p.push(format!(
            "only {} of {} clients connected",
            s.connected, o.cfg.clients
        ));
    }
    if connect_only && s.failed() > 0 {
        p.push(format!("{} handshakes failed", s.failed()));
    }
    for (n, what) in [
        (s.lost, "lost"),
        (s.duplicates, "duplicated"),
        (s.reordered, "reordered"),
        (s.malformed, "malformed"),
        (s.misrouted, "misrouted"),
        (s.orders.mismatched(), "order mismatch"),
        (s.dropped(), "connections dropped"),
        (s.publish_failed(), "publishes failed"),
    ] {
        if n > 0 {
            p.push(format!("{n} {what}"));
        }
    }
    if let Scenario::Broadcast(_) = o.cfg.scenario {
        if o.published == 0 {
            p.push("nothing was published".into());
        }
    }
    p
}

/// The whole outcome as one JSON object.
pub fn to_json(o: &Outcome) -> Value {
    let s = &o.stats;
    let urls: Vec<String> = o.cfg.urls.iter().map(url).collect();
    let mut v = json!({
        "url": urls[0],
        "urls": urls,
        "clients": o.cfg.clients,
        "threads": o.cfg.threads,
        "procs": o.procs,
        "tls": tls(o),
        "connected": s.connected,
        "failed": s.failed(),
        "failures": s.failures,
        "dropped": s.dropped(),
        "drops": s.drops,
        "connect_secs": o.connect_secs,
        "handshake": latency_json(&s.handshake),
        "window_secs": o.window_secs,
        "loadgen": {
            "cpu_secs": o.self_cpu_ns as f64 / 1e9,
            "cpus": o.self_cpus,
            "load": o.self_load(),
            "saturated": o.self_load() > 0.9,
        },
        "host_steal": o.steal,
        "problems": problems(o),
        "ok": problems(o).is_empty(),
    });
    match &o.cfg.scenario {
        Scenario::Broadcast(b) => {
            v["scenario"] = json!("broadcast");
            v["mode"] = json!(mode(o));
            v["publishers"] = json!(b.publishers);
            v["rooms"] = json!((b.rooms > 0).then_some(b.rooms));
            v["publish_via"] = json!(b.via.name());
            if b.via != PublishVia::Ws {
                v["publish"] = json!({
                    "answered_202": s.publish_answers,
                    "recipients_min": (s.publish_answers > 0).then_some(s.recipients.0),
                    "recipients_max": (s.publish_answers > 0).then_some(s.recipients.1),
                    "failed": s.publish_failed(),
                    "errors": s.publish_errors,
                });
            }
            v["size"] = json!(b.size);
            v["rate"] = json!(b.rate);
            v["window"] = json!(b.window);
            v["published"] = json!(o.published);
            v["deliveries"] = json!(s.delivered);
            v["deliveries_in_window"] = json!(s.in_window);
            v["deliveries_per_sec"] = json!(deliveries_per_sec(o));
            v["expected_deliveries"] = json!(s.expected);
            v["drained"] = json!(o.drained);
            v["latency"] = latency_json(&s.latency);
            v["send_lag"] = latency_json(&s.send_lag);
            v["client_p50_ms"] = client_p50_json(&s.client_p50);
            v["client_p50_spread"] = json!(client_p50_spread(&s.client_p50)
                .map(|(p90_p10, max_min)| json!({"p90_p10": p90_p10, "max_min": max_min})));
            v["lost"] = json!(s.lost);
            v["duplicated"] = json!(s.duplicates);
            v["reordered"] = json!(s.reordered);
            v["malformed"] = json!(s.malformed);
            v["misrouted"] = json!(s.misrouted);
            v["order_mismatch"] = json!(s.orders.mismatched());
            v["order_compared"] = json!(s.orders.compared());
            v["pings"] = json!(s.pings);
        }
        Scenario::Connect => {
            v["scenario"] = json!("connect");
            v["mode"] = json!("connect");
            v["handshakes_per_sec"] = json!(s.connected as f64 / o.connect_secs.max(1e-9));
        }
        Scenario::Idle { .. } => {
            v["scenario"] = json!("idle");
            v["mode"] = json!("idle");
        }
    }
    if let Some(srv) = &o.server {
        let conns = s.connected.max(1);
        let mut server = json!({
            "pid": o.timing.server_pid,
            "cpu_secs": srv.window_cpu_ns() as f64 / 1e9,
            "cpu_load": srv.window_cpu_ns() as f64 / 1e9 / o.window_secs.max(1e-9),
            "rss_before_connect": srv.before_connect.rss_bytes,
            "rss_end": srv.window_end.rss_bytes,
            "rss_max": srv.max_rss,
            "bytes_per_connection":
                srv.window_end.rss_bytes.saturating_sub(srv.before_connect.rss_bytes) / conns,
        });
        if s.in_window > 0 {
            server["cpu_ns_per_delivery"] = json!(srv.window_cpu_ns() as f64 / s.in_window as f64);
        }
        v["server"] = server;
    }
    if !o.also.is_empty() {
        v["also"] = o
            .also
            .iter()
            .map(|&(pid, cpu)| {
                json!({
                    "pid": pid,
                    "cpu_secs": cpu.map(|ns| ns as f64 / 1e9),
                    "cpu_ns_per_delivery": cpu
                        .filter(|_| s.in_window > 0)
                        .map(|ns| ns as f64 / s.in_window as f64),
                })
            })
            .collect();
    }
    if let Some(w) = &o.server_writes {
        if v["server"].is_null() {
            v["server"] = json!({});
        }
        let server = &mut v["server"];
        server["writes"] = json!(w.writes);
        server["frames_written"] = json!(w.frames);
        if let Some(r) = writes_per_delivery(o) {
            server["writes_per_delivery"] = json!(r);
        }
        if let Some(f) = w.frames_per_write() {
            server["frames_per_write"] = json!(f);
        }
    }
    v
}

/// The server's writes that carried frames, per delivery received in the window: 1 when
/// each frame went out in a write of its own, 1/N when writes carried N frames each.
/// `None` without the server's counts or without deliveries.
pub fn writes_per_delivery(o: &Outcome) -> Option<f64> {
    let w = o.server_writes?;
    (o.stats.in_window > 0).then(|| w.writes / o.stats.in_window as f64)
}

fn mode(o: &Outcome) -> String {
    match &o.cfg.scenario {
        Scenario::Broadcast(b) if b.rate == 0.0 => format!("window {}", b.window),
        Scenario::Broadcast(b) => format!("rate {}/s", b.rate),
        Scenario::Connect => "connect".into(),
        Scenario::Idle { .. } => "idle".into(),
    }
}

/// Which way the publishers sent, and for HTTP how the server answered.
fn publish_path(o: &Outcome) -> String {
    let s = &o.stats;
    match &o.cfg.scenario {
        Scenario::Broadcast(b) if b.via != PublishVia::Ws => {
            let recipients = match s.recipients {
                _ if s.publish_answers == 0 => "no 202 answer".to_string(),
                (lo, hi) if lo == hi => {
                    format!("202 × {}, {lo} recipients each", s.publish_answers)
                }
                (lo, hi) => format!("202 × {}, {lo} to {hi} recipients", s.publish_answers),
            };
            let query = if b.rooms > 0 { "?room=ROOM" } else { "" };
            format!(
                "HTTP POST {}{query} (one kept-alive connection per publisher): {recipients}",
                crate::publish::PATH
            )
        }
        _ => "WebSocket (text frames on the publishers' own connections)".into(),
    }
}

/// `url` as given on the command line.
fn url(url: &crate::handshake::WsUrl) -> String {
    url.to_string()
}

/// Whether any connection spoke TLS (a `wss://` URL): a TLS run's figures include the
/// encryption on both sides, so tables must tell them apart.
fn tls(o: &Outcome) -> bool {
    o.cfg.urls.iter().any(|u| u.tls)
}

/// The one line that replaces the report when no client could connect: the URLs and why.
pub fn no_client(o: &Outcome) -> Option<String> {
    let urls: Vec<String> = o.cfg.urls.iter().map(url).collect();
    let why = o.no_client.as_ref()?;
    Some(format!(
        "no client could connect to {}: {why}",
        urls.join(", ")
    ))
}

/// Deliveries received inside the measured window, per second.
pub fn deliveries_per_sec(o: &Outcome) -> f64 {
    o.stats.in_window as f64 / o.window_secs.max(1e-9)
}

/// `h`'s values at `qs`, in milliseconds, separated by slashes.
fn quantiles(h: &Histogram<u64>, qs: &[f64]) -> String {
    let v: Vec<String> = qs.iter().map(|&q| ms(h.value_at_quantile(q))).collect();
    v.join(" / ")
}

/// Writes the human-readable table.
///
/// # Errors
/// Only from `out`.
pub fn write_table(o: &Outcome, out: &mut impl Write) -> io::Result<()> {
    let s = &o.stats;
    let row = |out: &mut dyn Write, k: &str, v: String| writeln!(out, "  {k:<30} {v}");
    let urls: Vec<String> = o.cfg.urls.iter().map(url).collect();
    writeln!(
        out,
        "loadgen {} {} ({}{}, {}{} thread{})",
        match o.cfg.scenario {
            Scenario::Broadcast(_) => "broadcast",
            Scenario::Connect => "connect",
            Scenario::Idle { .. } => "idle",
        },
        urls.join(" "),
        mode(o),
        if tls(o) { ", TLS" } else { "" },
        if o.procs > 1 {
            format!("{} processes × ", o.procs)
        } else {
            String::new()
        },
        o.cfg.threads,
        if o.cfg.threads == 1 { "" } else { "s" }
    )?;
    row(
        out,
        "connected",
        format!(
            "{} of {} in {:.2} s ({} handshakes/s)",
            s.connected,
            o.cfg.clients,
            o.connect_secs,
            si(s.connected as f64 / o.connect_secs.max(1e-9))
        ),
    )?;
    let h = &s.handshake;
    if !h.is_empty() {
        row(
            out,
            "handshake p50/p99/p99.9/max",
            quantiles(h, &[0.5, 0.99, 0.999, 1.0]),
        )?;
    }
    for (reason, n) in &s.failures {
        row(out, "failed", format!("{n} × {reason}"))?;
    }
    for (reason, n) in &s.drops {
        row(out, "dropped", format!("{n} × {reason}"))?;
    }
    if let Scenario::Broadcast(b) = &o.cfg.scenario {
        row(
            out,
            "published",
            format!(
                "{} messages of {} bytes by {} publisher(s)",
                o.published, b.size, b.publishers
            ),
        )?;
        row(out, "publish path", publish_path(o))?;
        if b.rooms > 0 {
            let first = o.cfg.ws_path(0);
            let rooms = first.strip_suffix("r0").unwrap_or(&first);
            row(
                out,
                "rooms",
                format!(
                    "{} (client i on {rooms}r{{i % {}}}); {} misrouted",
                    b.rooms, b.rooms, s.misrouted
                ),
            )?;
        }
        for (reason, n) in &s.publish_errors {
            row(out, "publish failed", format!("{n} × {reason}"))?;
        }
        row(
            out,
            "deliveries/s",
            format!(
                "{} ({} in the {:.2} s window)",
                si(deliveries_per_sec(o)),
                s.in_window,
                o.window_secs
            ),
        )?;
        let l = &s.latency;
        row(out, "latency p50/p90/p99", quantiles(l, &[0.5, 0.9, 0.99]))?;
        row(
            out,
            "latency p99.9/p99.99/max",
            quantiles(l, &[0.999, 0.9999, 1.0]),
        )?;
        if let Some((p90_p10, max_min)) = client_p50_spread(&s.client_p50) {
            let qs: Vec<f64> = CLIENT_QUANTILES.iter().map(|&(_, q)| q).collect();
            row(
                out,
                "client p50 min/p10/p50/p90/max",
                format!(
                    "{} ({} receivers)",
                    quantiles(&s.client_p50, &qs),
                    s.client_p50.len()
                ),
            )?;
            row(
                out,
                "client p50 spread",
                format!("p90/p10 {p90_p10:.2}x, max/min {max_min:.2}x"),
            )?;
        }
        if !s.send_lag.is_empty() {
            row(
                out,
                "send lag p50/p99/max",
                quantiles(&s.send_lag, &[0.5, 0.99, 1.0]),
            )?;
        }
        row(
            out,
            "lost/dup/reordered/malformed",
            format!(
                "{} / {} / {} / {}{}",
                s.lost,
                s.duplicates,
                s.reordered,
                s.malformed,
                if o.drained { "" } else { "  (drain timed out)" }
            ),
        )?;
        row(
            out,
            "order mismatch",
            format!(
                "{} of {} receivers compared",
                s.orders.mismatched(),
                s.orders.compared()
            ),
        )?;
    }
    if let Some(srv) = &o.server {
        let cpu = srv.window_cpu_ns();
        let mut line = format!(
            "{:.2} s CPU ({:.0}% of a core)",
            cpu as f64 / 1e9,
            100.0 * cpu as f64 / 1e9 / o.window_secs.max(1e-9)
        );
        if s.in_window > 0 && matches!(o.cfg.scenario, Scenario::Broadcast(_)) {
            line += &format!(", {:.0} ns per delivery", cpu as f64 / s.in_window as f64);
        }
        row(out, "server CPU", line)?;
        let grown = srv
            .window_end
            .rss_bytes
            .saturating_sub(srv.before_connect.rss_bytes);
        row(
            out,
            "server RSS",
            format!(
                "{} (was {} before connecting; {:.2} KiB per connection; max {})",
                mib(srv.window_end.rss_bytes),
                mib(srv.before_connect.rss_bytes),
                grown as f64 / 1024.0 / s.connected.max(1) as f64,
                mib(srv.max_rss)
            ),
        )?;
    }
    if let Some(w) = &o.server_writes {
        let per_delivery = match writes_per_delivery(o) {
            Some(r) => format!("{r:.4} per delivery"),
            None => "no deliveries".into(),
        };
        let per_write = match w.frames_per_write() {
            Some(f) => format!("{f:.1} frames per write"),
            None => "no frames written".into(),
        };
        row(
            out,
            "server writes",
            format!(
                "{per_delivery}, {per_write} ({} writes in the window)",
                w.writes
            ),
        )?;
    }
    row(
        out,
        "loadgen CPU",
        format!(
            "{:.0}% of {} CPU{}",
            100.0 * o.self_load(),
            o.self_cpus,
            if o.self_cpus == 1 { "" } else { "s" }
        ),
    )?;
    if o.steal > 0.02 {
        writeln!(
            out,
            "  WARNING: the hypervisor stole up to {:.0}% of a CPU during the window: \
             these figures measure the host as much as the server",
            100.0 * o.steal
        )?;
    }
    if o.self_load() > 0.9 {
        writeln!(
            out,
            "  WARNING: loadgen used over 90% of its CPUs: its figures are a floor, not the \
             server's limit (add --threads or CPUs)"
        )?;
    }
    let p = problems(o);
    if p.is_empty() {
        writeln!(out, "  result: OK")?;
    } else {
        writeln!(out, "  result: FAILED: {}", p.join("; "))?;
    }
    Ok(())
}

/// Writes `h` (nanoseconds) in HdrHistogram's percentile-distribution format, values in
/// milliseconds, as `outputPercentileDistribution` does (5 ticks per half distance).
///
/// # Errors
/// Only from `out`.
pub fn write_hgrm(h: &Histogram<u64>, out: &mut impl Write) -> io::Result<()> {
    const SCALE: f64 = 1e6;
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64 / SCALE;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            writeln!(
                out,
                "{value:12.3} {q:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            )?;
        } else {
            writeln!(out, "{value:12.3} {q:2.12} {total:10}")?;
        }
    }
    writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / SCALE,
        h.stdev() / SCALE
    )?;
    writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / SCALE,
        h.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        // HdrHistogram's sub-bucket count: enough for the significant digits, a power of 2.
        (2 * 10u64.pow(h.sigfig() as u32)).next_power_of_two()
    )
}

/// Reads the (percentile, value) points of an `.hgrm` file.
///
/// # Errors
/// When no line of `text` is a data line.
pub fn parse_hgrm(text: &str) -> Result<Vec<(f64, f64)>, String> {
    let points: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let value: f64 = f.next()?.parse().ok()?;
            let q: f64 = f.next()?.parse().ok()?;
            Some((q, value))
        })
        .collect();
    if points.is_empty() {
        return Err("no percentile lines".into());
    }
    Ok(points)
}

/// The (percentile, milliseconds) points of `h`, as in its `.hgrm`.
pub fn points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    h.iter_quantiles(5)
        .map(|v| (v.quantile_iterated_to(), v.value_iterated_to() as f64 / 1e6))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_round_trips_through_the_parser() {
        let mut h = crate::control::new_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 1000).unwrap();
        }
        let mut out = Vec::new();
        write_hgrm(&h, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
        let pts = parse_hgrm(&text).unwrap();
        let direct = points(&h);
        assert_eq!(pts.len(), direct.len());
        for (a, b) in pts.iter().zip(&direct) {
            assert!(
                (a.0 - b.0).abs() < 1e-9 && (a.1 - b.1).abs() < 1e-3,
                "{a:?} vs {b:?}"
            );
        }
        let (q, v) = *pts.last().unwrap();
        assert_eq!(q, 1.0);
        assert!((v - 10.0).abs() < 0.01, "max {v} ms");
        assert!(text.contains("Total count    =        10000]"));
    }

    #[test]
    fn server_writes_are_reported_per_delivery_and_per_write() {
        use crate::config::fixtures::{broadcast, config};
        use crate::metrics::ServerWrites;
        let b = Scenario::Broadcast(broadcast(1, 100.0));
        let mut o = Outcome {
            cfg: config("ws://127.0.0.1:9/", 1, b),
            timing: crate::run::Timing {
                warmup_ns: 0,
                duration_ns: 0,
                drain_ns: 0,
                connect_phase_ns: 0,
                server_pid: None,
                also_pids: Vec::new(),
                server_metrics: true,
                live: false,
            },
            stats: crate::stats::Stats::default(),
            connect_secs: 1.0,
            window_secs: 1.0,
            published: 1,
            drained: true,
            server: None,
            server_writes: None,
            also: Vec::new(),
            self_cpu_ns: 0,
            self_cpus: 1,
            steal: 0.0,
            procs: 1,
            no_client: None,
        };
        o.stats.in_window = 4000;
        assert_eq!(to_json(&o)["server"], Value::Null, "unreadable: absent");
        o.server_writes = Some(ServerWrites {
            writes: 100.0,
            frames: 3000.0,
        });
        let server = &to_json(&o)["server"];
        assert_eq!(server["writes_per_delivery"], 0.025);
        assert_eq!(server["frames_per_write"], 30.0);
        let mut table = Vec::new();
        write_table(&o, &mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(
            table.contains("0.0250 per delivery, 30.0 frames per write (100 writes"),
            "{table}"
        );
        // Writes counted but nothing delivered: only what can be divided.
        o.stats.in_window = 0;
        let server = &to_json(&o)["server"];
        assert!(server.get("writes_per_delivery").is_none(), "{server}");
        assert_eq!(server["frames_per_write"], 30.0);
    }
}
