//! Teamcenter's JSON: the request envelope, `.QName` exceptions, `ServiceData`, and `dbValues`
//! parsed into typed values with errors that name the object and property. Never panics.

use std::collections::BTreeMap;
use std::time::SystemTime;

use chrono::{Datelike, Offset, Timelike};
use serde_json::{Value, json};

use crate::error::{ErrorValue, SsoHint, TcError};

/// The null UID.
pub const NULL_UID: &str = "AAAAAAAAAAAAAA";

/// A request envelope: `{"header": {"state": {...}, "policy": {}}, "body": ...}`.
#[must_use]
pub fn envelope(body: Value) -> Value {
    envelope_with_policy(body, json!({}))
}

/// A request envelope with an object property policy in `header.policy`
/// (`docs/teamcenter-reads.md` §4): the server returns exactly these properties.
#[must_use]
pub fn envelope_with_policy(body: Value, policy: Value) -> Value {
    // A call without input sends `{}`: `"body": null` appears in no source, and a server that
    // validates the envelope refuses it (`TEAMCENTER.md`).
    let body = if body.is_null() { json!({}) } else { body };
    json!({"header": {"state": {"clientVersion": "shiftkey", "stateless": true, "locale": "en_US"}, "policy": policy}, "body": body})
}

/// A property policy: `(type, [(property, with_properties)])` → `{"useRefCount": false, "types": [...]}`.
/// `withProperties` brings referenced objects along (their own entries decide their properties).
#[must_use]
pub fn policy(types: &[(&str, Vec<(&str, bool)>)]) -> Value {
    let types: Vec<Value> = types
        .iter()
        .map(|(t, props)| {
            let props: Vec<Value> = props
                .iter()
                .map(|(p, with)| {
                    if *with {
                        json!({"name": p, "modifiers": [{"name": "withProperties", "Value": "true"}]})
                    } else {
                        json!({"name": p})
                    }
                })
                .collect();
            json!({"name": t, "properties": props})
        })
        .collect();
    json!({"useRefCount": false, "types": types})
}

/// The UID of a reference, in any of its forms: `"uid"` or `{"uid": ...}` (§0.1). The null UID
/// and empty strings are `None`.
#[must_use]
pub fn ref_uid(v: &Value) -> Option<&str> {
    let uid = match v {
        Value::String(s) => s.as_str(),
        Value::Object(m) => m.get("uid").and_then(Value::as_str)?,
        _ => return None,
    };
    (!uid.is_empty() && uid != NULL_UID).then_some(uid)
}

fn error_values(v: &Value) -> Vec<ErrorValue> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|e| ErrorValue {
            code: e["code"].as_i64().unwrap_or_default(),
            level: e["level"].as_i64().unwrap_or_default(),
            message: e["message"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

fn sso(v: &Value) -> Option<SsoHint> {
    let url = v["ssoServerURL"].as_str().unwrap_or_default();
    let app = v["ssoAppID"].as_str().unwrap_or_default();
    (!url.is_empty() || !app.is_empty()).then(|| SsoHint {
        server_url: url.to_owned(),
        app_id: app.to_owned(),
    })
}

/// Whether `v` is an `InvalidUserException` (a dead or missing session).
#[must_use]
pub fn is_invalid_user(v: &Value) -> bool {
    v[".QName"]
        .as_str()
        .is_some_and(|q| q.ends_with(".InvalidUserException"))
}

/// Codes of an `InternalServerException` about the request itself, which the same request
/// always gets again: 214004 first ("the service request could not be processed": an
/// operation the server does not have), 214022 (the body is not JSON) and 214086 (the body has
/// the wrong shape, "invalid syntax"). `TEAMCENTER.md` and `docs/teamcenter-reads.md` §8.
pub const REQUEST_REFUSALS: [i64; 3] = [214_004, 214_022, 214_086];

/// Whether `v` is an `InternalServerException` whose first message is one of
/// [`REQUEST_REFUSALS`]: a final answer about the request, not a passing server failure.
pub fn is_request_refusal(v: &Value) -> bool {
    v[".QName"]
        .as_str()
        .is_some_and(|q| q.ends_with(".InternalServerException"))
        && v["messages"][0]["code"]
            .as_i64()
            .is_some_and(|c| REQUEST_REFUSALS.contains(&c))
}

/// Checks `.QName` for an exception, whatever the HTTP status. `Ok` for any non-exception.
pub fn check_exception(v: &Value) -> Result<(), TcError> {
    let Some(q) = v[".QName"].as_str() else {
        return Ok(());
    };
    let Some((_, name)) = q.rsplit_once('.') else {
        return Ok(());
    };
    if !name.ends_with("Exception") {
        return Ok(());
    }
    let code = v["code"].as_i64().unwrap_or_default();
    let message = v["message"].as_str().unwrap_or_default().to_owned();
    Err(match name {
        "InvalidCredentialsException" => TcError::InvalidCredentials {
            code,
            message,
            sso: sso(v),
        },
        "InvalidUserException" => TcError::SessionRejected { sso: sso(v) },
        "InternalServerException" => TcError::InternalServer {
            messages: error_values(&v["messages"]),
        },
        _ => TcError::Service {
            qname: q.to_owned(),
            code,
            message,
        },
    })
}

/// A model object: UID, class, type and string `dbValues` by property. A property the request
/// did not ask for is absent, which is not the same as empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelObject {
    /// The UID.
    pub uid: String,
    /// `className`.
    pub class: String,
    /// `type` (the business object type; `className` when absent).
    pub type_name: String,
    /// Property → `dbValues`.
    pub props: BTreeMap<String, Vec<String>>,
}

/// A partial error of one object or input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialError {
    /// The object it concerns, when given.
    pub uid: Option<String>,
    /// The index of the input it concerns (`clientIndex`, also read as `clienetIndex`).
    pub client_index: Option<i64>,
    /// The errors.
    pub errors: Vec<ErrorValue>,
}

impl std::fmt::Display for PartialError {
    /// `UID: code 214121: message; code …` (the object, then each error).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(uid) = &self.uid {
            write!(f, "{uid}: ")?;
        }
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "code {}: {}", e.code, e.message)?;
        }
        Ok(())
    }
}

/// `ServiceData` (also accepted as `serviceData`, or as the whole answer).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceData {
    /// `plain` UIDs.
    pub plain: Vec<String>,
    /// `updated` UIDs.
    pub updated: Vec<String>,
    /// `created` UIDs.
    pub created: Vec<String>,
    /// `deleted` UIDs.
    pub deleted: Vec<String>,
    /// `modelObjects` by UID.
    pub objects: BTreeMap<String, ModelObject>,
    /// `partialErrors`, per object.
    pub partial_errors: Vec<PartialError>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect()
}

impl ServiceData {
    /// Parses the `ServiceData` of an answer. Malformed parts are skipped or reported, never a panic.
    pub fn parse(answer: &Value, operation: &str) -> Result<Self, TcError> {
        let sd = if answer.get("ServiceData").is_some() {
            &answer["ServiceData"]
        } else if answer.get("serviceData").is_some() {
            &answer["serviceData"]
        } else {
            answer
        };
        if !sd.is_object() {
            return Err(TcError::Unexpected {
                operation: operation.to_owned(),
                detail: "ServiceData is not an object".into(),
            });
        }
        let mut objects = BTreeMap::new();
        if let Some(map) = sd["modelObjects"].as_object() {
            for (uid, o) in map {
                // `props` and `dbValues` are optional in the wire types (S12); a property without
                // `dbValues` (a `uIValueOnly` policy) counts as not loaded.
                let mut parsed = BTreeMap::new();
                for (name, p) in o["props"].as_object().into_iter().flatten() {
                    if !p["dbValues"].is_array() {
                        continue;
                    }
                    if p["dbValues"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| !x.is_string()))
                    {
                        return Err(TcError::Unexpected {
                            operation: operation.to_owned(),
                            detail: format!(
                                "property {name} of {uid} has a dbValue that is not a string"
                            ),
                        });
                    }
                    parsed.insert(name.clone(), strings(&p["dbValues"]));
                }
                objects.insert(
                    uid.clone(),
                    ModelObject {
                        uid: uid.clone(),
                        class: o["className"].as_str().unwrap_or_default().to_owned(),
                        type_name: o["type"]
                            .as_str()
                            .or(o["className"].as_str())
                            .unwrap_or_default()
                            .to_owned(),
                        props: parsed,
                    },
                );
            }
        }
        let partial_errors = sd["partialErrors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|pe| PartialError {
                uid: pe["uid"].as_str().map(str::to_owned),
                client_index: pe["clientIndex"].as_i64().or(pe["clienetIndex"].as_i64()),
                errors: error_values(&pe["errorValues"]),
            })
            .collect();
        Ok(Self {
            plain: strings(&sd["plain"]),
            updated: strings(&sd["updated"]),
            created: strings(&sd["created"]),
            deleted: strings(&sd["deleted"]),
            objects,
            partial_errors,
        })
    }
}

/// Typed reads of one object's properties; every error names the object and property.
#[derive(Debug, Clone, Copy)]
pub struct Props<'a> {
    object: &'a ModelObject,
}

impl<'a> Props<'a> {
    /// Reads `object`.
    #[must_use]
    pub fn of(object: &'a ModelObject) -> Self {
        Self { object }
    }

    fn err(&self, prop: &str, what: &str) -> TcError {
        TcError::Unexpected {
            operation: "parse".into(),
            detail: format!(
                "{} {} property {prop}: {what}",
                self.object.class, self.object.uid
            ),
        }
    }

    /// All `dbValues` of `prop` (empty when absent).
    #[must_use]
    pub fn list(&self, prop: &str) -> Vec<String> {
        self.object.props.get(prop).cloned().unwrap_or_default()
    }

    /// The first value of `prop`, required.
    pub fn string(&self, prop: &str) -> Result<String, TcError> {
        self.object
            .props
            .get(prop)
            .and_then(|v| v.first())
            .cloned()
            .ok_or_else(|| self.err(prop, "missing"))
    }

    /// The first value of `prop`, if any and not empty.
    #[must_use]
    pub fn optional(&self, prop: &str) -> Option<String> {
        self.object
            .props
            .get(prop)
            .and_then(|v| v.first())
            .filter(|s| !s.is_empty())
            .cloned()
    }

    /// A boolean (`"1"` / `"0"`; absent is false).
    pub fn flag(&self, prop: &str) -> Result<bool, TcError> {
        match self.optional(prop).as_deref() {
            None | Some("0") => Ok(false),
            Some("1") => Ok(true),
            Some(other) => Err(self.err(
                prop,
                &format!("`{other}` is not a boolean dbValue (\"1\" or \"0\")"),
            )),
        }
    }

    /// A date, required and not the null date. `dbValues` dates are ISO 8601 with an offset,
    /// with or without its colon (`2006-03-15T14:20:45-07:00`, `…-0700`; §0.2).
    pub fn date(&self, prop: &str) -> Result<SystemTime, TcError> {
        let s = self.string(prop)?;
        if s.starts_with("0001-01-01T00:00:00") {
            return Err(self.err(prop, "the null date"));
        }
        chrono::DateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%:z")
            .or_else(|_| chrono::DateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%z"))
            .map(SystemTime::from)
            .map_err(|e| self.err(prop, &format!("`{s}` is not a Teamcenter date ({e})")))
    }

    /// The UTC offset (minutes east) a date property was written with, if it is a date with
    /// one (not the null date).
    pub fn date_offset(&self, prop: &str) -> Option<i32> {
        let s = self.optional(prop)?;
        if s.starts_with("0001-01-01T00:00:00") {
            return None;
        }
        chrono::DateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%:z")
            .or_else(|_| chrono::DateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%z"))
            .ok()
            .map(|d| d.offset().local_minus_utc() / 60)
    }

    /// A number, if present.
    pub fn number(&self, prop: &str) -> Result<Option<f64>, TcError> {
        match self.optional(prop) {
            None => Ok(None),
            Some(s) => s
                .trim()
                .parse::<f64>()
                .map(Some)
                .map_err(|_| self.err(prop, &format!("`{s}` is not a number"))),
        }
    }

    /// References (UIDs) without the null UID.
    #[must_use]
    pub fn refs(&self, prop: &str) -> Vec<String> {
        self.list(prop)
            .into_iter()
            .filter(|u| !u.is_empty() && u != NULL_UID)
            .collect()
    }
}

/// Teamcenter's date form for a date *property* write (`yyyy-MM-dd'T'HH:mm:ssZ`, as Siemens'
/// connector writes it; §7.1).
#[must_use]
pub fn tc_date(t: SystemTime) -> String {
    utc(t).format("%Y-%m-%dT%H:%M:%S+0000").to_string()
}

/// `t` in UTC, clamped to chrono's range (a `SystemTime` from a damaged store can lie outside it).
fn utc(t: SystemTime) -> chrono::DateTime<chrono::Utc> {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    };
    chrono::DateTime::from_timestamp(secs, 0).unwrap_or(if secs < 0 {
        chrono::DateTime::<chrono::Utc>::MIN_UTC
    } else {
        chrono::DateTime::<chrono::Utc>::MAX_UTC
    })
}

/// A saved-query date *value*: the display form `dd-MMM-yyyy HH:mm` with English month names, in
/// the server's time zone (`utc_offset_minutes` east of UTC), seconds dropped (rounded down, so
/// the query never starts later than asked; §2.5). Never ISO.
#[must_use]
pub fn query_date(t: SystemTime, utc_offset_minutes: i32) -> String {
    let offset = chrono::FixedOffset::east_opt(utc_offset_minutes.saturating_mul(60))
        .unwrap_or_else(|| chrono::Utc.fix());
    let dt = utc(t).with_timezone(&offset);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS[dt.month0() as usize % 12];
    format!(
        "{:02}-{month}-{:04} {:02}:{:02}",
        dt.day(),
        dt.year(),
        dt.hour(),
        dt.minute()
    )
}
