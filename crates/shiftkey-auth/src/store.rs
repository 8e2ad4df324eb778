//! The [`TokenStore`] trait: where a token lives between processes and restarts, and the lock
//! that makes refreshing it safe when several processes share it (design §4.3, `docs/design.md`).

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::{LifetimeSource, Secret, TokenSet};

/// Limits a server really enforces, learned from premature deaths or pinned (design §3.5).
/// Stored with the token so a restart does not forget them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServerLimits {
    /// Tokens die at about this age whatever they claim.
    pub lifetime_cap: Option<Duration>,
    /// Sessions die after about this long without a request.
    pub idle_limit: Option<Duration>,
}

/// A token as persisted: wall-clock times only (monotonic instants mean nothing to another process).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredToken {
    /// The access token (zeroized on drop).
    pub access_token: Secret,
    /// The refresh token, if any (zeroized on drop). Persisted **before** the access token is
    /// handed out.
    pub refresh_token: Option<Secret>,
    /// Token type (`Bearer`, ...).
    pub token_type: String,
    /// When the request that produced it was sent (wall clock).
    pub issued_at: SystemTime,
    /// Lifetime used for scheduling.
    pub lifetime: Duration,
    /// Where the lifetime came from.
    pub lifetime_source: StoredLifetimeSource,
    /// Granted scope.
    pub scope: Option<String>,
    /// Generation, increasing across every process sharing the store.
    pub generation: u64,
    /// What is known of the server's real limits.
    #[serde(default)]
    pub limits: ServerLimits,
}

impl Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken")
            .field("access_token", &"[REDACTED]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("issued_at", &self.issued_at)
            .field("lifetime", &self.lifetime)
            .field("generation", &self.generation)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// [`LifetimeSource`] as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs, reason = "mirrors LifetimeSource one to one")]
pub enum StoredLifetimeSource {
    ExpiresIn,
    JwtClaims,
    Default,
    Learned,
}

impl StoredToken {
    /// The persistable form of `token` with `limits`.
    #[must_use]
    pub fn from_token(token: &TokenSet, limits: ServerLimits) -> Self {
        Self {
            access_token: token.access_token.clone(),
            refresh_token: token.refresh_token.clone(),
            token_type: token.token_type.clone(),
            issued_at: token.issued_at_wall,
            lifetime: token.lifetime,
            lifetime_source: match token.lifetime_source {
                LifetimeSource::ExpiresIn => StoredLifetimeSource::ExpiresIn,
                LifetimeSource::JwtClaims => StoredLifetimeSource::JwtClaims,
                LifetimeSource::Learned => StoredLifetimeSource::Learned,
                _ => StoredLifetimeSource::Default,
            },
            scope: token.scope.clone(),
            generation: token.generation,
            limits,
        }
    }

    /// Back to a [`TokenSet`], mapping the wall-clock issue time onto this process's monotonic
    /// clock (`now` / `now_wall` are one reading of each).
    #[must_use]
    pub fn to_token(&self, now: tokio::time::Instant, now_wall: SystemTime) -> TokenSet {
        let age = now_wall
            .duration_since(self.issued_at)
            .unwrap_or(Duration::ZERO);
        let issued = now.checked_sub(age).unwrap_or(now);
        let mut t = TokenSet::new(
            self.access_token.clone(),
            self.lifetime,
            issued,
            self.issued_at,
        );
        t.refresh_token.clone_from(&self.refresh_token);
        t.token_type.clone_from(&self.token_type);
        t.lifetime_source = match self.lifetime_source {
            StoredLifetimeSource::ExpiresIn => LifetimeSource::ExpiresIn,
            StoredLifetimeSource::JwtClaims => LifetimeSource::JwtClaims,
            StoredLifetimeSource::Default => LifetimeSource::Default,
            StoredLifetimeSource::Learned => LifetimeSource::Learned,
        };
        t.scope.clone_from(&self.scope);
        t.generation = self.generation;
        t
    }

    /// Time left before `expires`, at wall time `now_wall` (zero if past).
    #[must_use]
    pub fn remaining(&self, now_wall: SystemTime) -> Duration {
        self.issued_at
            .checked_add(crate::clamp_lifetime(self.lifetime))
            .and_then(|end| end.duration_since(now_wall).ok())
            .unwrap_or(Duration::ZERO)
    }
}

/// Why a store operation failed. Implementations say what and where (path, table) in `detail`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("token store: {kind}: {detail}")]
pub struct StoreError {
    /// What kind of failure.
    pub kind: StoreErrorKind,
    /// What and where, for the operator (never a secret).
    pub detail: String,
}

impl StoreError {
    /// A store error.
    pub fn new(kind: StoreErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

/// Kinds of [`StoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// Reading or writing failed (disk, network, database).
    #[error("I/O")]
    Io,
    /// The content was corrupt, truncated or tampered with; it was moved aside and the credential
    /// must re-authenticate.
    #[error("corrupt")]
    Corrupt,
    /// The key does not open this store; nothing was touched.
    #[error("wrong key")]
    WrongKey,
    /// The store is not one of ours, or from a newer version; nothing was touched.
    #[error("unsupported format")]
    Unsupported,
    /// The store is readable by others; refused.
    #[error("permissions")]
    Permissions,
    /// The cross-process lock was not obtained in time.
    #[error("lock timeout")]
    LockTimeout,
    /// Misconfiguration (a bad key, weak KDF parameters).
    #[error("configuration")]
    Configuration,
}

/// Exclusive access to the stored token across processes, until [`StoreGuard::unlock`] (or drop).
#[async_trait]
pub trait StoreGuard: Send {
    /// The stored token, read under the lock.
    async fn load(&mut self) -> Result<Option<StoredToken>, StoreError>;
    /// Replaces the stored token (durably, before returning).
    async fn save(&mut self, token: &StoredToken) -> Result<(), StoreError>;
    /// Releases the lock (commits, for a database).
    async fn unlock(self: Box<Self>) -> Result<(), StoreError>;
}

/// Durable storage for one credential's token, shared by processes and hosts.
///
/// # Contract
/// - `load` reads without locking (for start-up and status).
/// - `lock` gives exclusive access across every process that uses the same store: the
///   [`TokenManager`](crate::TokenManager) holds it around re-read → adopt a sibling's newer token
///   *or* refresh → save → unlock, so a rotated refresh token is used once and never lost.
/// - `changed` resolves when another process may have stored a newer token (a database
///   notification); stores that cannot tell never resolve it.
#[async_trait]
pub trait TokenStore: Debug + Send + Sync {
    /// The stored token, if any.
    async fn load(&self) -> Result<Option<StoredToken>, StoreError>;
    /// Takes the cross-process lock.
    async fn lock(&self) -> Result<Box<dyn StoreGuard>, StoreError>;
    /// Resolves when a sibling may have stored a newer token.
    async fn changed(&self) {
        std::future::pending::<()>().await;
    }
}

/// An in-memory store (tests, and processes that share nothing). Cheap to clone; clones share.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    slot: Arc<Mutex<Option<StoredToken>>>,
}

struct MemoryGuard(OwnedMutexGuard<Option<StoredToken>>);

#[async_trait]
impl StoreGuard for MemoryGuard {
    async fn load(&mut self) -> Result<Option<StoredToken>, StoreError> {
        Ok(self.0.clone())
    }
    async fn save(&mut self, token: &StoredToken) -> Result<(), StoreError> {
        *self.0 = Some(token.clone());
        Ok(())
    }
    async fn unlock(self: Box<Self>) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    async fn load(&self) -> Result<Option<StoredToken>, StoreError> {
        Ok(self.slot.lock().await.clone())
    }
    async fn lock(&self) -> Result<Box<dyn StoreGuard>, StoreError> {
        Ok(Box::new(MemoryGuard(
            Arc::clone(&self.slot).lock_owned().await,
        )))
    }
}

#[cfg(test)]
mod secret_tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    /// The tokens are `Secret`s in memory (zeroized on drop, redacted in `Debug`) and plain JSON
    /// strings in the encrypted payload, exactly as before: old payloads still read.
    #[test]
    fn stored_tokens_are_secrets_in_memory_and_strings_on_disk() {
        let old = r#"{"access_token":"at-1","refresh_token":"rt-1","token_type":"Bearer",
            "issued_at":{"secs_since_epoch":1800000000,"nanos_since_epoch":0},
            "lifetime":{"secs":3600,"nanos":0},"lifetime_source":"ExpiresIn","scope":null,
            "generation":1}"#;
        let t: StoredToken = serde_json::from_str(old).unwrap();
        assert_eq!(t.access_token.expose(), "at-1");
        assert_eq!(t.refresh_token.as_ref().map(Secret::expose), Some("rt-1"));
        let again = serde_json::to_value(&t).unwrap();
        assert_eq!(again["access_token"], "at-1");
        assert_eq!(again["refresh_token"], "rt-1");
        let shown = format!("{t:?} {:?}", t.access_token);
        assert!(
            !shown.contains("at-1") && !shown.contains("rt-1"),
            "{shown}"
        );
    }
}
