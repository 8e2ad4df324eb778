//! Manufacturing reads for the shop floor, the way a real Teamcenter serves them
//! (`docs/teamcenter-reads.md` §9): changed plans by saved query (or business-object query), their
//! bills of process through a window, operation *line* properties, the lines they reference, and
//! work instructions by relation. Plus idempotent feedback writes to site-defined properties.
//!
//! Windows live only as long as the session that opened them. Every answer inside a window is
//! checked for the session generation it was answered under: a change means the window died (or
//! belongs to a session no longer used), and the traversal of that group of plans starts again
//! from the open. Windows are closed on every path: success, error, and a dropped future.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::client::TcClient;
use crate::error::TcError;
use crate::site::{ChangeQuery, FeedbackConfig, FeedbackFormat, ReadConfig, WindowMode};
use crate::wire::{self, ModelObject, PartialError, Props, ServiceData};

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

/// The row a stored key (or JSON document) says was applied; `None` for anything else (a key
/// written by someone else counts as no row).
fn applied_row(value: &str, json: bool) -> Option<i64> {
    if json {
        serde_json::from_str::<Value>(value).ok()?["row"].as_i64()
    } else {
        value.strip_prefix(FEEDBACK_KEY_PREFIX)?.parse().ok()
    }
}

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

/// Status names of a revision's release status list, resolved through `objects`.
fn status_names(
    o: &ModelObject,
    prop: &str,
    objects: &BTreeMap<String, ModelObject>,
) -> Vec<String> {
    Props::of(o)
        .refs(prop)
        .iter()
        .filter_map(|s| objects.get(s))
        .filter_map(|s| Props::of(s).optional("object_name"))
        .collect()
}

fn plan(
    o: &ModelObject,
    cfg: &ReadConfig,
    objects: &BTreeMap<String, ModelObject>,
) -> Result<ProcessPlan, TcError> {
    let f = &cfg.fields;
    let p = Props::of(o);
    let release_status = status_names(o, &f.release_status, objects);
    Ok(ProcessPlan {
        uid: o.uid.clone(),
        id: p.string(&f.plan_id)?,
        revision: p.string(&f.plan_revision)?,
        name: p.optional(&f.plan_name).unwrap_or_default(),
        plant: f
            .plant_property
            .as_deref()
            .and_then(|prop| p.optional(prop))
            .unwrap_or_else(|| f.plant_default.clone()),
        obsolete: release_status
            .iter()
            .any(|s| f.obsolete_statuses.contains(s)),
        release_status,
        last_modified: p.date(&f.last_modified)?,
        plan_type: o.type_name.clone(),
        item_uid: p.refs(ITEMS_TAG).into_iter().next(),
    })
}

/// One operation line mapped through the site's fields.
fn operation(
    line: &ModelObject,
    rev: Option<String>,
    plan_uid: &str,
    cfg: &ReadConfig,
    names: &BTreeMap<String, String>,
    objects: &BTreeMap<String, ModelObject>,
    instructions: &BTreeMap<String, Vec<WorkInstruction>>,
) -> Result<Operation, TcError> {
    let f = &cfg.fields;
    let p = Props::of(line);
    let Some(rev) = rev else {
        return Err(unexpected(
            EXPAND,
            format!("operation line {} has no itemRevOfBOMLine", line.uid),
        ));
    };
    let sequence = match p.number(&f.sequence)? {
        None => 0,
        Some(n) if n.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&n) => n as u32,
        Some(n) => {
            return Err(unexpected(
                EXPAND,
                format!(
                    "{} {} property {}: `{n}` is not a sequence number",
                    line.type_name, line.uid, f.sequence
                ),
            ));
        }
    };
    let name_of = |u: &String| names.get(u).cloned().unwrap_or_default();
    let obsolete = objects
        .get(&rev)
        .map(|r| status_names(r, &f.release_status, objects))
        .is_some_and(|s| s.iter().any(|n| f.obsolete_statuses.contains(n)));
    Ok(Operation {
        occurrence: p.optional(&f.occurrence).unwrap_or_default(),
        plan_uid: plan_uid.to_owned(),
        id: p.string(&f.op_id)?,
        name: p.optional(&f.op_name).unwrap_or_default(),
        sequence,
        work_area: p.refs(&f.work_area).first().map(name_of),
        allocated_time_s: p
            .number(&f.allocated_time)?
            .map(|t| t * f.allocated_time_unit_s),
        work_instructions: instructions.get(&rev).cloned().unwrap_or_default(),
        resources: p.refs(&f.equipment).iter().map(name_of).collect(),
        consumed_parts: p.refs(&f.consumed).iter().map(name_of).collect(),
        obsolete,
        uid: rev,
    })
}

/// A `revRuleConfigInfo` configuring by `rule` (see [`TcClient::rule_ref`]) today, with no unit,
/// end item or override folder (S11 `RevisionRuleConfigInfo`).
pub(crate) fn rev_rule_config(rule: &Value) -> Value {
    json!({"clientId": "", "revRule": rule,
        "props": {"unitNo": -1, "date": "0001-01-01T00:00:00", "today": true, "endItem": "",
            "endItemRevision": "", "overrideFolders": []}})
}

/// Open windows of one traversal round.
#[derive(Debug, Clone)]
struct Opened {
    /// What to close: top lines (contexts) or window UIDs (BOM windows).
    handles: Vec<String>,
    /// Plan UID → its top line.
    tops: Vec<(String, String)>,
    /// Plans that could not be opened.
    skipped: Vec<String>,
    partial_errors: Vec<PartialError>,
    /// The session generation the windows belong to.
    generation: Option<u64>,
    /// The open was sent again after a lost answer: retire the session after the traversal.
    retire: bool,
}

/// A window close that failed: tried again before the next open in the same session (once); if
/// that fails too, the session is retired so that the windows die with it. Windows of a session
/// that has since been replaced died with it and are forgotten.
#[derive(Debug, Clone)]
pub(crate) struct Orphan {
    generation: Option<u64>,
    operation: &'static str,
    body: Value,
}

/// Closes windows when dropped without [`WindowGuard::close`] (an error or a cancelled future),
/// in a background task; never with a session other than the one that opened them.
#[derive(Debug)]
pub(crate) struct WindowGuard {
    pub(crate) tc: TcClient,
    pub(crate) contexts: bool,
    pub(crate) handles: Vec<String>,
    pub(crate) generation: Option<u64>,
}

impl WindowGuard {
    fn request(&self) -> (&'static str, Value) {
        if self.contexts {
            (
                "Manufacturing-2011-06-DataManagement/closeContexts",
                json!({"contexts": self.handles}),
            )
        } else {
            (
                "Cad-2007-01-StructureManagement/closeBOMWindows",
                json!({"bomWindows": self.handles}),
            )
        }
    }

    /// Whether the windows' session is still the one in use (else they died or will die with it).
    fn same_session(&self) -> bool {
        self.tc.window_generation() == self.generation
    }

    pub(crate) async fn close(mut self) {
        if self.handles.is_empty() || !self.same_session() {
            self.handles.clear();
            return;
        }
        let (op, body) = self.request();
        let body_again = body.clone();
        self.handles.clear();
        let bound = self.tc.windows_follow_token();
        match self
            .tc
            .call_under(op, body, json!({}), bound)
            .await
            .map(|(a, _)| a)
        {
            Ok(answer) => {
                if let Ok(sd) = ServiceData::parse(&answer, op)
                    && !sd.partial_errors.is_empty()
                {
                    tracing::warn!(errors = %describe(&sd.partial_errors), "closing Teamcenter windows reported errors");
                }
            }
            Err(e) if session_lost(&e) => {
                tracing::debug!("the windows died with their session before the close");
            }
            Err(e) => {
                tracing::warn!(error = %e, "closing Teamcenter windows failed; trying again before the next open");
                self.tc.remember_orphan(self.generation, op, body_again);
            }
        }
    }
}

impl Drop for WindowGuard {
    fn drop(&mut self) {
        if self.handles.is_empty() || !self.same_session() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (op, body) = self.request();
        let tc = self.tc.clone();
        let generation = self.generation;
        rt.spawn(async move {
            let bound = tc.windows_follow_token();
            if let Err(e) = tc.call_under(op, body.clone(), json!({}), bound).await
                && !session_lost(&e)
            {
                tracing::warn!(error = %e, "closing Teamcenter windows after an interrupted read failed; trying again before the next open");
                tc.remember_orphan(generation, op, body);
            }
        });
    }
}

/// What one traversal round found: operation lines and the objects the answers carried.
#[derive(Debug, Default)]
struct Walk {
    /// (plan UID, line, revision UID) in tree order.
    ops: Vec<(String, ModelObject, Option<String>)>,
    /// Every model object seen (revisions, release statuses, lines).
    objects: BTreeMap<String, ModelObject>,
    /// Referenced line UID → its id.
    names: BTreeMap<String, String>,
}

const EXPAND: &str = "Cad-2007-01-StructureManagement/expandPSOneLevel";
pub(crate) const GET_PROPERTIES: &str = "Core-2006-03-DataManagement/getProperties";
/// A revision's item (`ItemRevision.items_tag`, a reference; §9 step 4).
const ITEMS_TAG: &str = "items_tag";

impl TcClient {
    /// The session generation windows opened now belong to (`None` behind a gateway).
    pub(crate) fn window_generation(&self) -> Option<u64> {
        self.generation().filter(|_| self.windows_follow_token())
    }

    /// Replaces the session between traversals (windows that cannot be closed die with the old
    /// one, logged out shortly after the new login). The token is swapped out at once, so the next
    /// call waits for the new session instead of mixing two.
    /// Only while `generation` (the session the windows belong to) is still the current one: a
    /// session that has already been replaced took its windows with it.
    pub(crate) fn retire_session(&self, generation: Option<u64>) {
        if !self.windows_follow_token() {
            return;
        }
        let manager = self.middleware().manager();
        if let Some(g) = generation.filter(|g| self.generation() == Some(*g))
            && manager.invalidate(g) == shiftkey_auth::Invalidation::TooSoon
        {
            manager.refresh_now();
        }
    }

    fn remember_orphan(&self, generation: Option<u64>, operation: &'static str, body: Value) {
        if let Ok(mut o) = self.orphans.lock() {
            o.push(Orphan {
                generation,
                operation,
                body,
            });
        }
    }

    /// Tries the failed closes of this session once more; if one fails again, retires the
    /// session (a new login now; the old one, and its windows, are logged out shortly).
    pub(crate) async fn close_orphans(&self) {
        loop {
            // One at a time: a cancelled future (a stop) loses no other orphan.
            let next = match self.orphans.lock() {
                Ok(mut o) => o.pop(),
                Err(_) => return,
            };
            let Some(o) = next else { return };
            // Checked before each close: their session may have been replaced meanwhile, and its
            // windows died with it (their lines must never be sent under another session).
            if o.generation != self.window_generation() {
                continue;
            }
            let bound = self.windows_follow_token();
            match self.call_under(o.operation, o.body, json!({}), bound).await {
                Ok(_) => tracing::info!("windows a failed close left open are closed now"),
                Err(e) if session_lost(&e) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "windows cannot be closed; retiring the session so that they do not outlive it");
                    self.retire_session(o.generation);
                }
            }
        }
    }

    /// Changed process revisions since `watermark` minus the overlap (all of them for `None`),
    /// loaded with their plan properties, oldest first. Calls: the change query (plus, once per
    /// session, finding and describing the saved query), then `loadObjects` in chunks.
    pub async fn changed_plans(
        &self,
        watermark: Option<SystemTime>,
        cfg: &ReadConfig,
    ) -> Result<ChangedPlans, TcError> {
        let since = watermark.map(|w| w.checked_sub(cfg.overlap).unwrap_or(SystemTime::UNIX_EPOCH));
        let uids = self.changed_uids(since, cfg, 0).await?;
        self.load_plans(&uids, cfg).await
    }

    /// At most `max` plans the change query finds over all time (for `doctor`), loaded (which
    /// also shows the server's UTC offset).
    pub async fn changed_plans_limited(
        &self,
        cfg: &ReadConfig,
        max: u32,
    ) -> Result<Vec<ProcessPlan>, TcError> {
        let uids = self.changed_uids(None, cfg, max).await?;
        Ok(self.load_plans(&uids, cfg).await?.plans)
    }

    /// One plan the change query finds, read in full (for `doctor`): the plan, its operation
    /// count and its work-instruction count. `None` when the query finds nothing.
    pub async fn sample_plan(
        &self,
        cfg: &ReadConfig,
    ) -> Result<Option<(ProcessPlan, usize, usize)>, TcError> {
        let uids = self.changed_uids(None, cfg, 1).await?;
        let Some(plan) = self
            .load_plans(&uids[..uids.len().min(1)], cfg)
            .await?
            .plans
            .pop()
        else {
            return Ok(None);
        };
        let read = self
            .read_operations(std::slice::from_ref(&plan), cfg)
            .await?;
        if let Some(pe) = read.partial_errors.first() {
            return Err(TcError::Site {
                detail: format!(
                    "opening {}: {}",
                    plan.id,
                    describe(std::slice::from_ref(pe))
                ),
            });
        }
        if read.skipped.contains(&plan.uid) {
            return Err(TcError::Site {
                detail: format!("Teamcenter could not open {} ({})", plan.id, plan.uid),
            });
        }
        let ops = read
            .operations
            .get(&plan.uid)
            .map_or(&[][..], Vec::as_slice);
        let docs = ops.iter().map(|o| o.work_instructions.len()).sum();
        Ok(Some((plan.clone(), ops.len(), docs)))
    }

    /// Loads `uids` as plans (`loadObjects` in chunks with the plan policy), oldest first.
    async fn load_plans(&self, uids: &[String], cfg: &ReadConfig) -> Result<ChangedPlans, TcError> {
        let mut out = ChangedPlans::default();
        if uids.is_empty() {
            return Ok(out);
        }
        let f = &cfg.fields;
        let mut plan_props = vec![
            (f.plan_id.as_str(), false),
            (f.plan_revision.as_str(), false),
            (f.plan_name.as_str(), false),
            (f.last_modified.as_str(), false),
            (f.release_status.as_str(), true),
            (ITEMS_TAG, false),
        ];
        if let Some(p) = &f.plant_property {
            plan_props.push((p.as_str(), false));
        }
        let mut types: Vec<(&str, Vec<(&str, bool)>)> = cfg
            .process_types
            .iter()
            .map(|t| (t.as_str(), plan_props.clone()))
            .collect();
        types.push(("ReleaseStatus", vec![("object_name", false)]));
        let policy = wire::policy(&types);
        let op = "Core-2007-09-DataManagement/loadObjects";
        for chunk in uids.chunks(cfg.chunk.max(1)) {
            let answer = self
                .call_with_policy(op, json!({"uids": chunk}), policy.clone())
                .await?;
            let sd = ServiceData::parse(&answer, op)?;
            for uid in chunk {
                if let Some(o) = sd.objects.get(uid) {
                    out.plans.push(plan(o, cfg, &sd.objects)?);
                    // The server's own offset, from the dates it writes (`UtcOffset::Auto`).
                    if let Some(minutes) = Props::of(o).date_offset(&cfg.fields.last_modified) {
                        self.saw_offset(minutes);
                    }
                }
            }
            out.partial_errors.extend(sd.partial_errors);
        }
        out.plans.sort_by(|a, b| {
            a.last_modified
                .cmp(&b.last_modified)
                .then(a.uid.cmp(&b.uid))
        });
        Ok(out)
    }

    /// The UIDs the change query returns.
    /// At most `max` of them (0: all).
    async fn changed_uids(
        &self,
        since: Option<SystemTime>,
        cfg: &ReadConfig,
        max: u32,
    ) -> Result<Vec<String>, TcError> {
        let (op, body, what) = match &cfg.change_query {
            ChangeQuery::SavedQuery {
                name,
                type_entry,
                modified_after_entry,
            } => {
                let uid = self
                    .saved_query(name, &[type_entry, modified_after_entry])
                    .await?;
                let mut entries = vec![type_entry.clone()];
                let mut values = vec![cfg.process_types.join(";")];
                if let Some(t) = since {
                    entries.push(modified_after_entry.clone());
                    values.push(wire::query_date(t, self.query_offset(cfg)));
                }
                (
                    "Query-2008-06-SavedQuery/executeSavedQueries",
                    json!({"input": [{"query": {"uid": uid, "type": "ImanQuery"}, "entries": entries, "values": values,
                        "limitList": [], "maxNumToReturn": max, "resultsType": 0, "requestId": "", "clientId": "shiftkey-changed-plans"}]}),
                    format!("the saved query `{name}`"),
                )
            }
            ChangeQuery::BusinessObject { property } => {
                let clauses: Vec<Value> = since
                    .map(|t| json!({"propName": property, "propValue": wire::query_date(t, self.query_offset(cfg)), "mathOperator": ">=", "logicOperator": "AND"}))
                    .into_iter()
                    .collect();
                let inputs: Vec<Value> = cfg
                    .process_types
                    .iter()
                    .map(|t| json!({"typeName": t, "clauses": clauses, "maxNumToReturn": max, "requestId": "", "clientId": format!("shiftkey-changed-{t}")}))
                    .collect();
                (
                    "Query-2010-09-SavedQuery/executeBusinessObjectQueries",
                    json!({"inputs": inputs}),
                    "the business-object query".to_owned(),
                )
            }
        };
        let answer = self.call(op, body).await?;
        let sd = ServiceData::parse(&answer, op)?;
        if !sd.partial_errors.is_empty() {
            return Err(TcError::Site {
                detail: format!("{what} was refused: {}", describe(&sd.partial_errors)),
            });
        }
        let Some(results) = answer["arrayOfResults"].as_array() else {
            return Err(unexpected(op, "no arrayOfResults array"));
        };
        let mut seen = BTreeSet::new();
        let mut uids = Vec::new();
        for r in results {
            for u in r["objectUIDS"].as_array().into_iter().flatten() {
                let Some(u) = u.as_str() else {
                    return Err(unexpected(
                        op,
                        "objectUIDS holds a value that is not a string",
                    ));
                };
                if seen.insert(u.to_owned()) {
                    uids.push(u.to_owned());
                }
            }
        }
        Ok(uids)
    }

    /// The UID of the saved query `name`, checked to have `entries`; found once per session.
    async fn saved_query(&self, name: &str, entries: &[&String]) -> Result<String, TcError> {
        let generation = self.generation();
        if let Ok(cache) = self.query_cache.lock()
            && let Some(c) = cache.as_ref()
            && c.generation == generation
            && generation.is_some()
            && c.name == name
        {
            return Ok(c.uid.clone());
        }
        let (uid, fields) = self.describe_query(name).await?;
        let missing: Vec<&str> = entries
            .iter()
            .filter(|e| !fields.iter().any(|f| f == **e))
            .map(|e| e.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(TcError::Site {
                detail: format!(
                    "the saved query `{name}` has no entry {}; its entries are: {}",
                    missing
                        .iter()
                        .map(|m| format!("`{m}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    fields
                        .iter()
                        .map(|m| format!("`{m}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        if let Ok(mut cache) = self.query_cache.lock() {
            *cache = Some(CachedQuery {
                generation: self.generation(),
                name: name.to_owned(),
                uid: uid.clone(),
            });
        }
        Ok(uid)
    }

    /// Finds the saved query `name` and its entry names (`findSavedQueries` then
    /// `describeSavedQueries`). A missing query is a [`TcError::Site`] naming what was found.
    pub async fn describe_query(&self, name: &str) -> Result<(String, Vec<String>), TcError> {
        let op = "Query-2010-04-SavedQuery/findSavedQueries";
        let answer = self
            .call_with_policy(
                op,
                json!({"inputCriteria": [{"queryNames": [name], "queryDescs": [""], "queryType": 0}]}),
                wire::policy(&[("ImanQuery", vec![("query_name", false)])]),
            )
            .await?;
        let sd = ServiceData::parse(&answer, op)?;
        let found: Vec<(String, String)> = answer["savedQueries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(wire::ref_uid)
            .map(|u| {
                let n = sd
                    .objects
                    .get(u)
                    .and_then(|o| Props::of(o).optional("query_name"))
                    .unwrap_or_default();
                (u.to_owned(), n)
            })
            .collect();
        // The criteria match by pattern: keep the exact name only.
        let Some((uid, _)) = found.iter().find(|(_, n)| n == name) else {
            return Err(TcError::Site {
                detail: format!(
                    "no saved query is named `{name}` (findSavedQueries found {}); create it in Query Builder or configure another name",
                    if found.is_empty() {
                        "none".to_owned()
                    } else {
                        found
                            .iter()
                            .map(|(_, n)| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            });
        };
        let op = "Query-2006-03-SavedQuery/describeSavedQueries";
        let answer = self
            .call(op, json!({"queries": [{"uid": uid, "type": "ImanQuery"}]}))
            .await?;
        let fields: Vec<String> = answer["fieldLists"][0]["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["entryName"].as_str().map(str::to_owned))
            .collect();
        if fields.is_empty() {
            return Err(unexpected(op, format!("no fields described for `{name}`")));
        }
        Ok((uid.clone(), fields))
    }

    /// The operations of `plans`, read through windows opened `cfg.window_batch` plans at a
    /// time, then their work instructions by relation.
    pub async fn read_operations(
        &self,
        plans: &[ProcessPlan],
        cfg: &ReadConfig,
    ) -> Result<PlanStructures, TcError> {
        const ATTEMPTS: u32 = 3;
        let mut out = PlanStructures::default();
        let mut lines = Vec::new();
        let mut objects = BTreeMap::new();
        let mut names = BTreeMap::new();
        for group in plans.chunks(cfg.window_batch.max(1)) {
            let mut attempt = 0;
            let walk = loop {
                attempt += 1;
                let opened = self.open(group, cfg).await?;
                let guard = WindowGuard {
                    tc: self.clone(),
                    contexts: matches!(cfg.window, WindowMode::Contexts),
                    handles: opened.handles.clone(),
                    generation: opened.generation,
                };
                let walked = self.walk(&opened, cfg).await;
                guard.close().await;
                if opened.retire {
                    tracing::warn!(
                        "a window open was sent again after a lost answer; retiring the session so that no window outlives it"
                    );
                    self.retire_session(opened.generation);
                }
                match walked? {
                    Some(w) => {
                        out.skipped.extend(opened.skipped);
                        out.partial_errors.extend(opened.partial_errors);
                        break w;
                    }
                    None if attempt < ATTEMPTS => {
                        tracing::info!(
                            attempt,
                            "the Teamcenter session changed during a traversal; opening again"
                        );
                    }
                    None => return Err(TcError::WindowLost { attempts: attempt }),
                }
            };
            lines.extend(walk.ops);
            objects.extend(walk.objects);
            names.extend(walk.names);
        }
        let revisions: Vec<String> = lines
            .iter()
            .filter_map(|(_, _, r)| r.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let instructions = self.work_instructions(&revisions, cfg, &mut out).await?;
        // A line that does not map (no revision, a sequence that is not a number, a missing id)
        // leaves its plan out of this cycle with a partial error naming it; the other plans go on.
        let mut bad: BTreeMap<String, String> = BTreeMap::new();
        for (plan_uid, line, rev) in lines {
            if bad.contains_key(&plan_uid) {
                continue;
            }
            match operation(&line, rev, &plan_uid, cfg, &names, &objects, &instructions) {
                Ok(op) => out.operations.entry(plan_uid).or_default().push(op),
                Err(e) => {
                    bad.insert(plan_uid, e.to_string());
                }
            }
        }
        for (plan_uid, why) in bad {
            tracing::warn!(plan = %plan_uid, error = %why, "a bill-of-process line does not map; the plan is left out of this cycle");
            out.operations.remove(&plan_uid);
            out.skipped.push(plan_uid.clone());
            out.partial_errors.push(PartialError {
                uid: Some(plan_uid),
                client_index: None,
                errors: vec![crate::error::ErrorValue {
                    code: 0,
                    level: 3,
                    message: why,
                }],
            });
        }
        for ops in out.operations.values_mut() {
            ops.sort_by(|a, b| a.sequence.cmp(&b.sequence).then_with(|| a.id.cmp(&b.id)));
        }
        for p in plans {
            if !out.skipped.contains(&p.uid) {
                out.operations.entry(p.uid.clone()).or_default();
            }
        }
        Ok(out)
    }

    /// Opens one window per plan in `group`.
    async fn open(&self, group: &[ProcessPlan], cfg: &ReadConfig) -> Result<Opened, TcError> {
        self.close_orphans().await;
        let (op, body, contexts) = match &cfg.window {
            WindowMode::Contexts => {
                let settings = json!({"type": "", "stringProps": {}, "tagProps": {}, "boolProps": {}, "intProps": {},
                    "dateProps": {}, "doubleProps": {}, "floatProps": {}, "stringArrayProps": {}, "tagArrayProps": {},
                    "boolArrayProps": {}, "intArrayProps": {}, "dateArrayProps": {}, "doubleArrayProps": {},
                    "floatArrayProps": {}, "compoundCreateInput": {}});
                let input: Vec<Value> = group
                    .iter()
                    .map(|p| json!({"object": {"uid": p.uid, "type": "MEProcessRevision"}, "openViews": false,
                        "openAssociatedContexts": false, "contextSettings": settings}))
                    .collect();
                (
                    "Manufacturing-2011-06-DataManagement/openContexts",
                    json!({"input": input}),
                    true,
                )
            }
            WindowMode::BomWindows { revision_rule } => {
                let rule = self.rule_ref(revision_rule.as_deref()).await?;
                let info: Vec<Value> = group
                    .iter()
                    .map(|p| json!({"clientId": p.uid, "item": "", "itemRev": {"uid": p.uid, "type": "MEProcessRevision"}, "bomView": "",
                        "revRuleConfigInfo": rev_rule_config(&rule),
                        "objectForConfigure": "", "activeAssemblyArrangement": ""}))
                    .collect();
                (
                    "Cad-2007-01-StructureManagement/createBOMWindows",
                    json!({"info": info}),
                    false,
                )
            }
        };
        let (answer, generation, retire, partial_errors) = self.open_windows(op, body).await?;
        let mut opened = Opened {
            handles: Vec::new(),
            tops: Vec::new(),
            skipped: Vec::new(),
            partial_errors,
            generation,
            retire,
        };
        for o in answer["output"].as_array().into_iter().flatten() {
            if contexts {
                for c in o["contexts"].as_array().into_iter().flatten() {
                    if let (Some(top), Some(plan)) =
                        (wire::ref_uid(&c["context"]), wire::ref_uid(&c["object"]))
                    {
                        opened.handles.push(top.to_owned());
                        opened.tops.push((plan.to_owned(), top.to_owned()));
                    }
                }
            } else if let (Some(window), Some(top), Some(plan)) = (
                wire::ref_uid(&o["bomWindow"]),
                wire::ref_uid(&o["bomLine"]),
                o["clientId"].as_str(),
            ) {
                opened.handles.push(window.to_owned());
                opened.tops.push((plan.to_owned(), top.to_owned()));
            }
        }
        for p in group {
            if !opened.tops.iter().any(|(plan, _)| *plan == p.uid) {
                tracing::warn!(plan = %p.id, uid = %p.uid, "Teamcenter could not open the plan; it is left out of this cycle");
                opened.skipped.push(p.uid.clone());
            }
        }
        Ok(opened)
    }

    /// Sends a window open (`openContexts`, `createBOMWindows`): the answer, the session
    /// generation the windows belong to, whether the open was sent again after a lost answer
    /// (retire the session once the windows it can name are closed), and the open's partial
    /// errors.
    ///
    /// An open whose answer was lost (a timeout, a cut connection) may have opened windows nobody
    /// can name to close; they would live as long as the session. Then the session is retired: a
    /// new login now, and the old one is logged out (its windows with it) once its requests are
    /// done. A refusal (429, 503) opened nothing and is simply retried; an answered exception or
    /// an open circuit opened nothing either.
    pub(crate) async fn open_windows(
        &self,
        op: &'static str,
        body: Value,
    ) -> Result<(Value, Option<u64>, bool, Vec<PartialError>), TcError> {
        let sent_under = self.generation();
        let (answer, under, retire) = match self.call_creating(op, body).await {
            Ok(v) => v,
            Err(e) => {
                if e.answer_lost() {
                    tracing::warn!(error = %e, "an answer to a window open was lost; retiring the session so that no window outlives it");
                    self.retire_session(sent_under);
                }
                return Err(e);
            }
        };
        let generation = under.filter(|_| self.windows_follow_token());
        // The windows exist now: an odd ServiceData must not lose track of them.
        let partial_errors = ServiceData::parse(&answer, op)
            .map(|sd| sd.partial_errors)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the open's ServiceData did not parse");
                Vec::new()
            });
        Ok((answer, generation, retire, partial_errors))
    }

    /// The `revRule` of a `revRuleConfigInfo`: the named rule's UID, or `""` (the user's default).
    pub(crate) async fn rule_ref(&self, name: Option<&str>) -> Result<Value, TcError> {
        Ok(match name {
            Some(r) => json!({"uid": self.revision_rule(r).await?}),
            None => json!(""),
        })
    }

    /// The UID of the revision rule named `name` (`getRevisionRules`).
    pub async fn revision_rule(&self, name: &str) -> Result<String, TcError> {
        let op = "Cad-2007-01-StructureManagement/getRevisionRules";
        let answer = self
            .call_with_policy(
                op,
                serde_json::json!({}),
                wire::policy(&[("RevisionRule", vec![("object_name", false)])]),
            )
            .await?;
        let sd = ServiceData::parse(&answer, op)?;
        let rules: Vec<(String, String)> = answer["output"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| wire::ref_uid(&r["revRule"]))
            .map(|u| {
                let n = sd
                    .objects
                    .get(u)
                    .and_then(|o| Props::of(o).optional("object_name"))
                    .unwrap_or_default();
                (u.to_owned(), n)
            })
            .collect();
        rules
            .iter()
            .find(|(_, n)| n == name)
            .map(|(u, _)| u.clone())
            .ok_or_else(|| TcError::Site {
                detail: format!(
                    "no revision rule is named `{name}`; the site has {}",
                    rules
                        .iter()
                        .map(|(_, n)| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    /// A call inside the windows: `None` when the windows' session died under it (it is then
    /// not resent) or it was answered under another session.
    pub(crate) async fn in_window(
        &self,
        op: &str,
        body: Value,
        policy: Value,
        generation: Option<u64>,
    ) -> Result<Option<(Value, ServiceData)>, TcError> {
        // The session already changed (a proactive or reactive re-login): the lines are stale.
        if self.window_generation() != generation {
            return Ok(None);
        }
        let bound = self.windows_follow_token();
        let (answer, under) = match self.call_under(op, body, policy, bound).await {
            Ok(r) => r,
            Err(e) if session_lost(&e) || self.window_generation() != generation => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if under.filter(|_| bound) != generation {
            return Ok(None);
        }
        let sd = ServiceData::parse(&answer, op)?;
        if !sd.partial_errors.is_empty() {
            return Err(unexpected(op, describe(&sd.partial_errors)));
        }
        Ok(Some((answer, sd)))
    }

    /// Expands the opened plans down to `cfg.depth` levels and resolves the lines the operations
    /// reference. `None`: the session changed, start over.
    async fn walk(&self, opened: &Opened, cfg: &ReadConfig) -> Result<Option<Walk>, TcError> {
        let f = &cfg.fields;
        let line_props = vec![
            (f.op_id.as_str(), false),
            (f.op_name.as_str(), false),
            (f.sequence.as_str(), false),
            (f.occurrence.as_str(), false),
            (f.reference_id.as_str(), false),
        ];
        // `withProperties` asks the server to send the referenced lines along (with their
        // `BOMLine` properties); lines it leaves out are read with `getProperties` below.
        let op_props = vec![
            (f.allocated_time.as_str(), false),
            (f.work_area.as_str(), true),
            (f.equipment.as_str(), true),
            (f.consumed.as_str(), true),
        ];
        let mut types: Vec<(&str, Vec<(&str, bool)>)> = vec![("BOMLine", line_props)];
        types.extend(
            cfg.operation_types
                .iter()
                .map(|t| (t.as_str(), op_props.clone())),
        );
        types.push(("ItemRevision", vec![(f.release_status.as_str(), true)]));
        types.push(("ReleaseStatus", vec![("object_name", false)]));
        let policy = wire::policy(&types);
        let mut walk = Walk::default();
        let mut level = opened.tops.clone();
        for _ in 0..cfg.depth {
            if level.is_empty() {
                break;
            }
            let mut next = Vec::new();
            for chunk in level.chunks(cfg.chunk.max(1)) {
                let plan_of: BTreeMap<&str, &str> = chunk
                    .iter()
                    .map(|(p, l)| (l.as_str(), p.as_str()))
                    .collect();
                let parents: Vec<&str> = chunk.iter().map(|(_, l)| l.as_str()).collect();
                let body = json!({"input": {"parentBomLines": parents, "excludeFilter": "None"},
                    "pref": {"expItemRev": false, "info": []}});
                let Some((answer, sd)) = self
                    .in_window(EXPAND, body, policy.clone(), opened.generation)
                    .await?
                else {
                    return Ok(None);
                };
                for o in answer["output"].as_array().into_iter().flatten() {
                    let Some(plan) =
                        wire::ref_uid(&o["parent"]["bomLine"]).and_then(|l| plan_of.get(l))
                    else {
                        return Err(unexpected(
                            EXPAND,
                            "an output's parent is not a line that was expanded",
                        ));
                    };
                    for c in o["children"].as_array().into_iter().flatten() {
                        let Some(line) = wire::ref_uid(&c["bomLine"]) else {
                            continue;
                        };
                        let type_name = sd
                            .objects
                            .get(line)
                            .map(|m| m.type_name.clone())
                            .or_else(|| c["bomLine"]["type"].as_str().map(str::to_owned))
                            .unwrap_or_default();
                        if cfg.operation_types.contains(&type_name) {
                            let Some(m) = sd.objects.get(line) else {
                                return Err(unexpected(
                                    EXPAND,
                                    format!("operation line {line} is not in modelObjects"),
                                ));
                            };
                            let rev = wire::ref_uid(&c["itemRevOfBOMLine"]).map(str::to_owned);
                            walk.ops.push(((*plan).to_owned(), m.clone(), rev));
                        } else if cfg.process_line_types.contains(&type_name) {
                            next.push(((*plan).to_owned(), line.to_owned()));
                        }
                    }
                }
                walk.objects.extend(sd.objects);
            }
            level = next;
        }
        let refs: Vec<String> = walk
            .ops
            .iter()
            .flat_map(|(_, line, _)| {
                let p = Props::of(line);
                let mut r = p.refs(&f.work_area);
                r.extend(p.refs(&f.equipment));
                r.extend(p.refs(&f.consumed));
                r
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|uid| {
                let known = walk
                    .objects
                    .get(uid)
                    .filter(|o| o.props.contains_key(&f.reference_id))
                    .map(|o| Props::of(o).optional(&f.reference_id).unwrap_or_default());
                match known {
                    Some(id) => {
                        walk.names.insert(uid.clone(), id);
                        false
                    }
                    None => true,
                }
            })
            .collect();
        for chunk in refs.chunks(cfg.chunk.max(1)) {
            let body = json!({"objects": chunk, "attributes": [f.reference_id]});
            let Some((_, sd)) = self
                .in_window(GET_PROPERTIES, body, json!({}), opened.generation)
                .await?
            else {
                return Ok(None);
            };
            for uid in chunk {
                let id = sd
                    .objects
                    .get(uid)
                    .and_then(|o| Props::of(o).optional(&f.reference_id))
                    .unwrap_or_default();
                walk.names.insert(uid.clone(), id);
            }
        }
        Ok(Some(walk))
    }

    /// Work-instruction datasets of operation revisions (`expandGRMRelationsForPrimary`).
    async fn work_instructions(
        &self,
        revisions: &[String],
        cfg: &ReadConfig,
        out: &mut PlanStructures,
    ) -> Result<BTreeMap<String, Vec<WorkInstruction>>, TcError> {
        let mut found: BTreeMap<String, Vec<WorkInstruction>> = BTreeMap::new();
        if cfg.work_instruction_relations.is_empty() {
            return Ok(found);
        }
        let op = "Core-2007-09-DataManagement/expandGRMRelationsForPrimary";
        let info: Vec<Value> = cfg
            .work_instruction_relations
            .iter()
            .map(|r| json!({"relationTypeName": r, "otherSideObjectTypes": []}))
            .collect();
        let policy = wire::policy(&[("Dataset", vec![("object_name", false)])]);
        for chunk in revisions.chunks(cfg.chunk.max(1)) {
            let primaries: Vec<Value> = chunk.iter().map(|u| json!({"uid": u})).collect();
            let body = json!({"primaryObjects": primaries,
                "pref": {"expItemRev": false, "returnRelations": true, "info": info}});
            let answer = self.call_with_policy(op, body, policy.clone()).await?;
            let sd = ServiceData::parse(&answer, op)?;
            for o in answer["output"].as_array().into_iter().flatten() {
                let Some(primary) = wire::ref_uid(&o["inputObject"]) else {
                    continue;
                };
                let list = found.entry(primary.to_owned()).or_default();
                for rd in o["relationshipData"].as_array().into_iter().flatten() {
                    for ro in rd["relationshipObjects"].as_array().into_iter().flatten() {
                        let other = &ro["otherSideObject"];
                        let Some(uid) = wire::ref_uid(other) else {
                            continue;
                        };
                        let model = sd.objects.get(uid);
                        list.push(WorkInstruction {
                            uid: uid.to_owned(),
                            name: model
                                .and_then(|m| Props::of(m).optional("object_name"))
                                .unwrap_or_default(),
                            type_name: model
                                .map(|m| m.type_name.clone())
                                .or_else(|| other["type"].as_str().map(str::to_owned))
                                .unwrap_or_default(),
                        });
                    }
                }
                list.sort();
                list.dedup();
            }
            out.partial_errors.extend(sd.partial_errors);
        }
        Ok(found)
    }

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

    /// Writes the feedback row `row` (its outbox id) to the operation revision `uid`, with the
    /// site-defined properties of `cfg`; returns whether it wrote. The key property records the
    /// newest row applied (`shiftkey-feedback-<row>`, or `"row"` in the JSON document), and it is
    /// read first: a row not newer than the one recorded is not written again. So replaying any
    /// number of rows (a push cut off between Teamcenter and the outbox) writes no row twice,
    /// and the server keeps the newest row's values. Every field goes out with the key in one
    /// `setProperties` (a missing cycle time clears its property instead of leaving an older
    /// row's). A property the site lacks is a [`TcError::Site`] naming it.
    pub async fn write_feedback(
        &self,
        cfg: &FeedbackConfig,
        uid: &str,
        values: FeedbackValues<'_>,
        row: i64,
    ) -> Result<bool, TcError> {
        let answer = self
            .call(
                GET_PROPERTIES,
                json!({"objects": [{"uid": uid}], "attributes": [cfg.key_property]}),
            )
            .await?;
        let sd = ServiceData::parse(&answer, GET_PROPERTIES)?;
        if !sd.partial_errors.is_empty() {
            return Err(TcError::Site {
                detail: format!(
                    "reading the feedback key `{}` of {uid}: {}",
                    cfg.key_property,
                    describe(&sd.partial_errors)
                ),
            });
        }
        let json = cfg.format == FeedbackFormat::Json;
        let applied = sd
            .objects
            .get(uid)
            .map(|o| Props::of(o).list(&cfg.key_property))
            .unwrap_or_default()
            .iter()
            .filter_map(|v| applied_row(v, json))
            .max();
        if applied.is_some_and(|a| a >= row) {
            return Ok(false);
        }
        let key = format!("{FEEDBACK_KEY_PREFIX}{row}");
        let vec = if json {
            let doc = json!({
                "key": key,
                "row": row,
                "completed_count": values.completed_count,
                "actual_cycle_time_s": values.actual_cycle_time_s,
                "deviation": values.deviation,
            });
            vec![json!({"name": cfg.key_property, "values": [doc.to_string()]})]
        } else {
            let mut vec = vec![json!({"name": cfg.key_property, "values": [key]})];
            if let Some(p) = &cfg.completed_count {
                vec.push(json!({"name": p, "values": [values.completed_count.to_string()]}));
            }
            if let Some(p) = &cfg.actual_cycle_time {
                let t = values
                    .actual_cycle_time_s
                    .map(|t| format!("{t}"))
                    .unwrap_or_default();
                vec.push(json!({"name": p, "values": [t]}));
            }
            if let Some(p) = &cfg.deviation {
                vec.push(json!({"name": p, "values": [values.deviation]}));
            }
            vec
        };
        let op = "Core-2010-09-DataManagement/setProperties";
        let answer = self
            .write(
                op,
                json!({"info": [{"object": {"uid": uid}, "timestamp": "", "vecNameVal": vec}], "options": []}),
            )
            .await?;
        let sd = ServiceData::parse(&answer, op)?;
        if !sd.partial_errors.is_empty() {
            return Err(TcError::Site {
                detail: format!(
                    "writing feedback to {uid}: {}",
                    describe(&sd.partial_errors)
                ),
            });
        }
        Ok(true)
    }
}
