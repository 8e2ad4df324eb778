//! A person's one-time login for a refresh token, which [`OAuthRefresh`](super::OAuthRefresh) then
//! keeps alive unattended: the server's metadata ([`Discovery`], RFC 8414 / OpenID Connect
//! Discovery), the device authorization grant ([`DeviceLogin`], RFC 8628) and the authorization
//! code grant with PKCE and a loopback redirect ([`BrowserLogin`], RFC 7636 and RFC 8252 §7.3).

use std::time::Duration;

use oauth2::{
    AuthUrl, AuthorizationCode, CsrfToken, DeviceAuthorizationUrl, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, StandardDeviceAuthorizationResponse,
};
use serde::Deserialize;
use url::Url;

use super::client_auth::JWT_BEARER_ASSERTION;
use super::oauth::{OAuthClient, send};
use super::oauth_http::OAuthHttp;
use crate::{AuthError, PermanentKind, Secret, TokenSet, TransientKind, wire};

/// What an authorization server says about itself, the parts a login needs.
///
/// # Example
/// ```no_run
/// # async fn run() -> Result<(), shiftkey_auth::AuthError> {
/// use shiftkey_auth::strategies::{Discovery, LoginFlow};
///
/// let http = shiftkey_auth::credential_client().build().expect("a TLS backend");
/// let idp = Discovery::fetch(&http, &"https://login.example.com".parse().expect("a URL")).await?;
/// match idp.flow() {
///     Some(LoginFlow::Device) => println!("device code at {:?}", idp.device_authorization_endpoint),
///     Some(LoginFlow::Browser) => println!("browser at {:?}", idp.authorization_endpoint),
///     None => println!("no interactive login offered"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Discovery {
    /// The issuer, equal to the one asked for (RFC 8414 §3.3).
    pub issuer: Url,
    /// The token endpoint.
    pub token_endpoint: Url,
    /// The device authorization endpoint (RFC 8628 §4), when offered.
    #[serde(default)]
    pub device_authorization_endpoint: Option<Url>,
    /// The authorization endpoint, when offered.
    #[serde(default)]
    pub authorization_endpoint: Option<Url>,
    /// The grant types the server supports, when it says.
    #[serde(default)]
    pub grant_types_supported: Option<Vec<String>>,
    /// The PKCE methods the server supports, when it says.
    #[serde(default)]
    pub code_challenge_methods_supported: Option<Vec<String>>,
}

/// The interactive login a server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFlow {
    /// The device authorization grant: a code typed on any device with a browser.
    Device,
    /// The authorization code grant with PKCE, redirected back to a loopback listener.
    Browser,
}

/// The grant type of RFC 8628.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

impl Discovery {
    /// Reads `issuer`'s metadata: OpenID Connect's `/.well-known/openid-configuration`, then
    /// RFC 8414's `/.well-known/oauth-authorization-server`. Give it a client that follows no
    /// redirects and has a timeout ([`credential_client`](crate::credential_client)).
    ///
    /// # Errors
    /// When neither document can be read, is not JSON metadata, or names another issuer. (The
    /// endpoints it lists are checked for clear text where they are used.)
    pub async fn fetch(http: &reqwest::Client, issuer: &Url) -> Result<Self, AuthError> {
        let mut last = None;
        for well_known in ["openid-configuration", "oauth-authorization-server"] {
            let url = well_known_url(issuer, well_known)?;
            match Self::fetch_one(http, &url).await {
                Ok(found) => return found.checked(issuer, &url),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| config("no metadata document to read")))
    }

    async fn fetch_one(http: &reqwest::Client, url: &Url) -> Result<Self, AuthError> {
        let response = http
            .get(url.clone())
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(wire::transport_error)?;
        let status = response.status();
        let (body, too_large) = wire::read_bounded(response, wire::MAX_ANSWER)
            .await
            .map_err(wire::transport_error)?;
        if !status.is_success() {
            return Err(AuthError::transient(
                TransientKind::InvalidResponse,
                format!("{} answered HTTP {}", wire::endpoint(url), status.as_u16()),
            ));
        }
        if too_large {
            return Err(AuthError::transient(
                TransientKind::InvalidResponse,
                format!(
                    "{} is larger than {} KiB",
                    wire::endpoint(url),
                    wire::MAX_ANSWER / 1024
                ),
            ));
        }
        serde_json::from_slice(&body).map_err(|e| {
            AuthError::permanent(
                PermanentKind::Configuration,
                format!(
                    "{} is not authorization server metadata: {e}",
                    wire::endpoint(url)
                ),
            )
        })
    }

    fn checked(self, issuer: &Url, from: &Url) -> Result<Self, AuthError> {
        let trim = |u: &Url| u.as_str().trim_end_matches('/').to_owned();
        if trim(&self.issuer) != trim(issuer) {
            return Err(config(format!(
                "{} names the issuer {}, not {} (RFC 8414 §3.3): check the configured issuer",
                wire::endpoint(from),
                self.issuer,
                issuer
            )));
        }
        Ok(self)
    }

    /// The interactive flow to use: the device grant when the server offers it (it needs no
    /// browser on this host), else the browser flow when the server has an authorization
    /// endpoint and PKCE with `S256` (or does not list its PKCE methods).
    #[must_use]
    pub fn flow(&self) -> Option<LoginFlow> {
        let grants = self.grant_types_supported.as_ref();
        let device_listed = grants.is_none_or(|g| g.iter().any(|t| t == DEVICE_CODE_GRANT));
        if self.device_authorization_endpoint.is_some() && device_listed {
            return Some(LoginFlow::Device);
        }
        let code_listed = grants.is_none_or(|g| g.iter().any(|t| t == "authorization_code"));
        let s256 = self
            .code_challenge_methods_supported
            .as_ref()
            .is_none_or(|m| m.iter().any(|m| m == "S256"));
        (self.authorization_endpoint.is_some() && code_listed && s256).then_some(LoginFlow::Browser)
    }
}

/// OpenID Connect Discovery appends `/.well-known/openid-configuration` to the issuer's path;
/// RFC 8414 §3.1 inserts `/.well-known/oauth-authorization-server` before it.
fn well_known_url(issuer: &Url, name: &str) -> Result<Url, AuthError> {
    let mut url = issuer.clone();
    let issuer_path = issuer.path().trim_end_matches('/');
    let path = if name == "openid-configuration" {
        format!("{issuer_path}/.well-known/{name}")
    } else {
        format!("/.well-known/{name}{issuer_path}")
    };
    url.set_path(&path);
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

fn config(detail: impl Into<String>) -> AuthError {
    AuthError::permanent(PermanentKind::Configuration, detail)
}

/// The shortest wait between two polls of a device login, whatever `interval` the server sent.
const DEVICE_POLL_FLOOR: Duration = Duration::from_secs(1);

/// A device authorization in progress (RFC 8628): show [`user_code`](Self::user_code) and
/// [`verification_uri`](Self::verification_uri) to the person, then [`finish`](Self::finish)
/// polls the token endpoint until they approve, refuse, or the code expires.
///
/// # Example
/// ```no_run
/// # async fn run(client: shiftkey_auth::strategies::OAuthClient) -> Result<(), shiftkey_auth::AuthError> {
/// use shiftkey_auth::strategies::DeviceLogin;
///
/// let endpoint = "https://login.example.com/device/auth".parse().expect("a URL");
/// let login = DeviceLogin::start(&client, &endpoint).await?;
/// eprintln!("Open {} and enter {}", login.verification_uri(), login.user_code());
/// let token = login.finish(&client).await?; // holds the refresh token to store
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DeviceLogin {
    details: StandardDeviceAuthorizationResponse,
    endpoint: Url,
}

impl DeviceLogin {
    /// Asks `endpoint` for a device code for `client` and its scopes.
    ///
    /// # Errors
    /// When the endpoint refuses or cannot be reached, or the client authenticates with
    /// `private_key_jwt` (RFC 8628 polling repeats one request, and an assertion may be used
    /// only once: use the browser flow).
    pub async fn start(client: &OAuthClient, endpoint: &Url) -> Result<Self, AuthError> {
        if client.auth().is_private_key_jwt() {
            return Err(config(
                "the device flow repeats one token request, which a private_key_jwt assertion \
                 may not be: use the browser flow",
            ));
        }
        wire::check_secure(
            endpoint,
            client.insecure_allowed(),
            "the device authorization endpoint",
        )?;
        let oauth = client
            .client()
            .set_device_authorization_url(DeviceAuthorizationUrl::from_url(endpoint.clone()));
        let request = oauth
            .exchange_device_code()
            .add_scopes(client.scopes().iter().map(|s| Scope::new(s.clone())));
        let http = OAuthHttp::new(&client.http);
        let call = http.sender();
        let details = request.request_async(&call).await.map_err(|e| {
            http.failure(e, endpoint, client.clock.wall(), "a device authorization")
        })?;
        Ok(Self {
            details,
            endpoint: endpoint.clone(),
        })
    }

    /// The code the person enters.
    #[must_use]
    pub fn user_code(&self) -> &str {
        self.details.user_code().secret()
    }

    /// Where the person enters it.
    #[must_use]
    pub fn verification_uri(&self) -> &str {
        self.details.verification_uri().as_str()
    }

    /// The same page with the code filled in, when the server offers one.
    #[must_use]
    pub fn verification_uri_complete(&self) -> Option<&str> {
        self.details
            .verification_uri_complete()
            .map(|u| u.secret().as_str())
    }

    /// How long the code stays valid.
    #[must_use]
    pub fn expires_in(&self) -> Duration {
        self.details.expires_in()
    }

    /// Polls the token endpoint at the server's interval (slower after `slow_down`, and never
    /// more often than once a second, whatever `interval` the server sent) until the person
    /// approves, and returns the token with its refresh token.
    ///
    /// # Errors
    /// When the person refuses (`access_denied`), the code expires, or the server fails.
    pub async fn finish(self, client: &OAuthClient) -> Result<TokenSet, AuthError> {
        client.check_secure()?;
        let oauth = client.client();
        let http = OAuthHttp::new(&client.http);
        let call = http.sender();
        let clock = client.clock.clone();
        // An `interval` of 0 (RFC 8628 §3.2 allows any number) would poll without pause.
        let sleep = move |d: Duration| clock.sleep(d.max(DEVICE_POLL_FLOOR));
        let result = oauth
            .exchange_device_access_token(&self.details)
            .request_async(&call, sleep, None)
            .await;
        tracing::debug!(endpoint = %wire::endpoint(&self.endpoint), ok = result.is_ok(), "device login finished");
        http.finish(
            result,
            client.default_lifetime,
            &*client.clock,
            client.token_url(),
        )
    }
}

/// An authorization code login with PKCE in progress: send the person's browser to
/// [`authorize_url`](Self::authorize_url); the server redirects it to `redirect_uri` (a loopback
/// listener of yours) with `code` and `state`, which [`finish`](Self::finish) exchanges.
///
/// # Example
/// ```
/// use shiftkey_auth::strategies::{BrowserLogin, ClientAuth, OAuthClient};
///
/// let client = OAuthClient::new(
///     reqwest::Client::new(),
///     "https://login.example.com/token".parse()?,
///     "plant-sync",
///     ClientAuth::None,
/// )
/// .with_scopes(["openid", "offline_access"]);
/// let login = BrowserLogin::start(
///     &client,
///     &"https://login.example.com/auth".parse()?,
///     "http://127.0.0.1:53682/callback".parse()?,
/// )
/// .expect("https endpoints");
/// assert!(login.authorize_url().as_str().contains("code_challenge_method=S256"));
/// # Ok::<(), url::ParseError>(())
/// ```
pub struct BrowserLogin {
    authorize_url: Url,
    state: CsrfToken,
    verifier: PkceCodeVerifier,
    redirect_uri: Url,
}

impl std::fmt::Debug for BrowserLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserLogin")
            .field("redirect_uri", &self.redirect_uri.as_str())
            .finish_non_exhaustive()
    }
}

impl BrowserLogin {
    /// Builds the authorization request for `client` at `endpoint`, redirecting to
    /// `redirect_uri`, with a fresh `state` and an `S256` code challenge.
    ///
    /// # Errors
    /// When `endpoint` is not https (or loopback), or `redirect_uri` is not a loopback `http`
    /// address (RFC 8252 §7.3: the code must come back to this host only).
    pub fn start(
        client: &OAuthClient,
        endpoint: &Url,
        redirect_uri: Url,
    ) -> Result<Self, AuthError> {
        wire::check_secure(
            endpoint,
            client.insecure_allowed(),
            "the authorization endpoint",
        )?;
        if redirect_uri.scheme() != "http" || !wire::is_loopback(&redirect_uri) {
            return Err(config(format!(
                "the redirect URI {redirect_uri} must be a loopback http address (RFC 8252 §7.3)"
            )));
        }
        let oauth = client
            .client()
            .set_auth_uri(AuthUrl::from_url(endpoint.clone()))
            .set_redirect_uri(RedirectUrl::from_url(redirect_uri.clone()));
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (authorize_url, state) = oauth
            .authorize_url(CsrfToken::new_random)
            .add_scopes(client.scopes().iter().map(|s| Scope::new(s.clone())))
            .set_pkce_challenge(challenge)
            .url();
        Ok(Self {
            authorize_url,
            state,
            verifier,
            redirect_uri,
        })
    }

    /// Where to send the person's browser.
    #[must_use]
    pub fn authorize_url(&self) -> &Url {
        &self.authorize_url
    }

    /// The `state` of this login: a redirect carrying another is not its answer.
    #[must_use]
    pub fn state(&self) -> &str {
        self.state.secret()
    }

    /// The redirect URI the server sends the browser back to.
    #[must_use]
    pub fn redirect_uri(&self) -> &Url {
        &self.redirect_uri
    }

    /// Exchanges the redirect's query (`code` and `state`, or `error`) for a token.
    ///
    /// # Errors
    /// When the server sent an error, `state` does not match (a forged redirect), `code` is
    /// missing, or the exchange fails.
    pub async fn finish(self, client: &OAuthClient, query: &str) -> Result<TokenSet, AuthError> {
        let mut code = None;
        let mut state = None;
        let mut error = None;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "code" => code = Some(Secret::new(v.as_ref())),
                "state" => state = Some(v.into_owned()),
                "error" => error = Some(v.into_owned()),
                _ => {}
            }
        }
        if let Some(error) = error {
            return Err(AuthError::permanent(
                PermanentKind::Other(error.clone()),
                format!("the authorization server refused the login: {error}"),
            ));
        }
        if state.as_deref() != Some(self.state.secret().as_str()) {
            return Err(config(
                "the redirect's state does not match this login's: ignored (a stale or forged redirect)",
            ));
        }
        let Some(code) = code else {
            return Err(config("the redirect carries no authorization code"));
        };
        let oauth = client
            .client()
            .set_redirect_uri(RedirectUrl::from_url(self.redirect_uri.clone()));
        send!(
            client,
            oauth
                .exchange_code(AuthorizationCode::new(code.expose().to_owned()))
                .set_pkce_verifier(self.verifier)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategies::ClientAuth;

    fn discovery(json: serde_json::Value) -> Discovery {
        serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_device_flow_is_preferred_and_the_browser_flow_needs_s256() {
        let base = serde_json::json!({
            "issuer": "https://idp.example", "token_endpoint": "https://idp.example/token",
        });
        let with = |extra: serde_json::Value| {
            let mut v = base.clone();
            if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            discovery(v).flow()
        };
        assert_eq!(with(serde_json::json!({})), None);
        let both = serde_json::json!({
            "device_authorization_endpoint": "https://idp.example/device",
            "authorization_endpoint": "https://idp.example/auth",
        });
        assert_eq!(with(both.clone()), Some(LoginFlow::Device));
        let mut unlisted = both.clone();
        unlisted["grant_types_supported"] =
            serde_json::json!(["authorization_code", "refresh_token"]);
        assert_eq!(with(unlisted.clone()), Some(LoginFlow::Browser));
        unlisted["code_challenge_methods_supported"] = serde_json::json!(["plain"]);
        assert_eq!(with(unlisted), None);
    }

    #[test]
    fn metadata_naming_another_issuer_is_refused() {
        let d = discovery(serde_json::json!({
            "issuer": "https://evil.example", "token_endpoint": "https://evil.example/token",
        }));
        let asked: Url = "https://idp.example/"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let err = d.checked(&asked, &asked).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("evil.example")));
        let ok = discovery(serde_json::json!({
            "issuer": "https://idp.example", "token_endpoint": "https://idp.example/token",
        }));
        assert!(ok.checked(&asked, &asked).is_ok());
    }

    #[test]
    fn well_known_urls_keep_the_issuer_path() {
        let issuer: Url = "https://idp.example/realms/plant/"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let url = well_known_url(&issuer, "openid-configuration").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            url.as_str(),
            "https://idp.example/realms/plant/.well-known/openid-configuration"
        );
        let url =
            well_known_url(&issuer, "oauth-authorization-server").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            url.as_str(),
            "https://idp.example/.well-known/oauth-authorization-server/realms/plant"
        );
        let root: Url = "https://idp.example"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let url =
            well_known_url(&root, "oauth-authorization-server").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            url.as_str(),
            "https://idp.example/.well-known/oauth-authorization-server"
        );
    }

    #[tokio::test]
    async fn a_redirect_with_another_state_or_an_error_is_refused() {
        let client = OAuthClient::new(
            reqwest::Client::new(),
            "https://idp.example/token"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
            "app",
            ClientAuth::None,
        );
        let start = || {
            BrowserLogin::start(
                &client,
                &"https://idp.example/auth"
                    .parse()
                    .unwrap_or_else(|e| panic!("{e}")),
                "http://127.0.0.1:4000/cb"
                    .parse()
                    .unwrap_or_else(|e| panic!("{e}")),
            )
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let err = start().finish(&client, "code=abc&state=forged").await;
        assert!(err.is_err_and(|e| e.to_string().contains("state does not match")));
        let err = start().finish(&client, "error=access_denied").await;
        assert!(err.is_err_and(|e| e.to_string().contains("access_denied")));
        let remote = BrowserLogin::start(
            &client,
            &"https://idp.example/auth"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
            "http://example.com/cb"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        );
        assert!(remote.is_err(), "a redirect to another host is refused");
    }
}
