//! What the HTTP strategies share: classifying token-endpoint answers, lifetimes, `Date` skew.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::{AuthError, LifetimeSource, PermanentKind, TransientKind};

/// An OAuth error body (RFC 6749 §5.2).
#[derive(Debug, Deserialize)]
struct OAuthErrorBody {
    error: String,
    error_description: Option<String>,
}

/// Reads `Retry-After` as delta seconds or an HTTP date (against the response's `Date` when present).
pub(crate) fn retry_after(headers: &HeaderMap, now_wall: SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let reference = server_date(headers).unwrap_or(now_wall);
    Some(at.duration_since(reference).unwrap_or(Duration::ZERO))
}

/// The response's `Date` header.
pub(crate) fn server_date(headers: &HeaderMap) -> Option<SystemTime> {
    let value = headers.get(http::header::DATE)?.to_str().ok()?;
    httpdate::parse_http_date(value).ok()
}

/// Turns an OAuth error code into the error taxonomy of DESIGN §3.1.
pub(crate) fn oauth_error(
    code: &str,
    description: Option<&str>,
    status: Option<StatusCode>,
) -> AuthError {
    let detail = match (description, status) {
        (Some(d), Some(s)) => format!("{code}: {d} (HTTP {})", s.as_u16()),
        (Some(d), None) => format!("{code}: {d}"),
        (None, Some(s)) => format!("{code} (HTTP {})", s.as_u16()),
        (None, None) => code.to_owned(),
    };
    let kind = match code {
        "invalid_client" => PermanentKind::InvalidClient,
        "invalid_grant" => PermanentKind::InvalidGrant,
        "unauthorized_client" => PermanentKind::UnauthorizedClient,
        "invalid_scope" => PermanentKind::InvalidScope,
        "temporarily_unavailable" | "server_error" | "slow_down" => {
            return AuthError::transient(TransientKind::TemporarilyUnavailable, detail);
        }
        other => PermanentKind::Other(other.to_owned()),
    };
    AuthError::permanent(kind, detail)
}

/// Classifies a non-success answer of a token or login endpoint.
///
/// 429 and 5xx are transient (with `Retry-After`); an OAuth error body decides otherwise; a bare
/// 401/403 means the credentials were refused; any other 4xx is permanent.
pub(crate) fn classify_failure(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now_wall: SystemTime,
) -> AuthError {
    let retry_after = retry_after(headers, now_wall);
    if status == StatusCode::TOO_MANY_REQUESTS {
        return AuthError::Transient {
            kind: TransientKind::RateLimited,
            detail: "HTTP 429 Too Many Requests".to_owned(),
            retry_after,
        };
    }
    if status.is_server_error() {
        let mut err = match serde_json::from_slice::<OAuthErrorBody>(body) {
            Ok(b) => oauth_error(&b.error, b.error_description.as_deref(), Some(status)),
            Err(_) => AuthError::transient(
                TransientKind::ServerError(status.as_u16()),
                format!("HTTP {status}"),
            ),
        };
        // A 5xx is never the credentials' fault, whatever the body says.
        if !err.is_transient() {
            err =
                AuthError::transient(TransientKind::ServerError(status.as_u16()), err.to_string());
        }
        if let AuthError::Transient {
            retry_after: ra, ..
        } = &mut err
        {
            *ra = retry_after;
        }
        return err;
    }
    if let Ok(b) = serde_json::from_slice::<OAuthErrorBody>(body) {
        let mut err = oauth_error(&b.error, b.error_description.as_deref(), Some(status));
        if let AuthError::Transient {
            retry_after: ra, ..
        } = &mut err
        {
            *ra = retry_after;
        }
        return err;
    }
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            AuthError::permanent(PermanentKind::BadCredentials, format!("HTTP {status}"))
        }
        s if s.is_client_error() => AuthError::permanent(
            PermanentKind::Other(format!("http_{}", s.as_u16())),
            format!("HTTP {s}"),
        ),
        s => AuthError::transient(
            TransientKind::InvalidResponse,
            format!("unexpected HTTP {s}"),
        ),
    }
}

/// Turns a reqwest error into a transient error, without the URL (it may carry a query secret).
pub(crate) fn transport_error(err: reqwest::Error) -> AuthError {
    let kind = if err.is_timeout() {
        TransientKind::Timeout
    } else {
        TransientKind::Network
    };
    AuthError::transient(kind, err.without_url().to_string())
}

/// The lifetime of a new token, in the order of DESIGN §3.1: `expires_in`, then the JWT's
/// `exp - iat`, then the configured default.
pub(crate) fn lifetime(
    expires_in: Option<Duration>,
    access_token: &str,
    default: Duration,
    now_wall: SystemTime,
) -> (Duration, LifetimeSource) {
    if let Some(d) = expires_in.filter(|d| !d.is_zero()) {
        return (d, LifetimeSource::ExpiresIn);
    }
    if let Some(d) = crate::jwt::jwt_lifetime(access_token, now_wall) {
        return (d, LifetimeSource::JwtClaims);
    }
    (default, LifetimeSource::Default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn classifies_token_endpoint_answers() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let none = HeaderMap::new();
        let check = |status: u16, h: &HeaderMap, body: &str, want: &str| {
            let err = classify_failure(
                StatusCode::from_u16(status).unwrap(),
                h,
                body.as_bytes(),
                now,
            );
            let got = match &err {
                AuthError::Transient { kind, .. } => format!("transient {kind}"),
                AuthError::Permanent { kind, .. } => format!("permanent {kind}"),
                other => format!("{other:?}"),
            };
            assert_eq!(got, want, "{status} {body}: {err}");
        };
        check(
            400,
            &none,
            r#"{"error":"invalid_grant","error_description":"grant request is invalid"}"#,
            "permanent invalid_grant",
        );
        check(
            401,
            &none,
            r#"{"error":"invalid_client"}"#,
            "permanent invalid_client",
        );
        check(
            400,
            &none,
            r#"{"error":"unauthorized_client"}"#,
            "permanent unauthorized_client",
        );
        check(
            400,
            &none,
            r#"{"error":"invalid_scope"}"#,
            "permanent invalid_scope",
        );
        check(
            400,
            &none,
            r#"{"error":"unsupported_grant_type"}"#,
            "permanent unsupported_grant_type",
        );
        check(
            503,
            &none,
            r#"{"error":"temporarily_unavailable"}"#,
            "transient temporarily unavailable",
        );
        check(
            500,
            &none,
            r#"{"error":"invalid_grant"}"#,
            "transient server error 500",
        );
        check(
            502,
            &none,
            "<html>bad gateway</html>",
            "transient server error 502",
        );
        check(429, &none, "", "transient rate limited");
        check(401, &none, "", "permanent bad credentials");
        check(404, &none, "not found", "permanent http_404");
        let err = classify_failure(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "7")]),
            b"",
            now,
        );
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    }

    #[test]
    fn retry_after_as_http_date_counts_from_the_server_date() {
        let now = SystemTime::UNIX_EPOCH;
        let h = headers(&[
            ("date", "Wed, 25 Nov 2026 20:00:00 GMT"),
            ("retry-after", "Wed, 25 Nov 2026 20:02:00 GMT"),
        ]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(120)));
        let past = headers(&[
            ("date", "Wed, 25 Nov 2026 20:00:00 GMT"),
            ("retry-after", "Wed, 25 Nov 2026 19:00:00 GMT"),
        ]);
        assert_eq!(retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-5")]), now), None);
    }

    #[test]
    fn lifetime_prefers_expires_in_then_jwt_then_default() {
        let now = SystemTime::UNIX_EPOCH;
        let d = Duration::from_secs(3600);
        assert_eq!(
            lifetime(Some(Duration::from_secs(5)), "x", d, now),
            (Duration::from_secs(5), LifetimeSource::ExpiresIn)
        );
        assert_eq!(
            lifetime(Some(Duration::ZERO), "opaque", d, now),
            (d, LifetimeSource::Default)
        );
        assert_eq!(
            lifetime(None, "opaque", d, now),
            (d, LifetimeSource::Default)
        );
        // {"exp":120,"iat":20}
        let jwt = "e30.eyJleHAiOjEyMCwiaWF0IjoyMH0.s";
        assert_eq!(
            lifetime(None, jwt, d, now),
            (Duration::from_secs(100), LifetimeSource::JwtClaims)
        );
    }
}
