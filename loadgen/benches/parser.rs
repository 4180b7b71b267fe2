//! The receive path's per-frame cost when frames arrive batched, as they do from a server
//! that corks its writes: one read buffer holding 1,000 frames of 64-byte messages.
//!
//! `parse` is the frame parser alone (target: at most 20 ns per frame, i.e. 50M frames/s,
//! against the 10M/s the issue asks for); `deliver` adds what loadgen does per delivery:
//! prefix check, stamp decode, sequence tracking, the run's latency histogram and the
//! receiver's own (for its median).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use loadgen::frame;
use loadgen::message::{self, Stamp};
use loadgen::track::SeqTracker;
use std::hint::black_box;

const FRAMES: usize = 1000;
const SIZE: usize = 64;
const PREFIX: &[u8] = b"Message from server: ";

/// What a seed-compatible server sends for messages 0..FRAMES of publisher 0.
fn batch() -> Vec<u8> {
    let mut wire = Vec::new();
    let mut msg = vec![0u8; SIZE];
    for seq in 0..FRAMES as u64 {
        message::encode(
            Stamp {
                publisher: 0,
                seq,
                intended_ns: 1_000_000 + seq,
            },
            &mut msg,
        );
        let payload = [PREFIX, &msg].concat();
        frame::encode_unmasked(true, frame::OP_TEXT, &payload, &mut wire);
    }
    wire
}

fn bench(c: &mut Criterion) {
    let wire = batch();
    let mut g = c.benchmark_group("receive_64B");
    g.throughput(Throughput::Elements(FRAMES as u64));
    g.bench_function("parse", |b| {
        b.iter(|| {
            let buf = black_box(&wire[..]);
            let (mut pos, mut bytes) = (0, 0);
            while let Ok(Some((f, used))) = frame::parse(&buf[pos..], 1 << 24) {
                bytes += f.payload.len();
                pos += used;
            }
            black_box((pos, bytes))
        })
    });
    let mut hist = loadgen::control::new_histogram();
    let mut client = loadgen::loghist::LogHistogram::boxed();
    g.bench_function("deliver", |b| {
        b.iter(|| {
            let mut tracker = SeqTracker::default();
            let buf = black_box(&wire[..]);
            let now = black_box(5_000_000u64);
            let mut pos = 0;
            while let Ok(Some((f, used))) = frame::parse(&buf[pos..], 1 << 24) {
                pos += used;
                let stamp = f
                    .payload
                    .strip_prefix(PREFIX)
                    .and_then(|m| message::decode(m, SIZE))
                    .expect("well-formed");
                tracker.observe(stamp.seq);
                let latency = now - stamp.intended_ns;
                hist.saturating_record(latency);
                client.record(latency);
            }
            black_box((pos, tracker.distinct()))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
