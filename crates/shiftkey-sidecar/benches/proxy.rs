//! The proxy's cost: requests per second and p50/p99 latency through `Proxy` against the same
//! loopback server called directly, at 1 and 64 concurrent connections, side by side in one run.
//! Rounds alternate (direct, proxy, direct, proxy) so a noisy neighbour hurts both alike.
//!
//! Two servers: one that answers at once (the proxy's whole cost shows: on 2 cores the client,
//! the proxy and the server compete for the same CPUs, and the proxy is a second HTTP hop —
//! parse, forward, stream back) and one that takes 5 ms per answer, like a real MES or PLM
//! endpoint (what a script would see).
//!
//! Run: `cargo bench -p shiftkey-sidecar --bench proxy` (or `cargo xtask bench`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::disallowed_methods,
    reason = "a benchmark: it fails loudly, prints its report and reads the clock"
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shiftkey_auth::TokenManager;
use shiftkey_auth::testing::ScriptedStrategy;
use shiftkey_http::AuthMiddleware;
use shiftkey_sidecar::{Proxy, ProxyConfig, serve};

/// How long one round runs (`cargo bench`); under `cargo test` a short smoke run.
fn round_length() -> Duration {
    if std::env::args().any(|a| a == "--bench") {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(100)
    }
}

/// A loopback server answering `/api/orders` after `delay`.
async fn upstream(delay: Duration) -> SocketAddr {
    let app = axum::Router::new().route(
        "/api/orders",
        axum::routing::get(move || async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            (
                [("content-type", "application/json")],
                r#"{"orders":[{"id":1,"state":"released"},{"id":2,"state":"open"}]}"#,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = serve::ServeLimits {
        max_connections: 512,
        ..Default::default()
    };
    tokio::spawn(serve::serve_tcp(
        listener,
        app,
        limits,
        serve::Gate::default(),
    ));
    addr
}

async fn proxy(upstream: SocketAddr) -> SocketAddr {
    let manager = TokenManager::builder(ScriptedStrategy::new(
        Duration::from_secs(8 * 3600),
        Duration::ZERO,
    ))
    .build()
    .unwrap();
    manager.token().await.unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let proxy = Proxy::new(
        ProxyConfig::new("bench", format!("http://{upstream}").parse().unwrap()),
        http,
        AuthMiddleware::builder(manager).build(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // As the binary serves it: only this user, its uid read from the kernel per connection.
    let gate = serve::Gate::users(serve::Users::this_user(), proxy.refusals().clone());
    let router = serve::with_host_check_only(
        std::sync::Arc::clone(&proxy).router(),
        serve::Hosts::loopback_and(&[]),
        gate.refusals.clone(),
    );
    let limits = serve::ServeLimits {
        max_connections: 512,
        ..Default::default()
    };
    tokio::spawn(serve::serve_tcp(listener, router, limits, gate));
    addr
}

/// One round: `connections` callers, each with its own connection, for [`round_length`]. Each
/// request's latency.
async fn round(target: SocketAddr, connections: usize) -> Vec<Duration> {
    let url = format!("http://{target}/api/orders");
    let end = Instant::now() + round_length();
    let callers: Vec<_> = (0..connections)
        .map(|_| {
            // One connection per caller, as separate scripts would have.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let url = url.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < end {
                    let started = Instant::now();
                    let answer = client
                        .get(&url)
                        .header("authorization", "Bearer stale")
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(answer.status(), 200);
                    answer.bytes().await.unwrap();
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in callers {
        all.extend(c.await.unwrap());
    }
    all
}

struct Measure {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

fn measure(mut latencies: Vec<Duration>, rounds: u32) -> Measure {
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Measure {
        per_sec: latencies.len() as f64 / (round_length().as_secs_f64() * f64::from(rounds)),
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for (server_label, delay) in [("instant", Duration::ZERO), ("5 ms", Duration::from_millis(5))] {
        let server = upstream(delay).await;
        let through = proxy(server).await;
        // Warm up both paths (connections, the allocator).
        round(server, 4).await;
        round(through, 4).await;
        for connections in [1usize, 64] {
            let (mut direct, mut proxied) = (Vec::new(), Vec::new());
            let rounds = 2;
            for _ in 0..rounds {
                direct.extend(round(server, connections).await);
                proxied.extend(round(through, connections).await);
            }
            let d = measure(direct, rounds);
            let p = measure(proxied, rounds);
            println!(
                "server {server_label}, {connections} connection(s): direct {:.0} req/s p50 {} p99 {} | proxy {:.0} req/s ({:.0} % of direct) p50 {} p99 {} (p99 {:+.3} ms)",
                d.per_sec,
                ms(d.p50),
                ms(d.p99),
                p.per_sec,
                100.0 * p.per_sec / d.per_sec,
                ms(p.p50),
                ms(p.p99),
                (p.p99.as_secs_f64() - d.p99.as_secs_f64()) * 1000.0,
            );
        }
        }
    });
}
