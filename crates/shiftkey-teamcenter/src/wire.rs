//! Teamcenter's JSON: the request envelope, `.QName` exceptions, `ServiceData`, and `dbValues`
//! parsed into typed values with errors that name the object and property. Never panics.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::error::{ErrorValue, SsoHint, TcError};

/// The null UID.
pub const NULL_UID: &str = "AAAAAAAAAAAAAA";

/// A request envelope: `{"header": {"state": {...}, "policy": {}}, "body": ...}`.
#[must_use]
pub fn envelope(body: Value) -> Value {
    json!({"header": {"state": {"clientVersion": "shiftkey", "stateless": true}, "policy": {}}, "body": body})
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

/// A model object: UID, class and string `dbValues` by property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelObject {
    /// The UID.
    pub uid: String,
    /// `className`.
    pub class: String,
    /// Property → `dbValues`.
    pub props: BTreeMap<String, Vec<String>>,
}

/// A partial error of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialError {
    /// The object it concerns, when given.
    pub uid: Option<String>,
    /// The errors.
    pub errors: Vec<ErrorValue>,
}

/// `ServiceData` (also accepted as `serviceData`, or as the whole answer).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceData {
    /// `plain` UIDs.
    pub plain: Vec<String>,
    /// `updated` UIDs.
    pub updated: Vec<String>,
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
                let Some(props) = o["props"].as_object() else {
                    return Err(TcError::Unexpected {
                        operation: operation.to_owned(),
                        detail: format!("model object {uid} has no props object"),
                    });
                };
                let mut parsed = BTreeMap::new();
                for (name, p) in props {
                    if !p["dbValues"].is_array() {
                        return Err(TcError::Unexpected {
                            operation: operation.to_owned(),
                            detail: format!("property {name} of {uid} has no dbValues array"),
                        });
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
                errors: error_values(&pe["errorValues"]),
            })
            .collect();
        Ok(Self {
            plain: strings(&sd["plain"]),
            updated: strings(&sd["updated"]),
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

    /// A date (`yyyy-MM-ddTHH:mm:ss+zzzz`), required.
    pub fn date(&self, prop: &str) -> Result<SystemTime, TcError> {
        let s = self.string(prop)?;
        chrono::DateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%z")
            .map(SystemTime::from)
            .map_err(|e| self.err(prop, &format!("`{s}` is not a Teamcenter date ({e})")))
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

/// Teamcenter's date form for a query.
#[must_use]
pub fn tc_date(t: SystemTime) -> String {
    let dt: chrono::DateTime<chrono::Utc> = t.into();
    dt.format("%Y-%m-%dT%H:%M:%S+0000").to_string()
}
