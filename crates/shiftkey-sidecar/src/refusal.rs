//! [`Refusals`]: what a listener or a proxy turned away, counted per kind and logged at most once
//! a minute per kind, so a client that is refused in a loop cannot flood the log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// At most one log line per kind of refusal in this long; the next line says how many were not
/// logged meanwhile.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// Why a request or a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// A local user the listener does not serve (by the uid the kernel reports).
    User,
    /// A `Host` name that is not ours (DNS rebinding).
    Host,
    /// A browser's request (`Origin`, `Sec-Fetch-*`).
    Browser,
    /// A method that is not forwarded (`TRACE`, `TRACK`, `CONNECT`, unknown ones).
    Method,
    /// A path that could leave the upstream's base path, or an absolute URL.
    Path,
    /// A local Teamcenter login with a wrong user or password.
    Login,
    /// A local Teamcenter login while its source is backing off or locked out.
    LockedOut,
    /// A Teamcenter call without a live local session.
    NoSession,
    /// A request body that stopped arriving or took too long.
    SlowBody,
    /// A connection over the limit that found no slot in time.
    Busy,
}

impl Refusal {
    /// Every kind, in a fixed order (for exporting zeros before the first event).
    pub const ALL: [Refusal; 10] = [
        Refusal::User,
        Refusal::Host,
        Refusal::Browser,
        Refusal::Method,
        Refusal::Path,
        Refusal::Login,
        Refusal::LockedOut,
        Refusal::NoSession,
        Refusal::SlowBody,
        Refusal::Busy,
    ];

    /// Its name on `/metrics` and in logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::User => "user",
            Refusal::Host => "host",
            Refusal::Browser => "browser",
            Refusal::Method => "method",
            Refusal::Path => "path",
            Refusal::Login => "login",
            Refusal::LockedOut => "locked_out",
            Refusal::NoSession => "no_session",
            Refusal::SlowBody => "slow_body",
            Refusal::Busy => "busy",
        }
    }

    fn index(self) -> usize {
        Refusal::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

#[derive(Debug, Default)]
struct Inner {
    counts: [AtomicU64; Refusal::ALL.len()],
    /// Per kind: when it was last logged, and how many came since.
    logged: std::sync::Mutex<[(Option<Instant>, u64); Refusal::ALL.len()]>,
}

/// Counts of refusals by kind, shared by a listener and what it serves; cheap to clone.
///
/// # Example
/// ```
/// use shiftkey_sidecar::{Refusal, Refusals};
///
/// let refusals = Refusals::default();
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
/// # rt.block_on(async {
/// refusals.refuse(Refusal::Method, "proxy `mes`", "TRACE is not forwarded");
/// # });
/// assert_eq!(refusals.counts()["method"], 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Refusals(Arc<Inner>);

impl Refusals {
    /// Counts one refusal of `kind` by `who` (a listener or proxy, for the log) and logs it at
    /// WARN unless this kind was logged less than [`LOG_EVERY`] ago. `detail` must hold no
    /// secret.
    pub fn refuse(&self, kind: Refusal, who: &str, detail: &str) {
        let i = kind.index();
        self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut logged = self
            .0
            .logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (last, since) = &mut logged[i];
        if last.is_some_and(|t| now.saturating_duration_since(t) < LOG_EVERY) {
            *since += 1;
            return;
        }
        let unlogged = std::mem::take(since);
        *last = Some(now);
        drop(logged);
        tracing::warn!(
            refused = kind.as_str(),
            who,
            unlogged,
            "refused: {detail} (at most one such line a minute; `unlogged` counts the others)"
        );
    }

    /// Refusals since start, by kind name; every kind is present.
    #[must_use]
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        Refusal::ALL
            .iter()
            .map(|k| (k.as_str(), self.0.counts[k.index()].load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_refusal_is_counted_and_at_most_one_a_minute_per_kind_is_logged() {
        let r = Refusals::default();
        for _ in 0..1000 {
            r.refuse(Refusal::User, "proxy `a`", "uid 65534");
        }
        r.refuse(Refusal::Host, "proxy `a`", "evil.example");
        let lines = || {
            r.0.logged
                .lock()
                .unwrap()
                .iter()
                .map(|(_, since)| *since)
                .collect::<Vec<_>>()
        };
        // One line each for `user` and `host`; 999 `user` ones wait to be summed up.
        assert_eq!(lines()[Refusal::User.index()], 999);
        assert_eq!(lines()[Refusal::Host.index()], 0);
        assert_eq!(r.counts()["user"], 1000);
        assert_eq!(r.counts()["host"], 1);
        assert_eq!(r.counts()["busy"], 0);
        tokio::time::advance(LOG_EVERY).await;
        r.refuse(Refusal::User, "proxy `a`", "uid 65534");
        // Logged again, carrying the 999 others.
        assert_eq!(lines()[Refusal::User.index()], 0);
        assert_eq!(r.counts()["user"], 1001);
    }
}
