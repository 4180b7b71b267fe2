//! Predicates for the two I/O errors a non-blocking loop handles itself,
//! as mio's examples have them: `WouldBlock` (the socket has nothing more
//! now: wait for its next readiness event) and `Interrupted` (retry).

use std::io;

/// The socket has nothing more to give or take now.
#[inline]
pub fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// A signal interrupted the call: retry it.
#[inline]
pub fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}
