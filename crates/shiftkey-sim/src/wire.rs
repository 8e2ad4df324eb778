//! Teamcenter's JSON shapes (TEAMCENTER.md), built in one place.

use serde_json::{Value, json};

use crate::data::Object;

const EXC: &str = "http://teamcenter.com/Schemas/Soa/2006-03/Exceptions";

/// `InvalidUserException`: the session is missing or dead.
#[must_use]
pub fn invalid_user() -> Value {
    json!({
        ".QName": format!("{EXC}.InvalidUserException"),
        "ssoServerURL": "",
        "ssoAppID": "",
        "code": 1000,
        "level": 3,
        "tcresponse": "Teamcenter",
        "message": "User does not have a valid session."
    })
}

/// `InvalidCredentialsException` with a real code (515143 bad user/password, 1007 no user id).
#[must_use]
pub fn invalid_credentials(code: u32) -> Value {
    let message = match code {
        1007 => "No User Id Specified.",
        515142 => "The login attempt failed: the group is invalid.",
        _ => "The login attempt failed: either the user ID or the password is invalid.",
    };
    json!({
        ".QName": format!("{EXC}.InvalidCredentialsException"),
        "ssoServerURL": "",
        "ssoAppID": "",
        "code": code,
        "level": 3,
        "tcresponse": "Teamcenter",
        "message": message
    })
}

/// `InternalServerException` for malformed JSON (codes 214022 then 214004, top-level last).
#[must_use]
pub fn internal_server(detail: &str) -> Value {
    json!({
        ".QName": format!("{EXC}.InternalServerException"),
        "messages": [
            {"code": 214022, "level": 3, "message": format!("Failed to parse the request: {detail}")},
            {"code": 214004, "level": 3, "message": "The service request could not be processed."}
        ]
    })
}

/// The XML a logout of a dead session returns, even on the JSON endpoint.
pub const DEAD_LOGOUT_XML: &str =
    r#"<ns1:ServiceData xmlns:ns1="http://teamcenter.com/Schemas/Soa/2006-03/Base"/>"#;

/// One model object: `{uid, className, type, props: {name: {dbValues, uiValues}}}`, limited to
/// `only` when given.
#[must_use]
pub fn model_object(o: &Object, only: Option<&[String]>) -> Value {
    let props: serde_json::Map<String, Value> = o
        .props
        .iter()
        .filter(|(k, _)| only.is_none_or(|names| names.iter().any(|n| n == *k)))
        .map(|(k, v)| (k.clone(), json!({"dbValues": v, "uiValues": v})))
        .collect();
    json!({"uid": o.uid, "className": o.class, "type": o.class, "props": props})
}

/// A `ServiceData` with `plain` UIDs, their `modelObjects`, and `partialErrors` for missing UIDs.
#[must_use]
pub fn service_data(objects: &[&Object], missing: &[String], only: Option<&[String]>) -> Value {
    let model: serde_json::Map<String, Value> = objects
        .iter()
        .map(|o| (o.uid.clone(), model_object(o, only)))
        .collect();
    let errors: Vec<Value> = missing
        .iter()
        .enumerate()
        .map(|(i, uid)| {
            json!({"clientIndex": i, "uid": uid, "errorValues": [{"code": 515024, "level": 3, "message": format!("The object {uid} does not exist.")}]})
        })
        .collect();
    json!({
        "plain": objects.iter().map(|o| o.uid.clone()).collect::<Vec<_>>(),
        "modelObjects": model,
        "partialErrors": errors
    })
}
