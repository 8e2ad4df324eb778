//! What a person reads for the library's enums and options: never Rust's debug text
//! (`Some(1200s)`, `HalfOpen`, `ExpiresIn`) in the CLI, `/status` or the log.

use std::time::Duration;

use shiftkey_auth::StoredLifetimeSource as LifetimeSource;
use shiftkey_policy::{Severity, State};

use crate::tokens::human;

/// A circuit breaker's state.
pub(crate) fn circuit(state: State) -> &'static str {
    match state {
        State::Closed => "closed",
        State::HalfOpen => "half-open (one trial request let through)",
        State::Open => "open (requests fail fast)",
    }
}

/// An alert's severity.
pub(crate) fn severity(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "critical",
        _ => "warning",
    }
}

/// Where a stored token's lifetime came from.
pub(crate) fn lifetime_source(source: LifetimeSource) -> &'static str {
    match source {
        LifetimeSource::ExpiresIn => "as the server said (expires_in)",
        LifetimeSource::JwtClaims => "from the token's own claims (exp)",
        LifetimeSource::Learned => "learned: the server kills tokens earlier than it says",
        _ => "the configured default: the server said nothing",
    }
}

/// A limit that may not be known yet.
#[cfg_attr(
    not(feature = "demo"),
    expect(dead_code, reason = "the demo's report uses it")
)]
pub(crate) fn limit(limit: Option<Duration>) -> String {
    limit.map_or_else(|| "not learned".to_owned(), human)
}

/// Counts by cause, `2 hard, 1 idle`, or `none`.
#[cfg_attr(
    not(feature = "demo"),
    expect(dead_code, reason = "the demo's report uses it")
)]
pub(crate) fn counts(by: &std::collections::BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = by
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_reads_like_rust() {
        let mut texts = vec![
            limit(None),
            limit(Some(Duration::from_secs(1200))),
            counts(&Default::default()),
            counts(&[("hard".to_owned(), 2), ("idle".to_owned(), 0)].into()),
        ];
        texts.extend(
            [State::Closed, State::HalfOpen, State::Open]
                .map(circuit)
                .map(str::to_owned),
        );
        texts.extend(
            [
                LifetimeSource::ExpiresIn,
                LifetimeSource::JwtClaims,
                LifetimeSource::Default,
                LifetimeSource::Learned,
            ]
            .map(lifetime_source)
            .map(str::to_owned),
        );
        for t in &texts {
            for debug in ["Some(", "None", "HalfOpen", "ExpiresIn", "JwtClaims", "{ "] {
                assert!(!t.contains(debug), "{t:?} reads like Rust ({debug})");
            }
        }
        assert_eq!(texts[1], "20m 00s");
        assert_eq!(texts[3], "2 hard");
    }
}
