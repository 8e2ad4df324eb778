//! A TCP listener served by worker threads (`shiftkey_sidecar::workers`): each worker serves on
//! its own thread through its own HTTP client, the workers share the listener's connection
//! limit, and stopping them closes the listener. Real time, loopback only.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use shiftkey_auth::TokenManager;
use shiftkey_auth::testing::ScriptedStrategy;
use shiftkey_http::AuthMiddleware;
use shiftkey_sidecar::serve::{Gate, ServeLimits};
use shiftkey_sidecar::workers::Workers;
use shiftkey_sidecar::{Proxy, ProxyConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// An upstream that answers with the `User-Agent` and `Authorization` it got.
async fn echo_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|headers: HeaderMap| async move {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        format!("{} {}", get("user-agent"), get("authorization"))
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A router that names the thread it answered on in `x-thread`.
fn naming_thread(router: axum::Router) -> axum::Router {
    router.layer(axum::middleware::map_response(
        |mut r: axum::response::Response| async move {
            let name = std::thread::current().name().unwrap_or("-").to_owned();
            r.headers_mut().insert("x-thread", name.parse().unwrap());
            r
        },
    ))
}

fn std_listener() -> (std::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// A client that opens a new connection for every request.
fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_forwards_through_its_own_client_on_its_own_thread() {
    let upstream = echo_upstream().await;
    let manager = TokenManager::builder(ScriptedStrategy::new(
        Duration::from_secs(3600),
        Duration::ZERO,
    ))
    .build()
    .unwrap();
    let proxy = Proxy::new(
        ProxyConfig::new("echo", format!("http://{upstream}").parse().unwrap()),
        reqwest::Client::new(),
        AuthMiddleware::builder(manager).build(),
    )
    .unwrap();
    let routers = (0..2)
        .map(|i| {
            let http = reqwest::Client::builder()
                .user_agent(format!("client-{i}"))
                .build()
                .unwrap();
            naming_thread(Arc::clone(&proxy).router_with(http))
        })
        .collect();
    let (listener, addr) = std_listener();
    let workers = Workers::serve_tcp(
        listener,
        routers,
        ServeLimits::default(),
        Gate::default(),
        "echo",
    )
    .unwrap();
    assert_eq!(workers.len(), 2);
    let client = fresh_connections();
    for _ in 0..10 {
        let r = client.get(format!("http://{addr}/x")).send().await.unwrap();
        let thread = r.headers()["x-thread"].to_str().unwrap().to_owned();
        let body = r.text().await.unwrap();
        // Answered on a worker's thread, through that worker's client, with the credential.
        let i = thread.strip_prefix("echo-").expect("a worker's thread");
        assert_eq!(body, format!("client-{i} Bearer tok-1"), "{thread}");
    }
    assert_eq!(proxy.stats().forwarded, 10);
    drop(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_share_the_listeners_connection_limit() {
    let hello = || axum::Router::new().fallback(|| async { "hello" });
    let (listener, addr) = std_listener();
    let limits = ServeLimits {
        max_connections: 1,
        queue: 0,
        ..ServeLimits::default()
    };
    let _workers = Workers::serve_tcp(
        listener,
        vec![hello(), hello()],
        limits,
        Gate::default(),
        "limit",
    )
    .unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    // The first connection is served and keeps its slot.
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    first.write_all(request).await.unwrap();
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Every other connection is over the limit, whichever worker accepts it.
    for _ in 0..8 {
        let mut other = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = other.write_all(request).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), other.read_to_end(&mut answer))
            .await
            .expect("closed unserved at once");
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_workers_close_the_listener() {
    let hello = || axum::Router::new().fallback(|| async { "hello" });
    let (listener, addr) = std_listener();
    let workers = Workers::serve_tcp(
        listener,
        vec![hello(), hello(), hello()],
        ServeLimits::default(),
        Gate::default(),
        "stop",
    )
    .unwrap();
    let answer = fresh_connections()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.text().await.unwrap(), "hello");
    tokio::task::spawn_blocking(move || workers.stop_and_join())
        .await
        .unwrap();
    let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn no_router_is_an_error() {
    let (listener, _) = std_listener();
    let e = Workers::serve_tcp(
        listener,
        Vec::new(),
        ServeLimits::default(),
        Gate::default(),
        "none",
    )
    .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    // A name a thread cannot carry is refused, not a panic.
    let (listener, _) = std_listener();
    let hello = axum::Router::new().fallback(|| async { "hello" });
    let e = Workers::serve_tcp(
        listener,
        vec![hello],
        ServeLimits::default(),
        Gate::default(),
        "bad\0name",
    )
    .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
}
