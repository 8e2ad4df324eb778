//! The small adapter that sends `oauth2`'s requests through the workspace's reqwest client.
//!
//! Using oauth2 5 with `default-features = false` and this adapter keeps one reqwest in the tree.
//! It also remembers the last answer's status, headers and body, because oauth2's error type
//! drops `Retry-After` and `Date`, which the manager needs for backoff and skew.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http::{HeaderMap, StatusCode};
use oauth2::{RequestTokenError, TokenResponse};

use super::response::TokenAnswer;
use crate::{AuthError, Secret, TokenSet, TransientKind, wire};

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
    /// The body was longer than [`wire::MAX_ANSWER`] and was not read past it.
    too_large: bool,
}

pub(crate) struct OAuthHttp {
    client: reqwest::Client,
    last: Arc<Mutex<Option<Answer>>>,
}

impl OAuthHttp {
    pub(crate) fn new(client: &reqwest::Client) -> Self {
        Self {
            client: client.clone(),
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// A function for `request_async` whose futures own what they use (so they are `Send` for
    /// any lifetime, which `async_trait` needs).
    pub(crate) fn sender(
        &self,
    ) -> impl Fn(
        oauth2::HttpRequest,
    ) -> Pin<
        Box<dyn Future<Output = Result<oauth2::HttpResponse, reqwest::Error>> + Send>,
    > + use<> {
        let client = self.client.clone();
        let last = Arc::clone(&self.last);
        move |request| Box::pin(call(client.clone(), Arc::clone(&last), request))
    }
}

async fn call(
    client: reqwest::Client,
    last: Arc<Mutex<Option<Answer>>>,
    request: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, reqwest::Error> {
    {
        let (parts, body) = request.into_parts();
        let response = client
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let headers = response.headers().clone();
        let (body, too_large) = wire::read_bounded(response, wire::MAX_ANSWER).await?;
        if let Ok(mut last) = last.lock() {
            *last = Some(Answer {
                status,
                headers: headers.clone(),
                body: body.clone(),
                too_large,
            });
        }
        let mut out = http::Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        label_json(&mut out);
        Ok(out)
    }
}

/// Labels a JSON object body sent as `text/plain` (or with no type) `application/json`, as
/// authlib and google-auth accept it: `oauth2` refuses any other content type before parsing.
fn label_json(response: &mut oauth2::HttpResponse) {
    let typed_json = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    let looks_json = response
        .body()
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    if !typed_json && looks_json {
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
    }
}

impl OAuthHttp {
    fn last_date(&self) -> Option<SystemTime> {
        self.last
            .lock()
            .ok()?
            .as_ref()
            .and_then(|a| wire::server_date(&a.headers))
    }

    /// Turns oauth2's result into a [`TokenSet`] or an [`AuthError`] of the right kind.
    pub(crate) fn finish<TE>(
        &self,
        result: Result<TokenAnswer, RequestTokenError<reqwest::Error, TE>>,
        default_lifetime: std::time::Duration,
        clock: &dyn crate::Clock,
        endpoint: &url::Url,
    ) -> Result<TokenSet, AuthError>
    where
        TE: oauth2::ErrorResponse + 'static,
    {
        let now_wall = clock.wall();
        let too_large = self
            .last
            .lock()
            .ok()
            .is_some_and(|l| l.as_ref().is_some_and(|a| a.too_large));
        if too_large {
            return Err(AuthError::transient(
                TransientKind::InvalidResponse,
                format!(
                    "the answer of the token endpoint {} is larger than the {} KiB limit",
                    wire::endpoint(endpoint),
                    wire::MAX_ANSWER / 1024
                ),
            ));
        }
        match result {
            Ok(response) => {
                let access = response.access_token().secret();
                let (lifetime, source) =
                    wire::lifetime(response.expires_in(), access, default_lifetime, now_wall);
                let mut token = TokenSet::new(access.as_str(), lifetime, clock.now(), now_wall);
                token.lifetime_source = source;
                token.refresh_token = response
                    .refresh_token()
                    .map(|r| Secret::new(r.secret().as_str()));
                token.token_type = response.token_type_name();
                token.scope = response
                    .scopes()
                    .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "));
                token.server_date = self.last_date();
                Ok(token)
            }
            Err(e) => Err(self.failure(e, endpoint, now_wall, "a token response")),
        }
    }

    /// The error of a failed oauth2 request, read from the answer this adapter kept: a redirect
    /// refused, a classified HTTP failure, or a body that is not what the endpoint should send.
    pub(crate) fn failure<TE>(
        &self,
        error: RequestTokenError<reqwest::Error, TE>,
        endpoint: &url::Url,
        now_wall: SystemTime,
        expected: &str,
    ) -> AuthError
    where
        TE: oauth2::ErrorResponse + 'static,
    {
        if let RequestTokenError::Request(e) = error {
            return wire::transport_error(e);
        }
        let last = self.last.lock().ok().and_then(|mut l| l.take());
        match last {
            Some(a) if a.status.is_redirection() => {
                wire::redirected(a.status, &a.headers, endpoint)
            }
            Some(a) if !a.status.is_success() => {
                wire::classify_failure(a.status, &a.headers, &a.body, now_wall)
            }
            Some(a) => AuthError::transient(
                TransientKind::InvalidResponse,
                format!(
                    "{} answered HTTP {} with a body that is not {expected}: {}",
                    wire::endpoint(endpoint),
                    a.status.as_u16(),
                    describe(&error)
                ),
            ),
            None => AuthError::transient(TransientKind::InvalidResponse, describe(&error)),
        }
    }
}

/// Describes an oauth2 error without echoing the response body (it could hold a token).
fn describe<TE: oauth2::ErrorResponse + 'static>(
    e: &RequestTokenError<reqwest::Error, TE>,
) -> String {
    match e {
        RequestTokenError::Parse(err, _body) => {
            let path = err.path().to_string();
            if path == "." {
                format!("unparsable response ({})", err.inner())
            } else {
                format!("field `{path}`: {}", err.inner())
            }
        }
        RequestTokenError::Other(msg) => msg.clone(),
        RequestTokenError::ServerResponse(_) => "OAuth error response".to_owned(),
        RequestTokenError::Request(err) => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use oauth2::basic::BasicErrorResponse;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// What `oauth2` does with a 200 answer, then what the strategies do with its result.
    fn answer(body: &[u8]) -> Result<TokenSet, AuthError> {
        let http = OAuthHttp::new(&reqwest::Client::new());
        if let Ok(mut last) = http.last.lock() {
            *last = Some(Answer {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                body: body.to_vec(),
                too_large: false,
            });
        }
        let parsed: Result<TokenAnswer, RequestTokenError<reqwest::Error, BasicErrorResponse>> =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body))
                .map_err(|e| RequestTokenError::Parse(e, body.to_vec()));
        let url: url::Url = "https://idp.example.com/token".parse().unwrap();
        http.finish(
            parsed,
            Duration::from_secs(3600),
            &crate::TokioClock::new(),
            &url,
        )
    }

    #[test]
    fn every_expires_in_shape_gives_a_token_with_a_sane_lifetime() {
        let cases = [
            (json!(3599), 3599),
            (json!("3599"), 3599),
            (json!(3599.7), 3599),
            (json!(9.3e18), crate::MAX_LIFETIME.as_secs()),
            (json!(u64::MAX), crate::MAX_LIFETIME.as_secs()),
            (json!("1e40"), crate::MAX_LIFETIME.as_secs()),
            (json!(0.2), 1),
            (json!(null), 3600),
            (json!("soon"), 3600),
            (json!(-60), 3600),
        ];
        for (expires_in, want) in cases {
            let body =
                json!({"access_token": "a", "token_type": "bearer", "expires_in": expires_in});
            let token = answer(body.to_string().as_bytes()).unwrap();
            assert_eq!(token.lifetime.as_secs(), want, "{body}");
            assert_eq!(token.token_type, "Bearer");
            // The instants derived from it exist (2^63 s used to overflow here).
            assert!(token.expires_at() > token.issued_at);
        }
    }

    #[test]
    fn no_token_in_the_answer_is_an_error_naming_the_field() {
        for (body, field) in [
            (r#"{"token_type":"Bearer"}"#, "access_token"),
            (r#"{"access_token":7}"#, "access_token"),
            (r#"{"access_token":"a","token_type":5}"#, "token_type"),
            (r#"{"access_token":"a","scope":{}}"#, "scope"),
        ] {
            let err = answer(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(field), "{body}: {err}");
        }
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[0-9 .e+-]{0,12}".prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn token_like() -> impl Strategy<Value = Value> {
        let field = prop_oneof![
            Just("access_token"),
            Just("token_type"),
            Just("expires_in"),
            Just("refresh_token"),
            Just("scope"),
            Just("id_token"),
        ];
        prop::collection::btree_map(field, json_value(), 0..6)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
    }

    proptest! {
        /// Whatever JSON a token endpoint sends with a 200: never a panic; a token has a
        /// non-empty access token and a lifetime in [1 s, 1 year]; anything else is an error
        /// that says the answer is no token response and names the field when there is one.
        #[test]
        fn arbitrary_token_endpoint_json(value in prop_oneof![json_value(), token_like()]) {
            let body = value.to_string();
            match answer(body.as_bytes()) {
                Ok(token) => {
                    prop_assert!(!token.access_token.expose().is_empty());
                    prop_assert!(token.lifetime >= crate::MIN_LIFETIME);
                    prop_assert!(token.lifetime <= crate::MAX_LIFETIME);
                    prop_assert!(token.expires_at() > token.issued_at);
                }
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(msg.contains("not a token response"), "{}", msg);
                    if value.is_object() {
                        prop_assert!(msg.contains("field `") || msg.contains("access_token"), "{}", msg);
                    }
                }
            }
        }
    }
}
