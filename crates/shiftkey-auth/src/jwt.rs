//! Reading a JWT access token's `exp` and `iat` without verifying it, for scheduling only.
//!
//! The token is the server's business; we only want to know when it dies. Anything that does not
//! look like a JWT yields `None` and the caller falls back to the configured default lifetime.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

#[derive(Deserialize)]
struct Claims {
    exp: Option<f64>,
    iat: Option<f64>,
}

/// The lifetime a JWT claims: `exp - iat`, or `exp - now` when it has no `iat`.
///
/// Returns `None` for anything that is not a three-part JWT with a numeric `exp` in the future.
#[must_use]
pub fn jwt_lifetime(token: &str, now_wall: SystemTime) -> Option<Duration> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > 64 * 1024 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Claims = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.exp.filter(|v| v.is_finite())?;
    let start = match claims.iat.filter(|v| v.is_finite()) {
        Some(iat) => iat,
        None => now_wall.duration_since(UNIX_EPOCH).ok()?.as_secs_f64(),
    };
    let secs = exp - start;
    (secs > 0.0 && secs < 10.0 * 365.0 * 86400.0).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "eyJhbGciOiJub25lIn0.{}.sig",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_exp_minus_iat() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let check = |payload: &str, want: Option<u64>| {
            assert_eq!(
                jwt_lifetime(&jwt(payload), now),
                want.map(Duration::from_secs),
                "{payload}"
            );
        };
        check(r#"{"exp":1300,"iat":1000}"#, Some(300));
        check(r#"{"exp":1600}"#, Some(600));
        check(r#"{"exp":900}"#, None);
        check(r#"{"iat":1000}"#, None);
        check(r#"{"exp":"soon"}"#, None);
        check("not json", None);
        assert_eq!(jwt_lifetime("opaque-token", now), None);
        assert_eq!(jwt_lifetime("a.b.c.d", now), None);
        assert_eq!(jwt_lifetime("a.!!!.c", now), None);
    }
}
