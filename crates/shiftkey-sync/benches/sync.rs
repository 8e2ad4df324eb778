//! Sync throughput into SQLite: an initial load of 50 000 operations, and an incremental cycle
//! with 1 % of the plans changed (its cost should track the changes, not the total).
//! `cargo bench -p shiftkey-sync --bench sync`; prints the median of 3 runs of each.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmarks fail loudly"
)]
#![allow(missing_docs, reason = "a benchmark binary")]
#![allow(clippy::print_stdout, reason = "the benchmark reports")]
#![allow(
    clippy::disallowed_methods,
    reason = "benchmark timing and a wall-clock stamp"
)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use shiftkey_auth::TokioClock;
use shiftkey_shopfloor::SqlSink;
use shiftkey_sim::{Sim, SimConfig};
use shiftkey_sync::{Engine, EngineConfig, Stop};
use shiftkey_teamcenter::{ReadConfig, SessionConfig, TcClient};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cfg = SimConfig::default();
        cfg.data.plants = if full { 10 } else { 1 };
        cfg.data.plans_per_plant = if full { 625 } else { 5 };
        cfg.data.changes_per_hour = 0.0;
        // SHIFTKEY_BENCH_NO_FOLLOW=1: a server that ignores `withProperties` on BOM lines, so
        // referenced lines are read with getProperties (the fallback).
        cfg.tc.follow_line_references = std::env::var_os("SHIFTKEY_BENCH_NO_FOLLOW").is_none();
        let plans = (cfg.data.plants * cfg.data.plans_per_plant) as usize;
        let ops = plans * cfg.data.ops_per_plan as usize;
        let sim = Sim::start(cfg, Arc::new(TokioClock::new())).await.unwrap();
        let tc = TcClient::session(reqwest::Client::new(), SessionConfig::new(sim.url().parse().unwrap(), "mfg_sync", "mfg_sync_pw".into())).unwrap();
        let ecfg = EngineConfig { batch: 200, read: ReadConfig::default().with_chunk(500).with_overlap(Duration::ZERO), ..EngineConfig::default() };
        let runs = if full { 3 } else { 1 };
        let (mut initial, mut incremental) = (Vec::new(), Vec::new());
        let (mut initial_calls, mut incremental_calls, mut quiet_calls) = (0, 0, 0);
        for run in 0..runs {
            let path = std::env::temp_dir().join(format!("shiftkey-sync-bench-{}-{run}.db", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let sink = Arc::new(SqlSink::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.unwrap());
            let engine = Engine::new(tc.clone(), sink, ecfg.clone());
            let (t, calls) = (Instant::now(), tc.calls());
            let r = engine.cycle(&Stop::default()).await.unwrap();
            initial.push(t.elapsed());
            initial_calls = tc.calls() - calls;
            assert_eq!(r.inserted as usize, plans);
            // 1 % of the plans change.
            tokio::time::sleep(Duration::from_millis(1100)).await; // a new last_mod_date second
            let uids: Vec<String> = sim.with_data(|d| d.changed_processes(SystemTime::UNIX_EPOCH).iter().take(plans / 100).map(|o| o.uid.clone()).collect());
            sim.with_data(|d| {
                for u in &uids {
                    d.set_properties(u, &[("object_name".to_owned(), vec![format!("changed {run}")])], SystemTime::now()).unwrap();
                }
            });
            let (t, calls) = (Instant::now(), tc.calls());
            let r = engine.cycle(&Stop::default()).await.unwrap();
            incremental.push(t.elapsed());
            incremental_calls = tc.calls() - calls;
            assert_eq!(r.updated as usize, uids.len());
            // Nothing changed since: what a quiet cycle costs.
            let calls = tc.calls();
            let r = engine.cycle(&Stop::default()).await.unwrap();
            assert_eq!(r.read, 0);
            quiet_calls = tc.calls() - calls;
            let _ = std::fs::remove_file(&path);
        }
        let (i, c) = (median(initial), median(incremental));
        println!("initial load: {plans} plans / {ops} operations into SQLite in {i:?} = {:.0} operations/s", ops as f64 / i.as_secs_f64());
        println!("HTTP calls: initial load {initial_calls} ({:.2} per 1 000 operations), incremental cycle {incremental_calls}, cycle without changes {quiet_calls}", initial_calls as f64 * 1000.0 / ops as f64);
        println!("incremental cycle, 1 % changed ({} plans): {c:?} = {:.1} % of the initial load's time", plans / 100, c.as_secs_f64() / i.as_secs_f64() * 100.0);
    });
}
