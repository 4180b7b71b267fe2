//! A TCP proxy between herald and Redis that can make one connection fail
//! the quiet way a network can: stop carrying bytes while both ends stay
//! open ([`Proxy::freeze`]), or lose the Redis side while herald's side
//! stays open and unanswered ([`Proxy::cut_upstream`]). Real herald, real
//! Redis; only the wire between them misbehaves.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const PASS: u8 = 0;
const FROZEN: u8 = 1;
const CUT: u8 = 2;

/// How often a pipe's threads look at their mode and at the stop flag.
const TICK: Duration = Duration::from_millis(20);

struct Pipe {
    /// The first bytes the client (herald) sent: tells a subscription from
    /// a publisher by its `CLIENT SETNAME`.
    hello: Arc<Mutex<Vec<u8>>>,
    mode: Arc<AtomicU8>,
}

/// A proxy on a free 127.0.0.1 port to `upstream`; stops its threads when
/// dropped.
pub struct Proxy {
    addr: SocketAddr,
    pipes: Arc<Mutex<Vec<Pipe>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy address");
        let pipes: Arc<Mutex<Vec<Pipe>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (pipes.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((down, _)) => {
                        let Ok(up) = TcpStream::connect(upstream) else {
                            continue;
                        };
                        let pipe = Pipe {
                            hello: Arc::default(),
                            mode: Arc::default(),
                        };
                        spawn_copy(&down, &up, &pipe, &s, true);
                        spawn_copy(&up, &down, &pipe, &s, false);
                        p.lock().unwrap().push(pipe);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(TICK),
                    Err(_) => thread::sleep(TICK),
                }
            }
        });
        Proxy { addr, pipes, stop }
    }

    /// `redis://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Indexes of the connections whose first bytes contain `needle`.
    pub fn connections_saying(&self, needle: &[u8]) -> Vec<usize> {
        let pipes = self.pipes.lock().unwrap();
        (0..pipes.len())
            .filter(|&i| {
                let hello = pipes[i].hello.lock().unwrap();
                hello.windows(needle.len()).any(|w| w == needle)
            })
            .collect()
    }

    /// Connection `i` carries nothing more either way; both ends stay open.
    pub fn freeze(&self, i: usize) {
        self.pipes.lock().unwrap()[i]
            .mode
            .store(FROZEN, Ordering::SeqCst);
    }

    /// Connection `i`'s Redis side is closed; herald's side stays open and
    /// what herald writes to it is swallowed.
    pub fn cut_upstream(&self, i: usize) {
        self.pipes.lock().unwrap()[i]
            .mode
            .store(CUT, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` in the pipe's mode. `outbound`: herald to Redis.
fn spawn_copy(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    stop: &Arc<AtomicBool>,
    outbound: bool,
) {
    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
    let (hello, mode, stop) = (pipe.hello.clone(), pipe.mode.clone(), stop.clone());
    from.set_read_timeout(Some(TICK)).unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while !stop.load(Ordering::Relaxed) {
            match mode.load(Ordering::SeqCst) {
                FROZEN => {
                    thread::sleep(TICK);
                    continue;
                }
                CUT if !outbound => {
                    // The Redis side: gone.
                    let _ = from.shutdown(Shutdown::Both);
                    return;
                }
                _ => {}
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if outbound {
                        let mut h = hello.lock().unwrap();
                        if h.len() < 1024 {
                            h.extend_from_slice(&buf[..n]);
                        }
                    }
                    // Cut, or frozen while this read was under way: the
                    // bytes go nowhere.
                    if mode.load(Ordering::SeqCst) != PASS {
                        continue;
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        if mode.load(Ordering::SeqCst) != CUT {
            let _ = to.shutdown(Shutdown::Write);
        }
    });
}
