//! Serving routers to local clients: a connection limit, a deadline for request headers (a
//! client that trickles bytes cannot hold a connection for ever), and a `Host` check against DNS
//! rebinding (a web page cannot make a browser on this host talk to us under another name). On a
//! Unix socket only this user's processes are served (their uid is read from the socket).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Connections served at once by [`serve`]; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;

/// A client must send its whole request head within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A request (its body included) must be read and answered within this under
/// [`with_host_check`]; longer than the broker's own wait for a token (30 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(45);

/// How many connections a listener serves at once and how long a request head may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections served at once; more are closed unserved.
    pub max_connections: usize,
    /// A client must send its whole request head within this.
    pub header_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
        }
    }
}

/// The `Host` names a request may carry: loopback names, and those configured.
#[derive(Debug, Clone)]
pub struct Hosts(Arc<Vec<String>>);

impl Hosts {
    /// Loopback names (`localhost`, `127.0.0.1`, `[::1]`) and `extra`.
    ///
    /// # Example
    /// ```
    /// let hosts = shiftkey_sidecar::serve::Hosts::loopback_and(&["ops.plant.example".to_owned()]);
    /// # let _ = hosts;
    /// ```
    #[must_use]
    pub fn loopback_and(extra: &[String]) -> Self {
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "[::1]".to_owned(),
        ];
        // As the check compares them: lower case, without a port, IPv6 in brackets.
        names.extend(extra.iter().map(|h| {
            let h = h.trim().to_ascii_lowercase();
            if h.parse::<std::net::Ipv6Addr>().is_ok() {
                format!("[{h}]")
            } else {
                match h.rsplit_once(':') {
                    Some((n, p)) if !n.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                        n.to_owned()
                    }
                    _ => h,
                }
            }
        }));
        Self(Arc::new(names))
    }

    fn allows(&self, host: &str) -> bool {
        // The name without its port (an IPv6 literal keeps its brackets).
        let name = match host.rsplit_once(':') {
            Some((n, port)) if !n.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => host,
        }
        .to_ascii_lowercase();
        self.0.contains(&name)
    }
}

/// Refuses a request whose `Host` is not one of `hosts` (HTTP 421), and bounds the rest by
/// `timeout` (HTTP 408) when one is given.
async fn check_host(
    State((hosts, timeout)): State<(Hosts, Option<Duration>)>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match host {
        Some(h) if hosts.allows(&h) => match timeout {
            // Bounded, body included: a client that trickles a body cannot hold a slot.
            Some(t) => tokio::time::timeout(t, next.run(request))
                .await
                .unwrap_or_else(|_| {
                    (StatusCode::REQUEST_TIMEOUT, "the request took too long\n").into_response()
                }),
            None => next.run(request).await,
        },
        _ => {
            tracing::warn!(host = ?host, "refused a request for a host name that is not ours");
            (
                StatusCode::MISDIRECTED_REQUEST,
                "this server answers to its loopback names (and those configured)\n",
            )
                .into_response()
        }
    }
}

/// `router` with the `Host` check in front, each request (body included) answered within
/// [`REQUEST_TIMEOUT`].
pub fn with_host_check(router: Router, hosts: Hosts) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        (hosts, Some(REQUEST_TIMEOUT)),
        check_host,
    ))
}

/// `router` with the `Host` check in front and no deadline of its own (the proxy: each upstream
/// attempt has its own deadline, which covers streaming the response body back).
pub fn with_host_check_only(router: Router, hosts: Hosts) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        (hosts, None),
        check_host,
    ))
}

/// Serves `router` on `listener` until the task is dropped: at most [`MAX_CONNECTIONS`] at
/// once, each request head within [`HEADER_TIMEOUT`].
pub async fn serve(listener: TcpListener, router: Router) {
    serve_tcp(listener, router, ServeLimits::default()).await;
}

/// Serves `router` on a TCP `listener` within `limits` until the task is dropped.
pub async fn serve_tcp(listener: TcpListener, router: Router, limits: ServeLimits) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let Some((stream, _)) = accepted(listener.accept()).await else {
            continue;
        };
        // Small requests and answers go out at once, not after Nagle's delay.
        let _ = stream.set_nodelay(true);
        connection(stream, &router, &permits, limits);
    }
}

/// Serves `router` on a Unix `listener` within `limits` until the task is dropped; a connection
/// from another user (by the uid the kernel reports for the peer) is closed unserved.
#[cfg(unix)]
pub async fn serve_unix(listener: tokio::net::UnixListener, router: Router, limits: ServeLimits) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let Some((stream, _)) = accepted(listener.accept()).await else {
            continue;
        };
        if crate::unix::peer_is_us(&stream).is_none() {
            continue;
        }
        connection(stream, &router, &permits, limits);
    }
}

/// The next accepted connection; `None` after a failed accept (out of file descriptors, a
/// connection reset before it was taken), logged, with a short pause so the loop does not spin.
pub(crate) async fn accepted<S>(
    accept: impl std::future::Future<Output = std::io::Result<S>>,
) -> Option<S> {
    match accept.await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// Serves one accepted connection on its own task, if a slot is free.
fn connection<S>(
    stream: S,
    router: &Router,
    permits: &Arc<tokio::sync::Semaphore>,
    limits: ServeLimits,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = Arc::clone(permits).try_acquire_owned() else {
        tracing::warn!(
            limit = limits.max_connections,
            "connection limit reached; a connection was closed unserved"
        );
        return;
    };
    let service = TowerToHyperService::new(router.clone());
    tokio::spawn(async move {
        let _permit = permit;
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        if let Err(e) = builder
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            tracing::debug!(error = %e, "connection ended");
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn start(max: usize, timeout: Duration) -> std::net::SocketAddr {
        let router = with_host_check(
            Router::new().route("/", axum::routing::get(|| async { "ok" })),
            Hosts::loopback_and(&[]),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_tcp(
            listener,
            router,
            ServeLimits {
                max_connections: max,
                header_timeout: timeout,
            },
        ));
        addr
    }

    /// Reads until the server closes or resets the connection (a guard bounds the wait: a hang
    /// fails the test).
    async fn until_closed(s: &mut tokio::net::TcpStream) -> String {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
            .await
            .expect("the server kept the connection open");
        if let Err(e) = read {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    // Real time: hyper's header deadline on real loopback sockets, where paused time could jump
    // to it while a full head is still on its way. The cut-off is the expected outcome for the
    // trickled head; the full head arrives in one write, ready when hyper reads.
    #[tokio::test]
    async fn a_trickled_request_head_is_cut_off_and_a_full_one_served() {
        let addr = start(8, Duration::from_millis(300)).await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .unwrap();
        let answer = until_closed(&mut slow).await;
        assert!(!answer.contains("200 OK"), "{answer}");
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert!(until_closed(&mut ok).await.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed_unserved() {
        let addr = start(1, Duration::from_secs(30)).await;
        let mut held = tokio::net::TcpStream::connect(addr).await.unwrap();
        held.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 12];
        held.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = over
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        assert_eq!(until_closed(&mut over).await, "");
    }

    #[tokio::test]
    async fn another_host_name_is_refused() {
        let addr = start(8, Duration::from_secs(30)).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: rebound.evil.example\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert!(until_closed(&mut s).await.starts_with("HTTP/1.1 421"));
    }

    #[test]
    fn only_loopback_names_and_configured_ones_are_ours() {
        let hosts = Hosts::loopback_and(&[
            "ops.plant.example".to_owned(),
            "proxy.plant.example:443".to_owned(),
            "fd00::7".to_owned(),
        ]);
        for ok in [
            "localhost",
            "localhost:9464",
            "127.0.0.1:9464",
            "[::1]:9464",
            "OPS.plant.example",
            "proxy.plant.example",
            "[fd00::7]:9464",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9464",
            "127.0.0.1.evil.example",
            "",
        ] {
            assert!(!hosts.allows(bad), "{bad}");
        }
    }
}
