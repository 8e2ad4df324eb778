//! What went wrong on the way to a server, told apart. reqwest says "error sending request" for
//! a name that does not resolve, a refused connection, a failed TLS handshake and a deadline
//! alike; the cause is in its chain of sources, and [`Transport::of`] reads it there.

use std::error::Error as StdError;
use std::io::ErrorKind;

/// Why a request got no answer from the server.
///
/// # Example
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use shiftkey_auth::Transport;
/// // Nothing listens on port 9 of loopback.
/// let e = reqwest::get("http://127.0.0.1:9/").await.unwrap_err();
/// assert_eq!(Transport::of(&e), Some(Transport::Refused));
/// println!("{}", Transport::of(&e).unwrap()); // the connection was refused: ...
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// The host name does not resolve (the resolver's own words).
    Dns(String),
    /// Nothing accepted the connection: a wrong port, or the service is down.
    Refused,
    /// TLS failed: the certificate, or a server that does not speak TLS there (the TLS
    /// library's words).
    Tls(String),
    /// No answer before the deadline.
    Timeout,
    /// The connection was cut (reset, closed early).
    Cut(String),
    /// Anything else on the way, in its own words.
    Other(String),
}

impl Transport {
    /// What `e` says went wrong on the way (reading the answer included: a connection cut
    /// mid-body), or `None` when the server answered and the failure is not the connection's (a
    /// body that did not decode, a status turned into an error).
    #[must_use]
    pub fn of(e: &reqwest::Error) -> Option<Self> {
        if e.is_timeout() {
            return Some(Self::Timeout);
        }
        // The deepest source says it best ("Connection refused (os error 111)", "invalid peer
        // certificate: UnknownIssuer"); the levels above say what it was in (`dns error`).
        let mut chain: Vec<&(dyn StdError + 'static)> = Vec::new();
        let mut cause = e.source();
        while let Some(c) = cause {
            chain.push(c);
            cause = c.source();
        }
        let answered = e.is_decode() || e.is_status() || e.is_builder() || e.is_redirect();
        // reqwest's own text names the URL (its query may hold a secret): never used here.
        let deepest = chain
            .last()
            .map_or_else(|| "the request failed".to_owned(), ToString::to_string);
        let says = |words: &[&str]| {
            chain.iter().any(|c| {
                let text = c.to_string().to_ascii_lowercase();
                words.iter().any(|w| text.contains(w))
            })
        };
        for c in &chain {
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    ErrorKind::ConnectionRefused => return Some(Self::Refused),
                    ErrorKind::TimedOut => return Some(Self::Timeout),
                    ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof
                        if !says(&["certificate", "tls", "handshake"]) =>
                    {
                        return Some(Self::Cut(deepest));
                    }
                    _ => {}
                }
            }
        }
        // hyper's words for a connection that ended before its answer did.
        if says(&[
            "connection closed",
            "connection reset",
            "incomplete message",
        ]) {
            return Some(Self::Cut(deepest));
        }
        if answered {
            return None;
        }
        if says(&[
            "dns error",
            "failed to lookup address",
            "name or service not known",
        ]) {
            return Some(Self::Dns(deepest));
        }
        if says(&["certificate", "tls", "handshake", "corrupt message"]) {
            return Some(Self::Tls(deepest));
        }
        Some(Self::Other(deepest))
    }
}

impl Transport {
    /// `e` in words: what went wrong on the way, or reqwest's own text without the URL (which
    /// may carry a query secret) when the server answered.
    #[must_use]
    pub fn describe(e: reqwest::Error) -> String {
        let e = e.without_url();
        match Self::of(&e) {
            Some(t) => t.to_string(),
            None => e.to_string(),
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dns(d) => write!(f, "the host name does not resolve ({d})"),
            Self::Refused => f.write_str(
                "the connection was refused: nothing listens there (a wrong port, or the service is down)",
            ),
            Self::Tls(d) => write!(
                f,
                "TLS failed: {d} (the server's certificate, or a server that does not speak TLS there)"
            ),
            Self::Timeout => f.write_str("no answer before the deadline"),
            Self::Cut(d) => write!(f, "the connection was cut ({d})"),
            Self::Other(d) => f.write_str(d),
        }
    }
}
