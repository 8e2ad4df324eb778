//! The reqwest client to put under [`AuthMiddleware`](crate::AuthMiddleware): deadlines, and
//! redirects that never take a credential to another origin.

use std::time::Duration;

/// Redirects followed at most (reqwest's default).
const MAX_REDIRECTS: usize = 10;

/// A redirect policy that follows redirects within the request's origin (scheme, host and port)
/// and stops at one that leaves it: the 3xx then reaches the caller, and no header the middleware
/// injected (`Authorization`, a cookie, an API-key header) is sent to the other origin. (reqwest's
/// default strips `Authorization` and `Cookie` across hosts but not custom headers.)
///
/// # Example
/// ```
/// let http = reqwest::Client::builder()
///     .redirect(shiftkey_http::same_origin_redirects())
///     .build()?;
/// # Ok::<(), reqwest::Error>(())
/// ```
#[must_use]
pub fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else if same {
            attempt.follow()
        } else {
            tracing::warn!(
                status = attempt.status().as_u16(),
                "not following a redirect to another origin: credentials stay with their origin"
            );
            attempt.stop()
        }
    })
}

/// A reqwest client builder for authenticated resource calls: [`same_origin_redirects`], a 10 s
/// connect deadline and `timeout` per request. Under [`AuthMiddleware`](crate::AuthMiddleware),
/// every request gets the middleware's per-attempt deadline (`attempt_timeout`, 60 s) unless it
/// sets its own, and a request's deadline replaces the client's: set `attempt_timeout` to the
/// same value. Add TLS and proxy settings, then `build()`.
///
/// # Example
/// ```
/// use std::time::Duration;
///
/// let http = shiftkey_http::resource_client(Duration::from_secs(60)).build()?;
/// # Ok::<(), reqwest::Error>(())
/// ```
pub fn resource_client(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(same_origin_redirects())
        .connect_timeout(shiftkey_auth::CONNECT_TIMEOUT)
        .timeout(timeout)
}
