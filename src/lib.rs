//! herald: a low-latency WebSocket broadcast server.
//!
//! Every message any client sends goes to every open client as
//! `Message from server: <message>`, on one thread and one `mio` poll loop.
//! A broadcast is encoded once ([`frame`]) and queued as a shared handle on
//! every recipient's [`queue::WriteQueue`], which leaves in one vectored write (`sendmsg`) per
//! connection per loop iteration.
//! With `--io-uring`, the vectored writes of a whole slice of recipients go to
//! the kernel in one `io_uring_enter`.
//!
//! `main` only parses the command line; tests and embedders call [`run`]
//! with a listener they bound themselves (port 0 in tests).
#![deny(missing_docs)]

mod bus;
pub mod config;
mod conn;
mod feed;
pub mod frame;
pub mod http;
pub mod metrics;
mod nonblock;
pub mod queue;
mod rooms;
mod server;
pub mod sockopt;
pub mod stats;
mod tls;
mod uring;

#[doc(hidden)]
pub use tls::fuzzing;

use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use config::{Config, LogFormat, Mode, SlowConsumer};
pub use stats::{CloseReason, Stats};

/// Serves `listener` with `config` until `shutdown` fires (or, for a
/// handle from [`Shutdown::on_signals`], SIGINT/SIGTERM arrives), then
/// closes every client with 1001 and returns once they answered or
/// `config.shutdown_timeout` passed.
///
/// # Errors
/// Only errors of the poll itself or of setting up the loop; a
/// connection's errors end that connection only.
pub fn run(listener: TcpListener, config: Config, shutdown: Shutdown) -> io::Result<()> {
    config.validate().map_err(io::Error::other)?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, config = %config.summary(), "herald listening");
    server::Server::new(listener, config, shutdown)?.serve()
}

/// Loads `--tls-cert` and `--tls-key`, if given, to say before listening
/// whether they can serve.
///
/// # Errors
/// A one-line reason: a file missing or unreadable, no certificate or key
/// in it, or a key that does not go with the certificate.
pub fn check_tls(config: &Config) -> Result<(), String> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => tls::Acceptor::load(cert, key).map(drop),
        _ => Ok(()),
    }
}

/// A handle that asks a running server to shut down gracefully.
///
/// Clone it before passing it to [`run`]; [`Shutdown::trigger`] may be
/// called from any thread, before or after `run` starts.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Default)]
struct ShutdownInner {
    requested: AtomicBool,
    signals: bool,
    waker: Mutex<Option<Arc<mio::Waker>>>,
}

impl Shutdown {
    /// A handle fired only by [`Shutdown::trigger`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle also fired by SIGINT and SIGTERM.
    pub fn on_signals() -> Self {
        Shutdown {
            inner: Arc::new(ShutdownInner {
                signals: true,
                ..Default::default()
            }),
        }
    }

    /// Asks the server to shut down; returns at once.
    pub fn trigger(&self) {
        self.inner.requested.store(true, Ordering::SeqCst);
        if let Some(w) = self
            .inner
            .waker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = w.wake();
        }
    }

    fn is_requested(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    fn handles_signals(&self) -> bool {
        self.inner.signals
    }

    fn set_waker(&self, waker: Arc<mio::Waker>) {
        *self.inner.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker);
    }
}

/// Installs the global log subscriber: `RUST_LOG` filtering (default
/// `info`), text or JSON lines on standard error.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
