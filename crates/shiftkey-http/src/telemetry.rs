//! The metrics an [`AuthMiddleware`](crate::AuthMiddleware) records through the `metrics`
//! facade: their names, help texts and every label value they can take.
//!
//! Every series carries `client`, the middleware's name ([`AuthMiddlewareBuilder::name`]; by
//! default its token manager's). Building a middleware describes the metrics (`# HELP` in a
//! Prometheus exposition) and creates each of its counters at 0, so a rate over a window that
//! holds the first event counts it, and a dashboard shows 0 rather than nothing.
//!
//! [`AuthMiddlewareBuilder::name`]: crate::AuthMiddlewareBuilder::name

use metrics::{SharedString, Unit};

/// Requests by final outcome: `{client, outcome}`.
pub const REQUESTS: &str = "shiftkey_http_requests_total";
/// Every value of `outcome` on [`REQUESTS`].
pub const OUTCOMES: [&str; 6] = [
    "success",
    "error",
    "unauthorized",
    "forbidden",
    "transport_error",
    "body_error",
];
/// Token rejections (401 or the classifier's verdict) by what became of them:
/// `{client, result}`.
pub const UNAUTHORIZED: &str = "shiftkey_http_unauthorized_total";
/// Every value of `result` on [`UNAUTHORIZED`].
pub const UNAUTHORIZED_RESULTS: [&str; 2] = ["recovered", "surfaced"];
/// Retries by cause: `{client, reason}`.
pub const RETRIES: &str = "shiftkey_http_retries_total";
/// Every value of `reason` on [`RETRIES`].
pub const RETRY_REASONS: [&str; 2] = ["transport", "status"];
/// Tokens the server rejected before their announced expiry: `{client}`.
pub const PREMATURE_DEATHS: &str = "shiftkey_http_premature_deaths_total";
/// Keepalive calls made: `{client}`.
pub const KEEPALIVES: &str = "shiftkey_http_keepalives_total";
/// Keepalive calls that failed: `{client}`.
pub const KEEPALIVE_FAILURES: &str = "shiftkey_http_keepalive_failures_total";
/// The server's lifetime cap learned from premature deaths, once learned: `{client}`.
pub const LEARNED_LIFETIME: &str = "shiftkey_learned_lifetime_seconds";
/// The server's idle limit, once learned or configured: `{client}`.
pub const LEARNED_IDLE: &str = "shiftkey_learned_idle_seconds";

/// Describes every metric to the installed recorder (the `# HELP` lines). Idempotent; called by
/// every [`AuthMiddlewareBuilder::build`](crate::AuthMiddlewareBuilder::build).
///
/// ```
/// shiftkey_http::telemetry::describe();
/// assert!(shiftkey_http::telemetry::OUTCOMES.contains(&"unauthorized"));
/// ```
pub fn describe() {
    metrics::describe_counter!(
        REQUESTS,
        Unit::Count,
        "Requests through the auth middleware by final outcome (after healing and retries)."
    );
    metrics::describe_counter!(
        UNAUTHORIZED,
        Unit::Count,
        "Token rejections by the server: recovered by a fresh token, or surfaced to the caller."
    );
    metrics::describe_counter!(
        RETRIES,
        Unit::Count,
        "Requests sent again after a transport failure or a retryable status (429, 5xx)."
    );
    metrics::describe_counter!(
        PREMATURE_DEATHS,
        Unit::Count,
        "Tokens the server rejected before their announced expiry (what the limit learner learns from)."
    );
    metrics::describe_counter!(
        KEEPALIVES,
        Unit::Count,
        "Keepalive calls made to hold an idle session open."
    );
    metrics::describe_counter!(
        KEEPALIVE_FAILURES,
        Unit::Count,
        "Keepalive calls the server refused or that failed."
    );
    metrics::describe_gauge!(
        LEARNED_LIFETIME,
        Unit::Seconds,
        "The server's real token lifetime cap, learned from premature deaths (absent until learned)."
    );
    metrics::describe_gauge!(
        LEARNED_IDLE,
        Unit::Seconds,
        "The server's idle limit, learned or configured (absent until known)."
    );
}

/// Creates every counter a middleware named `client` records, at 0.
pub(crate) fn zero(client: &SharedString) {
    for outcome in OUTCOMES {
        metrics::counter!(REQUESTS, "client" => client.clone(), "outcome" => outcome).increment(0);
    }
    for result in UNAUTHORIZED_RESULTS {
        metrics::counter!(UNAUTHORIZED, "client" => client.clone(), "result" => result)
            .increment(0);
    }
    for reason in RETRY_REASONS {
        metrics::counter!(RETRIES, "client" => client.clone(), "reason" => reason).increment(0);
    }
    for name in [PREMATURE_DEATHS, KEEPALIVES, KEEPALIVE_FAILURES] {
        metrics::counter!(name, "client" => client.clone()).increment(0);
    }
}
