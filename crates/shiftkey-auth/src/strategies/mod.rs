//! The strategies of design §3.1 (`docs/design.md`): bearer login, OAuth refresh (with a password
//! grant to fall back on), and service accounts (client credentials with a secret or a
//! `private_key_jwt` assertion).

mod bearer;
mod client_auth;
mod login;
mod oauth;
mod oauth_http;
#[cfg(feature = "private-key-jwt")]
mod private_key_jwt;
mod response;
mod service_account;

pub use bearer::{BearerLogin, BearerLoginConfig, BodyFormat};
pub use client_auth::ClientAuth;
pub use login::{BrowserLogin, DEVICE_CODE_GRANT, DeviceLogin, Discovery, LoginFlow};
pub use oauth::{OAuthClient, OAuthPassword, OAuthRefresh};
#[cfg(feature = "private-key-jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "private-key-jwt")))]
pub use private_key_jwt::{JwtAlgorithm, MAX_ASSERTION_LIFETIME, PrivateKeyJwt};
pub use service_account::ServiceAccount;
