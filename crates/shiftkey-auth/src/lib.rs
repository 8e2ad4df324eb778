#![cfg_attr(docsrs, feature(doc_cfg))]
//! Token lifecycle core for long-running automation: strategies that obtain tokens, and a
//! [`TokenManager`] that keeps one fresh so callers never hold an expired token.
//!
//! # Overview
//! - [`AuthStrategy`]: how a credential turns into a [`TokenSet`]. This crate ships
//!   [`strategies::BearerLogin`] (a login endpoint), [`strategies::OAuthRefresh`] (refresh_token
//!   grant with rotation, falling back to e.g. [`strategies::OAuthPassword`]) and
//!   [`strategies::ServiceAccount`] (client_credentials with a secret or `private_key_jwt`).
//! - [`TokenManager`]: lock-free hot path, single-flight refresh in a background task, proactive
//!   refresh ahead of expiry, reactive refresh through [`TokenManager::invalidate`], backoff.
//! - [`timing`]: the refresh timing law of design §3.2 as pure functions and a pure
//!   [`timing::Planner`], property-tested.
//! - [`AuthError`]: Transient / Permanent / Rejected, so callers know whether to retry.
//! - [`Clock`]: injected time; tests pause it and run days in milliseconds.
//!
//! Secrets ([`Secret`], tokens, keys) have a redacting `Debug` and no `Display`.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use shiftkey_auth::{AuthError, AuthStrategy, Clock, TokenManager, TokenSet, TokioClock};
//!
//! /// A strategy that logs in somewhere and gets a 4-second token.
//! #[derive(Debug)]
//! struct Login;
//!
//! #[async_trait::async_trait]
//! impl AuthStrategy for Login {
//!     async fn acquire(&self, _previous: Option<&TokenSet>) -> Result<TokenSet, AuthError> {
//!         let clock = TokioClock::new();
//!         Ok(TokenSet::new("t0k3n", Duration::from_secs(4), clock.now(), clock.wall()))
//!     }
//!     fn name(&self) -> &str { "login" }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! tokio::time::pause(); // hours pass in milliseconds
//! let manager = TokenManager::builder(Login).build()?;
//! let first = manager.token().await?;
//! tokio::time::sleep(Duration::from_secs(3600)).await;
//! let later = manager.token().await?;
//! // An hour of 4-second tokens later the caller still holds a fresh one.
//! assert!(later.generation() > first.generation());
//! assert!(tokio::time::Instant::now() < later.hard_deadline());
//! # Ok(()) }
//! ```
//!
//! # Cargo features
//! - `test-util`: a scripted strategy for tests (the `testing` module). Not for production.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod jwt;
mod manager;
mod store;
pub mod strategies;
mod strategy;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod timing;
mod token;
mod transport;
mod wire;

pub use error::{AuthError, ConfigError, PermanentKind, TransientKind, causes};
pub use jwt::jwt_lifetime;
pub use manager::{Invalidation, Stats, Status, Token, TokenManager, TokenManagerBuilder};
pub use shiftkey_clock::{Clock, Sleep, TokioClock};
pub use store::{
    MemoryStore, ServerLimits, StoreError, StoreErrorKind, StoreGuard, StoredLifetimeSource,
    StoredToken, TokenStore,
};
pub use strategy::AuthStrategy;
pub use token::{LifetimeSource, MAX_LIFETIME, MIN_LIFETIME, Secret, TokenSet, clamp_lifetime};
pub use transport::Transport;
pub use wire::{CONNECT_TIMEOUT, REQUEST_TIMEOUT, credential_client, is_loopback};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
