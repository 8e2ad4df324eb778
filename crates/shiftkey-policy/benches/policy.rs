//! Hot-path costs: breaker `allow()` when closed and monitor `record()`, 1 and 2 threads, each
//! measured the same way (threads started together, the time until the last finishes).
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

/// Runs `iters` calls of `op` split over `n` threads that start together, and returns the time
/// until the last one finishes: the same measure for every thread count (criterion divides it by
/// `iters`, so "2 threads" is the aggregate time per operation). Thread start-up is outside it.
fn on_threads<F: Fn() + Send + Sync + 'static>(n: u64, iters: u64, op: &Arc<F>) -> Duration {
    let barrier = Arc::new(Barrier::new(usize::try_from(n).unwrap()));
    let hs: Vec<_> = (0..n)
        .map(|_| {
            let (op, barrier) = (Arc::clone(op), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                for _ in 0..iters / n {
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
    for n in [1u64, 2] {
        let threads = if n == 1 { "1_thread" } else { "2_threads" };
        let br = Arc::clone(&breaker);
        let allow = Arc::new(move || {
            black_box(br.allow(now)).ok();
        });
        g.bench_function(format!("breaker_allow_closed/{threads}"), |b| {
            b.iter_custom(|iters| on_threads(n, iters, &allow))
        });
        let br = Arc::clone(&breaker);
        let allow_record = Arc::new(move || {
            black_box(br.allow(now)).ok();
            br.record(now, true);
        });
        g.bench_function(format!("breaker_allow_and_record_success/{threads}"), |b| {
            b.iter_custom(|iters| on_threads(n, iters, &allow_record))
        });
        let mo = Arc::clone(&monitor);
        let record = Arc::new(move || mo.record(now, Event::Request(Class::Success)));
        g.bench_function(format!("monitor_record/{threads}"), |b| {
            b.iter_custom(|iters| on_threads(n, iters, &record))
        });
    }
    g.finish();
}

criterion_group!(benches, policy);
criterion_main!(benches);
