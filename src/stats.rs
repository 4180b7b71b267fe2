//! What the loop counts: plain integers, bumped per event or per broadcast
//! (never per recipient), read by the metrics endpoint and the summary log
//! line. Imports nothing from the crate, so every part can count.

use std::collections::BTreeMap;

/// Running totals, read by the metrics endpoint. Plain integers: the loop
/// is the only writer.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: u64,
    /// WebSocket handshakes completed.
    pub upgrades: u64,
    /// Messages received from clients.
    pub messages_in: u64,
    /// Broadcasts fanned out.
    pub broadcasts: u64,
    /// Frames queued by fan-out (broadcasts × open recipients).
    pub deliveries: u64,
    /// Bytes written to sockets.
    pub bytes_written: u64,
    /// Clients past `--max-queued-bytes`.
    pub slow_consumers: u64,
    /// Messages dropped for slow clients under `--slow-consumer drop`.
    pub dropped_messages: u64,
    /// Connections turned away at the connection or descriptor limit.
    pub over_limit: u64,
    /// WebSockets that joined a room (the lobby included).
    pub room_joins: u64,
    /// WebSockets that left their room (closed).
    pub room_leaves: u64,
    /// Messages published through `POST /publish`.
    pub publishes: u64,
    /// Lines broadcast from `--feed`.
    pub feed_lines: u64,
    /// Most bytes queued across all clients at the end of a fan-out.
    pub queued_high_water: usize,
    /// Loop iterations.
    pub iterations: u64,
    /// Reads deferred because a client was past `--client-rate` or
    /// `--client-bandwidth`.
    pub throttled: u64,
    /// Connections closed, indexed by `CloseReason as usize`.
    pub closed: [u64; CloseReason::ALL.len()],
    /// Requests answered with an error status, by status code.
    pub rejected: BTreeMap<u16, u64>,
    /// Broadcast frames per write.
    pub writes: WriteTally,
    /// Messages this node published to the bus (`--redis`).
    pub bus_publishes: u64,
    /// Messages received from the bus.
    pub bus_received: u64,
    /// Bytes written to Redis.
    pub bus_sent_bytes: u64,
    /// Bytes read from Redis.
    pub bus_received_bytes: u64,
    /// Messages missing from a publisher's sequence.
    pub bus_gaps: u64,
    /// Copies of messages already delivered (written again after a
    /// reconnect), dropped.
    pub bus_duplicates: u64,
    /// Envelopes this version cannot read, dropped.
    pub bus_malformed: u64,
    /// Messages refused because the bus was down or its buffer full.
    pub bus_undelivered: u64,
    /// Times the bus came back after being down.
    pub bus_reconnects: u64,
    /// TLS handshakes completed (`--tls-cert`).
    pub tls_handshakes: u64,
    /// TLS sessions that ended in a protocol error (a failed handshake,
    /// a corrupt record), an alert sent.
    pub tls_failures: u64,
}

/// How many broadcast frames each write carried: the figure batching moves.
/// Counted per `sendmsg` that carried broadcast bytes (one per recipient per
/// flush, not per message), as a histogram over powers of two.
#[derive(Debug, Default, Clone)]
pub struct WriteTally {
    /// Writes that carried broadcast bytes.
    pub writes: u64,
    /// Broadcast frames those writes completed.
    pub frames: u64,
    /// Writes by frames completed: bucket `i` counts writes that completed at
    /// most `2^i` frames and more than `2^(i-1)` (bucket 0: none or one, a
    /// write that only continued a frame completes none); the last bucket
    /// holds everything past `2^(WRITE_BUCKETS - 2)`.
    pub buckets: [u64; WRITE_BUCKETS],
}

/// Buckets of [`WriteTally`]: up to 65,536 frames a write, then the rest.
pub const WRITE_BUCKETS: usize = 18;

impl WriteTally {
    /// Counts one write that carried broadcast bytes and completed `frames`.
    #[inline]
    pub fn record(&mut self, frames: u32) {
        self.writes += 1;
        self.frames += frames as u64;
        let i = (u32::BITS - frames.saturating_sub(1).leading_zeros()) as usize;
        self.buckets[i.min(WRITE_BUCKETS - 1)] += 1;
    }
}

/// Why a connection ended, for the disconnect log and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The close handshake completed, or an HTTP exchange ended.
    Normal,
    /// The peer vanished without a close handshake.
    PeerGone,
    /// A protocol, UTF-8 or size violation by the peer.
    ProtocolError,
    /// An I/O error on the socket.
    IoError,
    /// The peer stopped reading and its queue passed the limit.
    SlowConsumer,
    /// Silent past `--idle-timeout`.
    Idle,
    /// A handshake or close deadline passed.
    Timeout,
    /// Rejected at the front door (4xx).
    Rejected,
    /// Turned away at `--max-connections` (503).
    Limit,
    /// The server is shutting down.
    Shutdown,
}

impl CloseReason {
    /// Every reason, for metrics.
    pub const ALL: [CloseReason; 10] = [
        CloseReason::Normal,
        CloseReason::PeerGone,
        CloseReason::ProtocolError,
        CloseReason::IoError,
        CloseReason::SlowConsumer,
        CloseReason::Idle,
        CloseReason::Timeout,
        CloseReason::Rejected,
        CloseReason::Limit,
        CloseReason::Shutdown,
    ];

    /// A short lower-case name, for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::PeerGone => "peer_gone",
            CloseReason::ProtocolError => "error",
            CloseReason::IoError => "io_error",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Idle => "idle",
            CloseReason::Timeout => "timeout",
            CloseReason::Rejected => "rejected",
            CloseReason::Limit => "limit",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_land_in_power_of_two_buckets() {
        let mut t = WriteTally::default();
        for frames in [0, 1, 2, 3, 4, 5, 64, 65, 65_536, 65_537, u32::MAX] {
            t.record(frames);
        }
        let mut want = [0u64; WRITE_BUCKETS];
        // 0 and 1 | 2 | 3, 4 | 5 | 64 | 65 | 65,536 | past it
        want[0] = 2;
        want[1] = 1;
        want[2] = 2;
        want[3] = 1;
        want[6] = 1;
        want[7] = 1;
        want[16] = 1;
        want[17] = 2;
        assert_eq!(t.buckets, want);
        assert_eq!(t.writes, 11);
        assert_eq!(
            t.frames,
            [0u64, 1, 2, 3, 4, 5, 64, 65, 65_536, 65_537, u32::MAX as u64]
                .iter()
                .sum::<u64>()
        );
    }
}
