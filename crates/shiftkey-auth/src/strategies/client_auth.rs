//! How a client proves who it is at the token endpoint: a secret (basic or post) or a signed
//! `private_key_jwt` assertion (RFC 7523, feature `private-key-jwt`: [`super::private_key_jwt`]).

#[cfg(feature = "private-key-jwt")]
use super::private_key_jwt::PrivateKeyJwt;
use crate::Secret;

/// The client authentication method at the token endpoint.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ClientAuth {
    /// `client_secret_basic`: id and secret in an `Authorization: Basic` header.
    SecretBasic(Secret),
    /// `client_secret_post`: id and secret in the form body.
    SecretPost(Secret),
    /// `private_key_jwt`: a fresh signed assertion per request (feature `private-key-jwt`).
    #[cfg(feature = "private-key-jwt")]
    #[cfg_attr(docsrs, doc(cfg(feature = "private-key-jwt")))]
    PrivateKeyJwt(PrivateKeyJwt),
    /// A public client: only the client id is sent.
    None,
}

impl ClientAuth {
    /// Whether the client signs a fresh assertion per request (`private_key_jwt`).
    pub(crate) fn is_private_key_jwt(&self) -> bool {
        #[cfg(feature = "private-key-jwt")]
        if matches!(self, Self::PrivateKeyJwt(_)) {
            return true;
        }
        false
    }
}

/// `client_assertion_type` of RFC 7523.
pub(crate) const JWT_BEARER_ASSERTION: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
