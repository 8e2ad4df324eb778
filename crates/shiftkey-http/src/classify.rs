//! Deciding whether a response means "the token is dead".

use async_trait::async_trait;
use http::StatusCode;

/// What a response says about the token it carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// The token was accepted (whatever else the status says).
    Accepted,
    /// The token is dead or unknown: refresh and retry once.
    Refresh,
    /// The token is alive but not allowed to do this (`insufficient_scope`, 403): refreshing will
    /// not help; the response goes back to the caller as it is.
    Forbidden,
    /// The token was accepted and the server answered the request deliberately, whatever the
    /// status says (a Teamcenter exception about the request itself under HTTP 500: an
    /// operation the server does not have, a body it cannot parse). Asking again gets the same
    /// answer: the response goes back at once, not retried, and it does not count against the
    /// server's circuit.
    Answered,
}

/// Reads a response and says what it means for the token.
///
/// A classifier that must read the body (Teamcenter reports a dead session inside an HTTP 200
/// body) consumes the response and hands back an equivalent one, rebuilt from the bytes.
#[async_trait]
pub trait Classifier: Send + Sync + std::fmt::Debug + 'static {
    /// Classifies `response`, returning it (or a rebuilt copy) with the verdict.
    async fn classify(
        &self,
        response: reqwest::Response,
    ) -> Result<(Verdict, reqwest::Response), reqwest::Error>;
}

/// The generic HTTP classifier (RFC 6750 §3): `401` with `WWW-Authenticate: Bearer
/// error="invalid_token"` or no error → refresh; `401` with another error (`invalid_request`) or
/// any `403` → forbidden; everything else is accepted. Reads headers only.
#[derive(Debug, Clone, Copy, Default)]
pub struct BearerClassifier;

impl BearerClassifier {
    /// The verdict for a status and its `WWW-Authenticate` headers.
    #[must_use]
    pub fn verdict(status: StatusCode, headers: &http::HeaderMap) -> Verdict {
        match status {
            StatusCode::UNAUTHORIZED => {
                let errors: Vec<String> = headers
                    .get_all(http::header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .filter_map(bearer_error)
                    .collect();
                if errors.is_empty() || errors.iter().any(|e| e == "invalid_token") {
                    Verdict::Refresh
                } else {
                    Verdict::Forbidden
                }
            }
            StatusCode::FORBIDDEN => Verdict::Forbidden,
            _ => Verdict::Accepted,
        }
    }
}

/// The `error` parameter of a `Bearer` challenge, if any.
fn bearer_error(challenge: &str) -> Option<String> {
    let rest = challenge
        .trim()
        .strip_prefix("Bearer")
        .or_else(|| challenge.trim().strip_prefix("bearer"))?;
    rest.split(',').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("error")).then(|| v.trim().trim_matches('"').to_owned())
    })
}

#[async_trait]
impl Classifier for BearerClassifier {
    async fn classify(
        &self,
        response: reqwest::Response,
    ) -> Result<(Verdict, reqwest::Response), reqwest::Error> {
        Ok((
            Self::verdict(response.status(), response.headers()),
            response,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6750_challenges() {
        let check = |status: u16, challenge: Option<&str>, want: Verdict| {
            let mut h = http::HeaderMap::new();
            if let Some(c) = challenge {
                h.insert(http::header::WWW_AUTHENTICATE, c.parse().unwrap());
            }
            assert_eq!(
                BearerClassifier::verdict(StatusCode::from_u16(status).unwrap(), &h),
                want,
                "{status} {challenge:?}"
            );
        };
        check(401, None, Verdict::Refresh);
        check(401, Some(r#"Bearer realm="api""#), Verdict::Refresh);
        check(
            401,
            Some(r#"Bearer realm="api", error="invalid_token", error_description="expired""#),
            Verdict::Refresh,
        );
        check(
            401,
            Some(r#"Bearer error="invalid_request""#),
            Verdict::Forbidden,
        );
        check(
            403,
            Some(r#"Bearer error="insufficient_scope", scope="write""#),
            Verdict::Forbidden,
        );
        check(403, None, Verdict::Forbidden);
        check(200, None, Verdict::Accepted);
        check(500, None, Verdict::Accepted);
        check(429, None, Verdict::Accepted);
    }
}
