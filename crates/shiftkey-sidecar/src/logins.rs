//! The local accounts a Teamcenter proxy's scripts log in with, and the backoff that makes
//! guessing one hopeless: after a failure a source waits a second before its next try is even
//! checked, and after [`LOCKOUT_AFTER`] failures in a row it is locked out for [`LOCKOUT`].
//! A source is the peer's uid and the account name it tried.

use std::collections::HashMap;
use std::time::Duration;

use shiftkey_auth::Secret;
use tokio::time::Instant;

/// After a failed local login, the next try from the same source is refused unchecked for this.
pub const LOGIN_PAUSE: Duration = Duration::from_secs(1);

/// Failed local logins in a row after which a source is locked out.
pub const LOCKOUT_AFTER: u32 = 10;

/// How long a locked-out source stays locked out.
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);

/// Sources remembered at once; the oldest is forgotten first.
const MAX_SOURCES: usize = 4096;

/// A local account a script may log in to a Teamcenter proxy with: its own user name and secret,
/// never the service's Teamcenter password.
#[derive(Debug, Clone)]
pub struct LocalLogin {
    /// The user name the script sends.
    pub user: String,
    /// Its secret (compared in constant time, never logged).
    pub password: Secret,
}

/// Where a login came from.
pub(crate) type Source = (Option<u32>, String);

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// What a login attempt may do now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Check it.
    Check,
    /// Refuse it unchecked: within the pause after a failure.
    Pause,
    /// Refuse it unchecked: locked out.
    Locked,
}

/// The accounts and the failures per source.
#[derive(Debug)]
pub(crate) struct Logins {
    accounts: Vec<LocalLogin>,
    failures: std::sync::Mutex<HashMap<Source, Failures>>,
}

impl Logins {
    pub(crate) fn new(accounts: Vec<LocalLogin>) -> Self {
        Self {
            accounts,
            failures: std::sync::Mutex::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<Source, Failures>> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a try from `source` is checked now.
    pub(crate) fn admit(&self, source: &Source) -> Admission {
        let now = Instant::now();
        let mut failures = self.failures();
        let Some(f) = failures.get(source).copied() else {
            return Admission::Check;
        };
        let since = now.saturating_duration_since(f.last);
        if f.count >= LOCKOUT_AFTER {
            if since < LOCKOUT {
                return Admission::Locked;
            }
            failures.remove(source);
            return Admission::Check;
        }
        if since < LOGIN_PAUSE {
            Admission::Pause
        } else {
            Admission::Check
        }
    }

    /// Whether `user` and `password` name an account (the name without case, the secret in
    /// constant time; an unknown name costs the same comparison).
    pub(crate) fn check(&self, user: &str, password: &str) -> bool {
        let account = self
            .accounts
            .iter()
            .find(|a| a.user.eq_ignore_ascii_case(user));
        let expected = account.map_or(&[0u8; 32][..], |a| a.password.expose().as_bytes());
        let same: bool = subtle::ConstantTimeEq::ct_eq(password.as_bytes(), expected).into();
        account.is_some() && same
    }

    /// Records a failure; `true` when it locks the source out (log that once).
    pub(crate) fn failed(&self, source: Source) -> bool {
        let now = Instant::now();
        let mut failures = self.failures();
        if failures.len() >= MAX_SOURCES && !failures.contains_key(&source) {
            let oldest = failures
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                failures.remove(&k);
            }
        }
        let f = failures.entry(source).or_insert(Failures {
            count: 0,
            last: now,
        });
        f.count += 1;
        f.last = now;
        f.count == LOCKOUT_AFTER
    }

    /// A success forgets the source's failures.
    pub(crate) fn succeeded(&self, source: &Source) {
        self.failures().remove(source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logins() -> Logins {
        Logins::new(vec![LocalLogin {
            user: "label_printer".to_owned(),
            password: "a-local-secret-of-its-own".into(),
        }])
    }

    #[test]
    fn only_a_configured_account_and_its_own_secret_log_in() {
        let l = logins();
        assert!(l.check("label_printer", "a-local-secret-of-its-own"));
        assert!(l.check("LABEL_PRINTER", "a-local-secret-of-its-own"));
        assert!(!l.check("label_printer", "a-local-secret-of-its-owN"));
        assert!(!l.check("mfg_sync", "a-local-secret-of-its-own"));
        assert!(!l.check("nobody", ""));
        assert!(!Logins::new(Vec::new()).check("", ""));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_pause_a_source_then_lock_it_out_for_a_quarter_of_an_hour() {
        let l = logins();
        let source: Source = (Some(1001), "label_printer".to_owned());
        let other: Source = (Some(1002), "label_printer".to_owned());
        for i in 1..LOCKOUT_AFTER {
            assert_eq!(l.admit(&source), Admission::Check, "try {i}");
            assert!(!l.failed(source.clone()));
            // Within the pause, a try is not even checked.
            assert_eq!(l.admit(&source), Admission::Pause);
            tokio::time::advance(LOGIN_PAUSE).await;
        }
        assert_eq!(l.admit(&source), Admission::Check);
        assert!(l.failed(source.clone()), "the tenth failure locks out");
        tokio::time::advance(LOCKOUT - Duration::from_secs(1)).await;
        assert_eq!(l.admit(&source), Admission::Locked);
        // Another source is not held back.
        assert_eq!(l.admit(&other), Admission::Check);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(l.admit(&source), Admission::Check);
        // A success forgets the failures.
        assert!(!l.failed(source.clone()));
        l.succeeded(&source);
        assert_eq!(l.admit(&source), Admission::Check);
    }
}
