//! Store costs: save (lock + encrypt + write + fsync + rename + unlock), load, the cross-process
//! refresh protocol's overhead, and the Argon2id KDF at default parameters. Prints p50/p99 of
//! save and load from 1 000 runs, then runs criterion.
//!
//! `cargo bench -p shiftkey-store --bench store`; figures in `docs/benchmarks.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmarks fail loudly"
)]
#![allow(missing_docs, reason = "criterion generates undocumented functions")]
#![allow(clippy::disallowed_methods, reason = "benchmark timing")]
#![allow(clippy::print_stdout, reason = "the benchmark reports percentiles")]

use std::time::{Duration, Instant, SystemTime};

use criterion::Criterion;
use shiftkey_auth::{Secret, ServerLimits, StoredLifetimeSource, StoredToken, TokenStore};
use shiftkey_store::{FileStore, KdfParams, KeySource};

fn token(generation: u64) -> StoredToken {
    StoredToken {
        access_token: "a".repeat(900).into(),
        refresh_token: Some("r".repeat(40).into()),
        token_type: "Bearer".into(),
        issued_at: SystemTime::now(),
        lifetime: Duration::from_secs(3600),
        lifetime_source: StoredLifetimeSource::ExpiresIn,
        scope: Some("openid offline_access api".into()),
        generation,
        limits: ServerLimits::default(),
    }
}

fn store() -> (FileStore, std::path::PathBuf) {
    let dir = std::env::current_dir()
        .unwrap()
        .join("target")
        .join(format!("store-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key =
        KeySource::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "bench").unwrap();
    (FileStore::new(dir.join("bench.token"), key), dir)
}

async fn save(s: &FileStore, g: u64) {
    let mut guard = s.lock().await.unwrap();
    guard.save(&token(g)).await.unwrap();
    guard.unlock().await.unwrap();
}

fn percentiles(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    println!(
        "{label}: p50 {:?}  p99 {:?}  max {:?}  (n = {})",
        at(0.50),
        at(0.99),
        v[v.len() - 1],
        v.len()
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (s, dir) = store();
    rt.block_on(async {
        let mut saves = Vec::new();
        let mut loads = Vec::new();
        for g in 0..1_000 {
            let t = Instant::now();
            save(&s, g).await;
            saves.push(t.elapsed());
            let t = Instant::now();
            s.load().await.unwrap().unwrap();
            loads.push(t.elapsed());
        }
        percentiles(
            "save (lock + write + fsync + rename + fsync dir + unlock)",
            saves,
        );
        percentiles("load (read + decrypt)", loads);
    });

    let mut c = Criterion::default().configure_from_args().sample_size(30);
    let mut g = c.benchmark_group("store");
    g.bench_function("save_locked", |b| b.to_async(&rt).iter(|| save(&s, 1)));
    g.bench_function("load", |b| {
        b.to_async(&rt).iter(|| async { s.load().await.unwrap() })
    });
    g.bench_function("refresh_protocol_overhead", |b| {
        // What the manager adds around a refresh: lock, re-read, save, unlock.
        b.to_async(&rt).iter(|| async {
            let mut guard = s.lock().await.unwrap();
            let t = guard.load().await.unwrap().unwrap();
            guard.save(&t).await.unwrap();
            guard.unlock().await.unwrap();
        })
    });
    g.sample_size(10);
    g.bench_function("argon2id_default_kdf_first_save", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let path = dir.join(format!("kdf-{i}.token"));
                let st = FileStore::new(
                    &path,
                    KeySource::Passphrase {
                        passphrase: Secret::new("bench"),
                        params: KdfParams::default(),
                    },
                );
                let t = Instant::now();
                rt.block_on(save(&st, 1));
                total += t.elapsed();
                let _ = std::fs::remove_file(&path);
            }
            total
        })
    });
    g.finish();
    c.final_summary();
    let _ = std::fs::remove_dir_all(&dir);
}
