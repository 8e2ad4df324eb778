//! Requests per second to a loopback server: plain reqwest vs the full middleware stack, in the
//! same run. `cargo bench -p shiftkey-http --bench middleware`; figures in `docs/benchmarks.md`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmarks fail loudly"
)]
#![allow(
    missing_docs,
    reason = "criterion_group! generates undocumented functions"
)]

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shiftkey_auth::TokenManager;
use shiftkey_auth::testing::ScriptedStrategy;
use shiftkey_http::AuthMiddleware;

const BATCH: u64 = 16;

fn middleware(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url: url::Url = rt.block_on(async {
        let app = Router::new().route("/", get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/").parse().unwrap()
    });
    let plain = reqwest::Client::new();
    let wrapped = rt.block_on(async {
        let manager = TokenManager::builder(ScriptedStrategy::new(
            Duration::from_secs(8 * 3600),
            Duration::ZERO,
        ))
        .build()
        .unwrap();
        manager.token().await.unwrap();
        reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(AuthMiddleware::builder(manager).build())
            .build()
    });

    let mut g = c.benchmark_group("loopback_get");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("plain_reqwest", |b| {
        b.to_async(&rt).iter(|| async {
            for _ in 0..BATCH {
                let r = plain
                    .get(url.clone())
                    .bearer_auth("static")
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap();
            }
        })
    });
    g.bench_function("shiftkey_middleware", |b| {
        b.to_async(&rt).iter(|| async {
            for _ in 0..BATCH {
                let r = wrapped.get(url.clone()).send().await.unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap();
            }
        })
    });
    g.finish();
}

criterion_group!(benches, middleware);
criterion_main!(benches);
