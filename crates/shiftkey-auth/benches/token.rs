//! Benchmarks of the TokenManager hot path and of single flight at expiry.
//!
//! `cargo bench -p shiftkey-auth --bench token` (or `cargo xtask bench`). Figures and ratios are
//! recorded in `docs/benchmarks.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmarks fail loudly"
)]
#![allow(
    missing_docs,
    reason = "criterion_group! generates undocumented functions"
)]

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use shiftkey_auth::testing::ScriptedStrategy;
use shiftkey_auth::{Clock, TokenManager, TokenSet, TokioClock};

/// The baseline most hand-written token holders use: a mutex around the current token.
struct MutexHolder {
    clock: TokioClock,
    current: Mutex<Option<(Arc<TokenSet>, tokio::time::Instant)>>,
}

impl MutexHolder {
    fn generation(&self) -> Option<u64> {
        let guard = self.current.lock().unwrap();
        let (token, hard_at) = guard.as_ref()?;
        (self.clock.now() < *hard_at).then_some(token.generation)
    }

    fn token(&self) -> Option<Arc<TokenSet>> {
        let guard = self.current.lock().unwrap();
        let (token, hard_at) = guard.as_ref()?;
        (self.clock.now() < *hard_at).then(|| Arc::clone(token))
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn fresh_manager(rt: &tokio::runtime::Runtime) -> TokenManager {
    rt.block_on(async {
        let m = TokenManager::builder(ScriptedStrategy::new(
            Duration::from_secs(8 * 3600),
            Duration::ZERO,
        ))
        .build()
        .unwrap();
        m.token().await.unwrap();
        m
    })
}

fn mutex_holder(manager: &TokenManager) -> Arc<MutexHolder> {
    let t = manager.try_token().unwrap();
    Arc::new(MutexHolder {
        clock: TokioClock::new(),
        current: Mutex::new(Some((Arc::new((*t).clone()), t.hard_deadline()))),
    })
}

/// Runs `op` `iters` times spread over `threads` threads; returns the wall time of the slowest.
fn contended<F: Fn() + Send + Sync + 'static>(threads: u64, iters: u64, op: Arc<F>) -> Duration {
    let barrier = Arc::new(std::sync::Barrier::new(threads as usize));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let op = Arc::clone(&op);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                #[allow(clippy::disallowed_methods, reason = "benchmark timing")]
                let start = Instant::now();
                for _ in 0..iters / threads {
                    op();
                }
                start.elapsed()
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .max()
        .unwrap_or_default()
}

fn hot_path(c: &mut Criterion) {
    let rt = runtime();
    let manager = fresh_manager(&rt);
    let baseline = mutex_holder(&manager);
    let _guard = rt.enter();

    let mut g = c.benchmark_group("token_fresh");
    g.bench_function("manager_try_token/1_thread", |b| {
        b.iter(|| black_box(manager.try_token()))
    });
    g.bench_function("mutex_baseline/1_thread", |b| {
        b.iter(|| black_box(baseline.token()))
    });
    g.bench_function("manager_with_token/1_thread", |b| {
        b.iter(|| black_box(manager.with_token(|t| t.generation)))
    });
    g.bench_function("mutex_baseline_read/1_thread", |b| {
        b.iter(|| black_box(baseline.generation()))
    });
    let clock = TokioClock::new();
    g.bench_function("clock_now_only/1_thread", |b| {
        b.iter(|| black_box(clock.now()))
    });
    g.bench_function("manager_token_async/1_thread", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(manager.token().await.unwrap()) })
    });
    {
        let threads = 2u64;
        let m = manager.clone();
        g.bench_function(
            BenchmarkId::new("manager_try_token", format!("{threads}_threads")),
            |b| {
                let m = m.clone();
                let op = Arc::new(move || {
                    black_box(m.try_token());
                });
                b.iter_custom(|iters| contended(threads, iters, Arc::clone(&op)))
            },
        );
        let m2 = manager.clone();
        g.bench_function(
            BenchmarkId::new("manager_with_token", format!("{threads}_threads")),
            |b| {
                let m = m2.clone();
                let op = Arc::new(move || {
                    black_box(m.with_token(|t| t.generation));
                });
                b.iter_custom(|iters| contended(threads, iters, Arc::clone(&op)))
            },
        );
        let base2 = Arc::clone(&baseline);
        g.bench_function(
            BenchmarkId::new("mutex_baseline_read", format!("{threads}_threads")),
            |b| {
                let base = Arc::clone(&base2);
                let op = Arc::new(move || {
                    black_box(base.generation());
                });
                b.iter_custom(|iters| contended(threads, iters, Arc::clone(&op)))
            },
        );
        let base = Arc::clone(&baseline);
        g.bench_function(
            BenchmarkId::new("mutex_baseline", format!("{threads}_threads")),
            |b| {
                let base = Arc::clone(&base);
                let op = Arc::new(move || {
                    black_box(base.token());
                });
                b.iter_custom(|iters| contended(threads, iters, Arc::clone(&op)))
            },
        );
    }
    g.finish();
}

fn stampede(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("stampede");
    g.sample_size(10);
    g.bench_function("10000_tasks_no_valid_token", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += rt.block_on(async {
                    let strategy =
                        ScriptedStrategy::new(Duration::from_secs(3600), Duration::from_millis(1));
                    let m = TokenManager::builder(strategy.clone()).build().unwrap();
                    #[allow(clippy::disallowed_methods, reason = "benchmark timing")]
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..10_000)
                        .map(|_| {
                            let m = m.clone();
                            tokio::spawn(async move { m.token().await.map(|t| t.generation()) })
                        })
                        .collect();
                    for t in tasks {
                        assert_eq!(t.await.unwrap().unwrap(), 1);
                    }
                    let elapsed = start.elapsed();
                    assert_eq!(
                        strategy.calls(),
                        1,
                        "exactly one acquire for 10 000 callers"
                    );
                    m.shutdown().await;
                    elapsed
                });
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, hot_path, stampede);
criterion_main!(benches);
