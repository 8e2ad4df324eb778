//! Read throughput of an initial load of 50 000 operations from the emulator, and HTTP calls per
//! 1 000 objects. `cargo bench -p shiftkey-teamcenter --bench initial_load`; figures in
//! `docs/benchmarks.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmarks fail loudly"
)]
#![allow(missing_docs, reason = "criterion generates undocumented functions")]
#![allow(
    clippy::print_stdout,
    reason = "the benchmark reports calls per 1 000 objects"
)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use shiftkey_auth::TokioClock;
use shiftkey_sim::{Sim, SimConfig};
use shiftkey_teamcenter::{ReadConfig, SessionConfig, TcClient};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // `cargo bench` passes --bench; under `cargo test --all-targets` this runs as a quick smoke test.
    let full = std::env::args().any(|a| a == "--bench");
    let mut cfg = SimConfig::default();
    cfg.data.plants = if full { 10 } else { 1 };
    cfg.data.plans_per_plant = if full { 625 } else { 5 }; // × 8 operations = 50 000 operations
    cfg.data.changes_per_hour = 0.0;
    let expected_ops =
        (cfg.data.plants * cfg.data.plans_per_plant * cfg.data.ops_per_plan) as usize;
    let (sim, tc) = rt.block_on(async {
        let sim = Sim::start(cfg, Arc::new(TokioClock::new())).await.unwrap();
        let session =
            SessionConfig::new(sim.url().parse().unwrap(), "mfg_sync", "mfg_sync_pw".into());
        let tc = TcClient::session(reqwest::Client::new(), session).unwrap();
        (sim, tc)
    });
    let read = ReadConfig::default().with_chunk(500);
    let (objects, calls) = rt.block_on(async {
        let before = tc.calls();
        let all = tc.changed_since(None, &read).await.unwrap();
        let ops: usize = all.plans.iter().map(|(_, o)| o.len()).sum();
        assert_eq!(ops, expected_ops);
        (all.plans.len() + ops, tc.calls() - before)
    });
    println!(
        "initial load: {objects} objects (plans + operations) in {calls} HTTP calls = {:.2} calls per 1 000 objects, {:.2} per 1 000 operations",
        calls as f64 * 1000.0 / objects as f64,
        calls as f64 * 1000.0 / expected_ops as f64
    );

    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(Duration::from_secs(30));
    let mut g = c.benchmark_group("teamcenter");
    g.throughput(Throughput::Elements(objects as u64));
    g.bench_function("initial_load_50k_operations", |b| {
        b.to_async(&rt)
            .iter(|| async { tc.changed_since(None, &read).await.unwrap() })
    });
    g.finish();
    c.final_summary();
    drop(sim);
}
