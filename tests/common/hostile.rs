//! Helpers for the hostile-client tests, on top of the rest of `common`: raw
//! WebSocket frames read off a plain socket (so no client library answers
//! pings or tidies anything up), metrics scraping, and `/proc` readings of
//! a herald child process (descriptors, memory, CPU time).
//!
//! Every wait is bounded by a socket timeout or a deadline.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use socket2::SockRef;

use super::{read_head, status_of, tcp, upgrade_request};

/// Sends `request` on a fresh connection and returns the status of the
/// response head and the socket, still open (a 101 leaves a WebSocket).
pub fn request_status(addr: SocketAddr, request: &[u8]) -> (u16, TcpStream) {
    let mut s = tcp(addr);
    s.write_all(request).expect("write request");
    let (head, rest) = read_head(&mut s).unwrap_or_else(|e| panic!("reading the head: {e}"));
    if status_of(&head) == 101 {
        assert!(rest.is_empty(), "bytes after the 101: {rest:?}");
    }
    (status_of(&head), s)
}

/// A WebSocket on a plain socket: the handshake is done by hand and frames
/// are read with [`read_frame`].
pub fn raw_websocket(addr: SocketAddr) -> TcpStream {
    let (status, s) = request_status(addr, upgrade_request("13", "").as_bytes());
    assert_eq!(status, 101, "upgrade refused");
    s
}

/// A frame from the server: the first header byte (FIN, RSV, opcode) and
/// the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    /// FIN, RSV1-3 and the opcode.
    pub first: u8,
    /// The (unmasked) payload.
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// The opcode.
    pub fn opcode(&self) -> u8 {
        self.first & 0x0F
    }

    /// For a close frame: its status code (1005 when it carries none).
    pub fn close_code(&self) -> u16 {
        assert_eq!(self.opcode(), 0x8, "not a close frame: {self:?}");
        match self.payload.get(..2) {
            Some(c) => u16::from_be_bytes([c[0], c[1]]),
            None => 1005,
        }
    }

    /// For a close frame: its reason text.
    pub fn close_reason(&self) -> String {
        String::from_utf8_lossy(self.payload.get(2..).unwrap_or_default()).into_owned()
    }
}

/// Reads one server-to-client frame; a server must not mask them.
///
/// # Errors
/// The socket's (a timeout, EOF as `UnexpectedEof`, a reset).
pub fn read_frame(s: &mut impl Read) -> io::Result<ServerFrame> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h)?;
    assert_eq!(h[1] & 0x80, 0, "the server masked a frame");
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b)?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b)?;
            usize::try_from(u64::from_be_bytes(b)).expect("frame length")
        }
        n => n as usize,
    };
    assert!(len <= 64 << 20, "a {len}-byte frame from the server");
    let mut payload = vec![0; len];
    s.read_exact(&mut payload)?;
    Ok(ServerFrame {
        first: h[0],
        payload,
    })
}

/// Reads frames until a close frame; returns it with the frames before it.
/// Panics if the connection ends or times out first.
pub fn read_until_close_frame(s: &mut impl Read) -> (Vec<ServerFrame>, ServerFrame) {
    let mut before = Vec::new();
    for _ in 0..1_000_000 {
        let f = read_frame(s).unwrap_or_else(|e| {
            panic!(
                "no close frame ({e}); {} frames before, last {:?}",
                before.len(),
                before.last()
            )
        });
        if f.opcode() == 0x8 {
            return (before, f);
        }
        before.push(f);
    }
    panic!("no close frame in a million frames");
}

/// Ends `s` with a TCP reset instead of a FIN (SO_LINGER 0, then close).
pub fn reset(s: TcpStream) {
    SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(s);
}

/// `GET /metrics`, the exposition text.
pub fn scrape(addr: SocketAddr) -> String {
    let resp = super::http_exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.text().to_owned()
}

/// The value of the sample `series` (a name, with labels if any, exactly
/// as exposed) in an exposition; panics if absent.
pub fn sample(exposition: &str, series: &str) -> u64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no sample {series} in:\n{exposition}"))
}

/// Scrapes `series` from a running server.
pub fn metric(addr: SocketAddr, series: &str) -> u64 {
    sample(&scrape(addr), series)
}

/// Polls `f` every 20 ms until it returns `Some`, at most `within`.
pub fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Open file descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    fds(pid).len()
}

/// The numbers of process `pid`'s open file descriptors.
fn fds(pid: u32) -> Vec<u64> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Lowers process `pid`'s `RLIMIT_NOFILE` so that exactly `free` more
/// descriptors can be opened (the kernel hands out the lowest free number,
/// and only numbers below the limit: an inherited descriptor numbered above
/// it takes no room).
pub fn leave_descriptors(pid: u32, free: usize) {
    let open = fds(pid);
    let mut left = free;
    let limit = (0u64..)
        .find(|n| {
            if !open.contains(n) {
                if left == 0 {
                    return true;
                }
                left -= 1;
            }
            false
        })
        .expect("a limit");
    set_descriptor_limit(pid, limit);
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// CPU time (user + system) process `pid` has used.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // The command name may hold spaces: fields are counted after its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat format")
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat(5); 3 is the first after ')'.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Sets process `pid`'s soft and hard `RLIMIT_NOFILE` to `limit`
/// (descriptors already open stay open).
fn set_descriptor_limit(pid: u32, limit: u64) {
    let new = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit(2) on our own child, with a valid struct and no old value.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", io::Error::last_os_error());
}
