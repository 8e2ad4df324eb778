//! The emulator's scenario: users, session limits, pool load, restarts, OAuth, faults, data.
//! Every field has a default; a TOML file overrides what it names (unknown keys are errors).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::data::DataConfig;

/// The whole scenario.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// User name → password for `Core-2011-06-Session/login` and the OAuth password grant.
    pub users: BTreeMap<String, String>,
    /// Session limits, pool load and restarts.
    pub session: SessionConfig,
    /// The OAuth gateway.
    pub oauth: OAuthConfig,
    /// Injected faults.
    pub faults: FaultConfig,
    /// The manufacturing data set and its change stream.
    pub data: DataConfig,
    /// The site: time zone, saved queries, entry names, BMIDE extensions.
    pub tc: TcConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            users: BTreeMap::from([("mfg_sync".to_owned(), "mfg_sync_pw".to_owned())]),
            session: SessionConfig::default(),
            oauth: OAuthConfig::default(),
            faults: FaultConfig::default(),
            data: DataConfig::default(),
            tc: TcConfig::default(),
        }
    }
}

impl SimConfig {
    /// Parses a TOML scenario; the error names the bad key and line.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// Teamcenter pool manager limits (`globalPoolConfig.properties`) and restarts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// `HARD_TIMEOUT_*`: a session dies this long after login (default 28 800 s = 8 h).
    pub hard_timeout_secs: u64,
    /// `SOFT_TIMEOUT_*`: an idle session dies after this long, but only while the pool runs more
    /// server processes than `process_target` (default 1 200 s = 20 min).
    pub soft_timeout_secs: u64,
    /// `PROCESS_TARGET` (default 3).
    pub process_target: u32,
    /// Server processes running per hour of the (simulated, UTC) day (default: 1 at night, 4 from
    /// 08:00 to 17:59, so idle sessions die in the working day only).
    pub load_by_hour: [u32; 24],
    /// Up to this many extra processes per hour, seeded (default 1): some evenings are busy too.
    pub load_noise: u32,
    /// Seed of the load noise.
    pub seed: u64,
    /// HTTP status of an `InvalidUserException` (200, 401 or 500; default 200).
    pub invalid_user_status: u16,
    /// Server restarts at these simulated hours after start (every session dies).
    pub restart_at_hours: Vec<f64>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        let mut load = [1u32; 24];
        for slot in load.iter_mut().take(18).skip(8) {
            *slot = 4;
        }
        Self {
            hard_timeout_secs: 28_800,
            soft_timeout_secs: 1_200,
            process_target: 3,
            load_by_hour: load,
            load_noise: 1,
            seed: 11,
            invalid_user_status: 200,
            restart_at_hours: Vec::new(),
        }
    }
}

/// The OAuth gateway (`/tc/RestServices/...`, token endpoint `/oauth/token`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthConfig {
    /// Client id → secret (basic or post).
    pub clients: BTreeMap<String, String>,
    /// `expires_in` the server claims (default 28 800 s = 8 h).
    pub access_ttl_secs: u64,
    /// When set, access tokens really die at this age (the "8 h configured, 4 h enforced" case).
    pub access_ttl_cap_secs: Option<u64>,
    /// Refresh-token lifetime (default 30 days).
    pub refresh_ttl_secs: u64,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            clients: BTreeMap::from([("shiftkey".to_owned(), "shiftkey-secret".to_owned())]),
            access_ttl_secs: 28_800,
            access_ttl_cap_secs: None,
            refresh_ttl_secs: 30 * 86_400,
        }
    }
}

/// Faults, drawn from a seeded generator in request order (same schedule → same faults).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Seed of the fault draws.
    pub seed: u64,
    /// Probability that a request gets 429 with `Retry-After: retry_after_secs`.
    pub rate_limit_probability: f64,
    /// `Retry-After` of a 429, in seconds (default 2).
    pub retry_after_secs: u64,
    /// Probability that a request starts a burst of HTTP 503s.
    pub server_error_probability: f64,
    /// Requests in a 503 burst (default 3).
    pub burst_len: u32,
    /// Latency added to every answer, in simulated milliseconds.
    pub latency_ms: u64,
    /// The `Date` header is off by this many seconds (clock skew).
    pub date_skew_secs: i64,
    /// Probability that the connection drops mid-answer: headers and part of the body are sent,
    /// then the connection closes (the client sees a body error, not a status).
    pub drop_probability: f64,
    /// Probability that a request hangs: it is read, then never answered, until the client gives
    /// up and drops the connection or the emulator stops (then HTTP 503). A hung request changes
    /// nothing and is counted in `Stats::hung`. Drawn last, after `drop_probability`, for SOA
    /// requests (session and gateway) and the token endpoint; `Sim::hang_next` hangs chosen
    /// requests instead. Default 0.
    pub hang_probability: f64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            seed: 13,
            rate_limit_probability: 0.0,
            retry_after_secs: 2,
            server_error_probability: 0.0,
            burst_len: 3,
            latency_ms: 0,
            date_skew_secs: 0,
            drop_probability: 0.0,
            hang_probability: 0.0,
        }
    }
}

/// What differs from site to site (`docs/teamcenter-reads.md` §10 open questions).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcConfig {
    /// The server's offset from UTC in minutes: saved-query date values are read in it.
    pub utc_offset_minutes: i32,
    /// Saved queries that exist (built-in definitions: `Item Revision...`, `General...`, `Item...`).
    pub saved_queries: Vec<String>,
    /// Localized entry names: standard entry name → the site's (e.g. `"Modified After" = "Geändert nach"`).
    pub entry_names: BTreeMap<String, String>,
    /// Site-defined (BMIDE) properties by type, e.g. `MEOPRevision = ["xx4_mes_feedback_key"]`.
    pub site_properties: BTreeMap<String, Vec<String>>,
    /// Whether the `withProperties` policy modifier also brings along referenced *BOM lines*
    /// (it does for persistent objects \[V\]; for runtime lines it is not verified). Default true.
    pub follow_line_references: bool,
    /// Whether the server validates the request envelope and answers `"body": null` (or any body
    /// that is not an object) with HTTP 500 and an `InternalServerException`. No source shows
    /// `null` and a validating server may refuse it (`TEAMCENTER.md`, unverified either way):
    /// default true, the stricter; false accepts it as an absent body.
    pub refuse_null_body: bool,
    /// Operations this server does not have (answered as an unknown operation: HTTP 500 with
    /// an `InternalServerException`, 214004), e.g.
    /// `["Core-2011-06-Session/getTypeDescriptions"]` for a release without it.
    pub missing_operations: Vec<String>,
}

impl Default for TcConfig {
    fn default() -> Self {
        Self {
            utc_offset_minutes: 0,
            saved_queries: vec![
                "Item Revision...".to_owned(),
                "General...".to_owned(),
                "Item...".to_owned(),
            ],
            entry_names: BTreeMap::new(),
            site_properties: BTreeMap::new(),
            follow_line_references: true,
            refuse_null_body: true,
            missing_operations: Vec::new(),
        }
    }
}
