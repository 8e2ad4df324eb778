//! Parsing `Retry-After` (RFC 9110 §10.2.3): delta seconds or an HTTP date.

use std::time::{Duration, SystemTime};

/// Reads a `Retry-After` value.
///
/// - Delta seconds (`"120"`) are taken as they are.
/// - An HTTP date counts from the server's `Date` when given (so our clock skew does not matter),
///   else from `now`; a date in the past means "now" (zero).
/// - The result is clamped to `max` (1 h in design §5, `docs/design.md`).
/// - Anything else (negative, fractional, garbage, absurdly large) is ignored with a warning
///   event and gives `None`: the caller backs off as if the header were absent.
///
/// # Example
/// ```
/// use std::time::{Duration, SystemTime};
/// use shiftkey_policy::parse_retry_after;
///
/// let hour = Duration::from_secs(3600);
/// assert_eq!(parse_retry_after("120", None, SystemTime::now(), hour), Some(Duration::from_secs(120)));
/// assert_eq!(parse_retry_after("999999", None, SystemTime::now(), hour), Some(hour));
/// assert_eq!(parse_retry_after("soon", None, SystemTime::now(), hour), None);
/// ```
#[must_use]
pub fn parse_retry_after(
    value: &str,
    server_date: Option<SystemTime>,
    now: SystemTime,
    max: Duration,
) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for u64 still means "a very long time": clamp, do not ignore.
        return Some(v.parse::<u64>().map_or(max, Duration::from_secs).min(max));
    }
    match httpdate::parse_http_date(v) {
        Ok(at) => {
            let from = server_date.unwrap_or(now);
            Some(at.duration_since(from).unwrap_or(Duration::ZERO).min(max))
        }
        Err(_) => {
            tracing::warn!(retry_after = %v.chars().take(64).collect::<String>(), "ignoring a Retry-After that is neither seconds nor an HTTP date");
            None
        }
    }
}
