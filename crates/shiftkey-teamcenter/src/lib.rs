//! The Teamcenter side of shiftkey: a JSON REST SOA client whose session heals itself, and
//! incremental reads of manufacturing process data for the shop floor.
//!
//! # Overview
//! - [`TcClient`]: session mode (`/tc/JsonRestServices`, `JSESSIONID` cookie from
//!   [`SessionLogin`]) or gateway mode (`/tc/RestServices`, any OAuth strategy). Calls go through
//!   `shiftkey-http`: a dead session (an `InvalidUserException` in the body under any HTTP
//!   status, recognised by [`TcClassifier`]) is healed by one re-login and one retry.
//! - [`wire`]: the envelope, `.QName` exceptions ([`TcError`]), `ServiceData` and typed
//!   `dbValues` parsing with errors naming the object and property.
//! - [`TcPool`]: N sessions with distinct descrimators for parallel reads, bounded in flight.
//! - [`mfg`]: [`ProcessPlan`] and [`Operation`]; [`TcClient::changed_plans`] (a saved query or a
//!   business-object query, then batched loads with a property policy),
//!   [`TcClient::read_operations`] (bill-of-process windows, line properties, referenced lines,
//!   work instructions by relation; windows closed on every path),
//!   [`TcClient::current_revisions`] (which revision of each item the revision rule
//!   configures), [`TcClient::changed_since`]
//!   (both), and [`TcClient::write_feedback`] (idempotent, to site-defined properties).
//! - [`ReadConfig`], [`FieldMap`], [`FeedbackConfig`]: the site mapping; [`TcClient::check_site`]
//!   checks a site against it read-only.
//!
//! **Only this crate knows Teamcenter's JSON.**
//!
//! # Example
//! ```no_run
//! use shiftkey_teamcenter::{ReadConfig, SessionConfig, TcClient};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = SessionConfig::new("https://tc.example.com".parse()?, "mfg_sync", std::env::var("TC_PASSWORD")?.into());
//! let tc = TcClient::session(reqwest::Client::new(), cfg)?;
//! let _keepalive = tc.keepalive()?;
//! let changes = tc.changed_since(None, &ReadConfig::default()).await?;
//! for (plan, operations) in &changes.plans {
//!     println!("{} rev {}: {} operations", plan.id, plan.revision, operations.len());
//! }
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod builder;
mod check;
mod client;
mod current;
mod error;
pub mod mfg;
mod pool;
mod session;
mod site;
pub mod wire;

pub use builder::{LoginWrapper, TcClientBuilder};
pub use check::Finding;
pub use client::{DEFAULT_MAX_ANSWER, DEFAULT_READ_TIMEOUT, LOGOUT_DEADLINE, Mode, TcClient};
pub use current::CurrentRevisions;
pub use error::{ErrorValue, SsoHint, TcError, Transient};
pub use mfg::{
    ChangeSet, ChangedPlans, FEEDBACK_KEY_PREFIX, FeedbackValues, Operation, PlanStructures,
    ProcessPlan, WorkInstruction,
};
pub use pool::TcPool;
pub use session::{SessionConfig, SessionLogin, TcClassifier};
pub use site::{
    ChangeQuery, CurrentRevision, EARLIEST_UTC_OFFSET_MINUTES, FeedbackConfig, FeedbackFormat,
    FieldMap, ReadConfig, UtcOffset, WindowMode,
};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
