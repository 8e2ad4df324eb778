//! `/status` as JSON (`Accept: application/json`): what the HTML page shows, for scripts and
//! monitoring that read it. Times are RFC 3339 in UTC, durations in seconds; no token or secret.

use std::time::SystemTime;

use serde_json::{Value, json};

use super::{Ops, ROLE_FOLLOWER, ROLE_LEADER, ROLE_UNKNOWN, public_auth};

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn circuit(state: shiftkey_policy::State) -> &'static str {
    match state {
        shiftkey_policy::State::Closed => "closed",
        shiftkey_policy::State::HalfOpen => "half_open",
        shiftkey_policy::State::Open => "open",
    }
}

impl Ops {
    /// The `/status` document.
    pub(crate) fn status_json(&self) -> Value {
        let at = tokio::time::Instant::now();
        let why = self.not_ready();
        let log = self.log();
        let role = match self.role.load(std::sync::atomic::Ordering::Relaxed) {
            ROLE_LEADER => json!("leader"),
            ROLE_FOLLOWER => json!("follower"),
            ROLE_UNKNOWN => json!("unknown"),
            _ => Value::Null,
        };
        let alerts: Vec<Value> = log
            .alerts
            .iter()
            .map(|(k, a)| {
                json!({"alert": k, "severity": crate::words::severity(a.severity),
                    "since": rfc3339(a.since), "detail": a.detail})
            })
            .collect();
        let tokens: Vec<Value> = self
            .tokens
            .iter()
            .map(|(name, m)| {
                let s = m.status();
                let (state, error) = match (&s.halted, &s.last_error) {
                    (Some(e), _) => ("halted", Some(public_auth(e))),
                    (None, Some(e)) => ("retrying", Some(public_auth(e))),
                    (None, None) => ("ok", None),
                };
                json!({
                    "name": name,
                    "generation": s.generation,
                    "expires_in_seconds": s.schedule.map(|sc| sc.expires_at.saturating_duration_since(at).as_secs()),
                    "refreshes": {"proactive": s.stats.proactive, "reactive": s.stats.reactive},
                    "failures": s.stats.failures,
                    "state": state,
                    "error": error,
                })
            })
            .collect();
        let proxies: Vec<Value> = self
            .proxies
            .iter()
            .map(|p| {
                let s = p.stats();
                json!({"name": p.name(), "requests": s.requests, "forwarded": s.forwarded,
                    "retries": s.retries, "healed": s.healed, "surfaced": s.surfaced,
                    "failed": s.failed, "sessions": s.sessions})
            })
            .collect();
        let teamcenter = self.teamcenter.as_ref().map(|mw| {
            let st = mw.stats();
            let learned = mw.learned_limits();
            let (auth, server) = mw.circuits();
            json!({
                "requests": st.requests, "recovered": st.recovered, "surfaced": st.surfaced,
                "retries": st.retries, "premature_deaths": st.premature_deaths,
                "keepalives": st.keepalives, "keepalives_failed": st.keepalives_failed,
                "circuits": {"auth": circuit(auth), "server": circuit(server)},
                "learned": {
                    "lifetime_cap_seconds": learned.lifetime_cap.map(|d| d.as_secs()),
                    "idle_limit_seconds": learned.idle_limit.map(|d| d.as_secs()),
                },
            })
        });
        let events: Vec<Value> = log
            .events
            .iter()
            .map(|e| json!({"at": rfc3339(e.at), "token": e.token, "what": e.what}))
            .collect();
        let cycles: Vec<Value> = log
            .cycles
            .iter()
            .map(|c| match &c.outcome {
                Ok(r) => json!({
                    "finished": rfc3339(c.at), "ok": true, "read": r.read,
                    "inserted": r.inserted, "updated": r.updated, "unchanged": r.unchanged,
                    "feedback": r.feedback_pushed, "seconds": r.duration.as_secs_f64(),
                    "warnings": r.warnings.iter().map(|w| json!({"kind": w.kind, "detail": w.detail})).collect::<Vec<_>>(),
                }),
                Err(e) => json!({"finished": rfc3339(c.at), "ok": false, "error": e}),
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started": rfc3339(self.started),
            "role": role,
            "ready": why.is_empty(),
            "not_ready": why,
            "alerts": alerts,
            "tokens": tokens,
            "proxies": proxies,
            "teamcenter": teamcenter,
            "events": events,
            "cycles": self.interval.is_some().then_some(cycles),
        })
    }
}
