//! Errors: what went wrong, and whether trying again can help.

use std::time::Duration;

/// Why getting a token failed, split by what the caller should do about it (design §3.1,
/// `docs/design.md`).
///
/// - [`AuthError::Transient`]: the network, a 5xx, a 429 or `temporarily_unavailable`: back off
///   and retry; the manager keeps serving the old token until its hard margin.
/// - [`AuthError::Permanent`]: the server refused the credentials (`invalid_client`,
///   `invalid_grant`, a bad password, ...): retrying with the same credentials cannot help, so the
///   manager stops and alerts.
/// - [`AuthError::Rejected`]: a token the server had just issued was refused again: the request
///   gives up and the auth circuit counts it.
///
/// No variant ever carries a secret: details are server error codes and descriptions, status
/// codes and URLs without query strings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Worth retrying after a backoff.
    #[error("transient failure ({kind}): {detail}")]
    Transient {
        /// What kind of transient failure.
        kind: TransientKind,
        /// Human-readable detail (never a secret).
        detail: String,
        /// How long the server asked us to wait (`Retry-After`), when it did.
        retry_after: Option<Duration>,
    },
    /// Retrying with the same credentials cannot help.
    #[error("permanent failure ({kind}): {detail}")]
    Permanent {
        /// What the server refused.
        kind: PermanentKind,
        /// Human-readable detail (never a secret).
        detail: String,
    },
    /// A fresh token was rejected again; the request gives up.
    #[error("token generation {generation} was rejected right after it was issued: {detail}")]
    Rejected {
        /// The generation of the rejected token.
        generation: u64,
        /// Human-readable detail.
        detail: String,
    },
    /// The token manager was shut down.
    #[error("the token manager has shut down")]
    Shutdown,
    /// The token refresher stopped without being asked to (a panic in a strategy or a store):
    /// nothing will refresh this credential again until the process restarts.
    #[error("the token refresher stopped unexpectedly (see the log); restart the process")]
    TaskDied,
}

impl AuthError {
    /// A transient error of `kind`.
    pub fn transient(kind: TransientKind, detail: impl Into<String>) -> Self {
        Self::Transient {
            kind,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// A permanent error of `kind`.
    pub fn permanent(kind: PermanentKind, detail: impl Into<String>) -> Self {
        Self::Permanent {
            kind,
            detail: detail.into(),
        }
    }

    /// Whether backing off and trying again can help.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// Whether this error stops refreshing until an operator acts.
    #[must_use]
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent { .. })
    }

    /// The server's `Retry-After`, when it sent one.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Kinds of [`AuthError::Transient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransientKind {
    /// Connection refused, reset, DNS failure and the like.
    #[error("network")]
    Network,
    /// The request, or the wait for a refresh, took too long.
    #[error("timeout")]
    Timeout,
    /// The server answered with a 5xx status.
    #[error("server error {0}")]
    ServerError(u16),
    /// The server answered 429 Too Many Requests.
    #[error("rate limited")]
    RateLimited,
    /// OAuth `temporarily_unavailable` or `server_error`.
    #[error("temporarily unavailable")]
    TemporarilyUnavailable,
    /// The server's answer could not be understood (bad JSON, missing token field).
    #[error("invalid response")]
    InvalidResponse,
    /// The token store could not be read, written or locked in time.
    #[error("storage")]
    Storage,
}

/// Kinds of [`AuthError::Permanent`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PermanentKind {
    /// OAuth `invalid_client`: wrong client id or secret, or a bad assertion.
    #[error("invalid_client")]
    InvalidClient,
    /// OAuth `invalid_grant`: the refresh token is expired, revoked or was already used.
    #[error("invalid_grant")]
    InvalidGrant,
    /// OAuth `unauthorized_client`: the client may not use this grant.
    #[error("unauthorized_client")]
    UnauthorizedClient,
    /// OAuth `invalid_scope`.
    #[error("invalid_scope")]
    InvalidScope,
    /// A login endpoint refused the user name, password or API key.
    #[error("bad credentials")]
    BadCredentials,
    /// There is nothing to refresh with (no refresh token and no fallback strategy).
    #[error("no refresh token")]
    NoRefreshToken,
    /// The strategy is misconfigured (a bad key, a bad URL).
    #[error("configuration")]
    Configuration,
    /// Another OAuth error code or 4xx status the server will not change its mind about.
    #[error("{0}")]
    Other(String),
}

/// A configuration value that cannot work, named by its field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid configuration `{field}`: {reason}")]
pub struct ConfigError {
    /// The offending field, as named in the config.
    pub field: &'static str,
    /// Why it cannot work.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// An error and its causes on one line, each said once: a cause whose text the line already
/// holds is left out (some errors quote their cause). For logs and messages that would
/// otherwise show only the outermost level.
///
/// # Example
/// ```
/// let e = std::io::Error::other(std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"));
/// assert_eq!(shiftkey_auth::causes(&e), "no such file");
/// ```
#[must_use]
pub fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
