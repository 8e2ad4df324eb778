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

/// The connect deadline of [`credential_client`] (10 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The per-request deadline of [`credential_client`] (60 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A reqwest client builder for token, login and revocation endpoints: no redirects followed (a
/// redirect answer becomes an error instead of the credentials re-sent elsewhere), a 10 s connect
/// deadline and a 60 s deadline per request. Add your TLS and proxy settings, then `build()`.
///
/// # Example
/// ```
/// let http = shiftkey_auth::credential_client().build()?;
/// # Ok::<(), reqwest::Error>(())
/// ```
pub fn credential_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
}

/// The largest token or login answer read (1 MiB): a real one is a few kilobytes.
pub(crate) const MAX_ANSWER: usize = 1024 * 1024;

/// The longest `Retry-After` honoured from a token or login endpoint.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// Reads `Retry-After` with the workspace's one parser ([`shiftkey_policy::parse_retry_after`]):
/// delta seconds or an HTTP date (against the response's `Date` when present), clamped to 1 h.
pub(crate) fn retry_after(headers: &HeaderMap, now_wall: SystemTime) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    shiftkey_policy::parse_retry_after(value, server_date(headers), now_wall, RETRY_AFTER_MAX)
}

/// Reads a response body up to `limit` bytes: the bytes, and whether there was more (then the
/// rest is not read and the connection is dropped).
pub(crate) async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok((Vec::new(), true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// An endpoint as errors and logs name it: scheme, host, port and path, never the query.
pub(crate) fn endpoint(url: &url::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// Whether `url` may carry credentials: `https`, or `http` to a loopback address (a process on
/// this machine), or any `http` when the operator allowed it (`allow_insecure_http`, a lab switch).
///
/// # Errors
/// A permanent configuration error naming `what` and the URL.
pub(crate) fn check_secure(
    url: &url::Url,
    allow_insecure: bool,
    what: &str,
) -> Result<(), AuthError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure || is_loopback(url) => Ok(()),
        scheme => Err(AuthError::permanent(
            PermanentKind::Configuration,
            format!(
                "{what} {} would send credentials over `{scheme}`: use https (or, in a lab only, \
                 set `allow_insecure_http = true`)",
                endpoint(url)
            ),
        )),
    }
}

/// Whether `url`'s host is a loopback address or `localhost` (where `http://` may carry
/// credentials: nothing leaves the machine).
///
/// # Example
/// ```
/// use shiftkey_auth::is_loopback;
///
/// assert!(is_loopback(&"http://127.0.0.1:8080/token".parse()?));
/// assert!(is_loopback(&"http://[::1]/token".parse()?));
/// assert!(!is_loopback(&"http://idp.plant.local/token".parse()?));
/// # Ok::<(), url::ParseError>(())
/// ```
#[must_use]
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// A token or login endpoint answered with a redirect: credentials never follow one.
pub(crate) fn redirected(status: StatusCode, headers: &HeaderMap, from: &url::Url) -> AuthError {
    let to = headers
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| from.join(l).ok())
        .map_or_else(|| "an unnamed location".to_owned(), |u| endpoint(&u));
    AuthError::permanent(
        PermanentKind::Configuration,
        format!(
            "{} answered HTTP {} redirecting to {to}; credentials are never re-sent to a \
             redirect target: configure the final URL",
            endpoint(from),
            status.as_u16()
        ),
    )
}

/// The response's `Date` header.
pub(crate) fn server_date(headers: &HeaderMap) -> Option<SystemTime> {
    let value = headers.get(http::header::DATE)?.to_str().ok()?;
    httpdate::parse_http_date(value).ok()
}

/// Turns an OAuth error code into the error taxonomy of design §3.1 (`docs/design.md`).
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
    AuthError::transient(kind, crate::Transport::describe(err))
}

/// Seconds as a server sends them (already a finite number) as a duration: `None` when not
/// positive, saturating when beyond what a `Duration` holds (the caller clamps).
pub(crate) fn seconds(v: f64) -> Option<Duration> {
    (v.is_finite() && v > 0.0).then(|| Duration::try_from_secs_f64(v).unwrap_or(Duration::MAX))
}

/// A lifetime field of a JSON answer (`field` names it in the warning): a number or a numeric
/// string, as a finite number of seconds. `null` and absence are `None`; anything else is `None`
/// with a warning (the lifetime then comes from the JWT or the configured default).
pub(crate) fn json_seconds(value: &serde_json::Value, field: &str) -> Option<f64> {
    use serde_json::Value;
    let parsed = match value {
        Value::Null => return None,
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    let parsed = parsed.filter(|v| v.is_finite());
    if parsed.is_none() {
        tracing::warn!(
            field,
            "the answer's lifetime field is not a number of seconds; ignoring it"
        );
    }
    parsed
}

/// The lifetime of a new token, in the order of design §3.1: `expires_in`, then the JWT's
/// `exp - iat`, then the configured default (with a warning naming the assumption). Whatever the
/// source, the result is clamped to [1 s, 1 year] ([`crate::clamp_lifetime`]).
pub(crate) fn lifetime(
    expires_in: Option<Duration>,
    access_token: &str,
    default: Duration,
    now_wall: SystemTime,
) -> (Duration, LifetimeSource) {
    let clamp = |d: Duration, source: &'static str| {
        let c = crate::clamp_lifetime(d);
        if c != d {
            tracing::warn!(
                source,
                claimed_s = d.as_secs_f64(),
                used_s = c.as_secs_f64(),
                "the token's lifetime is outside [1 s, 1 year]; clamped"
            );
        }
        c
    };
    if let Some(d) = expires_in.filter(|d| !d.is_zero()) {
        return (clamp(d, "expires_in"), LifetimeSource::ExpiresIn);
    }
    if let Some(d) = crate::jwt::jwt_lifetime(access_token, now_wall) {
        return (clamp(d, "jwt exp"), LifetimeSource::JwtClaims);
    }
    tracing::warn!(
        assumed_s = default.as_secs_f64(),
        "the server sent no usable `expires_in` and the access token is not a JWT with `exp`: \
         assuming the configured `default_lifetime`"
    );
    (clamp(default, "default_lifetime"), LifetimeSource::Default)
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
        // 2^63 seconds and more: a year, never an overflow further on.
        assert_eq!(
            lifetime(seconds(9.3e18), "x", d, now),
            (crate::MAX_LIFETIME, LifetimeSource::ExpiresIn)
        );
        assert_eq!(
            lifetime(seconds(0.25), "x", d, now),
            (Duration::from_secs(1), LifetimeSource::ExpiresIn)
        );
        assert_eq!(seconds(-5.0), None);
        assert_eq!(seconds(f64::NAN), None);
        // {"exp":120,"iat":20}
        let jwt = "e30.eyJleHAiOjEyMCwiaWF0IjoyMH0.s";
        assert_eq!(
            lifetime(None, jwt, d, now),
            (Duration::from_secs(100), LifetimeSource::JwtClaims)
        );
    }
}
