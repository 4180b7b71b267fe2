//! loadgen: a load generator for WebSocket broadcast servers like the
//! Node.js `ws` chat server herald reimplements (`benches/peers/node/server.js`): every
//! text message a client sends is relayed, prefixed, to every client.
//!
//! It measures each delivery's latency from the message's *intended* send time into an
//! HdrHistogram, tracks every (receiver, publisher) sequence for loss, duplication and
//! reordering, checks that all receivers of a room saw one interleaving, and samples the
//! server's CPU and memory from `/proc`.
#![deny(missing_docs)]

pub mod clock;
pub mod config;
pub mod control;
pub mod frame;
pub mod handshake;
pub mod loghist;
pub mod message;
pub mod metrics;
pub mod net;
pub mod order;
pub mod plot;
pub mod procfs;
pub mod procs;
pub mod publish;
pub mod report;
pub mod rng;
pub mod run;
pub mod stats;
pub mod timer;
pub mod tls;
pub mod track;
pub mod worker;
