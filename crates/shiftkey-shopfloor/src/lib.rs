#![cfg_attr(docsrs, feature(doc_cfg))]
//! Shop-floor sinks: where Teamcenter's process plans land, exactly once.
//!
//! # Overview
//! - [`ProcessRecord`] / [`OperationRecord`]: plain records (this crate knows nothing of
//!   Teamcenter; the sync engine maps to them). A process revision maps to an ISA-95 operations
//!   definition, an operation to an operations segment.
//! - [`Sink`]: apply a batch idempotently **and** commit the watermark in the same transaction;
//!   read the watermark; the feedback outbox (operation actuals recorded by shop-floor systems,
//!   pushed back by the engine and marked sent).
//! - [`SqlSink`]: SQLite (feature `sqlite`, default) or PostgreSQL (feature `postgres`) through
//!   `sqlx`'s `Any` driver: upsert by UID, a content hash skips unchanged rows, a revision's
//!   operation set is replaced atomically. Schema in `docs/shopfloor.md`.
//! - `MqttSink` (feature `mqtt`): a retained ISA-95-shaped JSON message per process revision on
//!   `{prefix}/{plant}/process/{id}`, QoS 1 or 2, over TCP or TLS (`MqttSettings`), acknowledged
//!   before the watermark advances in the SQL sink beside it.
//!
//! # Example
//! ```
//! use std::time::{Duration, SystemTime};
//! use shiftkey_shopfloor::{ProcessRecord, Sink, SqlSink};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sink = SqlSink::connect("sqlite::memory:").await?;
//! let plan = ProcessRecord { uid: "P1".into(), id: "P01-PR0001".into(), revision: "A".into(), name: "Assemble".into(),
//!     plant: "P01".into(), released: false, obsolete: false, last_modified: SystemTime::UNIX_EPOCH,
//!     current: Some(true), operations: vec![] };
//! let report = sink.apply(&[plan.clone()], SystemTime::UNIX_EPOCH).await?;
//! assert_eq!(report.inserted, 1);
//! assert_eq!(sink.apply(&[plan], SystemTime::UNIX_EPOCH).await?.unchanged, 1);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "mqtt")]
mod mqtt;
mod sql;

use std::time::SystemTime;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

#[cfg(feature = "mqtt")]
pub use mqtt::{MqttQos, MqttSettings, MqttSink, MqttTls, isa95, topic};
#[cfg(feature = "test-util")]
pub use sql::CommitHook;
pub use sql::{SinkState, SqlSink};

/// A process plan revision as the shop floor stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Teamcenter UID of the revision (the upsert key).
    pub uid: String,
    /// Item id.
    pub id: String,
    /// Revision id.
    pub revision: String,
    /// Name.
    pub name: String,
    /// Plant.
    pub plant: String,
    /// Released.
    pub released: bool,
    /// Obsolete.
    pub obsolete: bool,
    /// Last modification in Teamcenter.
    pub last_modified: SystemTime,
    /// Whether this is the revision of its item (`id`) the shop floor runs, as the site's
    /// revision rule configures it: `Some(true)` current (writing it marks every other revision
    /// of the item superseded), `Some(false)` superseded (its operations are not offered as
    /// work), `None` not decided (every revision is offered, as when no rule is asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<bool>,
    /// Its operations (replaced as a set).
    pub operations: Vec<OperationRecord>,
}

/// An operation as the shop floor stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationRecord {
    /// Teamcenter UID of the operation revision (where feedback goes).
    pub uid: String,
    /// The persistent occurrence in the plan (with the plan, the row key; empty: `uid`).
    #[serde(default)]
    pub occurrence: String,
    /// Item id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Sequence.
    pub sequence: u32,
    /// Work area / station.
    pub work_area: Option<String>,
    /// Allocated time (s).
    pub allocated_time_s: Option<f64>,
    /// Work instructions: documents attached to the operation (listed, not downloaded).
    pub work_instructions: Vec<Document>,
    /// Resources.
    pub resources: Vec<String>,
    /// Consumed parts.
    pub consumed_parts: Vec<String>,
    /// Obsolete.
    pub obsolete: bool,
}

/// A document attached to an operation (a Teamcenter dataset): where to find it, not its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// The source system's id (Teamcenter dataset UID).
    pub uid: String,
    /// Its name (`WI-OP010.pdf`).
    pub name: String,
    /// Its kind (`PDF`, `Text`, ...).
    pub kind: String,
}

/// Which revision of an item is current, for an item whose current revision is not in the
/// batch being applied (the rule moved back to a revision read earlier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentMark {
    /// The item id (`ProcessRecord::id`).
    pub item_id: String,
    /// The current revision's UID (`ProcessRecord::uid`); the item's other revisions are
    /// superseded.
    pub uid: String,
}

/// What one apply did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// New process revisions.
    pub inserted: u64,
    /// Changed process revisions (operation sets replaced).
    pub updated: u64,
    /// Unchanged (same content hash): nothing written.
    pub unchanged: u64,
}

/// An operation actual recorded on the shop floor, waiting to go back to Teamcenter.
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    /// Outbox row id (the idempotency key is derived from it).
    pub id: i64,
    /// The operation.
    pub operation_uid: String,
    /// Completed count.
    pub completed_count: i64,
    /// Actual cycle time (s).
    pub actual_cycle_time_s: Option<f64>,
    /// Deviation note.
    pub deviation: String,
}

/// A sink failed. Its text says what was being done; the cause (a database's, an MQTT
/// client's, or none) is its [`source`](std::error::Error::source), printed once by whoever
/// prints the chain.
#[derive(Debug, thiserror::Error)]
#[error("shop-floor sink: {what}")]
pub struct SinkError {
    /// What was being done.
    pub what: String,
    /// Why it failed, when another error says so.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl SinkError {
    /// `what` failed because of `source`.
    ///
    /// # Example
    /// ```
    /// use std::error::Error as _;
    /// let e = shiftkey_shopfloor::SinkError::new("open shop.db", std::io::Error::other("disk full"));
    /// assert_eq!(e.to_string(), "shop-floor sink: open shop.db");
    /// assert_eq!(e.source().unwrap().to_string(), "disk full");
    /// ```
    pub fn new(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// `what` failed, and nothing more is known than this text.
    #[must_use]
    pub fn plain(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            source: None,
        }
    }
}

/// Where process plans land.
///
/// # Contract
/// `apply` is idempotent (applying the same batch twice changes nothing the second time) and
/// atomic with the watermark: after a crash the sink holds either the batch *and* its watermark,
/// or neither.
#[async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Applies `batch` and sets the watermark to `watermark`, in one transaction.
    async fn apply(
        &self,
        batch: &[ProcessRecord],
        watermark: SystemTime,
    ) -> Result<ApplyReport, SinkError>;
    /// [`Sink::apply`], also marking for each of `marks` which stored revision of its item is
    /// current, in the same transaction. The default applies the batch and keeps no marks (a
    /// sink that stores no revisions has none to mark).
    async fn apply_marked(
        &self,
        batch: &[ProcessRecord],
        marks: &[CurrentMark],
        watermark: SystemTime,
    ) -> Result<ApplyReport, SinkError> {
        let _ = marks;
        self.apply(batch, watermark).await
    }
    /// The committed watermark.
    async fn watermark(&self) -> Result<Option<SystemTime>, SinkError>;
    /// When the engine last read every plan (a reconcile), if the sink keeps it. The default
    /// keeps nothing; the engine then remembers it for the life of the process only.
    async fn reconciled(&self) -> Result<Option<SystemTime>, SinkError> {
        Ok(None)
    }
    /// Records a completed full read at `at` (the default does nothing).
    async fn mark_reconciled(&self, at: SystemTime) -> Result<(), SinkError> {
        let _ = at;
        Ok(())
    }
    /// The `last_modified` the sink holds for each of `uids` (absent: not stored). The engine
    /// skips reading a plan whose version the sink already has. The default knows nothing, so
    /// every plan the change query returns is read.
    async fn stored_versions(
        &self,
        uids: &[String],
    ) -> Result<std::collections::BTreeMap<String, SystemTime>, SinkError> {
        let _ = uids;
        Ok(std::collections::BTreeMap::new())
    }
    /// The items (`ProcessRecord::id`) whose stored revisions are all marked superseded: the
    /// shop floor gets no work for them. The default knows none.
    async fn items_without_current(&self) -> Result<Vec<String>, SinkError> {
        Ok(Vec::new())
    }
    /// Feedback rows not yet sent, oldest first.
    async fn pending_feedback(&self, limit: i64) -> Result<Vec<Feedback>, SinkError>;
    /// Marks a feedback row sent.
    async fn mark_feedback_sent(&self, id: i64) -> Result<(), SinkError>;
}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
