//! Fresh credentials for processes that cannot link shiftkey: the scripts plants already run.
//!
//! # Overview
//! - [`Proxy`]: a local HTTP proxy. A script points its base URL at it and changes nothing else;
//!   every request goes on to the server with the current token (or Teamcenter session) through
//!   [`shiftkey_http::AuthMiddleware`], the same healing loop as every shiftkey client. In
//!   Teamcenter mode the script's own login and logout are answered locally.
//! - [`broker`]: the token broker — a script asks for a token by name over a Unix socket or
//!   loopback HTTP and reports a rejected one; one refresh serves every script.
//! - [`serve`]: serving a router to local clients (connection limit and queue, header deadline,
//!   `Host` check, only the local users a listener names: by peer uid on Unix sockets and on
//!   loopback TCP).
//! - [`unix`] (Unix only): private folders and sockets only this user can reach.
//!
//! # Example: a proxy in front of a bearer-protected API
//! ```no_run
//! use std::sync::Arc;
//! use shiftkey_auth::TokenManager;
//! use shiftkey_http::AuthMiddleware;
//! use shiftkey_sidecar::{Proxy, ProxyConfig, serve};
//!
//! # async fn demo(manager: TokenManager) -> Result<(), Box<dyn std::error::Error>> {
//! let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
//! let proxy = Proxy::new(
//!     ProxyConfig::new("mes", "https://mes.example.com".parse()?),
//!     http,
//!     AuthMiddleware::builder(manager).build(),
//! )?;
//! // Only this user's processes may spend the credential (the peer's uid, from the kernel).
//! let gate = serve::Gate::users(serve::Users::this_user(), proxy.refusals().clone());
//! let hosts = serve::Hosts::loopback_and(&[]);
//! let router = serve::with_host_check_only(Arc::clone(&proxy).router(), hosts, gate.refusals.clone());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8181").await?;
//! serve::serve_tcp(listener, router, serve::ServeLimits::default(), gate).await;
//! # Ok(()) }
//! ```
//!
//! Counts: [`Proxy::stats`] per proxy (the binary exports them as `shiftkey_proxy_total`); the
//! middleware's own `metrics` (`shiftkey_http_*`) count every forwarded request.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
pub mod broker;
mod error;
pub mod logins;
mod proxy;
mod refusal;
pub mod serve;
pub mod tls;
#[cfg(unix)]
#[cfg_attr(docsrs, doc(cfg(unix)))]
pub mod unix;
pub mod workers;

pub use body::{BODY_IDLE_TIMEOUT, BODY_TIMEOUT, DEFAULT_REPLAY_BUDGET};
pub use error::SidecarError;
pub use logins::LocalLogin;
pub use proxy::{DEFAULT_REPLAY_LIMIT, MAX_SESSIONS, Proxy, ProxyConfig, ProxyStats};
pub use refusal::{LOG_EVERY, Refusal, Refusals};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
