//! Teamcenter's JSON shapes (`docs/teamcenter-reads.md`), built in one place.

use serde_json::{Value, json};

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
    refused(214_022, &format!("Failed to parse the request: {detail}"))
}

/// `InternalServerException` with `code` first and the top-level 214004 last.
#[must_use]
pub fn refused(code: u32, message: &str) -> Value {
    json!({
        ".QName": format!("{EXC}.InternalServerException"),
        "messages": [
            {"code": code, "level": 3, "message": message},
            {"code": 214004, "level": 3, "message": "The service request could not be processed."}
        ]
    })
}

/// The `.QName` of a ServiceData returned at the top level.
pub const SERVICE_DATA: &str = "http://teamcenter.com/Schemas/Soa/2006-03/Base.ServiceData";

// Error codes. [V] where `docs/teamcenter-reads.md` cites them; the others are the emulator's
// choice (no public source names the real code) and no client may depend on them.
/// The body does not match the operation's schema ("invalid syntax") \[V code, I status\].
pub const INVALID_SYNTAX: u32 = 214_086;
/// `expandGRMRelationsForPrimary` without a relation filter \[V\].
pub const NO_RELATION_FILTER: u32 = 214_160;
/// `setProperties`: the property does not exist \[V code, on 2007-01\].
pub const SET_PROPERTY_MISSING: u32 = 214_121;
/// An unknown UID, or a BOM line that is not live in this session \[I\].
pub const NO_SUCH_OBJECT: u32 = 515_024;
/// A property the type does not have \[I\].
pub const NO_SUCH_PROPERTY: u32 = 38_015;
/// A type that does not exist \[I\].
pub const NO_SUCH_TYPE: u32 = 38_016;
/// A saved-query entry the query does not have \[I\].
pub const NO_SUCH_ENTRY: u32 = 216_501;
/// A saved-query date value not in `dd-MMM-yyyy HH:mm` \[I\].
pub const BAD_DATE: u32 = 216_502;
/// An object that cannot be opened as a process or BOM window \[I\].
pub const CANNOT_OPEN: u32 = 217_001;

/// The XML a logout of a dead session returns, even on the JSON endpoint.
pub const DEAD_LOGOUT_XML: &str =
    r#"<ns1:ServiceData xmlns:ns1="http://teamcenter.com/Schemas/Soa/2006-03/Base"/>"#;
