//! The [`AuthStrategy`] trait: how a credential turns into a token.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{AuthError, TokenSet};

/// Obtains tokens for one credential.
///
/// # Contract
/// - `acquire` is called by one [`TokenManager`](crate::TokenManager) refresher at a time for a
///   given manager (single flight), but a strategy shared by several managers must be `Sync`.
/// - `previous` is the last token this credential had (possibly already rejected). A refreshing
///   strategy uses its refresh token; a login strategy ignores it.
/// - Errors say whether trying again can help ([`AuthError::Transient`]) or not
///   ([`AuthError::Permanent`]). A strategy never retries on its own: the manager owns backoff.
/// - The returned [`TokenSet`]'s `generation` is ignored; the manager assigns it.
#[async_trait]
pub trait AuthStrategy: Debug + Send + Sync {
    /// Gets a new token, refreshing `previous` when the strategy can.
    async fn acquire(&self, previous: Option<&TokenSet>) -> Result<TokenSet, AuthError>;

    /// A short name for logs and metrics (`oauth-refresh`, `bearer-login`, ...).
    fn name(&self) -> &str;

    /// Whether the strategy can renew without a person typing a secret (always true for the
    /// strategies in this crate; a device-code flow would say false).
    fn unattended(&self) -> bool {
        true
    }
}

#[async_trait]
impl<S: AuthStrategy + ?Sized> AuthStrategy for Arc<S> {
    async fn acquire(&self, previous: Option<&TokenSet>) -> Result<TokenSet, AuthError> {
        (**self).acquire(previous).await
    }

    fn name(&self) -> &str {
        (**self).name()
    }

    fn unattended(&self) -> bool {
        (**self).unattended()
    }
}
