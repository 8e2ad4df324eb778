//! OAuth 2.0 grants through the `oauth2` crate: refresh_token with rotation, and the resource
//! owner password grant as the re-authentication it falls back on.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
};
use oauth2::{
    AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, ResourceOwnerPassword,
    ResourceOwnerUsername, Scope, StandardRevocableToken, TokenUrl,
};
use url::Url;

use super::client_auth::{ClientAuth, JWT_BEARER_ASSERTION};
use super::oauth_http::OAuthHttp;
use super::response::TokenAnswer;
use crate::{AuthError, AuthStrategy, Clock, PermanentKind, Secret, TokenSet, TokioClock};

/// oauth2's client with [`TokenAnswer`], which reads every token response shape real servers send.
type TokenClient = oauth2::Client<
    BasicErrorResponse,
    TokenAnswer,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// A client of one token endpoint, shared by the OAuth strategies.
///
/// Give it a reqwest client that follows **no redirects** (`redirect::Policy::none()`) and has a
/// timeout: a token request carries the client secret, a password or a refresh token, and a
/// redirect answer is then an error instead of a copy of them sent elsewhere. An `http://` token
/// URL is refused unless it is a loopback address or [`OAuthClient::allow_insecure_http`] is set.
///
/// # Example
/// ```
/// use shiftkey_auth::strategies::{ClientAuth, OAuthClient};
///
/// let client = OAuthClient::new(
///     reqwest::Client::new(),
///     "https://login.example.com/oauth/token".parse()?,
///     "plant-sync",
///     ClientAuth::SecretBasic("s3cret".into()),
/// )
/// .with_scopes(["api"]);
/// # Ok::<(), url::ParseError>(())
/// ```
#[derive(Debug, Clone)]
pub struct OAuthClient {
    pub(super) http: reqwest::Client,
    token_url: Url,
    client_id: String,
    auth: ClientAuth,
    scopes: Vec<String>,
    pub(super) default_lifetime: Duration,
    pub(super) clock: Arc<dyn Clock>,
    allow_insecure_http: bool,
}

impl OAuthClient {
    /// A client of the token endpoint `token_url` as `client_id`, authenticating with `auth`.
    ///
    /// `http` is your reqwest client (its TLS, proxy and timeout settings are used as they are).
    pub fn new(
        http: reqwest::Client,
        token_url: Url,
        client_id: impl Into<String>,
        auth: ClientAuth,
    ) -> Self {
        Self {
            http,
            token_url,
            client_id: client_id.into(),
            auth,
            scopes: Vec::new(),
            default_lifetime: Duration::from_secs(3600),
            clock: Arc::new(TokioClock::new()),
            allow_insecure_http: false,
        }
    }

    /// Allows an `http://` token URL that is not a loopback address (default false). A lab switch:
    /// credentials then cross the network in clear text.
    #[must_use]
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = allow;
        self
    }

    pub(super) fn check_secure(&self) -> Result<(), AuthError> {
        crate::wire::check_secure(
            &self.token_url,
            self.allow_insecure_http,
            "the token endpoint",
        )
    }

    /// Scopes to ask for on password and client_credentials grants.
    #[must_use]
    pub fn with_scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Lifetime assumed when the server sends neither `expires_in` nor a JWT (default 1 h).
    #[must_use]
    pub fn with_default_lifetime(mut self, lifetime: Duration) -> Self {
        self.default_lifetime = lifetime;
        self
    }

    /// The clock used for assertion timestamps and `Retry-After` dates (default [`TokioClock`]).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The token endpoint.
    #[must_use]
    pub fn token_url(&self) -> &Url {
        &self.token_url
    }

    pub(super) fn auth(&self) -> &ClientAuth {
        &self.auth
    }

    pub(super) fn insecure_allowed(&self) -> bool {
        self.allow_insecure_http
    }

    pub(super) fn scopes(&self) -> &[String] {
        &self.scopes
    }

    pub(super) fn client(&self) -> TokenClient {
        let token_url = TokenUrl::from_url(self.token_url.clone());
        let client = oauth2::Client::<
            BasicErrorResponse,
            TokenAnswer,
            BasicTokenIntrospectionResponse,
            StandardRevocableToken,
            BasicRevocationErrorResponse,
        >::new(ClientId::new(self.client_id.clone()))
        .set_token_uri(token_url);
        match &self.auth {
            ClientAuth::SecretBasic(s) => client
                .set_client_secret(ClientSecret::new(s.expose().to_owned()))
                .set_auth_type(AuthType::BasicAuth),
            ClientAuth::SecretPost(s) => client
                .set_client_secret(ClientSecret::new(s.expose().to_owned()))
                .set_auth_type(AuthType::RequestBody),
            #[cfg(feature = "private-key-jwt")]
            ClientAuth::PrivateKeyJwt(_) => client.set_auth_type(AuthType::RequestBody),
            ClientAuth::None => client.set_auth_type(AuthType::RequestBody),
        }
    }

    pub(super) fn assertion(&self) -> Result<Option<Secret>, AuthError> {
        #[cfg(feature = "private-key-jwt")]
        if let ClientAuth::PrivateKeyJwt(signer) = &self.auth {
            return signer
                .assertion(&self.client_id, self.token_url.as_str(), &*self.clock)
                .map(Some);
        }
        Ok(None)
    }
}

/// Sends one oauth2 token request with the client's authentication and finishes it into a token.
macro_rules! send {
    ($client:expr, $request:expr) => {{
        let client: &OAuthClient = $client;
        client.check_secure()?;
        let mut request = $request;
        if let Some(assertion) = client.assertion()? {
            request = request
                .add_extra_param("client_assertion_type", JWT_BEARER_ASSERTION)
                .add_extra_param("client_assertion", assertion.expose().to_owned());
        }
        let http = OAuthHttp::new(&client.http);
        let call = http.sender();
        let result = request.request_async(&call).await;
        http.finish(
            result,
            client.default_lifetime,
            &*client.clock,
            client.token_url(),
        )
    }};
}
pub(super) use send;

/// The resource owner password grant: user name and password for a token (and usually a
/// refresh token). Use it alone, or as [`OAuthRefresh`]'s fallback.
#[derive(Debug, Clone)]
pub struct OAuthPassword {
    client: OAuthClient,
    username: String,
    password: Secret,
}

impl OAuthPassword {
    /// A password grant for `username`.
    pub fn new(client: OAuthClient, username: impl Into<String>, password: Secret) -> Self {
        Self {
            client,
            username: username.into(),
            password,
        }
    }
}

#[async_trait]
impl AuthStrategy for OAuthPassword {
    async fn acquire(&self, _previous: Option<&TokenSet>) -> Result<TokenSet, AuthError> {
        let oauth = self.client.client();
        let username = ResourceOwnerUsername::new(self.username.clone());
        let password = ResourceOwnerPassword::new(self.password.expose().to_owned());
        let scopes = self.client.scopes.iter().cloned().map(Scope::new);
        let result: Result<TokenSet, AuthError> = send!(
            &self.client,
            oauth
                .exchange_password(&username, &password)
                .add_scopes(scopes)
        );
        result.map_err(|e| match e {
            // A refused password grant is the user's credentials, not a token's.
            AuthError::Permanent {
                kind: PermanentKind::InvalidGrant,
                detail,
            } => AuthError::permanent(PermanentKind::BadCredentials, detail),
            other => other,
        })
    }

    fn name(&self) -> &str {
        "oauth-password"
    }
}

/// The refresh_token grant with rotation (RFC 6749 §6, RFC 9700 §4.14).
///
/// - Refreshes with the previous token's refresh token (or the initial one given here).
/// - Keeps the rotated refresh token the server returns; when the server returns none, the old
///   one stays in use.
/// - On `invalid_grant` (expired, revoked, or reused refresh token) it re-authenticates through the
///   configured fallback strategy, or fails with a permanent error when there is none. It never
///   retries the same refresh token: after a reuse the server has revoked the whole family.
///
/// # Example
/// ```
/// use shiftkey_auth::strategies::{ClientAuth, OAuthClient, OAuthPassword, OAuthRefresh};
///
/// let client = OAuthClient::new(
///     reqwest::Client::new(),
///     "https://login.example.com/oauth/token".parse()?,
///     "plant-sync",
///     ClientAuth::SecretBasic("s3cret".into()),
/// );
/// let login = OAuthPassword::new(client.clone(), "svc-mes", "pa55".into());
/// let strategy = OAuthRefresh::new(client).with_fallback(login);
/// # Ok::<(), url::ParseError>(())
/// ```
#[derive(Debug, Clone)]
pub struct OAuthRefresh {
    client: OAuthClient,
    initial: Option<Secret>,
    fallback: Option<Arc<dyn AuthStrategy>>,
}

impl OAuthRefresh {
    /// A refreshing strategy with no refresh token yet (the fallback gets the first one).
    pub fn new(client: OAuthClient) -> Self {
        Self {
            client,
            initial: None,
            fallback: None,
        }
    }

    /// The refresh token to start from (for example one loaded from a store).
    #[must_use]
    pub fn with_refresh_token(mut self, refresh_token: Secret) -> Self {
        self.initial = Some(refresh_token);
        self
    }

    /// The strategy to re-authenticate with when there is no usable refresh token.
    #[must_use]
    pub fn with_fallback(mut self, fallback: impl AuthStrategy + 'static) -> Self {
        self.fallback = Some(Arc::new(fallback));
        self
    }

    async fn fall_back(
        &self,
        previous: Option<&TokenSet>,
        cause: AuthError,
    ) -> Result<TokenSet, AuthError> {
        match &self.fallback {
            Some(fallback) => {
                tracing::warn!(%cause, fallback = fallback.name(), "refresh token unusable; re-authenticating");
                fallback.acquire(previous).await
            }
            None => Err(cause),
        }
    }
}

#[async_trait]
impl AuthStrategy for OAuthRefresh {
    async fn acquire(&self, previous: Option<&TokenSet>) -> Result<TokenSet, AuthError> {
        let refresh = previous
            .and_then(|p| p.refresh_token.clone())
            .or_else(|| self.initial.clone());
        let Some(refresh) = refresh else {
            // The first fetch of a fresh store: nothing is wrong, the fallback logs in.
            return match &self.fallback {
                // The first fetch of a fresh store: nothing is wrong.
                Some(fallback) if previous.is_none() => {
                    tracing::info!(
                        fallback = fallback.name(),
                        "no refresh token yet: obtaining the first tokens with the fallback"
                    );
                    fallback.acquire(previous).await
                }
                // A token set without a refresh token: the provider stopped issuing them, and
                // every refresh is a full login from now on.
                Some(fallback) => {
                    tracing::warn!(
                        fallback = fallback.name(),
                        "the last token came without a refresh token: logging in again with the fallback"
                    );
                    fallback.acquire(previous).await
                }
                None => Err(AuthError::permanent(
                    PermanentKind::NoRefreshToken,
                    "no refresh token yet, and no fallback to obtain one: a person logs in once first",
                )),
            };
        };
        let oauth = self.client.client();
        let rt = oauth2::RefreshToken::new(refresh.expose().to_owned());
        let result: Result<TokenSet, AuthError> =
            send!(&self.client, oauth.exchange_refresh_token(&rt));
        match result {
            Ok(mut token) => {
                if token.refresh_token.is_none() {
                    token.refresh_token = Some(refresh);
                }
                if let Some(old) = previous.and_then(|p| p.scope.as_deref())
                    && let Some(new) = token.scope.as_deref()
                    && !same_scope(old, new)
                {
                    tracing::info!(
                        previous_scope = old,
                        scope = new,
                        "the server granted a different scope on refresh"
                    );
                }
                Ok(token)
            }
            Err(
                e @ AuthError::Permanent {
                    kind: PermanentKind::InvalidGrant,
                    ..
                },
            ) => self.fall_back(previous, e).await,
            Err(e) => Err(e),
        }
    }

    fn name(&self) -> &str {
        "oauth-refresh"
    }
}

/// Whether two space-delimited scope strings name the same scopes, in any order.
fn same_scope(a: &str, b: &str) -> bool {
    let a: std::collections::BTreeSet<&str> = a.split_whitespace().collect();
    let b: std::collections::BTreeSet<&str> = b.split_whitespace().collect();
    a == b
}
