//! The middleware's own errors, carried inside `reqwest_middleware::Error::Middleware`.

use std::time::Duration;

use shiftkey_auth::AuthError;

/// Why the middleware gave up on a request without a usable response.
///
/// Get it back from a `reqwest_middleware::Error` with [`HttpError::from_middleware`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// No token could be had (the token server is down, the credentials were refused...).
    #[error("no token: {0}")]
    Token(#[from] AuthError),
    /// A freshly refreshed token was rejected too: a credential problem, not an expiry.
    #[error(
        "the server rejected token generation {generation} right after a refresh; not refreshing again for this request"
    )]
    Rejected {
        /// The rejected generation.
        generation: u64,
    },
    /// The token was rejected and the request body cannot be sent twice (a stream).
    #[error(
        "the server rejected the token and the request body is not replayable, so it was not retried; the next request uses a fresh token"
    )]
    NotReplayable,
    /// The token was rejected on a request marked [`SessionBound`](crate::SessionBound): a
    /// refresh was started for the next request, but this one was not sent again, because what it
    /// names lived only in the dead session. The caller starts over (e.g. reopens a window).
    #[error(
        "the session (token generation {generation}) died under a request bound to it; a new one is on its way, start over"
    )]
    SessionLost {
        /// The generation that died.
        generation: u64,
    },
    /// The auth circuit is open: too many rejections in a row.
    #[error("auth circuit open after repeated rejections; next probe in {retry_in:?}")]
    AuthCircuitOpen {
        /// When a probe will be let through.
        retry_in: Duration,
    },
    /// The server circuit is open: too many server failures in a row.
    #[error("server circuit open after repeated failures; next probe in {retry_in:?}")]
    ServerCircuitOpen {
        /// When a probe will be let through.
        retry_in: Duration,
    },
}

impl HttpError {
    /// The `HttpError` inside a middleware error, if that is what it is.
    #[must_use]
    pub fn from_middleware(err: &reqwest_middleware::Error) -> Option<&HttpError> {
        match err {
            reqwest_middleware::Error::Middleware(e) => e.downcast_ref::<HttpError>(),
            reqwest_middleware::Error::Reqwest(_) => None,
        }
    }
}

/// The error a caller's streamed request body fails with when its own source stops (a local
/// client that stalls, a file that cannot be read): the caller's fault, not the server's. The
/// middleware finds it in a transport error's chain and neither counts it against the server's
/// circuit nor retries.
///
/// # Example
/// ```
/// use shiftkey_http::RequestBodyError;
/// let e = RequestBodyError::new(std::io::Error::other("the client stopped sending"));
/// assert_eq!(e.to_string(), "the request body failed at its source");
/// ```
#[derive(Debug, thiserror::Error)]
#[error("the request body failed at its source")]
pub struct RequestBodyError(#[source] Box<dyn std::error::Error + Send + Sync>);

impl RequestBodyError {
    /// Wraps the body source's own error.
    pub fn new(cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(cause))
    }

    /// Whether `e` or one of its causes is a [`RequestBodyError`].
    #[must_use]
    pub fn in_chain(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut cause = Some(e);
        while let Some(c) = cause {
            if c.is::<Self>() {
                return true;
            }
            cause = c.source();
        }
        false
    }
}
