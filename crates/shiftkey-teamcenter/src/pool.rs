//! A pool of sessions for parallel reads: N sessions with distinct `descrimator`s (so the pool
//! manager gives each its own server process), each healing on its own, with a bound on requests
//! in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;
use tokio::sync::Semaphore;

use crate::client::TcClient;
use crate::error::TcError;
use crate::session::SessionConfig;

/// N Teamcenter sessions used round-robin, at most `max_in_flight` requests at once.
#[derive(Debug, Clone)]
pub struct TcPool {
    clients: Arc<Vec<TcClient>>,
    next: Arc<AtomicUsize>,
    permits: Arc<Semaphore>,
}

impl TcPool {
    /// `sessions` sessions (at least 1) from `cfg`, the i-th with descrimator `<cfg>-<i>`.
    pub fn new(
        http: reqwest::Client,
        cfg: &SessionConfig,
        sessions: usize,
        max_in_flight: usize,
    ) -> Result<Self, shiftkey_auth::ConfigError> {
        let clients = (0..sessions.max(1))
            .map(|i| {
                let mut c = cfg.clone();
                c.descrimator = format!("{}-{i}", cfg.descrimator);
                TcClient::session(http.clone(), c)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            clients: Arc::new(clients),
            next: Arc::new(AtomicUsize::new(0)),
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
        })
    }

    /// The sessions.
    #[must_use]
    pub fn clients(&self) -> &[TcClient] {
        &self.clients
    }

    /// The next session, round-robin.
    #[must_use]
    pub fn client(&self) -> &TcClient {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        &self.clients[i]
    }

    /// Calls `operation` on the next session, waiting for a free slot first.
    pub async fn call(&self, operation: &str, body: Value) -> Result<Value, TcError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| TcError::Unexpected {
                operation: operation.to_owned(),
                detail: "the pool is closed".into(),
            })?;
        self.client().call(operation, body).await
    }
}
