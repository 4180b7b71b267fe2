//! A `timerfd` for waking the loop at a precise instant (epoll's own timeout is in whole
//! milliseconds, too coarse to pace an open-loop publisher).

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A one-shot `CLOCK_MONOTONIC` timer.
#[derive(Debug)]
pub struct Timer {
    fd: OwnedFd,
    /// The instant it is armed for (0: not armed), to skip re-arming it for the same one.
    armed_ns: u64,
}

impl Timer {
    /// A disarmed timer.
    ///
    /// # Errors
    /// When `timerfd_create` fails.
    pub fn new() -> io::Result<Timer> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Timer {
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            armed_ns: 0,
        })
    }

    /// Registers the timer as readable under `token`.
    ///
    /// # Errors
    /// When epoll refuses it.
    pub fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut SourceFd(&self.fd.as_raw_fd()),
            token,
            Interest::READABLE,
        )
    }

    /// Fires once at `at_ns` (`clock::now_ns` time).
    ///
    /// # Errors
    /// When `timerfd_settime` fails.
    pub fn arm_at(&mut self, at_ns: u64) -> io::Result<()> {
        if at_ns == self.armed_ns {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (at_ns % 1_000_000_000).max(1) as libc::c_long,
            },
        };
        // SAFETY: valid fd and itimerspec; the old value is not wanted.
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed_ns = at_ns;
        Ok(())
    }

    /// Consumes the expiration so the next one raises a new edge.
    pub fn clear(&mut self) {
        let mut expirations = [0u8; 8];
        // SAFETY: reads at most 8 bytes into an 8-byte buffer.
        unsafe { libc::read(self.fd.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
        self.armed_ns = 0;
    }
}
