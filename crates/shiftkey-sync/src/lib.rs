#![cfg_attr(docsrs, feature(doc_cfg))]
//! The sync engine: Teamcenter manufacturing process data to the shop floor, on schedule,
//! complete, once (design §7, `docs/design.md`).
//!
//! # Overview
//! - [`Engine::cycle`]: read changes since the sink's watermark (minus the overlap) → map →
//!   apply in batches, each **with** its watermark in one transaction → push shop-floor feedback
//!   back to Teamcenter with an idempotency key. A crash anywhere loses and duplicates nothing:
//!   the next cycle starts from the last committed batch.
//! - [`Engine::run`]: every `interval` (15 min), no overlapping cycles, one catch-up cycle after a
//!   long stop (not one per missed slot), graceful stop between batches, an optional [`Lease`] so
//!   only one of several instances syncs.
//!
//! # Example
//! ```no_run
//! use std::sync::Arc;
//! use shiftkey_shopfloor::SqlSink;
//! use shiftkey_sync::{Engine, EngineConfig};
//! use shiftkey_teamcenter::{SessionConfig, TcClient};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let tc = TcClient::session(reqwest::Client::new(), SessionConfig::new("https://tc.example.com".parse()?, "mfg_sync", "pw".into()))?;
//! let sink = Arc::new(SqlSink::connect("sqlite://shopfloor.db?mode=rwc").await?);
//! let engine = Engine::new(tc, sink, EngineConfig::default());
//! let report = engine.cycle(&Default::default()).await?;
//! println!("{report:?}");
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod engine;
#[cfg(feature = "postgres")]
mod lease;

pub use engine::{
    CycleObserver, CycleReport, CycleWarning, Engine, EngineConfig, Lease, Stop, SyncError,
    map_plan,
};
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub use engine::{Phase, PhaseHook};
#[cfg(feature = "postgres")]
pub use lease::{LeaseReport, LeaseState, PgLease, WatchedLease};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
