//! One TCP listener served by several threads, each running its own single-threaded tokio
//! runtime: nginx's worker per core.
//!
//! On a shared multi-threaded runtime a proxied request crosses threads on its way: the task
//! serving the script's connection and the task driving the pooled upstream connection run on
//! whichever worker picked them up, so every request and answer wakes another thread (a futex
//! and, in a virtual machine, an interrupt to another core), and memory allocated on one thread
//! is freed on another. A worker here accepts, serves the script's connection, and drives its
//! own upstream connections (give each worker its own HTTP client, [`crate::Proxy::router_with`])
//! on one thread. Measured with `cargo xtask bench-proxy` and a profile in
//! `docs/proxy-profile.md`.
//!
//! The workers share the listener's connection limits and its [`Gate`]. Each watches the same
//! socket: a new connection wakes every worker, one `accept` wins and the others find nothing
//! (with a few workers that costs little; a socket per worker with `SO_REUSEPORT` would avoid it).

use std::net::TcpListener as StdListener;
use std::thread::JoinHandle;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::serve::{Gate, ServeLimits, Slots, serve_tcp_in};

/// Worker threads serving one listener, until dropped: dropping tells each to stop accepting,
/// drop its connections and end, without waiting for it ([`Workers::stop_and_join`] waits).
///
/// # Example
/// ```no_run
/// # fn demo() -> std::io::Result<()> {
/// use shiftkey_sidecar::serve::{Gate, ServeLimits};
/// use shiftkey_sidecar::workers::Workers;
///
/// let listener = std::net::TcpListener::bind("127.0.0.1:8181")?;
/// let hello = || axum::Router::new().fallback(|| async { "hello" });
/// let workers = Workers::serve_tcp(listener, vec![hello(), hello()], ServeLimits::default(), Gate::default(), "hello")?;
/// // ... serve until `workers` is dropped.
/// # drop(workers); Ok(()) }
/// ```
#[derive(Debug)]
pub struct Workers {
    stop: watch::Sender<bool>,
    ended: mpsc::UnboundedReceiver<String>,
    threads: Vec<JoinHandle<()>>,
}

/// Tells [`Workers::ended`] which worker ended, however its thread ends (a panic included),
/// unless it was told to stop (its name cleared).
struct Ended(mpsc::UnboundedSender<String>, String);

impl Drop for Ended {
    fn drop(&mut self) {
        if !self.1.is_empty() {
            let _ = self.0.send(std::mem::take(&mut self.1));
        }
    }
}

impl Workers {
    /// Serves `listener` on one thread per router in `routers` (the router is that worker's),
    /// within `limits` shared by all of them, to the users `gate` names. The threads are named
    /// `{name}-{i}`.
    ///
    /// # Errors
    /// No router, a listener that cannot be duplicated or made non-blocking, or a thread that
    /// cannot start (those already started stop).
    pub fn serve_tcp(
        listener: StdListener,
        routers: Vec<Router>,
        limits: ServeLimits,
        gate: Gate,
        name: &str,
    ) -> std::io::Result<Self> {
        if routers.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a listener needs at least one worker",
            ));
        }
        if name.contains('\0') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a worker's name cannot hold a NUL byte",
            ));
        }
        listener.set_nonblocking(true)?;
        let slots = Slots::new(limits);
        let (stop, _) = watch::channel(false);
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let mut workers = Self {
            stop,
            ended,
            threads: Vec::with_capacity(routers.len()),
        };
        for (i, router) in routers.into_iter().enumerate() {
            let listener = listener.try_clone()?;
            let stopped = workers.stop.subscribe();
            let (slots, gate) = (slots.clone(), gate.clone());
            let ended = Ended(ended_tx.clone(), format!("{name}-{i}"));
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker(listener, router, slots, gate, stopped, ended))?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// How many threads serve.
    #[must_use]
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Always `false`: there is at least one worker.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Resolves with a worker's name when one ends before the others are told to stop (its
    /// runtime could not start, or it panicked); the others go on serving.
    pub async fn ended(&mut self) -> String {
        match self.ended.recv().await {
            Some(name) => name,
            // Every sender is held by a thread until it ends: unreachable while `self` lives.
            None => std::future::pending().await,
        }
    }

    /// Tells every worker to stop and waits for their threads to end (blocking: call it
    /// outside an async task, or drop the workers instead).
    pub fn stop_and_join(mut self) {
        let _ = self.stop.send(true);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// One worker's thread: its runtime, serving until told to stop.
fn worker(
    listener: StdListener,
    router: Router,
    slots: Slots,
    gate: Gate,
    mut stopped: watch::Receiver<bool>,
    ended: Ended,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = ended.1.as_str(), error = %e, "a worker's runtime could not start");
            return;
        }
    };
    let mut ended = ended;
    runtime.block_on(async {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(worker = ended.1.as_str(), error = %e, "a worker cannot accept");
                return;
            }
        };
        tokio::select! {
            () = serve_tcp_in(listener, router, slots, gate) => {}
            // Told to stop, or the `Workers` is gone: nobody waits for this one's end.
            _ = stopped.wait_for(|stop| *stop) => ended.1.clear(),
        }
    });
    // The runtime drops with the connections it served, then `ended` reports.
    drop(runtime);
}
