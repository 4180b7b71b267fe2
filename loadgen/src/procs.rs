//! One run over several loadgen processes (`--procs K`), for more connections than one
//! process may open (open files are capped per process, and threads share the cap).
//!
//! The parent starts K copies of itself with `--shard i/K`; each opens every K-th client.
//! They talk over the children's stdin/stdout, one line per step:
//!
//! ```text
//! child:  ready <connected> <failed> [<why the first failed>]  (its connections are done)
//! parent: go <start_ns> <measure_ns> <end_ns>   (the same marks for all)
//! child:  published <count per publisher...>    (publishing is over)
//! parent: totals <count per publisher...>       (summed over the shards)
//! child:  result <json>                         (its counts and histograms)
//! ```
//!
//! When no shard connected any client, the parent answers `stop` instead of `go`, and
//! each child closes and sends its `result` at once.
//!
//! Marks are `CLOCK_MONOTONIC`, shared by every process on the machine, and so are the
//! intended send times inside messages: latency stays exact across processes.

use crate::clock::{now_ns, MS, SEC};
use crate::config::Config;
use crate::control::Phase;
use crate::metrics::ServerWrites;
use crate::procfs;
use crate::run::{cpu_between, sample_cpu, scrape, stage, Outcome, ServerUsage, ShardLink, Timing};
use crate::stats::Stats;
use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

fn protocol_error(what: &str, line: &str) -> io::Error {
    io::Error::other(format!("shard protocol: expected {what}, got {line:?}"))
}

/// Reads one line of `words` numbers after `tag`.
fn numbers(line: &str, tag: &str) -> io::Result<Vec<u64>> {
    let mut words = line.split_whitespace();
    if words.next() != Some(tag) {
        return Err(protocol_error(tag, line));
    }
    words
        .map(|w| w.parse().map_err(|_| protocol_error(tag, line)))
        .collect()
}

/// Reads `ready <connected> <failed> [<why the first failed>]`.
fn ready_line(line: &str) -> io::Result<(u64, u64, Option<String>)> {
    let mut words = line.trim_end().splitn(4, ' ');
    let bad = || protocol_error("ready", line);
    if words.next() != Some("ready") {
        return Err(bad());
    }
    let mut count = || words.next().and_then(|w| w.parse().ok()).ok_or_else(bad);
    let (connected, failed) = (count()?, count()?);
    Ok((connected, failed, words.next().map(String::from)))
}

fn join(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")
}

/// The child's side: stdout to the parent, stdin from it.
#[derive(Debug)]
pub struct StdioLink {
    input: io::StdinLock<'static>,
}

impl Default for StdioLink {
    fn default() -> Self {
        StdioLink {
            input: io::stdin().lock(),
        }
    }
}

impl StdioLink {
    fn ask(&mut self, line: String) -> io::Result<String> {
        let mut out = io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        let mut answer = String::new();
        if self.input.read_line(&mut answer)? == 0 {
            return Err(io::Error::other("the parent loadgen is gone"));
        }
        Ok(answer)
    }

    /// Hands the shard's outcome to the parent.
    pub fn result(outcome: &Outcome) {
        let v = json!({
            "stats": outcome.stats.to_value(),
            "connect_secs": outcome.connect_secs,
            "self_cpu_ns": outcome.self_cpu_ns,
            "drained": outcome.drained,
        });
        println!("result {v}");
    }
}

impl ShardLink for StdioLink {
    fn ready(
        &mut self,
        connected: u64,
        failed: u64,
        first_failure: Option<&str>,
    ) -> io::Result<Option<(u64, u64, u64)>> {
        let why = first_failure.map_or(String::new(), |w| format!(" {}", w.replace('\n', " ")));
        let answer = self.ask(format!("ready {connected} {failed}{why}"))?;
        if answer.trim_end() == "stop" {
            return Ok(None);
        }
        match numbers(&answer, "go")?[..] {
            [start, measure, end] => Ok(Some((start, measure, end))),
            _ => Err(protocol_error("go", &answer)),
        }
    }

    fn published(&mut self, mine: &[u64]) -> io::Result<Vec<u64>> {
        let answer = self.ask(format!("published {}", join(mine)))?;
        numbers(&answer, "totals")
    }
}

/// One child process and its pipes.
struct Shard {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Shard {
    fn read(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.output.read_line(&mut line)? == 0 {
            return Err(io::Error::other(format!(
                "loadgen shard {} ended early (its errors are above)",
                self.child.id()
            )));
        }
        Ok(line)
    }

    fn send(&mut self, line: &str) -> io::Result<()> {
        writeln!(self.input, "{line}")?;
        self.input.flush()
    }
}

/// The shards of a run; any still running when this is dropped are killed (by PID, through
/// their handles).
struct Shards(Vec<Shard>);

impl Drop for Shards {
    fn drop(&mut self) {
        for s in &mut self.0 {
            if let Ok(None) = s.child.try_wait() {
                let _ = s.child.kill();
            }
            let _ = s.child.wait();
        }
    }
}

/// Runs `cfg` over `procs` child processes started as `loadgen <child_args> --shard i/K`,
/// samples the server itself, and merges what the shards measured.
///
/// # Errors
/// When a child cannot start, dies, or breaks the protocol.
pub fn run_parent(
    cfg: Config,
    timing: Timing,
    procs: u32,
    child_args: &[String],
) -> io::Result<Outcome> {
    let sample = |pid: Option<u32>| pid.and_then(|p| procfs::sample(&p.to_string()).ok());
    let before_connect = sample(timing.server_pid);
    let exe = std::env::current_exe()?;
    let mut shards = Shards(Vec::new());
    for i in 0..procs {
        let mut child = Command::new(&exe)
            .args(child_args)
            .arg(format!("--shard={i}/{procs}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let input = child.stdin.take().expect("piped");
        let output = BufReader::new(child.stdout.take().expect("piped"));
        shards.0.push(Shard {
            child,
            input,
            output,
        });
    }
    let say = |s: String| {
        if timing.live {
            eprintln!("{s}");
        }
    };
    let (mut connected, mut failed, mut first_failure) = (0, 0, None);
    for s in &mut shards.0 {
        let (c, f, why) = ready_line(&s.read()?)?;
        (connected, failed) = (connected + c, failed + f);
        first_failure = first_failure.or(why);
    }
    if connected == 0 {
        for s in &mut shards.0 {
            s.send("stop")?;
        }
        let r = results(&mut shards)?;
        return Ok(Outcome::unconnected(
            cfg,
            timing,
            r.stats,
            r.connect_secs,
            procs,
            first_failure,
        ));
    }
    say(format!(
        "[{procs} processes] {connected} of {} connected, {failed} failed",
        cfg.clients
    ));
    let start = now_ns() + 50 * MS;
    let measure = start + timing.warmup_ns;
    let end = measure + timing.duration_ns;
    for s in &mut shards.0 {
        s.send(&format!("go {start} {measure} {end}"))?;
    }
    let sleep_until = |t: u64| {
        let now = now_ns();
        if t > now {
            std::thread::sleep(std::time::Duration::from_nanos(t - now));
        }
    };
    let mut max_rss = 0;
    // Sleeps until `until`, sampling the server and saying where the run is each second.
    let mut wait = |until: u64| {
        while now_ns() + SEC < until {
            sleep_until(now_ns() + SEC);
            if let Some(s) = sample(timing.server_pid) {
                max_rss = max_rss.max(s.rss_bytes);
            }
            let at = stage(Phase::Run, now_ns(), start, [start, measure, end]);
            say(format!("[{at}] {procs} processes"));
        }
        sleep_until(until);
    };
    wait(measure);
    let window_start = sample(timing.server_pid);
    let also_start = sample_cpu(&timing.also_pids);
    let steal_start = procfs::steal_ticks();
    // After the samples, so a slow answer cannot move the window's marks.
    let writes_start = scrape(&cfg, &timing);
    wait(end);
    let window_end = sample(timing.server_pid);
    let also_end = sample_cpu(&timing.also_pids);
    let steal_end = procfs::steal_ticks();
    let writes_end = scrape(&cfg, &timing);
    let mut totals: Vec<u64> = Vec::new();
    for s in &mut shards.0 {
        let mine = numbers(&s.read()?, "published")?;
        totals.resize(totals.len().max(mine.len()), 0);
        for (t, m) in totals.iter_mut().zip(mine) {
            *t += m;
        }
    }
    for s in &mut shards.0 {
        s.send(&format!("totals {}", join(&totals)))?;
    }
    let r = results(&mut shards)?;
    let server = match (before_connect, window_start, window_end) {
        (Some(b), Some(s), Some(e)) => Some(ServerUsage {
            before_connect: b,
            window_start: s,
            window_end: e,
            max_rss: max_rss.max(s.rss_bytes).max(e.rss_bytes),
        }),
        _ => None,
    };
    let also = cpu_between(&timing.also_pids, &also_start, &also_end);
    Ok(Outcome {
        published: totals.iter().sum(),
        cfg,
        timing,
        stats: r.stats,
        connect_secs: r.connect_secs,
        window_secs: (end - measure) as f64 / 1e9,
        drained: r.drained,
        server,
        server_writes: ServerWrites::between(writes_start, writes_end),
        also,
        self_cpu_ns: r.self_cpu_ns,
        self_cpus: procfs::allowed_cpus(),
        steal: procfs::max_steal(&steal_start, &steal_end),
        procs,
        no_client: None,
    })
}

/// What the shards measured, merged.
struct Results {
    stats: Stats,
    /// The slowest shard's.
    connect_secs: f64,
    self_cpu_ns: u64,
    drained: bool,
}

/// Reads every shard's `result` line, then waits for the shards to exit.
fn results(shards: &mut Shards) -> io::Result<Results> {
    let mut r = Results {
        stats: Stats::default(),
        connect_secs: 0.0,
        self_cpu_ns: 0,
        drained: true,
    };
    for s in &mut shards.0 {
        let line = s.read()?;
        let v: Value = line
            .strip_prefix("result ")
            .and_then(|j| serde_json::from_str(j).ok())
            .ok_or_else(|| protocol_error("result", &line))?;
        let stats =
            Stats::from_value(&v["stats"]).ok_or_else(|| protocol_error("result", &line))?;
        r.stats.merge(&stats);
        r.connect_secs = r
            .connect_secs
            .max(v["connect_secs"].as_f64().unwrap_or(0.0));
        r.self_cpu_ns += v["self_cpu_ns"].as_u64().unwrap_or(0);
        r.drained &= v["drained"].as_bool().unwrap_or(false);
    }
    for s in &mut shards.0 {
        s.child.wait()?;
    }
    Ok(r)
}

/// The command line for the shards: the parent's own arguments without those only the
/// parent acts on (`--procs`, `--json`, `--hgrm`, `--plot`, `--server-pid`, `--also-pid`,
/// `--server-metrics`), made quiet.
pub fn child_args(args: &[String]) -> Vec<String> {
    const WITH_VALUE: [&str; 5] = ["--procs", "--hgrm", "--plot", "--server-pid", "--also-pid"];
    const ALONE: [&str; 4] = ["--json", "--quiet", "-q", "--server-metrics"];
    let mut out = Vec::new();
    let mut skip_next = false;
    for a in args {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        let name = a.split('=').next().unwrap_or(a);
        if WITH_VALUE.contains(&name) {
            skip_next = !a.contains('=');
        } else if !ALONE.contains(&name) {
            out.push(a.clone());
        }
    }
    out.push("--quiet".into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_get_the_scenario_not_the_parents_outputs() {
        let args: Vec<String> = "broadcast --procs 3 --clients 30000 --json --hgrm=x.hgrm \
                                 --plot p.svg --server-pid 42 --also-pid 43 -q \
                                 --also-pid=44 --server-metrics --local-addrs 127.0.0.1-127.0.0.8"
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(
            child_args(&args),
            [
                "broadcast",
                "--clients",
                "30000",
                "--local-addrs",
                "127.0.0.1-127.0.0.8",
                "--quiet"
            ]
        );
    }

    #[test]
    fn protocol_lines() {
        assert_eq!(numbers("go 1 2 3\n", "go").unwrap(), [1, 2, 3]);
        assert_eq!(
            numbers("published\n", "published").unwrap(),
            Vec::<u64>::new()
        );
        assert!(numbers("ready x", "ready").is_err());
        assert!(numbers("result {}", "ready").is_err());
        assert_eq!(ready_line("ready 3 1\n").unwrap(), (3, 1, None));
        assert_eq!(
            ready_line("ready 0 5 connect: Connection refused\n").unwrap(),
            (0, 5, Some("connect: Connection refused".into()))
        );
        assert!(ready_line("ready 3\n").is_err());
        assert!(ready_line("go 1 2 3\n").is_err());
    }
}
