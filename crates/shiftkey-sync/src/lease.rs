//! The PostgreSQL leader lease as an engine [`Lease`].

use async_trait::async_trait;
use shiftkey_store::LeaderLease;

use crate::Lease;

/// Holds `pg_try_advisory_lock(key)` on a dedicated connection; re-acquires when free.
pub struct PgLease {
    url: String,
    key: i64,
    held: Option<LeaderLease>,
}

impl PgLease {
    /// A lease on `key` in the database at `url`.
    pub fn new(url: impl Into<String>, key: i64) -> Self {
        Self {
            url: url.into(),
            key,
            held: None,
        }
    }
}

/// The URL may hold a password: it is never shown.
impl std::fmt::Debug for PgLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLease")
            .field("key", &self.key)
            .field("held", &self.held.is_some())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Lease for PgLease {
    async fn ensure(&mut self) -> bool {
        if let Some(l) = self.held.as_mut() {
            if l.is_held().await {
                return true;
            }
            tracing::warn!(key = self.key, "leader lease lost");
            self.held = None;
        }
        match LeaderLease::try_acquire(&self.url, self.key).await {
            Ok(Some(l)) => {
                tracing::info!(key = self.key, "leader lease acquired");
                self.held = Some(l);
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "leader lease check failed");
                false
            }
        }
    }
}
