//! Coordinating a run: start the workers, move them through the phases, sample the
//! server and loadgen itself over the measured window, and merge what the workers counted.

use crate::clock::{now_ns, MS, SEC};
use crate::config::{Config, Scenario};
use crate::control::{Control, Phase};
use crate::metrics::{self, ServerWrites};
use crate::procfs::{self, ProcSample};
use crate::stats::Stats;
use crate::worker::Worker;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;

/// How long a run lasts and what it watches.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Publishing before the measured window (not recorded in the latency histogram).
    pub warmup_ns: u64,
    /// The measured window (`connect`: the time limit; `idle`: how long to hold).
    pub duration_ns: u64,
    /// Longest wait for deliveries still in flight after publishing ends.
    pub drain_ns: u64,
    /// Longest wait for all connections to open.
    pub connect_phase_ns: u64,
    /// The server process to sample from `/proc`.
    pub server_pid: Option<u32>,
    /// More processes whose CPU time over the window is reported, one by one (`--also-pid`:
    /// the other nodes of a cluster, its Redis).
    pub also_pids: Vec<u32>,
    /// Read the servers' write counts from their `/metrics` at both ends of the window.
    pub server_metrics: bool,
    /// Print a live line each second on stderr.
    pub live: bool,
}

/// Server usage over a run, from `/proc/<pid>`.
#[derive(Debug, Clone, Copy)]
pub struct ServerUsage {
    /// Before any connection was opened.
    pub before_connect: ProcSample,
    /// When the measured window began.
    pub window_start: ProcSample,
    /// When the measured window ended.
    pub window_end: ProcSample,
    /// Highest RSS sampled (once a second and at the marks).
    pub max_rss: u64,
}

impl ServerUsage {
    /// Server CPU time spent inside the measured window.
    pub fn window_cpu_ns(&self) -> u64 {
        self.window_end
            .cpu_ns
            .saturating_sub(self.window_start.cpu_ns)
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The run's configuration.
    pub cfg: Config,
    /// Its timing.
    pub timing: Timing,
    /// The merged worker counts.
    pub stats: Stats,
    /// Seconds from the first `connect()` until every connection was open or failed.
    pub connect_secs: f64,
    /// Length of the measured window, seconds.
    pub window_secs: f64,
    /// Messages published in total.
    pub published: u64,
    /// Whether the drain ended with every delivery in (else it timed out).
    pub drained: bool,
    /// The server's usage, with `--server-pid`.
    pub server: Option<ServerUsage>,
    /// The servers' writes over the window, summed, with `--server-metrics` and servers
    /// that count them.
    pub server_writes: Option<ServerWrites>,
    /// Each `--also-pid` and its CPU time in the window, ns (`None`: not sampled at both ends).
    pub also: Vec<(u32, Option<u64>)>,
    /// loadgen's own CPU time in the measured window.
    pub self_cpu_ns: u64,
    /// CPUs loadgen may run on.
    pub self_cpus: usize,
    /// The largest share of one CPU's time the hypervisor stole during the window (0 to
    /// 1): above a few percent, the figures measure the host as much as the server.
    pub steal: f64,
    /// loadgen processes the run was spread over (`--procs`).
    pub procs: u32,
    /// When no client could connect, why (the first failure, or that none had opened in
    /// time): the run stopped there, with nothing measured.
    pub no_client: Option<String>,
}

impl Outcome {
    /// A run that stopped when no client could connect: nothing published, no window,
    /// nothing sampled.
    pub(crate) fn unconnected(
        cfg: Config,
        timing: Timing,
        stats: Stats,
        connect_secs: f64,
        procs: u32,
        first_failure: Option<String>,
    ) -> Outcome {
        let why = no_client_why(&cfg, connect_secs, first_failure);
        Outcome {
            cfg,
            timing,
            stats,
            connect_secs,
            window_secs: 0.0,
            published: 0,
            drained: true,
            server: None,
            server_writes: None,
            also: Vec::new(),
            self_cpu_ns: 0,
            self_cpus: procfs::allowed_cpus(),
            steal: 0.0,
            procs,
            no_client: Some(why),
        }
    }

    /// loadgen's CPU use over the window, as a fraction of the CPUs it may use.
    pub fn self_load(&self) -> f64 {
        if self.window_secs <= 0.0 {
            return 0.0;
        }
        self.self_cpu_ns as f64 / 1e9 / self.window_secs / self.self_cpus as f64
    }
}

/// Why no client could connect: the first failure's reason, or else that none had opened
/// when connecting ended (after `connect_secs`).
fn no_client_why(cfg: &Config, connect_secs: f64, first_failure: Option<String>) -> String {
    let limit = match cfg.scenario {
        Scenario::Connect => "--duration",
        _ => "--connect-phase-timeout",
    };
    first_failure.unwrap_or_else(|| format!("none open after {connect_secs:.1} s ({limit})"))
}

/// Samples a pid, or `None` without one (or when it is gone).
fn sample(pid: Option<u32>) -> Option<ProcSample> {
    pid.and_then(|p| procfs::sample(&p.to_string()).ok())
}

/// CPU time of each of `pids` now (`None` for one that is gone).
pub(crate) fn sample_cpu(pids: &[u32]) -> Vec<Option<u64>> {
    pids.iter()
        .map(|&p| sample(Some(p)).map(|s| s.cpu_ns))
        .collect()
}

/// Each of `pids` with its CPU time between two [`sample_cpu`]s.
pub(crate) fn cpu_between(
    pids: &[u32],
    start: &[Option<u64>],
    end: &[Option<u64>],
) -> Vec<(u32, Option<u64>)> {
    pids.iter()
        .zip(start.iter().zip(end))
        .map(|(&p, (s, e))| (p, s.zip(*e).map(|(s, e)| e.saturating_sub(s))))
        .collect()
}

/// The servers' frames-per-write totals now, summed, when the run reads them.
pub(crate) fn scrape(cfg: &Config, timing: &Timing) -> Option<metrics::Totals> {
    timing
        .server_metrics
        .then(|| metrics::frames_per_write_summed(&cfg.urls, cfg.tls.as_ref()))
        .flatten()
}

/// The coordinator's view while it waits.
struct Watch {
    ctl: Arc<Control>,
    clients: u32,
    live: bool,
    t0: u64,
    last_tick: u64,
    last_distinct: u64,
    server_pid: Option<u32>,
    max_rss: u64,
}

impl Watch {
    /// Sleeps until `until` or until `done()` holds, printing a live line every second.
    fn wait(&mut self, until: u64, mut done: impl FnMut(&Control) -> bool) {
        loop {
            let now = now_ns();
            if now >= until || done(&self.ctl) {
                return;
            }
            if now >= self.last_tick + SEC {
                self.tick(now);
            }
            let next = until.min(self.last_tick + SEC).min(now + 10 * MS);
            std::thread::sleep(std::time::Duration::from_nanos(next.saturating_sub(now)));
        }
    }

    fn tick(&mut self, now: u64) {
        let secs = (now - self.last_tick) as f64 / 1e9;
        self.last_tick = now;
        let distinct = self.ctl.distinct.load(Relaxed);
        let rate = (distinct - self.last_distinct) as f64 / secs;
        self.last_distinct = distinct;
        if let Some(s) = sample(self.server_pid) {
            self.max_rss = self.max_rss.max(s.rss_bytes);
        }
        let (p50, p99) = {
            let mut live = self.ctl.live.lock().expect("live histogram");
            let q = match live.is_empty() {
                true => ("-".to_string(), "-".to_string()),
                false => (
                    crate::report::ms(live.value_at_quantile(0.5)),
                    crate::report::ms(live.value_at_quantile(0.99)),
                ),
            };
            live.reset();
            q
        };
        if !self.live {
            return;
        }
        let open = self.ctl.connected.load(Relaxed)
            - self
                .ctl
                .dropped
                .load(Relaxed)
                .min(self.ctl.connected.load(Relaxed));
        let failed = self.ctl.failed.load(Relaxed);
        let mark = |m: &std::sync::atomic::AtomicU64| m.load(Relaxed);
        let marks = [&self.ctl.start_ns, &self.ctl.measure_ns, &self.ctl.end_ns].map(mark);
        eprintln!(
            "[{}] open {open}/{} failed {failed}  deliveries/s {}  p50 {p50}  p99 {p99}",
            stage(self.ctl.phase(), now, self.t0, marks),
            self.clients,
            crate::report::si(rate),
        );
    }
}

/// Where a run is, for the live line: its phase and the time into it, of the phase's
/// length where that is fixed: `connect 0.4s`, `warm-up 0.5/1s`, `window 2.0/3s`,
/// `drain 0.3s`. A newcomer reads the warm-up and the drain apart from the measured
/// window the report's figures are about. `t0` is when connecting began, `[start,
/// measure, end]` the run's marks (as in [`Control`]), all in `clock::now_ns` time.
pub(crate) fn stage(phase: Phase, now: u64, t0: u64, [start, measure, end]: [u64; 3]) -> String {
    let secs = |ns: u64| ns as f64 / 1e9;
    let into = |from: u64, to: u64| {
        let length = format!("{:.3}", secs(to - from));
        let length = length.trim_end_matches('0').trim_end_matches('.');
        format!("{:.1}/{length}s", secs(now.max(from).min(to) - from))
    };
    match phase {
        Phase::Connect => format!("connect {:.1}s", secs(now.saturating_sub(t0))),
        Phase::Run if now < measure => format!("warm-up {}", into(start, measure)),
        Phase::Run => format!("window {}", into(measure, end)),
        Phase::Drain => format!("drain {:.1}s", secs(now.saturating_sub(end))),
        Phase::Close => "close".into(),
    }
}

/// How a process that runs one shard of a multi-process run agrees with the others
/// (through the parent that started them all).
pub trait ShardLink {
    /// Says this shard's connections are done (`connected` open, `failed` failed, the
    /// first for `first_failure`) and returns the run's marks: (start, measure, end) in
    /// `clock::now_ns` time, or `None` when no shard connected any client (the run stops).
    ///
    /// # Errors
    /// When the parent is gone.
    fn ready(
        &mut self,
        connected: u64,
        failed: u64,
        first_failure: Option<&str>,
    ) -> io::Result<Option<(u64, u64, u64)>>;

    /// Gives the counts this shard's publishers sent (by publisher; zero for the others')
    /// and returns every publisher's count over all shards.
    ///
    /// # Errors
    /// When the parent is gone.
    fn published(&mut self, mine: &[u64]) -> io::Result<Vec<u64>>;
}

/// Runs `cfg` and returns what it measured.
///
/// # Errors
/// When a worker cannot start or its event loop fails.
pub fn run(cfg: Config, timing: Timing) -> io::Result<Outcome> {
    run_shard(cfg, timing, None)
}

/// Runs `cfg`, agreeing on the run's marks and publish counts through `link` when this
/// process is one shard of several.
///
/// # Errors
/// When a worker cannot start, its event loop fails, or `link` fails.
pub fn run_shard(
    cfg: Config,
    timing: Timing,
    mut link: Option<&mut dyn ShardLink>,
) -> io::Result<Outcome> {
    let (publishers, rooms) = match &cfg.scenario {
        Scenario::Broadcast(b) => (b.publishers, b.room_count()),
        _ => (0, 1),
    };
    let limit = crate::net::raise_open_file_limit();
    let mine = cfg.my_clients().count() as u64;
    if mine + 64 > limit && !matches!(cfg.scenario, Scenario::Connect) {
        eprintln!(
            "loadgen: warning: {mine} connections in one process, but it may open only {limit} \
             files: spread them with --procs"
        );
    }
    let ctl = Arc::new(Control::new(publishers, rooms));
    let shared = Arc::new(cfg.clone());
    let before_connect = sample(timing.server_pid);
    let workers = (0..cfg.threads)
        .map(|i| Worker::new(i, shared.clone(), ctl.clone()))
        .collect::<io::Result<Vec<_>>>()?;
    let t0 = now_ns();
    let handles: Vec<JoinHandle<io::Result<Stats>>> = workers
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            std::thread::Builder::new()
                .name(format!("loadgen-{i}"))
                .spawn(move || w.run())
        })
        .collect::<io::Result<_>>()?;
    let mut watch = Watch {
        ctl: ctl.clone(),
        clients: cfg.clients,
        live: timing.live,
        t0,
        last_tick: t0,
        last_distinct: 0,
        server_pid: timing.server_pid,
        max_rss: before_connect.map_or(0, |s| s.rss_bytes),
    };
    let n = mine;
    let connect_only = matches!(cfg.scenario, Scenario::Connect);
    let connect_secs;
    let (window_start, window_end, self_start, self_end, steal_start, steal_end);
    let mut writes_start = None;
    let (also_start, also_end);
    let (measure_ns, end_ns);
    if connect_only {
        measure_ns = t0;
        end_ns = t0 + timing.duration_ns;
        ctl.start_ns.store(t0, Relaxed);
        ctl.measure_ns.store(t0, Relaxed);
        ctl.end_ns.store(end_ns, Relaxed);
        ctl.set_phase(Phase::Run);
        window_start = before_connect;
        also_start = sample_cpu(&timing.also_pids);
        self_start = procfs::self_cpu_ns();
        steal_start = procfs::steal_ticks();
        watch.wait(u64::MAX, |_| handles.iter().all(|h| h.is_finished()));
        connect_secs = (now_ns() - t0) as f64 / 1e9;
        window_end = sample(timing.server_pid);
        also_end = sample_cpu(&timing.also_pids);
        self_end = procfs::self_cpu_ns();
        steal_end = procfs::steal_ticks();
    } else {
        watch.wait(t0 + timing.connect_phase_ns, |c| {
            c.connected.load(Relaxed) + c.failed.load(Relaxed) >= n
        });
        connect_secs = (now_ns() - t0) as f64 / 1e9;
        let connected = ctl.connected.load(Relaxed);
        let first_failure = ctl.first_failure.get().cloned();
        let marks = match link.as_mut() {
            Some(link) => link.ready(
                connected,
                ctl.failed.load(Relaxed),
                first_failure.as_deref(),
            )?,
            // With nobody to publish to or receive, a window would only measure nothing.
            None if connected == 0 => None,
            None => {
                let start = now_ns() + 20 * MS;
                let measure = start + timing.warmup_ns;
                Some((start, measure, measure + timing.duration_ns))
            }
        };
        let Some((start, measure, end)) = marks else {
            ctl.set_phase(Phase::Close);
            let stats = join(handles)?;
            return Ok(Outcome::unconnected(
                cfg,
                timing,
                stats,
                connect_secs,
                1,
                first_failure,
            ));
        };
        (measure_ns, end_ns) = (measure, end);
        ctl.start_ns.store(start, Relaxed);
        ctl.measure_ns.store(measure_ns, Relaxed);
        ctl.end_ns.store(end_ns, Relaxed);
        ctl.set_phase(Phase::Run);
        watch.wait(measure_ns, |_| false);
        window_start = sample(timing.server_pid);
        also_start = sample_cpu(&timing.also_pids);
        self_start = procfs::self_cpu_ns();
        steal_start = procfs::steal_ticks();
        // After the samples, so a slow answer cannot move the window's marks (herald
        // renders its page in well under a millisecond).
        writes_start = scrape(&cfg, &timing);
        watch.wait(end_ns, |_| false);
        window_end = sample(timing.server_pid);
        also_end = sample_cpu(&timing.also_pids);
        self_end = procfs::self_cpu_ns();
        steal_end = procfs::steal_ticks();
    }
    let end_actual = now_ns();
    let writes_end = scrape(&cfg, &timing);
    let mut drained = true;
    if !connect_only {
        ctl.set_phase(Phase::Drain);
        if let Some(link) = link.as_mut() {
            let mine: Vec<u64> = ctl.published.iter().map(|p| p.load(Relaxed)).collect();
            let all = link.published(&mine)?;
            // Every receiver here expects every shard's messages, and counts what it lost
            // against these totals.
            for (p, n) in ctl.published.iter().zip(all) {
                p.store(n, Relaxed);
            }
        }
        if let Scenario::Broadcast(_) = cfg.scenario {
            let expected = ctl.expected_deliveries();
            watch.wait(end_actual + timing.drain_ns, |c| {
                c.distinct.load(Relaxed) >= expected
            });
            drained = ctl.distinct.load(Relaxed) >= expected;
        }
        ctl.set_phase(Phase::Close);
    }
    let stats = join(handles)?;
    // `connect` has no window to skip, only a report of zeros to replace.
    let no_client = (connect_only && stats.connected == 0)
        .then(|| no_client_why(&cfg, connect_secs, ctl.first_failure.get().cloned()));
    let window_secs = if connect_only {
        connect_secs
    } else {
        (end_actual.max(end_ns) - measure_ns) as f64 / 1e9
    };
    let server = match (before_connect, window_start, window_end) {
        (Some(b), Some(s), Some(e)) => Some(ServerUsage {
            before_connect: b,
            window_start: s,
            window_end: e,
            max_rss: watch.max_rss.max(s.rss_bytes).max(e.rss_bytes),
        }),
        _ => None,
    };
    let self_cpu_ns = match (self_start, self_end) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    };
    let also = cpu_between(&timing.also_pids, &also_start, &also_end);
    Ok(Outcome {
        published: ctl.published_total(),
        cfg,
        timing,
        stats,
        connect_secs,
        window_secs,
        drained,
        server,
        server_writes: ServerWrites::between(writes_start, writes_end),
        also,
        self_cpu_ns,
        self_cpus: procfs::allowed_cpus(),
        steal: procfs::max_steal(&steal_start, &steal_end),
        procs: 1,
        no_client,
    })
}

/// Waits for the workers and merges what they counted.
fn join(handles: Vec<JoinHandle<io::Result<Stats>>>) -> io::Result<Stats> {
    let mut stats = Stats::default();
    for h in handles {
        let s = h
            .join()
            .map_err(|_| io::Error::other("a worker thread panicked"))??;
        stats.merge(&s);
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_line_names_the_phase_and_the_time_into_it() {
        // Connecting from 0; warm-up 1 s from 5 s; a 3 s window; then the drain.
        let marks = [5 * SEC, 6 * SEC, 9 * SEC];
        let at = |phase, now| stage(phase, now, 0, marks);
        assert_eq!(at(Phase::Connect, 2_400 * MS), "connect 2.4s");
        // The 20 ms between the end of connecting and publishing count as warm-up.
        assert_eq!(at(Phase::Run, 4_980 * MS), "warm-up 0.0/1s");
        assert_eq!(at(Phase::Run, 5_500 * MS), "warm-up 0.5/1s");
        assert_eq!(at(Phase::Run, 6 * SEC), "window 0.0/3s");
        assert_eq!(at(Phase::Run, 8 * SEC), "window 2.0/3s");
        // The coordinator may look a moment after the end, before it moves to the drain.
        assert_eq!(at(Phase::Run, 9_002 * MS), "window 3.0/3s");
        assert_eq!(at(Phase::Drain, 10 * SEC), "drain 1.0s");
        assert_eq!(at(Phase::Close, 11 * SEC), "close");
        let odd = [0, 250 * MS, 250 * MS + 1_500 * MS];
        assert_eq!(stage(Phase::Run, 100 * MS, 0, odd), "warm-up 0.1/0.25s");
        assert_eq!(stage(Phase::Run, 1_050 * MS, 0, odd), "window 0.8/1.5s");
    }
}
