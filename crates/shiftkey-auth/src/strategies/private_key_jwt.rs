//! `private_key_jwt` (RFC 7523 §2.2): the client proves who it is with an assertion signed by
//! its private key. Behind the feature `private-key-jwt`, which compiles the JWT signer
//! (`jsonwebtoken` over aws-lc): a client with a secret does not build a C cryptography library.

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use serde::Serialize;

use crate::{AuthError, Clock, PermanentKind, Secret};

/// Signature algorithms for `private_key_jwt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

/// A `private_key_jwt` signer (RFC 7523 §2.2).
///
/// Every call to the token endpoint gets a fresh assertion: `iss` = `sub` = client id,
/// `aud` = the token endpoint URL, `iat` = now, `exp - iat` = the configured lifetime (at most
/// 5 minutes), and a random 128-bit `jti`, so a server that remembers `jti`s never sees one twice.
#[derive(Clone)]
pub struct PrivateKeyJwt {
    key: EncodingKey,
    alg: JwtAlgorithm,
    kid: Option<String>,
    lifetime: Duration,
}

impl fmt::Debug for PrivateKeyJwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKeyJwt")
            .field("key", &"[REDACTED]")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    jti: String,
}

/// The longest assertion lifetime accepted (design §3.1, `docs/design.md`).
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(300);

impl PrivateKeyJwt {
    /// A signer from a PEM private key (PKCS#8, or PKCS#1 for RSA).
    ///
    /// A key that does not parse for `alg` is a permanent configuration error; the error never
    /// contains the key.
    pub fn from_pem(pem: &[u8], alg: JwtAlgorithm) -> Result<Self, AuthError> {
        let key = match alg {
            JwtAlgorithm::RS256 | JwtAlgorithm::PS256 => EncodingKey::from_rsa_pem(pem),
            JwtAlgorithm::ES256 | JwtAlgorithm::ES384 => EncodingKey::from_ec_pem(pem),
            JwtAlgorithm::EdDSA => EncodingKey::from_ed_pem(pem),
        }
        .map_err(|e| {
            AuthError::permanent(
                PermanentKind::Configuration,
                format!("private_key_jwt key does not parse as {alg:?}: {e}"),
            )
        })?;
        Ok(Self {
            key,
            alg,
            kid: None,
            lifetime: Duration::from_secs(60),
        })
    }

    /// Sets the `kid` header (when the server holds several keys for the client).
    #[must_use]
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// Sets the assertion lifetime (default 60 s); more than 5 minutes is refused.
    pub fn with_lifetime(mut self, lifetime: Duration) -> Result<Self, AuthError> {
        if lifetime.is_zero() || lifetime > MAX_ASSERTION_LIFETIME {
            return Err(AuthError::permanent(
                PermanentKind::Configuration,
                format!(
                    "private_key_jwt assertion lifetime must be in (0, 5 min], got {lifetime:?}"
                ),
            ));
        }
        self.lifetime = lifetime;
        Ok(self)
    }

    /// A fresh signed assertion for `client_id` at the token endpoint `audience`.
    pub fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        clock: &dyn Clock,
    ) -> Result<Secret, AuthError> {
        let iat = clock
            .wall()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| {
                AuthError::permanent(
                    PermanentKind::Configuration,
                    "the wall clock is before 1970",
                )
            })?
            .as_secs();
        let mut jti = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut jti);
        let claims = Claims {
            iss: client_id,
            sub: client_id,
            aud: audience,
            iat,
            exp: iat + self.lifetime.as_secs().max(1),
            jti: URL_SAFE_NO_PAD.encode(jti),
        };
        let mut header = Header::new(match self.alg {
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::PS256 => Algorithm::PS256,
            JwtAlgorithm::ES256 => Algorithm::ES256,
            JwtAlgorithm::ES384 => Algorithm::ES384,
            JwtAlgorithm::EdDSA => Algorithm::EdDSA,
        });
        header.kid.clone_from(&self.kid);
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(Secret::new)
            .map_err(|e| {
                AuthError::permanent(
                    PermanentKind::Configuration,
                    format!("signing the client assertion failed: {e}"),
                )
            })
    }
}
