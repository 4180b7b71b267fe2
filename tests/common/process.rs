//! The `herald` binary as a child process on a free loopback port: the one
//! launcher for every test that needs the real binary (signals, `/proc`
//! readings, standard input, the environment, the log on standard error).

use std::io::{self, BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use super::TIMEOUT;

/// How a [`HeraldProcess`] is started: flags, environment, standard input
/// and standard error. By default `RUST_LOG=info`, standard input is null
/// and standard error is read line by line.
#[derive(Debug, Clone)]
pub struct HeraldBuilder {
    flags: Vec<String>,
    /// `None` removes the variable, so a value inherited from the test
    /// runner's environment cannot change what the test sees.
    env: Vec<(String, Option<String>)>,
    stdin_piped: bool,
    capture_stderr: bool,
}

impl HeraldBuilder {
    /// Adds command-line flags (after `--listen ADDR`).
    pub fn flags(mut self, flags: &[&str]) -> Self {
        self.flags.extend(flags.iter().map(|f| f.to_string()));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), Some(value.into())));
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(mut self, name: &str) -> Self {
        self.env.push((name.into(), None));
        self
    }

    /// `RUST_LOG=level`, or for `None` no `RUST_LOG` (herald's default level).
    pub fn rust_log(self, level: Option<&str>) -> Self {
        match level {
            Some(level) => self.env("RUST_LOG", level),
            None => self.env_remove("RUST_LOG"),
        }
    }

    /// A pipe on standard input, for [`HeraldProcess::take_stdin`].
    pub fn stdin_piped(mut self) -> Self {
        self.stdin_piped = true;
        self
    }

    /// Standard error to /dev/null: start-up then waits for the port
    /// instead of the "herald listening" line, so a `RUST_LOG` that hides
    /// info lines still works.
    pub fn stderr_null(mut self) -> Self {
        self.capture_stderr = false;
        self
    }

    /// Starts the binary on a free port and waits (at most [`TIMEOUT`]) until
    /// it listens. A port taken between choosing and binding it is retried
    /// with another.
    pub fn start(self) -> HeraldProcess {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("find a free port")
                .port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if let Some(herald) = self.try_start(addr) {
                return herald;
            }
        }
        panic!("herald could not start on any free port");
    }

    /// `None` if it exited at start (most likely the port was taken).
    fn try_start(&self, addr: SocketAddr) -> Option<HeraldProcess> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.arg("--listen")
            .arg(addr.to_string())
            .args(&self.flags)
            .stdin(if self.stdin_piped {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(if self.capture_stderr {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        for (name, value) in &self.env {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
        }
        let mut child = cmd.spawn().expect("spawn herald");
        let lines = child.stderr.take().map(forward_lines);
        let mut herald = HeraldProcess {
            addr,
            child,
            lines,
            log: Vec::new(),
        };
        let ready = if herald.lines.is_some() {
            // The line is logged once the listener is bound; connecting to
            // find out would add a connection to herald's counts.
            match herald.next_line_where(|l| l.contains("herald listening")) {
                Ok(_) => true,
                Err(RecvTimeoutError::Disconnected) => false,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("herald did not start within {TIMEOUT:?}: {:#?}", herald.log)
                }
            }
        } else {
            herald.poll_port()
        };
        if ready {
            return Some(herald);
        }
        let status = wait_child(&mut herald.child, TIMEOUT);
        eprintln!(
            "herald on {addr} exited at start ({status:?}): {:#?}; retrying",
            herald.log
        );
        None
    }
}

/// The `herald` binary, running on a free loopback port; killed (by its
/// PID) when dropped, unless it already exited.
pub struct HeraldProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    /// Standard error's lines, from a thread that reads them as they come
    /// (so herald never blocks on a full pipe); `None` when not captured.
    lines: Option<Receiver<String>>,
    /// Every line taken from `lines` so far, the start-up line included.
    log: Vec<String>,
}

impl HeraldProcess {
    /// A launcher to configure.
    pub fn builder() -> HeraldBuilder {
        HeraldBuilder {
            flags: Vec::new(),
            env: vec![("RUST_LOG".into(), Some("info".into()))],
            stdin_piped: false,
            capture_stderr: true,
        }
    }

    /// Starts the binary with `flags` and the builder's defaults.
    pub fn start(flags: &[&str]) -> Self {
        Self::builder().flags(flags).start()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its standard input (once; only with [`HeraldBuilder::stdin_piped`]).
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.child
            .stdin
            .take()
            .expect("stdin: not piped, or already taken")
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) with our own child's PID; no memory is involved.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill: {}", io::Error::last_os_error());
    }

    /// Panics (with the log so far) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            self.take_pending_lines();
            panic!("herald exited ({status}); log: {:#?}", self.log);
        }
    }

    /// Waits for the process to exit, at most `within`; panics if it does not.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        wait_child(&mut self.child, within).unwrap_or_else(|| {
            self.take_pending_lines();
            panic!(
                "herald did not exit within {within:?}; its log: {:#?}",
                self.log
            )
        })
    }

    /// Sends SIGTERM, waits (at most `within`) for the exit, and returns its
    /// status with every line of its standard error.
    pub fn stop(mut self, within: Duration) -> (ExitStatus, Vec<String>) {
        self.signal(libc::SIGTERM);
        let status = self.wait(within);
        (status, self.read_log_to_end())
    }

    /// Kills it (SIGKILL) and returns every line of its standard error.
    pub fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.read_log_to_end()
    }

    /// Every standard error line read so far (the start-up line included).
    pub fn log(&mut self) -> &[String] {
        self.take_pending_lines();
        &self.log
    }

    /// How many lines so far contain `needle`.
    pub fn count_in_log(&mut self, needle: &str) -> usize {
        self.log().iter().filter(|l| l.contains(needle)).count()
    }

    /// The first line, already read or still to come (at most [`TIMEOUT`]),
    /// for which `want` holds; panics naming `what`, with the log, if none.
    pub fn expect_line(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        self.take_pending_lines();
        if let Some(line) = self.log.iter().find(|l| want(l)) {
            return line.clone();
        }
        self.next_line_where(want).unwrap_or_else(|e| {
            panic!(
                "no log line with {what} ({e:?}); the log so far: {:#?}",
                self.log
            )
        })
    }

    /// Reads new lines (at most [`TIMEOUT`]) until one satisfies `want`.
    fn next_line_where(&mut self, want: impl Fn(&str) -> bool) -> Result<String, RecvTimeoutError> {
        let lines = self.lines.as_ref().expect("standard error is not captured");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let line = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))?;
            self.log.push(line.clone());
            if want(&line) {
                return Ok(line);
            }
        }
    }

    fn take_pending_lines(&mut self) {
        if let Some(lines) = &self.lines {
            self.log.extend(lines.try_iter());
        }
    }

    /// Once the process is gone its standard error reaches EOF and the
    /// forwarding thread hangs up after passing on every line.
    fn read_log_to_end(&mut self) -> Vec<String> {
        if let Some(lines) = self.lines.take() {
            let deadline = Instant::now() + TIMEOUT;
            loop {
                match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(line) => self.log.push(line),
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {
                        panic!("herald's stderr stayed open {TIMEOUT:?} after it exited")
                    }
                }
            }
        }
        std::mem::take(&mut self.log)
    }

    /// Connects until the port answers; false if the process exits first.
    fn poll_port(&mut self) -> bool {
        let deadline = Instant::now() + TIMEOUT;
        while TcpStream::connect(self.addr).is_err() {
            if self.child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "herald did not listen on {} within {TIMEOUT:?}",
                self.addr
            );
            thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Forwards every line of `r` to the returned channel, from a thread.
fn forward_lines(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            // Nobody listening any more is fine: draining on keeps the
            // child from blocking on a full pipe.
            let _ = tx.send(line);
        }
    });
    rx
}

/// Polls `child` until it exits or `within` passes.
fn wait_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}
