//! Socket options from the command line, applied with socket2.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

use crate::config::SocketOptions;

/// Binds a listening socket with the configured backlog and options.
///
/// # Errors
/// Any failure of socket(2), setsockopt(2), bind(2) or listen(2).
pub fn bind(addr: SocketAddr, opts: &SocketOptions) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if opts.reuse_port {
        socket.set_reuse_port(true)?;
    }
    // Set on the listener so accepted sockets inherit it before the handshake.
    if let Some(n) = opts.recv_buffer {
        socket.set_recv_buffer_size(n)?;
    }
    // Accepted sockets inherit the listener's congestion control.
    if let Some(name) = &opts.congestion {
        socket.set_tcp_congestion(name.as_bytes())?;
    }
    socket.bind(&addr.into())?;
    socket.listen(opts.backlog)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Applies the per-connection options to an accepted socket.
///
/// # Errors
/// The first setsockopt(2) that fails.
pub fn apply(stream: &mio::net::TcpStream, opts: &SocketOptions) -> io::Result<()> {
    let s = SockRef::from(stream);
    if opts.nodelay {
        s.set_tcp_nodelay(true)?;
    }
    if let Some(n) = opts.send_buffer {
        s.set_send_buffer_size(n)?;
    }
    if let Some(n) = opts.recv_buffer {
        s.set_recv_buffer_size(n)?;
    }
    if let Some(idle) = opts.keepalive {
        let mut ka = TcpKeepalive::new().with_time(idle);
        if let Some(i) = opts.keepalive_interval {
            ka = ka.with_interval(i);
        }
        if let Some(r) = opts.keepalive_retries {
            ka = ka.with_retries(r);
        }
        s.set_tcp_keepalive(&ka)?;
    }
    if let Some(t) = opts.user_timeout {
        s.set_tcp_user_timeout(Some(t))?;
    }
    if let Some(n) = opts.notsent_lowat {
        s.set_tcp_notsent_lowat(u32::try_from(n).unwrap_or(u32::MAX))?;
    }
    if opts.quickack {
        s.set_tcp_quickack(true)?;
    }
    if let Some(us) = opts.busy_poll {
        s.set_busy_poll(us)?;
    }
    if let Some(tos) = opts.tos {
        if stream.peer_addr().map(|a| a.is_ipv4()).unwrap_or(false) {
            s.set_tos_v4(tos)?;
        }
    }
    Ok(())
}
