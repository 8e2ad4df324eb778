//! Hot-path costs: breaker `allow()` when closed and monitor `record()`, 1 and 2 threads.
//!
//! `cargo bench -p shiftkey-policy --bench policy`; figures in `docs/benchmarks.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmarks fail loudly"
)]
#![allow(
    missing_docs,
    reason = "criterion_group! generates undocumented functions"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "benchmark timing and a fixed `now` for the policy"
)]

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use shiftkey_policy::{CircuitBreaker, Class, ErrorRateMonitor, Event, MonitorConfig};

fn two_threads<F: Fn() + Send + Sync + 'static>(iters: u64, op: Arc<F>) -> Duration {
    let barrier = Arc::new(Barrier::new(2));
    let hs: Vec<_> = (0..2)
        .map(|_| {
            let (op, barrier) = (Arc::clone(&op), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                for _ in 0..iters / 2 {
                    op();
                }
                start.elapsed()
            })
        })
        .collect();
    hs.into_iter()
        .map(|h| h.join().unwrap())
        .max()
        .unwrap_or_default()
}

fn policy(c: &mut Criterion) {
    let now = Instant::now();
    let breaker = Arc::new(CircuitBreaker::default());
    let monitor = Arc::new(ErrorRateMonitor::new(MonitorConfig::default(), now));
    let mut g = c.benchmark_group("policy");
    g.bench_function("breaker_allow_closed/1_thread", |b| {
        b.iter(|| black_box(breaker.allow(now)))
    });
    g.bench_function("breaker_allow_and_record_success/1_thread", |b| {
        b.iter(|| {
            black_box(breaker.allow(now)).ok();
            breaker.record(now, true);
        })
    });
    g.bench_function("monitor_record/1_thread", |b| {
        b.iter(|| monitor.record(now, Event::Request(Class::Success)))
    });
    let br = Arc::clone(&breaker);
    g.bench_function("breaker_allow_closed/2_threads", |b| {
        let br = Arc::clone(&br);
        let op = Arc::new(move || {
            black_box(br.allow(now)).ok();
        });
        b.iter_custom(|iters| two_threads(iters, Arc::clone(&op)))
    });
    let mo = Arc::clone(&monitor);
    g.bench_function("monitor_record/2_threads", |b| {
        let mo = Arc::clone(&mo);
        let op = Arc::new(move || mo.record(now, Event::Request(Class::Success)));
        b.iter_custom(|iters| two_threads(iters, Arc::clone(&op)))
    });
    g.finish();
}

criterion_group!(benches, policy);
criterion_main!(benches);
