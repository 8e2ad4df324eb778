//! Everything a Teamcenter call can fail with, typed.

use shiftkey_http::HttpError;

/// One `{code, level, message}` entry of Teamcenter's errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorValue {
    /// Teamcenter's error code.
    pub code: i64,
    /// 0 none, 1 information, 2 warning, 3 error, 4 user error.
    pub level: i64,
    /// The message.
    pub message: String,
}

/// Where a Security Services (SSO) login service was announced by an exception.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SsoHint {
    /// `ssoServerURL`, e.g. `http://host:8086/tcssols`.
    pub server_url: String,
    /// `ssoAppID`, e.g. `Teamcenter`.
    pub app_id: String,
}

/// A Teamcenter call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TcError {
    /// `InvalidCredentialsException`: the user, password or group was refused. Permanent: never
    /// retried with the same credentials.
    #[error("Teamcenter refused the credentials (code {code}: {message}){}", sso_suffix(.sso))]
    InvalidCredentials {
        /// 515143 / 515144 bad user or password, 515142 bad group, 1007 no user id.
        code: i64,
        /// Teamcenter's message.
        message: String,
        /// A Security Services hint, when the exception carried one.
        sso: Option<SsoHint>,
    },
    /// `InvalidUserException` still came back after the one re-login the HTTP layer allows.
    #[error("Teamcenter rejected the session again right after a new login{}", sso_suffix(.sso))]
    SessionRejected {
        /// A Security Services hint, when the exception carried one.
        sso: Option<SsoHint>,
    },
    /// `InternalServerException` (messages in Teamcenter's order, top-level last).
    #[error("Teamcenter internal error: {}", .messages.last().map_or("", |m| m.message.as_str()))]
    InternalServer {
        /// The messages.
        messages: Vec<ErrorValue>,
    },
    /// `ServiceException` or another exception with a code.
    #[error("Teamcenter {qname}: code {code}: {message}")]
    Service {
        /// The exception's `.QName`.
        qname: String,
        /// Its code.
        code: i64,
        /// Its message.
        message: String,
    },
    /// The answer was not what the operation returns (XML where JSON was expected, a missing
    /// field, a property that does not parse). Names the object and property when it can.
    #[error("unexpected answer from {operation}: {detail}")]
    Unexpected {
        /// The operation called.
        operation: String,
        /// What was wrong, where.
        detail: String,
    },
    /// The site lacks what the configuration names (a saved query, an entry, a type, a property,
    /// a revision rule), or refused a request for a reason only its administrator can fix. Says
    /// what is missing and what exists.
    #[error("the Teamcenter site does not match the configuration: {detail}")]
    Site {
        /// What is missing, and what the site has instead.
        detail: String,
    },
    /// The session changed again and again while a window was open (each change kills the
    /// window, and the traversal starts over from the open).
    #[error(
        "the Teamcenter session changed {attempts} times while reading a bill of process; giving up for this cycle"
    )]
    WindowLost {
        /// Traversals started.
        attempts: u32,
    },
    /// The server (or a gateway in front of it) answered 429 or 5xx without a Teamcenter
    /// exception, after the HTTP layer's retries: busy or down for now.
    #[error("Teamcenter is unavailable for now: {operation} answered HTTP {status}")]
    Unavailable {
        /// The operation called.
        operation: String,
        /// The HTTP status.
        status: u16,
        /// The server's `Retry-After`, in seconds, when it sent one.
        retry_after: Option<std::time::Duration>,
    },
    /// The HTTP layer gave up (no session/token, circuit open, transport after retries).
    #[error("{}", describe_http(.0))]
    Http(#[from] reqwest_middleware::Error),
}

/// The HTTP layer's error, saying plainly when it was a deadline or a refused connection
/// (reqwest's own text names only the URL).
fn describe_http(e: &reqwest_middleware::Error) -> String {
    match e {
        reqwest_middleware::Error::Reqwest(r) => match shiftkey_http::Transport::of(r) {
            Some(t @ shiftkey_http::Transport::Timeout) => format!("timed out: {t}"),
            Some(t) if r.is_connect() => format!("cannot connect: {t}"),
            Some(t) => t.to_string(),
            None => r.to_string(),
        },
        other => other.to_string(),
    }
}

fn sso_suffix(sso: &Option<SsoHint>) -> String {
    match sso {
        Some(h) => format!(
            "; this server uses Security Services at {} (app {}): log in through it",
            h.server_url, h.app_id
        ),
        None => String::new(),
    }
}

impl TcError {
    /// Whether a call got no answer before its deadline.
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Http(reqwest_middleware::Error::Reqwest(r)) if r.is_timeout())
    }

    /// Whether the request went out and its answer was lost (a deadline, a connection cut after
    /// sending, a cut body): the server may have acted without our knowing the result. A refused
    /// connection, an answered error or an open circuit is not that.
    #[must_use]
    pub fn answer_lost(&self) -> bool {
        matches!(self, Self::Http(reqwest_middleware::Error::Reqwest(r)) if !r.is_connect())
    }

    /// Whether the server could not be connected to.
    #[must_use]
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Http(reqwest_middleware::Error::Reqwest(r)) if r.is_connect())
    }

    /// The middleware's own error, when the HTTP layer gave up.
    #[must_use]
    pub fn http_error(&self) -> Option<&HttpError> {
        match self {
            Self::Http(e) => HttpError::from_middleware(e),
            _ => None,
        }
    }

    /// Whether trying again cannot help until someone changes something: the credentials were
    /// refused, by Teamcenter or by the token's issuer.
    ///
    /// # Example
    /// ```
    /// use shiftkey_teamcenter::TcError;
    /// let refused = TcError::InvalidCredentials { code: 515143, message: "bad password".into(), sso: None };
    /// assert!(refused.is_permanent());
    /// assert!(refused.transient().is_none());
    /// ```
    #[must_use]
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::InvalidCredentials { .. } => true,
            _ => matches!(self.http_error(), Some(HttpError::Token(a)) if a.is_permanent()),
        }
    }

    /// How the failure is transient, if it is: what a caller that resumes the work later waits
    /// for. `None` for a failure that the same call would meet again (a refusal, a bad answer).
    ///
    /// # Example
    /// ```
    /// use shiftkey_teamcenter::{TcError, Transient};
    /// let busy = TcError::Unavailable { operation: "Core-2006-03-Session/login".into(), status: 503, retry_after: None };
    /// assert_eq!(busy.transient(), Some(Transient::Unavailable { retry_after: None }));
    /// ```
    #[must_use]
    pub fn transient(&self) -> Option<Transient> {
        match self {
            Self::Unavailable { retry_after, .. } => Some(Transient::Unavailable {
                retry_after: *retry_after,
            }),
            Self::Http(m) => match HttpError::from_middleware(m) {
                Some(HttpError::ServerCircuitOpen { retry_in }) => Some(Transient::CircuitOpen {
                    retry_in: *retry_in,
                }),
                Some(HttpError::Token(a)) if !a.is_permanent() => Some(Transient::NoToken),
                Some(_) => None,
                // A transport failure: no connection, a timeout, a dropped answer.
                None => Some(Transient::Transport),
            },
            _ => None,
        }
    }
}

/// How a Teamcenter failure is transient ([`TcError::transient`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transient {
    /// The server answered that it is unavailable (503), with when to come back if it said.
    Unavailable {
        /// Its `Retry-After`.
        retry_after: Option<std::time::Duration>,
    },
    /// Too many failures opened the server's circuit: nothing is sent before it half-opens.
    CircuitOpen {
        /// When it half-opens.
        retry_in: std::time::Duration,
    },
    /// No token for now (the issuer failed, not refused).
    NoToken,
    /// No answer: no connection, a timeout, a dropped answer.
    Transport,
}
