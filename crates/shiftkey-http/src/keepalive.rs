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

/// Whether a keepalive's answer (its HTTP status and the first 64 KiB of its body) shows the
/// session alive; `Err` says why not.
pub type KeepaliveCheck = dyn Fn(http::StatusCode, &[u8]) -> Result<(), String> + Send + Sync;

/// The most of a keepalive's answer that is read for the check.
const CHECKED_BYTES: usize = 64 * 1024;

impl AuthMiddleware {
    /// Starts a task that sends `request(&client)` whenever no request has gone out for half the
    /// idle limit (learned or pinned), so a server's idle timeout never kills the session. Does
    /// nothing until an idle limit is known, and nothing while the manager holds no token (a
    /// keepalive keeps a session, it never creates one). `client` must include this middleware,
    /// so the keepalive is authenticated (and heals) like any request. Stops when the handle is
    /// dropped. An answer other than 2xx is a failed keepalive: logged, and counted in
    /// [`Stats::keepalives_failed`](crate::Stats::keepalives_failed).
    pub fn keepalive<F>(&self, client: ClientWithMiddleware, request: F) -> Keepalive
    where
        F: Fn(&ClientWithMiddleware) -> RequestBuilder + Send + Sync + 'static,
    {
        self.keepalive_checked(
            client,
            request,
            Arc::new(|status: http::StatusCode, _: &[u8]| {
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {}", status.as_u16()))
                }
            }),
        )
    }

    /// [`AuthMiddleware::keepalive`] with the protocol's own test of the answer (a Teamcenter
    /// answer can be an exception whatever its status).
    pub fn keepalive_checked<F>(
        &self,
        client: ClientWithMiddleware,
        request: F,
        check: Arc<KeepaliveCheck>,
    ) -> Keepalive
    where
        F: Fn(&ClientWithMiddleware) -> RequestBuilder + Send + Sync + 'static,
    {
        let shared = Arc::clone(&self.shared);
        Keepalive(tokio::spawn(run(shared, client, request, check)))
    }
}

/// Reads at most [`CHECKED_BYTES`] of `response`'s body.
async fn head_of(mut response: reqwest::Response) -> Vec<u8> {
    let mut bytes = Vec::new();
    while bytes.len() < CHECKED_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    bytes.truncate(CHECKED_BYTES);
    bytes
}

async fn run<F>(
    s: Arc<Shared>,
    client: ClientWithMiddleware,
    request: F,
    check: Arc<KeepaliveCheck>,
) where
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
        if s.manager.try_token().is_none() {
            // No session to keep (released, or not yet acquired): a keepalive must not log in.
            s.clock.sleep(half).await;
            continue;
        }
        s.count_keepalive();
        let failure = match request(&client).send().await {
            Ok(r) => {
                let status = r.status();
                let body = head_of(r).await;
                match check(status, &body) {
                    Ok(()) => {
                        tracing::debug!(status = status.as_u16(), "keepalive sent");
                        None
                    }
                    Err(why) => Some(format!("the server refused it: {why}")),
                }
            }
            Err(e) => Some(e.without_url_string()),
        };
        if let Some(why) = failure {
            s.count_keepalive_failed();
            tracing::warn!(error = %why, "keepalive failed");
            // A refused request (an open circuit, no connection) may not count as activity:
            // wait before the next try instead of spinning.
            s.clock
                .sleep((half / 4).max(std::time::Duration::from_secs(1)))
                .await;
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
