//! Keepalive: a cheap request when the session has been idle for half the learned idle limit.

use std::sync::Arc;

use reqwest_middleware::{ClientWithMiddleware, RequestBuilder};

use crate::AuthMiddleware;
use crate::middleware::Shared;

/// Stops the keepalive task when dropped.
#[derive(Debug)]
pub struct Keepalive(tokio::task::JoinHandle<()>);

impl Drop for Keepalive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl AuthMiddleware {
    /// Starts a task that sends `request(&client)` whenever no request has gone out for half the
    /// idle limit (learned or pinned), so a server's idle timeout never kills the session. Does
    /// nothing until an idle limit is known. `client` must include this middleware, so the
    /// keepalive is authenticated (and heals) like any request. Stops when the handle is dropped.
    pub fn keepalive<F>(&self, client: ClientWithMiddleware, request: F) -> Keepalive
    where
        F: Fn(&ClientWithMiddleware) -> RequestBuilder + Send + Sync + 'static,
    {
        let shared = Arc::clone(&self.shared);
        Keepalive(tokio::spawn(run(shared, client, request)))
    }
}

async fn run<F>(s: Arc<Shared>, client: ClientWithMiddleware, request: F)
where
    F: Fn(&ClientWithMiddleware) -> RequestBuilder + Send + Sync + 'static,
{
    loop {
        let Some(limit) = s.learner.limits().idle_limit else {
            s.learned.notified().await;
            continue;
        };
        let half = limit / 2;
        let idle = s.idle(s.clock.now());
        if idle < half {
            tokio::select! {
                () = s.clock.sleep(half - idle) => {}
                () = s.learned.notified() => {}
            }
            continue;
        }
        s.count_keepalive();
        match request(&client).send().await {
            Ok(r) => tracing::debug!(status = r.status().as_u16(), "keepalive sent"),
            Err(e) => {
                tracing::warn!(error = %e.without_url_string(), "keepalive failed");
                // A refused request (an open circuit, no connection) may not count as activity:
                // wait before the next try instead of spinning.
                s.clock
                    .sleep((half / 4).max(std::time::Duration::from_secs(1)))
                    .await;
            }
        }
    }
}

trait WithoutUrl {
    fn without_url_string(&self) -> String;
}

impl WithoutUrl for reqwest_middleware::Error {
    fn without_url_string(&self) -> String {
        match self {
            reqwest_middleware::Error::Reqwest(e) => e
                .to_string()
                .split(" for url")
                .next()
                .unwrap_or_default()
                .to_owned(),
            other => other.to_string(),
        }
    }
}
