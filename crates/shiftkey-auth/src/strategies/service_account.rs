//! Service accounts: the client_credentials grant (RFC 6749 §4.4).

use async_trait::async_trait;
use oauth2::Scope;

use super::client_auth::JWT_BEARER_ASSERTION;
use super::oauth::{OAuthClient, send};
use super::oauth_http::OAuthHttp;
use crate::{AuthError, AuthStrategy, TokenSet};

/// A service account: client_credentials with a client secret (basic or post) or a
/// `private_key_jwt` assertion, renewed by asking again (there is no refresh token, RFC 6749 §4.4.3).
///
/// # Example
/// ```
/// use shiftkey_auth::strategies::{ClientAuth, OAuthClient, ServiceAccount};
///
/// let client = OAuthClient::new(
///     reqwest::Client::new(),
///     "https://login.example.com/oauth/token".parse()?,
///     "plant-sync",
///     ClientAuth::SecretPost("s3cret".into()),
/// );
/// let strategy = ServiceAccount::new(client.with_scopes(["api"]));
/// # Ok::<(), url::ParseError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ServiceAccount {
    client: OAuthClient,
}

impl ServiceAccount {
    /// A service account of `client`.
    pub fn new(client: OAuthClient) -> Self {
        Self { client }
    }
}

#[async_trait]
impl AuthStrategy for ServiceAccount {
    async fn acquire(&self, _previous: Option<&TokenSet>) -> Result<TokenSet, AuthError> {
        let oauth = self.client.client();
        let scopes = self.client.scopes().iter().cloned().map(Scope::new);
        let mut token: TokenSet = send!(
            &self.client,
            oauth.exchange_client_credentials().add_scopes(scopes)
        )?;
        // Some servers send a refresh token anyway; a service account never needs it.
        token.refresh_token = None;
        Ok(token)
    }

    fn name(&self) -> &str {
        "service-account"
    }
}
