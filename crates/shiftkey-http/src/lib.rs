//! An authenticated, self-healing reqwest client: wrap your `reqwest::Client` and requests never
//! fail because a token expired, was killed early, or a session timed out.
//!
//! # Overview
//! - [`AuthMiddleware`]: a `reqwest-middleware` middleware over a
//!   [`shiftkey_auth::TokenManager`]: injects the token, refreshes and retries once on rejection
//!   (one refresh for any number of requests that died with the same token), applies
//!   [`shiftkey_policy`] (429 / 5xx / timeouts with backoff, retry budget, separate auth and server
//!   circuit breakers, error-rate monitor), and learns the server's real limits.
//! - [`Classifier`]: decides whether a response means "dead token". [`BearerClassifier`] reads
//!   `WWW-Authenticate` (RFC 6750); adapters supply their own (Teamcenter reads the body).
//! - [`Injector`]: `Authorization: Bearer`, another header, or a cookie.
//! - [`limits`]: premature deaths → lifetime cap and idle limit; [`AuthMiddleware::keepalive`]
//!   keeps an idle session alive.
//! - [`HttpError`]: what the middleware itself can fail with.
//! - [`resource_client`] / [`same_origin_redirects`]: the reqwest client to put under it —
//!   deadlines, and no credential ever sent to another origin by a redirect.
//!
//! # Example: wrap your client
//! ```no_run
//! use shiftkey_auth::TokenManager;
//! use shiftkey_auth::strategies::{ClientAuth, OAuthClient, ServiceAccount};
//! use shiftkey_http::AuthMiddleware;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let http = reqwest::Client::new();
//! let oauth = OAuthClient::new(http.clone(), "https://login.example.com/token".parse()?, "plant-sync", ClientAuth::SecretBasic("s3cret".into()));
//! let manager = TokenManager::builder(ServiceAccount::new(oauth)).build()?;
//! let client = reqwest_middleware::ClientBuilder::new(http).with(AuthMiddleware::builder(manager).build()).build();
//! let orders = client.get("https://mes.example.com/api/orders").send().await?;
//! # Ok(()) }
//! ```
//!
//! Metrics (through the `metrics` facade, each labelled `client` with the middleware's name;
//! described and created at 0 when a middleware is built, see [`telemetry`]):
//! `shiftkey_http_requests_total{outcome}`,
//! `shiftkey_http_unauthorized_total{result="recovered"|"surfaced"}`,
//! `shiftkey_http_retries_total{reason}`, `shiftkey_http_premature_deaths_total`,
//! `shiftkey_http_keepalives_total`, `shiftkey_http_keepalive_failures_total`, `shiftkey_learned_lifetime_seconds`,
//! `shiftkey_learned_idle_seconds`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod classify;
mod client;
mod error;
mod inject;
mod keepalive;
pub mod limits;
mod middleware;
pub mod telemetry;

pub use classify::{BearerClassifier, Classifier, Verdict};
pub use client::{resource_client, same_origin_redirects};
pub use error::{HttpError, RequestBodyError};
pub use inject::{Injector, secret_header_value};
pub use keepalive::{Keepalive, KeepaliveCheck};
pub use middleware::{
    AnsweredUnder, AuthMiddleware, AuthMiddlewareBuilder, DEFAULT_ATTEMPT_TIMEOUT, Idempotent,
    ResentAfterLostAnswer, SessionBound, Stats,
};
pub use shiftkey_auth::Transport;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
