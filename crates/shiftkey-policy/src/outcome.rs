//! What happened to one call, described without any HTTP client type.

use std::time::Duration;

/// The outcome of one attempt, filled in by the caller from whatever client it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The call succeeded (2xx, or the protocol's success).
    Success,
    /// The server answered with this status (not 429, not an auth rejection).
    Status(u16),
    /// 429 Too Many Requests (or a protocol's equivalent), with the parsed `Retry-After`.
    RateLimited {
        /// How long the server asked us to wait.
        retry_after: Option<Duration>,
    },
    /// The connection could not be made (refused, reset before sending, DNS).
    Connect,
    /// The call timed out.
    Timeout,
    /// The server rejected our credentials (after the auth layer's one refresh-and-retry).
    AuthRejected,
}

/// Outcome classes counted by the [`ErrorRateMonitor`](crate::ErrorRateMonitor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Class {
    /// A successful call.
    Success,
    /// An auth rejection (401).
    Unauthorized,
    /// A 5xx, connect error or timeout.
    ServerFailure,
    /// Rate limited.
    RateLimited,
    /// Any other failure (a 4xx).
    ClientError,
}

impl Outcome {
    /// Whether this outcome counts as a failure for a circuit breaker of server failures.
    #[must_use]
    pub fn is_server_failure(&self) -> bool {
        matches!(
            self,
            Self::Status(500..=599) | Self::Connect | Self::Timeout
        )
    }

    /// The monitor class.
    #[must_use]
    pub fn class(&self) -> Class {
        match self {
            Self::Success => Class::Success,
            Self::AuthRejected | Self::Status(401) => Class::Unauthorized,
            Self::Status(s) if (200..400).contains(s) => Class::Success,
            Self::Status(500..=599) | Self::Connect | Self::Timeout => Class::ServerFailure,
            Self::RateLimited { .. } | Self::Status(429) => Class::RateLimited,
            Self::Status(_) => Class::ClientError,
        }
    }
}
