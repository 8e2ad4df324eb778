//! Manufacturing reads for the shop floor, the way a real Teamcenter serves them
//! (`docs/teamcenter-reads.md` §9): changed plans by saved query (or business-object query), their
//! bills of process through a window, operation *line* properties, the lines they reference, and
//! work instructions by relation. Plus idempotent feedback writes to site-defined properties.
//!
//! Windows live only as long as the session that opened them. Every answer inside a window is
//! checked for the session generation it was answered under: a change means the window died (or
//! belongs to a session no longer used), and the traversal of that group of plans starts again
//! from the open. Windows are closed on every path: success, error, and a dropped future.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::client::TcClient;
use crate::error::TcError;
use crate::site::ReadConfig;
use crate::wire::PartialError;

mod bop;
mod feedback;
mod mapping;
mod query;
mod window;

pub(crate) use mapping::*;
pub(crate) use window::*;

/// A process plan revision (`MEProcessRevision`) → an ISA-95 operations definition.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessPlan {
    /// UID of the revision.
    pub uid: String,
    /// `item_id`.
    pub id: String,
    /// `item_revision_id`.
    pub revision: String,
    /// `object_name`.
    pub name: String,
    /// The plant: the configured site property, or the configured default.
    pub plant: String,
    /// Names of the release statuses (empty: not released).
    pub release_status: Vec<String>,
    /// `last_mod_date`.
    pub last_modified: SystemTime,
    /// Whether a release status is one of the configured obsolete statuses.
    pub obsolete: bool,
    /// The business object type the server gave it (one of the configured plan types, or a
    /// subtype of one).
    pub plan_type: String,
    /// The item it is a revision of (`items_tag`), if the server named it.
    pub item_uid: Option<String>,
}

/// A dataset attached as a work instruction: listed, not downloaded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WorkInstruction {
    /// The dataset's UID.
    pub uid: String,
    /// Its `object_name`.
    pub name: String,
    /// Its type (`PDF`, `Text`, `MSWordX`, ...).
    pub type_name: String,
}

/// An operation: a `Mfg0BvrOperation` line of a plan's bill of process → an ISA-95 operations
/// segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    /// The operation revision's UID (`itemRevOfBOMLine`; where feedback is written).
    pub uid: String,
    /// The persistent occurrence UID (`bl_occurrence_uid`).
    pub occurrence: String,
    /// The plan it belongs to.
    pub plan_uid: String,
    /// Operation id (`bl_item_item_id`).
    pub id: String,
    /// Name (`bl_rev_object_name`).
    pub name: String,
    /// Sequence (`bl_sequence_no`).
    pub sequence: u32,
    /// Work area id (`Mfg0assigned_workarea` → `bl_item_item_id`), if assigned.
    pub work_area: Option<String>,
    /// Allocated time in seconds (`Mfg0allocated_time` × the configured unit).
    pub allocated_time_s: Option<f64>,
    /// Work-instruction datasets (`IMAN_MEWorkInstruction` by default).
    pub work_instructions: Vec<WorkInstruction>,
    /// Equipment ids (`Mfg0used_equipment`).
    pub resources: Vec<String>,
    /// Consumed part ids (`Mfg0consumed_material`).
    pub consumed_parts: Vec<String>,
    /// Whether the operation revision carries an obsolete status.
    pub obsolete: bool,
}

/// Changed plans, oldest first, with what Teamcenter reported along the way.
#[derive(Debug, Clone, Default)]
pub struct ChangedPlans {
    /// The plans, by `last_mod_date` then UID.
    pub plans: Vec<ProcessPlan>,
    /// Partial errors (objects that could not be loaded are left out and reported here).
    pub partial_errors: Vec<PartialError>,
}

/// The operations of a group of plans.
#[derive(Debug, Clone, Default)]
pub struct PlanStructures {
    /// Operations by plan UID, in sequence order.
    pub operations: BTreeMap<String, Vec<Operation>>,
    /// Plans that could not be opened (partial errors of the open say why).
    pub skipped: Vec<String>,
    /// Partial errors reported outside windows (opens, work-instruction relations).
    pub partial_errors: Vec<PartialError>,
}

/// The result of [`TcClient::changed_since`].
#[derive(Debug, Clone, Default)]
pub struct ChangeSet {
    /// Changed plans with all their operations (plans that could not be opened left out).
    pub plans: Vec<(ProcessPlan, Vec<Operation>)>,
    /// The newest `last_mod_date` seen (the next watermark), if anything changed.
    pub high_watermark: Option<SystemTime>,
    /// Partial errors Teamcenter reported, per object (not swallowed).
    pub partial_errors: Vec<PartialError>,
    /// Which revision of each plan's item is current.
    pub current: crate::CurrentRevisions,
}

/// Shop-floor feedback for one operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeedbackValues<'a> {
    /// Completed count.
    pub completed_count: i64,
    /// Actual cycle time in seconds.
    pub actual_cycle_time_s: Option<f64>,
    /// Deviation note.
    pub deviation: &'a str,
}

/// What a feedback key holds before the row id: `shiftkey-feedback-12`.
pub const FEEDBACK_KEY_PREFIX: &str = "shiftkey-feedback-";

/// The change query's UID and entries, found once per session.
#[derive(Debug, Clone)]
pub(crate) struct CachedQuery {
    generation: Option<u64>,
    name: String,
    uid: String,
}

pub(crate) fn describe(errors: &[PartialError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether the session died under a session-bound call.
fn session_lost(e: &TcError) -> bool {
    matches!(
        e.http_error(),
        Some(shiftkey_http::HttpError::SessionLost { .. })
    )
}

pub(crate) fn unexpected(operation: &str, detail: impl Into<String>) -> TcError {
    TcError::Unexpected {
        operation: operation.to_owned(),
        detail: detail.into(),
    }
}

const EXPAND: &str = "Cad-2007-01-StructureManagement/expandPSOneLevel";
pub(crate) const GET_PROPERTIES: &str = "Core-2006-03-DataManagement/getProperties";
/// A revision's item (`ItemRevision.items_tag`, a reference; §9 step 4).
const ITEMS_TAG: &str = "items_tag";

impl TcClient {
    /// Plans changed since `watermark` (minus the overlap) with all their operations and which
    /// revision of each item is current: [`TcClient::changed_plans`], then
    /// [`TcClient::read_operations`] and [`TcClient::current_revisions`].
    pub async fn changed_since(
        &self,
        watermark: Option<SystemTime>,
        cfg: &ReadConfig,
    ) -> Result<ChangeSet, TcError> {
        let changed = self.changed_plans(watermark, cfg).await?;
        let mut out = ChangeSet {
            high_watermark: changed.plans.iter().map(|p| p.last_modified).max(),
            partial_errors: changed.partial_errors,
            ..ChangeSet::default()
        };
        let mut read = self.read_operations(&changed.plans, cfg).await?;
        out.partial_errors.extend(read.partial_errors);
        out.current = self.current_revisions(&changed.plans, cfg).await?;
        for p in changed.plans {
            if let Some(ops) = read.operations.remove(&p.uid) {
                out.plans.push((p, ops));
            }
        }
        Ok(out)
    }
}
