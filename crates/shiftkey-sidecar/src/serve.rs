//! Serving routers to local clients: a connection limit with a short, bounded queue, a deadline
//! for request headers (a client that trickles bytes cannot hold a connection for ever), a `Host`
//! check against DNS rebinding (a web page cannot make a browser on this host talk to us under
//! another name), and, where a listener hands out a credential, only the local users it names
//! (by the uid the kernel reports for the connection: `SO_PEERCRED` on a Unix socket, the socket
//! table on loopback TCP). Other users get 403 and one log line a minute.

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

use crate::{Refusal, Refusals};

/// Connections served at once by [`serve`]; more wait in a short queue or are closed.
pub const MAX_CONNECTIONS: usize = 64;

/// A client must send its whole request head within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The most a connection's read buffer grows to (a request head must fit in it).
const READ_BUFFER: usize = 64 * 1024;

/// A request (its body included) must be read and answered within this under
/// [`with_host_check`]; longer than the broker's own wait for a token (30 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(45);

/// How many connections a listener serves at once, how many more may wait for a slot and for
/// how long, and how long a request head may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections beyond those that wait for a slot (unread) instead of being closed at once;
    /// more than this are closed unserved.
    pub queue: usize,
    /// How long a queued connection waits for a slot before it is closed unserved.
    pub queue_timeout: Duration,
    /// A client must send its whole request head within this.
    pub header_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            queue: MAX_CONNECTIONS,
            queue_timeout: HEADER_TIMEOUT,
            header_timeout: HEADER_TIMEOUT,
        }
    }
}

/// The local users a listener serves, by uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Users(Arc<[u32]>);

impl Users {
    /// Exactly these uids.
    ///
    /// # Example
    /// ```
    /// let users = shiftkey_sidecar::serve::Users::uids([1001, 1002]);
    /// assert!(users.allows(1001) && !users.allows(65534));
    /// ```
    #[must_use]
    pub fn uids(uids: impl IntoIterator<Item = u32>) -> Self {
        let mut v: Vec<u32> = uids.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        Self(v.into())
    }

    /// This process's own user only.
    #[cfg(unix)]
    #[must_use]
    pub fn this_user() -> Self {
        Self::uids([crate::unix::uid()])
    }

    /// Whether `uid` is served.
    #[must_use]
    pub fn allows(&self, uid: u32) -> bool {
        self.0.binary_search(&uid).is_ok()
    }
}

/// Who may connect to a listener, and where its refusals are counted.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    /// `None`: anyone who can connect (the listener authenticates requests itself, or hands
    /// out nothing secret); `Some`: only these users.
    pub users: Option<Users>,
    /// Where refused users and connections over the limit are counted.
    pub refusals: Refusals,
}

impl Gate {
    /// Only `users`, counting refusals in `refusals`.
    #[must_use]
    pub fn users(users: Users, refusals: Refusals) -> Self {
        Self {
            users: Some(users),
            refusals,
        }
    }
}

/// The peer of a served connection, in each request's extensions under a [`Gate`] that names
/// users: the uid the kernel reported for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The peer's uid.
    pub uid: u32,
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
    State((hosts, timeout, refusals)): State<(Hosts, Option<Duration>, Refusals)>,
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
            let detail = format!("a request for the host name {host:?}, which is not ours");
            refusals.refuse(Refusal::Host, "listener", &detail);
            (
                StatusCode::MISDIRECTED_REQUEST,
                "this server answers to its loopback names (and those configured)\n",
            )
                .into_response()
        }
    }
}

/// `router` with each request (body included) answered within [`REQUEST_TIMEOUT`] and no
/// `Host` check: for a TLS listener, where the certificate ties the name (a page rebinding a
/// name of its own to this host fails the certificate check).
pub fn with_deadline(router: Router) -> Router {
    router.layer(axum::middleware::from_fn(
        |request: Request, next: Next| async move {
            tokio::time::timeout(REQUEST_TIMEOUT, next.run(request))
                .await
                .unwrap_or_else(|_| {
                    (StatusCode::REQUEST_TIMEOUT, "the request took too long\n").into_response()
                })
        },
    ))
}

/// `router` with the `Host` check in front, each request (body included) answered within
/// [`REQUEST_TIMEOUT`].
pub fn with_host_check(router: Router, hosts: Hosts) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        (hosts, Some(REQUEST_TIMEOUT), Refusals::default()),
        check_host,
    ))
}

/// `router` with the `Host` check in front and no deadline of its own (the proxy: each upstream
/// attempt has its own deadline, which covers streaming the response body back, and the proxy
/// bounds the request body itself). Refused names are counted in `refusals`.
pub fn with_host_check_only(router: Router, hosts: Hosts, refusals: Refusals) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        (hosts, None, refusals),
        check_host,
    ))
}

/// Serves `router` on `listener` until the task is dropped, to anyone who can connect: at most
/// [`MAX_CONNECTIONS`] at once, each request head within [`HEADER_TIMEOUT`].
pub async fn serve(listener: TcpListener, router: Router) {
    serve_tcp(listener, router, ServeLimits::default(), Gate::default()).await;
}

/// Serves `router` on a TCP `listener` within `limits`, to the users `gate` names, until the
/// task is dropped. A peer's uid is read from the kernel's socket table (Linux); where it cannot
/// be read, a gate that names users refuses the connection.
pub async fn serve_tcp(listener: TcpListener, router: Router, limits: ServeLimits, gate: Gate) {
    serve_tcp_in(listener, router, Slots::new(limits), gate).await;
}

/// [`serve_tcp`] within `slots`, which several workers of one listener share.
pub(crate) async fn serve_tcp_in(listener: TcpListener, router: Router, slots: Slots, gate: Gate) {
    let refused = refused_router();
    loop {
        let Some((stream, peer)) = accepted(listener.accept()).await else {
            continue;
        };
        // Small requests and answers go out at once, not after Nagle's delay.
        let _ = stream.set_nodelay(true);
        let who = match (&gate.users, stream.local_addr()) {
            (None, _) => Who::Anyone,
            (Some(_), Ok(local)) => Who::Tcp { local, peer },
            (Some(_), Err(_)) => Who::Unknown,
        };
        connection(stream, who, &router, &refused, &slots, &gate);
    }
}

/// Serves `router` over TLS on a TCP `listener` within `limits` until the task is dropped, to
/// anyone who completes the handshake (the router authenticates them): for a listener other
/// hosts reach. The handshake happens once the connection has its slot and must end within the
/// header deadline, so a client that stalls it holds nothing for long.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    acceptor: crate::tls::TlsAcceptor,
) {
    let slots = Slots::new(limits);
    let refused = refused_router();
    let gate = Gate::default();
    loop {
        let Some((stream, peer)) = accepted(listener.accept()).await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handshake = async move {
            match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => Some(tls),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake took too long");
                    None
                }
            }
        };
        connection_after(handshake, Who::Anyone, &router, &refused, &slots, &gate);
    }
}

/// Serves `router` on a Unix `listener` within `limits` until the task is dropped, to the users
/// `gate` names (by the uid the kernel reports for the peer; [`Users::this_user`] when it names
/// none).
#[cfg(unix)]
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    router: Router,
    limits: ServeLimits,
    mut gate: Gate,
) {
    if gate.users.is_none() {
        gate.users = Some(Users::this_user());
    }
    let slots = Slots::new(limits);
    let refused = refused_router();
    loop {
        let Some((stream, _)) = accepted(listener.accept()).await else {
            continue;
        };
        let who = match stream.peer_cred() {
            Ok(cred) => Who::Known(cred.uid()),
            Err(_) => Who::Unknown,
        };
        connection(stream, who, &router, &refused, &slots, &gate);
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

/// What is known of a connection's peer when it is accepted.
enum Who {
    /// No user check on this listener.
    Anyone,
    /// A Unix socket's peer uid.
    Known(u32),
    /// A TCP connection: the uid is looked up in the socket table.
    Tcp {
        local: std::net::SocketAddr,
        peer: std::net::SocketAddr,
    },
    /// Unreadable: refused under a gate that names users.
    Unknown,
}

impl Who {
    async fn uid(self) -> Option<u32> {
        match self {
            Who::Anyone | Who::Unknown => None,
            Who::Known(uid) => Some(uid),
            Who::Tcp { local, peer } => tcp_peer_uid(local, peer).await,
        }
    }
}

/// The uid owning the client end of a loopback TCP connection (Linux: `/proc/net/tcp{,6}`).
#[cfg(target_os = "linux")]
async fn tcp_peer_uid(local: std::net::SocketAddr, peer: std::net::SocketAddr) -> Option<u32> {
    tokio::task::spawn_blocking(move || crate::unix::tcp_peer_uid(local, peer))
        .await
        .ok()
        .flatten()
}

/// Elsewhere the uid of a TCP peer is not known: a gate that names users refuses it (serve
/// such scripts on a Unix socket).
#[cfg(not(target_os = "linux"))]
async fn tcp_peer_uid(_local: std::net::SocketAddr, _peer: std::net::SocketAddr) -> Option<u32> {
    None
}

/// The connection slots of one listener and its queue (its clones share them).
#[derive(Clone)]
pub(crate) struct Slots {
    serving: Arc<tokio::sync::Semaphore>,
    waiting: Arc<tokio::sync::Semaphore>,
    limits: ServeLimits,
}

impl Slots {
    pub(crate) fn new(limits: ServeLimits) -> Self {
        Self {
            serving: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
            waiting: Arc::new(tokio::sync::Semaphore::new(limits.queue)),
            limits,
        }
    }
}

/// What a refused user gets: 403, and the connection closed.
fn refused_router() -> Router {
    Router::new().fallback(|| async {
        (
            StatusCode::FORBIDDEN,
            [(header::CONNECTION, "close")],
            "this listener serves only the local users its configuration names\n",
        )
    })
}

/// Serves one accepted connection on its own task once it has a slot (waiting in the queue for
/// one, within its bound), if its user may be served.
fn connection<S>(stream: S, who: Who, router: &Router, refused: &Router, slots: &Slots, gate: &Gate)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    connection_after(async { Some(stream) }, who, router, refused, slots, gate);
}

/// [`connection`] for a stream that needs work first (a TLS handshake), done once the
/// connection has its slot; `None` from `stream` ends the connection unserved.
fn connection_after<S, F>(
    stream: F,
    who: Who,
    router: &Router,
    refused: &Router,
    slots: &Slots,
    gate: &Gate,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: std::future::Future<Output = Option<S>> + Send + 'static,
{
    let limits = slots.limits;
    let permit = match Arc::clone(&slots.serving).try_acquire_owned() {
        Ok(p) => Slot::Now(p),
        Err(_) => match Arc::clone(&slots.waiting).try_acquire_owned() {
            Ok(q) => Slot::Queued(q, Arc::clone(&slots.serving)),
            Err(_) => {
                busy(gate, limits);
                return;
            }
        },
    };
    let (router, refused, gate) = (router.clone(), refused.clone(), gate.clone());
    tokio::spawn(async move {
        let Some(_permit) = permit.get(limits.queue_timeout).await else {
            busy(&gate, limits);
            return;
        };
        let Some(stream) = stream.await else {
            return;
        };
        let service = match &gate.users {
            None => router,
            Some(users) => match who.uid().await {
                Some(uid) if users.allows(uid) => router.layer(axum::Extension(Peer { uid })),
                uid => {
                    let detail = match uid {
                        Some(uid) => format!("a connection from uid {uid}"),
                        None => "a connection whose user cannot be read".to_owned(),
                    };
                    gate.refusals.refuse(Refusal::User, "listener", &detail);
                    refused
                }
            },
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        // Reads of a body come in at most 64 KiB at a time (hyper's default lets one
        // connection's buffer grow to 400 KiB): hundreds of streamed uploads stay small.
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(READ_BUFFER);
        if let Err(e) = builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
            .await
        {
            tracing::debug!(error = %e, "connection ended");
        }
    });
}

fn busy(gate: &Gate, limits: ServeLimits) {
    let detail = format!(
        "a connection over the limit ({} served, {} waiting at most {:?})",
        limits.max_connections, limits.queue, limits.queue_timeout
    );
    gate.refusals.refuse(Refusal::Busy, "listener", &detail);
}

/// A connection's slot: had at once, or to wait for from the queue.
enum Slot {
    Now(tokio::sync::OwnedSemaphorePermit),
    Queued(
        tokio::sync::OwnedSemaphorePermit,
        Arc<tokio::sync::Semaphore>,
    ),
}

impl Slot {
    /// The serving slot, waiting at most `wait` for a queued one.
    async fn get(self, wait: Duration) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match self {
            Slot::Now(p) => Some(p),
            Slot::Queued(_place, serving) => tokio::time::timeout(wait, serving.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn start(max: usize, timeout: Duration) -> std::net::SocketAddr {
        let limits = ServeLimits {
            max_connections: max,
            queue: 0,
            queue_timeout: timeout,
            header_timeout: timeout,
        };
        start_with(limits, Gate::default()).await
    }

    async fn start_with(limits: ServeLimits, gate: Gate) -> std::net::SocketAddr {
        let router = with_host_check(
            Router::new().route(
                "/",
                axum::routing::get(|peer: Option<axum::Extension<Peer>>| async move {
                    match peer {
                        Some(axum::Extension(p)) => format!("ok uid {}", p.uid),
                        None => "ok".to_owned(),
                    }
                }),
            ),
            Hosts::loopback_and(&[]),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_tcp(listener, router, limits, gate));
        addr
    }

    async fn get(addr: std::net::SocketAddr) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        until_closed(&mut s).await
    }

    #[tokio::test]
    async fn a_connection_over_the_limit_waits_in_the_queue_and_is_served_when_a_slot_frees() {
        let limits = ServeLimits {
            max_connections: 1,
            queue: 1,
            queue_timeout: Duration::from_secs(20),
            header_timeout: Duration::from_millis(500),
        };
        let gate = Gate::default();
        let addr = start_with(limits, gate.clone()).await;
        // The only slot is held by a head that never ends, until the header deadline.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // One waits; a third finds the queue full and is closed unserved.
        let queued = tokio::spawn(get(addr));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = third
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        assert_eq!(until_closed(&mut third).await, "");
        assert_eq!(gate.refusals.counts()["busy"], 1);
        // The header deadline frees the slot: the queued one is served.
        assert!(queued.await.unwrap().starts_with("HTTP/1.1 200"));
        assert!(!until_closed(&mut slow).await.contains("200 OK"));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_tcp_peer_is_served_only_when_its_user_is_named() {
        let me = crate::unix::uid();
        let ours = Gate::users(Users::uids([me]), Refusals::default());
        let answer = get(start_with(ServeLimits::default(), ours).await).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&format!("ok uid {me}")), "{answer}");
        // A listener for another user refuses us with 403 and counts it.
        let others = Gate::users(Users::uids([me.wrapping_add(4242)]), Refusals::default());
        let answer = get(start_with(ServeLimits::default(), others.clone()).await).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        assert!(!answer.contains("ok"), "{answer}");
        assert_eq!(others.refusals.counts()["user"], 1);
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
