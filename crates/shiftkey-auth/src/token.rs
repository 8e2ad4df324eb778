//! The token model: secrets that cannot leak by formatting, and the metadata refresh needs.

use std::fmt;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};

/// A secret string (access token, refresh token, password, client secret).
///
/// `Debug` prints `Secret([REDACTED])`; there is no `Display`. Read it with [`Secret::expose`] at
/// the one place that must send it. The memory is zeroized on drop (through `secrecy`).
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The secret value, for the one place that must send it.
    #[must_use]
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        // Not constant-time: used only to compare tokens we hold, never to check a presented secret.
        self.expose() == other.expose()
    }
}

/// Serialised as the plain string: for the one place that must write it (the store's encrypted
/// payload, built in a zeroized buffer). Nothing else serialises a `Secret`.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose())
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

/// The shortest lifetime a token is given: a server answering `expires_in: 0.2` still gets one
/// second, so a schedule never divides by zero.
pub const MIN_LIFETIME: Duration = Duration::from_secs(1);

/// The longest lifetime a token is given (one year): a server answering `expires_in` of 2^63
/// seconds gets a year, so no instant ever overflows.
pub const MAX_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// `lifetime` clamped to [[`MIN_LIFETIME`], [`MAX_LIFETIME`]]: what every token is scheduled by.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use shiftkey_auth::{MAX_LIFETIME, clamp_lifetime};
///
/// assert_eq!(clamp_lifetime(Duration::from_secs(3599)), Duration::from_secs(3599));
/// assert_eq!(clamp_lifetime(Duration::MAX), MAX_LIFETIME);
/// assert_eq!(clamp_lifetime(Duration::ZERO), Duration::from_secs(1));
/// ```
#[must_use]
pub fn clamp_lifetime(lifetime: Duration) -> Duration {
    lifetime.clamp(MIN_LIFETIME, MAX_LIFETIME)
}

/// `at + after`, saturating at a year past `at` instead of overflowing (never a panic).
pub(crate) fn instant_after(at: tokio::time::Instant, after: Duration) -> tokio::time::Instant {
    at.checked_add(after.min(MAX_LIFETIME))
        .or_else(|| at.checked_add(MIN_LIFETIME))
        .unwrap_or(at)
}

/// Where a token's lifetime came from, in the order of design §3.1 (`docs/design.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LifetimeSource {
    /// The token response's `expires_in`.
    ExpiresIn,
    /// A JWT access token's `exp - iat` (decoded without verification, for scheduling only).
    JwtClaims,
    /// The configured default: the server said nothing.
    Default,
    /// A limit learned from premature deaths or pinned in config, lower than what the server claimed.
    Learned,
}

/// What an [`AuthStrategy`](crate::AuthStrategy) hands back: a token and what refresh needs to know.
///
/// `generation` is assigned by the [`TokenManager`](crate::TokenManager) (bumped on every new
/// token); strategies leave it at 0.
#[derive(Clone, PartialEq)]
pub struct TokenSet {
    /// The access token (or session cookie value) sent with requests.
    pub access_token: Secret,
    /// The refresh token, when the grant gave one. Rotated tokens replace it.
    pub refresh_token: Option<Secret>,
    /// `Bearer` for OAuth; strategy-specific otherwise (for example `Cookie`).
    pub token_type: String,
    /// Monotonic instant at which the request that produced this token was sent. Scheduling counts
    /// from here, so network latency shortens the schedule rather than lengthening it.
    pub issued_at: tokio::time::Instant,
    /// Wall-clock time of `issued_at`, for display and persistence.
    pub issued_at_wall: SystemTime,
    /// How long the server says the token lives.
    pub lifetime: Duration,
    /// Where `lifetime` came from.
    pub lifetime_source: LifetimeSource,
    /// Granted scope, when the server said.
    pub scope: Option<String>,
    /// Bumped by the manager on every new token; requests remember it to report rejections.
    pub generation: u64,
    /// The token response's `Date` header, when it had one: the manager estimates clock skew from it.
    pub server_date: Option<SystemTime>,
}

impl TokenSet {
    /// A token with the given access value and lifetime (clamped by [`clamp_lifetime`]), issued
    /// at `issued_at`.
    pub fn new(
        access_token: impl Into<Secret>,
        lifetime: Duration,
        issued_at: tokio::time::Instant,
        issued_at_wall: SystemTime,
    ) -> Self {
        Self {
            access_token: access_token.into(),
            refresh_token: None,
            token_type: "Bearer".to_owned(),
            issued_at,
            issued_at_wall,
            lifetime: clamp_lifetime(lifetime),
            lifetime_source: LifetimeSource::ExpiresIn,
            scope: None,
            generation: 0,
            server_date: None,
        }
    }

    /// Monotonic instant at which the server will consider the token expired.
    #[must_use]
    pub fn expires_at(&self) -> tokio::time::Instant {
        instant_after(self.issued_at, self.lifetime)
    }

    /// Age of the token at `now`.
    #[must_use]
    pub fn age(&self, now: tokio::time::Instant) -> Duration {
        now.saturating_duration_since(self.issued_at)
    }
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &self.access_token)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("token_type", &self.token_type)
            .field("lifetime", &self.lifetime)
            .field("lifetime_source", &self.lifetime_source)
            .field("scope", &self.scope)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let mut t = TokenSet::new(
            "access-abc",
            Duration::from_secs(60),
            tokio::time::Instant::now(),
            SystemTime::UNIX_EPOCH,
        );
        t.refresh_token = Some(Secret::new("refresh-xyz"));
        let shown = format!("{t:?} {:?}", t.access_token);
        assert!(!shown.contains("access-abc"), "{shown}");
        assert!(!shown.contains("refresh-xyz"), "{shown}");
        assert!(shown.contains("REDACTED"));
    }
}
