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

/// What a [`WatchedLease`] last learned about the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseState {
    /// Not asked yet.
    Starting,
    /// This instance holds the lease: it syncs.
    Leader,
    /// Another instance holds it: this one stands by.
    Follower,
    /// The lease could not be checked (the database is down or unreachable, or the lease's
    /// connection dropped): this instance does not sync. The error is for the log only.
    Unreachable {
        /// What failed.
        error: String,
    },
}

/// One report of a [`WatchedLease`]: its state, and how many checks were made so far (every
/// check sends a report, changed or not, so a watcher can tell the lease is being watched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseReport {
    /// What the last check found.
    pub state: LeaseState,
    /// Checks so far.
    pub checks: u64,
}

/// A PostgreSQL leader lease watched by a task of its own, not sampled when a cycle starts: the
/// holder confirms it at least every `check` (a query waiting on the lease's own connection,
/// [`LeaderLease::hold_for`], which also ends at once when that connection drops), and a
/// follower tries to take it every `check`. So a leader that loses its lease (the database
/// stopped, restarted or was cut off) knows within `check`, between cycles too, and
/// [`Lease::ensure`] answers from the last check without a round trip.
///
/// # Example
/// ```no_run
/// # async fn demo(engine: shiftkey_sync::Engine) -> Result<(), shiftkey_sync::SyncError> {
/// use std::time::Duration;
/// let mut lease = shiftkey_sync::WatchedLease::spawn(
///     "postgres://sync@db/shiftkey".to_owned(),
///     42,
///     Duration::from_secs(5),
/// );
/// let mut reports = lease.subscribe();
/// tokio::spawn(async move {
///     while reports.changed().await.is_ok() {
///         println!("{:?}", reports.borrow_and_update().state);
///     }
/// });
/// engine.run(&Default::default(), Some(&mut lease)).await?;
/// # Ok(()) }
/// ```
pub struct WatchedLease {
    reports: tokio::sync::watch::Receiver<LeaseReport>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for WatchedLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedLease")
            .field("state", &self.reports.borrow().state)
            .finish_non_exhaustive()
    }
}

impl Drop for WatchedLease {
    fn drop(&mut self) {
        // The lease's connection closes with the task: the lease is given up.
        self.task.abort();
    }
}

impl WatchedLease {
    /// Starts watching the lease on `key` in the database at `url` (never shown: it may hold
    /// a password), checking every `check` (at least 100 ms). Must run inside a tokio runtime.
    #[must_use]
    pub fn spawn(url: String, key: i64, check: std::time::Duration) -> Self {
        let check = check.max(std::time::Duration::from_millis(100));
        let (tx, reports) = tokio::sync::watch::channel(LeaseReport {
            state: LeaseState::Starting,
            checks: 0,
        });
        let task = tokio::spawn(watch(url, key, check, tx));
        Self { reports, task }
    }

    /// The last report.
    #[must_use]
    pub fn report(&self) -> LeaseReport {
        self.reports.borrow().clone()
    }

    /// Every report from now on (one per check).
    #[must_use]
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<LeaseReport> {
        self.reports.clone()
    }
}

#[async_trait]
impl Lease for WatchedLease {
    /// Whether the last check found the lease ours (the first check is waited for).
    async fn ensure(&mut self) -> bool {
        if self.reports.borrow().checks == 0 {
            let _ = self.reports.wait_for(|r| r.checks > 0).await;
        }
        self.reports.borrow().state == LeaseState::Leader
    }
}

async fn watch(
    url: String,
    key: i64,
    check: std::time::Duration,
    tx: tokio::sync::watch::Sender<LeaseReport>,
) {
    let mut held: Option<LeaderLease> = None;
    let mut checks = 0u64;
    let mut publish = |state: LeaseState| {
        checks += 1;
        tx.send_replace(LeaseReport { state, checks });
    };
    loop {
        if let Some(lease) = held.as_mut() {
            if lease.hold_for(check).await {
                publish(LeaseState::Leader);
                continue;
            }
            // Lost: say so at once, then try to take it again at once (a new connection).
            held = None;
            tracing::warn!(
                key,
                "leader lease lost: its connection dropped or stopped answering"
            );
            publish(LeaseState::Unreachable {
                error: "the lease's connection dropped or stopped answering".to_owned(),
            });
        }
        match LeaderLease::try_acquire(&url, key).await {
            Ok(Some(lease)) => {
                tracing::info!(key, "leader lease acquired");
                held = Some(lease);
                publish(LeaseState::Leader);
                continue;
            }
            Ok(None) => publish(LeaseState::Follower),
            Err(e) => publish(LeaseState::Unreachable {
                error: e.to_string(),
            }),
        }
        tokio::time::sleep(check).await;
    }
}
