//! The token endpoint's answer, read the way real servers send it (RFC 6749 §5.1 and the
//! variations identity providers ship).
//!
//! `oauth2`'s standard response insists on `expires_in` as an unsigned integer; several identity
//! providers send `"3599"` (a string) or `3599.0`, and authlib and google-auth accept both. This
//! response type is what the strategies give `oauth2` to parse into instead:
//! - `access_token`: a non-empty string, else the answer is not a token (an error naming the field);
//! - `token_type`: compared without case; absent means `Bearer`;
//! - `expires_in`: a number, a numeric string or a float; anything else counts as absent (and the
//!   JWT's `exp`, then the configured default, decide — see [`crate::wire::lifetime`]);
//! - `refresh_token`: absent, `null` or empty means "keep the one you have";
//! - `scope`: a space-delimited string, or a JSON array of strings.

use std::time::Duration;

use oauth2::basic::BasicTokenType;
use oauth2::{AccessToken, RefreshToken, Scope, TokenResponse};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// A token endpoint's success answer.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct TokenAnswer {
    #[serde(deserialize_with = "access_token")]
    access_token: AccessToken,
    #[serde(default = "bearer", deserialize_with = "token_type")]
    token_type: BasicTokenType,
    #[serde(default, deserialize_with = "expires_in")]
    expires_in: Option<f64>,
    #[serde(default, deserialize_with = "refresh_token")]
    refresh_token: Option<RefreshToken>,
    #[serde(rename = "scope", default, deserialize_with = "scopes")]
    scopes: Option<Vec<Scope>>,
}

impl TokenAnswer {
    /// `token_type` as shiftkey records it: `Bearer` for any spelling of bearer, else as sent.
    pub(crate) fn token_type_name(&self) -> String {
        match &self.token_type {
            BasicTokenType::Bearer => "Bearer".to_owned(),
            other => other.as_ref().to_owned(),
        }
    }

    /// `expires_in` exactly as the server meant it, before any clamping.
    #[cfg(test)]
    pub(crate) fn expires_in_secs(&self) -> Option<f64> {
        self.expires_in
    }
}

impl TokenResponse for TokenAnswer {
    type TokenType = BasicTokenType;

    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }

    fn expires_in(&self) -> Option<Duration> {
        self.expires_in.and_then(crate::wire::seconds)
    }

    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }

    fn scopes(&self) -> Option<&Vec<Scope>> {
        self.scopes.as_ref()
    }
}

fn bearer() -> BasicTokenType {
    BasicTokenType::Bearer
}

fn access_token<'de, D: Deserializer<'de>>(d: D) -> Result<AccessToken, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Err(serde::de::Error::custom("the access token is empty"));
    }
    Ok(AccessToken::new(s))
}

fn token_type<'de, D: Deserializer<'de>>(d: D) -> Result<BasicTokenType, D::Error> {
    Ok(match Option::<String>::deserialize(d)? {
        None => BasicTokenType::Bearer,
        Some(s) if s.eq_ignore_ascii_case("bearer") => BasicTokenType::Bearer,
        Some(s) if s.eq_ignore_ascii_case("mac") => BasicTokenType::Mac,
        Some(s) => BasicTokenType::Extension(s),
    })
}

fn expires_in<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(Option::<Value>::deserialize(d)?.and_then(|v| crate::wire::json_seconds(&v, "expires_in")))
}

fn refresh_token<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RefreshToken>, D::Error> {
    Ok(Option::<String>::deserialize(d)?
        .filter(|s| !s.is_empty())
        .map(RefreshToken::new))
}

fn scopes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Scope>>, D::Error> {
    let value = Option::<Value>::deserialize(d)?;
    let words: Vec<String> = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        Some(other) => {
            return Err(serde::de::Error::custom(format!(
                "expected a space-delimited string or an array of strings, got {}",
                json_kind(&other)
            )));
        }
    };
    Ok(Some(words.into_iter().map(Scope::new).collect()))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<TokenAnswer, String> {
        let de = &mut serde_json::Deserializer::from_str(body);
        serde_path_to_error::deserialize(de).map_err(|e| format!("{} at `{}`", e.inner(), e.path()))
    }

    #[test]
    fn reads_the_expires_in_shapes_servers_send() {
        let secs = |body: &str| parse(body).map(|a| a.expires_in_secs());
        assert_eq!(
            secs(r#"{"access_token":"a","token_type":"Bearer","expires_in":3599}"#),
            Ok(Some(3599.0))
        );
        assert_eq!(
            secs(r#"{"access_token":"a","token_type":"Bearer","expires_in":"3599"}"#),
            Ok(Some(3599.0))
        );
        assert_eq!(
            secs(r#"{"access_token":"a","token_type":"Bearer","expires_in":" 3599.5 "}"#),
            Ok(Some(3599.5))
        );
        assert_eq!(
            secs(r#"{"access_token":"a","token_type":"Bearer","expires_in":1e300}"#),
            Ok(Some(1e300))
        );
        assert_eq!(
            secs(r#"{"access_token":"a","token_type":"Bearer","expires_in":"soon"}"#),
            Ok(None)
        );
        assert_eq!(
            secs(r#"{"access_token":"a","token_type":"Bearer","expires_in":{"s":1}}"#),
            Ok(None)
        );
        assert_eq!(
            secs(r#"{"access_token":"a","token_type":"Bearer"}"#),
            Ok(None)
        );
    }

    #[test]
    fn token_type_is_compared_without_case_and_defaults_to_bearer() {
        for body in [
            r#"{"access_token":"a","token_type":"bearer"}"#,
            r#"{"access_token":"a","token_type":"BEARER"}"#,
            r#"{"access_token":"a"}"#,
            r#"{"access_token":"a","token_type":null}"#,
        ] {
            assert_eq!(
                parse(body).map(|a| a.token_type_name()),
                Ok("Bearer".into())
            );
        }
        assert_eq!(
            parse(r#"{"access_token":"a","token_type":"N_A"}"#).map(|a| a.token_type_name()),
            Ok("N_A".into())
        );
    }

    #[test]
    fn refresh_token_and_scope_variants() {
        let a = parse(r#"{"access_token":"a","refresh_token":"","scope":["x","y"]}"#);
        let a = a.as_ref().map_err(Clone::clone);
        assert!(
            a.is_ok_and(|a| a.refresh_token().is_none() && a.scopes().map(Vec::len) == Some(2))
        );
        let b = parse(r#"{"access_token":"a","refresh_token":null,"scope":"x  y z"}"#);
        assert!(b.is_ok_and(|b| b.scopes().map(Vec::len) == Some(3)));
    }

    #[test]
    fn an_answer_that_is_no_token_names_the_field() {
        let missing = parse(r#"{"token_type":"Bearer","expires_in":60}"#).unwrap_err();
        assert!(missing.contains("access_token"), "{missing}");
        let empty = parse(r#"{"access_token":""}"#).unwrap_err();
        assert!(empty.contains("access_token"), "{empty}");
        let number = parse(r#"{"access_token":42}"#).unwrap_err();
        assert!(number.contains("access_token"), "{number}");
        let scope = parse(r#"{"access_token":"a","scope":7}"#).unwrap_err();
        assert!(scope.contains("scope"), "{scope}");
    }
}
