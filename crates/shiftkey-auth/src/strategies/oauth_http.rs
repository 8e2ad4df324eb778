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
use oauth2::basic::BasicTokenResponse;
use oauth2::{RequestTokenError, TokenResponse};

use crate::{AuthError, Secret, TokenSet, TransientKind, wire};

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
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
        let body = response.bytes().await?.to_vec();
        if let Ok(mut last) = last.lock() {
            *last = Some(Answer {
                status,
                headers: headers.clone(),
                body: body.clone(),
            });
        }
        let mut out = http::Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
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
        result: Result<BasicTokenResponse, RequestTokenError<reqwest::Error, TE>>,
        default_lifetime: std::time::Duration,
        clock: &dyn crate::Clock,
    ) -> Result<TokenSet, AuthError>
    where
        TE: oauth2::ErrorResponse + 'static,
    {
        let now_wall = clock.wall();
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
                token.token_type = response.token_type().as_ref().to_owned();
                token.scope = response
                    .scopes()
                    .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "));
                token.server_date = self.last_date();
                Ok(token)
            }
            Err(RequestTokenError::Request(e)) => Err(wire::transport_error(e)),
            Err(other) => {
                let last = self.last.lock().ok().and_then(|mut l| l.take());
                match last {
                    Some(a) if !a.status.is_success() => Err(wire::classify_failure(
                        a.status, &a.headers, &a.body, now_wall,
                    )),
                    Some(a) => Err(AuthError::transient(
                        TransientKind::InvalidResponse,
                        format!(
                            "token endpoint answered HTTP {} with a body that is not a token response: {}",
                            a.status.as_u16(),
                            describe(&other)
                        ),
                    )),
                    None => Err(AuthError::transient(
                        TransientKind::InvalidResponse,
                        describe(&other),
                    )),
                }
            }
        }
    }
}

/// Describes an oauth2 error without echoing the response body (it could hold a token).
fn describe<TE: oauth2::ErrorResponse + 'static>(
    e: &RequestTokenError<reqwest::Error, TE>,
) -> String {
    match e {
        RequestTokenError::Parse(err, _body) => format!("unparsable response ({})", err.inner()),
        RequestTokenError::Other(msg) => msg.clone(),
        RequestTokenError::ServerResponse(_) => "OAuth error response".to_owned(),
        RequestTokenError::Request(err) => err.to_string(),
    }
}
