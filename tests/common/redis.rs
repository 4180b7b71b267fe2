//! Redis for the bus tests: a `redis-server` child process on a free
//! loopback port ([`RedisServer`]) that a test can kill with SIGKILL and
//! start again on the same port, a Redis Cluster of such processes
//! ([`RedisCluster`]), and `redis-cli` run against them.
//!
//! Every server writes only into a temporary directory of its own (no
//! snapshot, no append-only file, its log in `redis.log` there), removed
//! when it is dropped; a dropped server is killed by its PID (SIGKILL) and
//! reaped. Every wait is bounded.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{eventually, TIMEOUT};

/// How long a `redis-cli --cluster create` may take: it waits for the
/// nodes to agree on the configuration, which takes a few seconds.
const CLUSTER_CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// A fresh directory under the system temporary directory, removed (with
/// everything in it) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `herald-TAG-PID-N-NANOS` under [`std::env::temp_dir`].
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "herald-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGKILL, by its PID) and reaped when dropped,
/// unless it already exited.
struct Killed(Child);

impl Killed {
    /// Spawns `cmd` with no standard input and `output()` for its standard
    /// output and error.
    fn spawn(cmd: &mut Command, output: fn() -> Stdio) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(output())
            .stderr(output())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?} (is Debian's redis-server installed?): {e}"));
        Killed(child)
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A `redis-server` on `127.0.0.1` (or, after [`RedisServer::stopped`] or
/// [`RedisServer::kill9`], the port it keeps for its next start).
pub struct RedisServer {
    port: u16,
    /// With `--cluster-enabled yes`: its `--cluster-node-timeout`.
    cluster: Option<Duration>,
    /// Dropped (killed) before `dir` is removed: fields drop in order.
    child: Option<Killed>,
    dir: TempDir,
}

impl RedisServer {
    /// A server on a free port, answering when this returns.
    pub fn start() -> Self {
        Self::start_on_free_port(None)
    }

    /// A free port kept for a server that is not running yet: start it with
    /// [`RedisServer::restart`] (for "Redis is down when herald starts").
    pub fn stopped() -> Self {
        RedisServer {
            port: free_port(),
            cluster: None,
            child: None,
            dir: TempDir::new("redis"),
        }
    }

    fn start_on_free_port(cluster: Option<Duration>) -> Self {
        for _ in 0..5 {
            let mut server = RedisServer {
                cluster,
                ..Self::stopped()
            };
            match server.launch() {
                Ok(()) => return server,
                Err(why) => eprintln!("redis-server on port {}: {why}; retrying", server.port),
            }
        }
        panic!("redis-server could not start on any free port");
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT`, for `--redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The directory it works in (and the only place it may write).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.0.id())
    }

    /// Kills the server with SIGKILL now and reaps it: its clients see the
    /// connection end, as when Redis crashes.
    pub fn kill9(&mut self) {
        let mut child = self
            .child
            .take()
            .expect("kill9: redis-server is not running");
        let pid = libc::pid_t::try_from(child.0.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own, not yet reaped, child; no memory involved.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
        child.0.wait().expect("wait for redis-server");
    }

    /// Starts the server again on the same port and waits until it answers;
    /// a start that fails (the port briefly unavailable) is retried
    /// for at most [`TIMEOUT`]. The data is gone, as after a crash without
    /// persistence.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart: redis-server is running");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(why) if Instant::now() < deadline => {
                    eprintln!("redis-server on port {}: {why}; retrying", self.port);
                    thread::sleep(Duration::from_millis(100));
                }
                Err(why) => panic!(
                    "redis-server did not start again on port {} within {TIMEOUT:?}: {why}",
                    self.port
                ),
            }
        }
    }

    /// Spawns `redis-server` on `self.port` and waits (at most [`TIMEOUT`])
    /// until it answers (`INFO server`, naming its PID); `Err` if it exits
    /// first.
    fn launch(&mut self) -> Result<(), String> {
        let dir = self.dir.path();
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"));
        if let Some(timeout) = self.cluster {
            let timeout = timeout.as_millis().to_string();
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                &timeout,
            ])
            .arg("--cluster-config-file")
            .arg(dir.join(format!("nodes-{port}.conf")));
        }
        let mut child = Killed::spawn(&mut cmd, Stdio::null);
        let deadline = Instant::now() + TIMEOUT;
        // The answer must come from this child: a port taken meanwhile by
        // another redis-server (a concurrent test run) makes ours exit.
        while serving_pid(self.addr()) != Some(child.0.id()) {
            if let Some(status) = child.0.try_wait().expect("try_wait") {
                return Err(format!("exited at start ({status}); {}", self.log_tail()));
            }
            if Instant::now() >= deadline {
                return Err(format!("no answer within {TIMEOUT:?}; {}", self.log_tail()));
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
        Ok(())
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!("log: {:#?}", &lines[lines.len().saturating_sub(10)..])
    }

    /// `redis-cli -p PORT ARGS…`: its standard output, trimmed (raw
    /// format: one reply element a line, integers as digits). Panics if
    /// redis-cli fails (it cannot connect, say); an error reply is output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, false, args)
    }

    /// The channels with at least one subscriber (`PUBSUB CHANNELS *`).
    pub fn channels(&self) -> Vec<String> {
        lines(&self.cli(&["PUBSUB", "CHANNELS", "*"]))
    }

    /// The number of subscribers of `channel` (`PUBSUB NUMSUB`).
    pub fn subscribers(&self, channel: &str) -> usize {
        second_line_number(&self.cli(&["PUBSUB", "NUMSUB", channel]))
    }

    /// Waits (at most [`TIMEOUT`]) until `channel` has `n` subscribers: with
    /// one subscription connection per herald node, until `n` nodes have
    /// subscribed to it.
    pub fn wait_subscribers(&self, channel: &str, n: usize) {
        eventually(TIMEOUT, &format!("{n} subscribers of {channel}"), || {
            (self.subscribers(channel) == n).then_some(())
        });
    }
}

/// A Redis Cluster of masters only, each a [`RedisServer`] started with
/// `--cluster-enabled yes`, all hash slots assigned.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `masters` servers joined by `redis-cli --cluster create` with no
    /// replicas; returns once every node says `cluster_state:ok`.
    pub fn start(masters: usize) -> Self {
        Self::start_with_node_timeout(masters, Duration::from_secs(5))
    }

    /// [`RedisCluster::start`] with `--cluster-node-timeout node_timeout`:
    /// a master unreachable that long is failing, and the cluster (whose
    /// masters have no replicas) is down soon after; it is up again once the
    /// master is back and twice that time has passed since it failed.
    pub fn start_with_node_timeout(masters: usize, node_timeout: Duration) -> Self {
        assert!(masters >= 3, "a Redis Cluster needs at least 3 masters");
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| RedisServer::start_on_free_port(Some(node_timeout)))
            .collect();
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(nodes.iter().map(|n| n.addr().to_string()));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let out = run(
            Command::new("redis-cli").args(&args),
            CLUSTER_CREATE_TIMEOUT,
        );
        assert!(
            out.status.success() && out.stdout.contains("All 16384 slots covered"),
            "redis-cli --cluster create failed ({}): {}{}",
            out.status,
            out.stdout,
            out.stderr
        );
        let cluster = RedisCluster { nodes };
        for node in &cluster.nodes {
            eventually(
                TIMEOUT,
                &format!("cluster_state:ok on {}", node.addr()),
                || {
                    node.cli(&["CLUSTER", "INFO"])
                        .contains("cluster_state:ok")
                        .then_some(())
                },
            );
        }
        cluster
    }

    /// The masters.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Master `node`, to kill ([`RedisServer::kill9`]) and start again
    /// ([`RedisServer::restart`]).
    pub fn node_mut(&mut self, node: usize) -> &mut RedisServer {
        &mut self.nodes[node]
    }

    /// The cluster's id of master `node` (`CLUSTER MYID`).
    pub fn node_id(&self, node: usize) -> String {
        self.cli(node, &["CLUSTER", "MYID"])
    }

    /// Waits (at most `within`) until master `node` says `cluster_state:STATE`
    /// (`ok` or `fail`).
    pub fn wait_state(&self, node: usize, state: &str, within: Duration) {
        let want = format!("cluster_state:{state}");
        let addr = self.nodes[node].addr();
        eventually(within, &format!("{want} on {addr}"), || {
            self.cli(node, &["CLUSTER", "INFO"])
                .contains(&want)
                .then_some(())
        });
    }

    /// The hash slot of `key` (or of a shard channel), asked of a running master.
    pub fn keyslot(&self, key: &str) -> u16 {
        self.running()
            .cli(&["CLUSTER", "KEYSLOT", key])
            .parse()
            .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {key}: {e}"))
    }

    /// Moves `slot` (which holds no keys) from its master to master `to`, the
    /// way `redis-cli --cluster reshard` does: `IMPORTING` on the target,
    /// `MIGRATING` on the source, then `NODE` on the target, the source and
    /// every other master, in that order.
    pub fn move_slot(&self, slot: u16, to: usize) {
        let from = self.master_of_slot(slot);
        assert_ne!(from, to, "slot {slot} is already on master {to}");
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let slot = slot.to_string();
        let setslot = |node: usize, args: &[&str]| {
            let mut all = vec!["CLUSTER", "SETSLOT", &slot];
            all.extend_from_slice(args);
            let out = self.nodes[node].cli(&all);
            assert_eq!(
                out, "OK",
                "CLUSTER SETSLOT {slot} {args:?} on master {node}"
            );
        };
        setslot(to, &["IMPORTING", &from_id]);
        setslot(from, &["MIGRATING", &to_id]);
        let others = (0..self.nodes.len()).filter(|&n| n != from && n != to);
        for node in [to, from].into_iter().chain(others) {
            setslot(node, &["NODE", &to_id]);
        }
    }

    /// The first master that runs (to ask about the cluster).
    fn running(&self) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.pid().is_some())
            .expect("no master of the cluster runs")
    }

    /// `redis://127.0.0.1:P1,redis://127.0.0.1:P2,…`, for `--redis-cluster`.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(RedisServer::url).collect();
        urls.join(",")
    }

    /// `127.0.0.1:P1,127.0.0.1:P2,…`, the other form `--redis-cluster` takes.
    pub fn addrs(&self) -> String {
        let addrs: Vec<String> = self.nodes.iter().map(|n| n.addr().to_string()).collect();
        addrs.join(",")
    }

    /// The process ids of the nodes that run.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(RedisServer::pid).collect()
    }

    /// `redis-cli -c -p PORT ARGS…` on node `node`: a keyed command follows
    /// the cluster's redirections to the slot's master.
    pub fn cli(&self, node: usize, args: &[&str]) -> String {
        redis_cli(self.nodes[node].port, true, args)
    }

    /// The index of the master that serves `key`'s (or a shard channel's) hash slot.
    pub fn master_of(&self, key: &str) -> usize {
        self.master_of_slot(self.keyslot(key))
    }

    /// The index of the master that serves `slot`, as a running master sees it.
    pub fn master_of_slot(&self, slot: u16) -> usize {
        let shards = self.running().cli(&["CLUSTER", "SLOTS"]);
        // Raw format: for each range its start, end, then each node's
        // address, port and id (and, in Redis 7, its hostname metadata).
        let words = lines(&shards);
        let mut i = 0;
        while i + 3 < words.len() {
            if let (Ok(start), Ok(end)) = (words[i].parse::<u16>(), words[i + 1].parse::<u16>()) {
                if words[i + 2] == "127.0.0.1" && (start..=end).contains(&slot) {
                    let port: u16 = words[i + 3].parse().expect("port in CLUSTER SLOTS");
                    return self
                        .nodes
                        .iter()
                        .position(|n| n.port == port)
                        .expect("a master of this cluster");
                }
            }
            i += 1;
        }
        panic!("no master serves slot {slot}: {shards}");
    }

    /// The shard channels with a subscriber on node `node`
    /// (`PUBSUB SHARDCHANNELS *` asked of that node alone).
    pub fn shard_channels(&self, node: usize) -> Vec<String> {
        lines(&self.nodes[node].cli(&["PUBSUB", "SHARDCHANNELS", "*"]))
    }

    /// Waits (at most [`TIMEOUT`]) until shard channel `channel` has `n`
    /// subscribers on the master that serves its slot.
    pub fn wait_shard_subscribers(&self, channel: &str, n: usize) {
        let master = &self.nodes[self.master_of(channel)];
        eventually(
            TIMEOUT,
            &format!("{n} shard subscribers of {channel}"),
            || {
                let out = master.cli(&["PUBSUB", "SHARDNUMSUB", channel]);
                (second_line_number(&out) == n).then_some(())
            },
        );
    }
}

/// Whether process `pid` exists (a reaped child's PID does not, until reused).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The process id of the Redis server answering on `addr` (`INFO server`
/// over an inline command), or `None` while nothing answers.
fn serving_pid(addr: SocketAddr) -> Option<u32> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    (&s).write_all(b"INFO server\r\n").ok()?;
    // A bulk string: `$LEN\r\n`, then LEN bytes and `\r\n`.
    let mut reply = BufReader::new(&s);
    let mut head = String::new();
    reply.read_line(&mut head).ok()?;
    let len: usize = head.strip_prefix('$')?.trim().parse().ok()?;
    let mut body = vec![0; len];
    reply.read_exact(&mut body).ok()?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:")?.trim().parse().ok())
}

/// A port that was free a moment ago (bound to 127.0.0.1:0, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

/// `redis-cli [-c] -p PORT ARGS…`, bounded by [`TIMEOUT`]; its standard
/// output, trimmed. Panics if it exits unsuccessfully.
fn redis_cli(port: u16, follow_redirects: bool, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    if follow_redirects {
        cmd.arg("-c");
    }
    cmd.args(["-p", &port.to_string()]).args(args);
    let out = run(&mut cmd, TIMEOUT);
    assert!(
        out.status.success(),
        "redis-cli -p {port} {args:?} failed ({}): {}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout.trim().to_owned()
}

/// What a finished command printed.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` (no standard input) and waits for it at most `within`;
/// panics, after killing it, if it does not finish in time.
fn run(cmd: &mut Command, within: Duration) -> Output {
    let mut child = Killed::spawn(cmd, Stdio::piped);
    let mut stdout = child.0.stdout.take().expect("piped stdout");
    let mut stderr = child.0.stderr.take().expect("piped stderr");
    // Both pipes reach EOF when the command exits; its diagnostics on
    // standard error are short enough never to fill their pipe meanwhile.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (mut out, mut err) = (String::new(), String::new());
        let _ = stdout.read_to_string(&mut out);
        let _ = stderr.read_to_string(&mut err);
        let _ = tx.send((out, err));
    });
    let (stdout, stderr) = rx
        .recv_timeout(within)
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish within {within:?}"));
    let status = child.0.wait().expect("wait for the command");
    Output {
        status,
        stdout,
        stderr,
    }
}

/// The non-empty lines of `text`.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The number on the second line of a `NUMSUB`-style reply (`channel`,
/// then its count).
fn second_line_number(reply: &str) -> usize {
    lines(reply)
        .get(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in the reply {reply:?}"))
}
