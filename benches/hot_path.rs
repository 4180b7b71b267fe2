//! The hot path, per recipient: encoding a broadcast once, fanning its
//! handle out to every queue, and flushing a queue with vectored writes.
//!
//! Run: `cargo bench -p herald --bench hot_path`. These guard against
//! regressions (an allocation or a copy per recipient shows up at once);
//! end-to-end throughput is loadgen's job.

use std::hint::black_box;
use std::io::{self, IoSlice, Write};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::frame::{encode, OP_TEXT};
use herald::queue::WriteQueue;
use herald::stats::WriteTally;

const PREFIX: &[u8] = b"Message from server: ";

fn encode_once(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for size in [64usize, 1024, 16 * 1024] {
        let payload = vec![b'x'; size];
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, p| {
            b.iter(|| encode(OP_TEXT, PREFIX, black_box(p)))
        });
    }
    g.finish();
}

fn fan_out(c: &mut Criterion) {
    let mut g = c.benchmark_group("fan_out_per_recipient");
    for n in [1_000usize, 10_000] {
        let mut queues: Vec<WriteQueue> = (0..n).map(|_| WriteQueue::new()).collect();
        let frame = encode(OP_TEXT, PREFIX, &[b'x'; 64]);
        let mut tally = WriteTally::default();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                for q in queues.iter_mut() {
                    q.push(frame.clone(), herald::queue::Kind::Broadcast);
                }
                // Drain so the queues keep a steady size; a sink write is
                // the cheapest stand-in for the socket.
                for q in queues.iter_mut() {
                    q.flush(&mut Sink, &mut tally).unwrap();
                }
            })
        });
    }
    g.finish();
}

fn flush(c: &mut Criterion) {
    let mut g = c.benchmark_group("flush_per_frame");
    for frames in [1usize, 16, 64, 256] {
        let frame = encode(OP_TEXT, PREFIX, &[b'x'; 64]);
        let mut q = WriteQueue::new();
        let mut tally = WriteTally::default();
        g.throughput(Throughput::Elements(frames as u64));
        g.bench_function(BenchmarkId::from_parameter(frames), |b| {
            b.iter(|| {
                for _ in 0..frames {
                    q.push(frame.clone(), herald::queue::Kind::Broadcast);
                }
                q.flush(&mut Sink, &mut tally).unwrap()
            })
        });
    }
    g.finish();
}

/// Accepts every byte, vectored, like a socket with room to spare.
struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(black_box(buf).len())
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Ok(black_box(bufs).iter().map(|b| b.len()).sum())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

criterion_group!(benches, encode_once, fan_out, flush);
criterion_main!(benches);
