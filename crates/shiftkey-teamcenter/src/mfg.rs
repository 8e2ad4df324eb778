//! Manufacturing reads for the shop floor: process plans and their operations, incrementally.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::client::TcClient;
use crate::error::TcError;
use crate::wire::{self, ModelObject, PartialError, Props, ServiceData};

/// A process plan revision (`MEProcessRevision`) → an ISA-95 operations definition.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessPlan {
    /// UID.
    pub uid: String,
    /// `item_id`.
    pub id: String,
    /// `item_revision_id`.
    pub revision: String,
    /// `object_name`.
    pub name: String,
    /// Plant (`mfg0plant`).
    pub plant: String,
    /// `release_status_list` (empty: not released).
    pub release_status: Vec<String>,
    /// `last_mod_date`.
    pub last_modified: SystemTime,
    /// `fnd0IsObsolete`.
    pub obsolete: bool,
}

/// An operation revision (`MEOPRevision`) → an ISA-95 operations segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    /// UID.
    pub uid: String,
    /// The plan it belongs to.
    pub plan_uid: String,
    /// `item_id`.
    pub id: String,
    /// `object_name`.
    pub name: String,
    /// Sequence number (`mfg0sequence`).
    pub sequence: u32,
    /// Work area / station `item_id`, if allocated.
    pub work_area: Option<String>,
    /// Allocated time in seconds.
    pub allocated_time_s: Option<f64>,
    /// Work instruction text.
    pub instructions: String,
    /// Resource `item_id`s.
    pub resources: Vec<String>,
    /// Consumed part `item_id`s.
    pub consumed_parts: Vec<String>,
    /// `fnd0IsObsolete`.
    pub obsolete: bool,
    /// `last_mod_date`.
    pub last_modified: SystemTime,
}

/// How to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadConfig {
    /// Search page size (default 200).
    pub page: usize,
    /// Objects per `loadObjects` / `getProperties` call (default 100).
    pub chunk: usize,
    /// Overlap subtracted from the watermark against clock skew (default 5 min).
    pub overlap: Duration,
}

impl Default for ReadConfig {
    fn default() -> Self {
        Self {
            page: 200,
            chunk: 100,
            overlap: Duration::from_secs(300),
        }
    }
}

/// The result of an incremental read.
#[derive(Debug, Clone, Default)]
pub struct ChangeSet {
    /// Changed plans with all their operations.
    pub plans: Vec<(ProcessPlan, Vec<Operation>)>,
    /// The newest `last_mod_date` seen (the next watermark), if anything changed.
    pub high_watermark: Option<SystemTime>,
    /// Partial errors Teamcenter reported, per object (not swallowed).
    pub partial_errors: Vec<PartialError>,
}

fn plan(o: &ModelObject) -> Result<ProcessPlan, TcError> {
    let p = Props::of(o);
    Ok(ProcessPlan {
        uid: o.uid.clone(),
        id: p.string("item_id")?,
        revision: p.string("item_revision_id")?,
        name: p.optional("object_name").unwrap_or_default(),
        plant: p.optional("mfg0plant").unwrap_or_default(),
        release_status: p.list("release_status_list"),
        last_modified: p.date("last_mod_date")?,
        obsolete: p.flag("fnd0IsObsolete")?,
    })
}

impl TcClient {
    async fn load(
        &self,
        uids: &[String],
        attributes: Option<&[&str]>,
        cfg: &ReadConfig,
        out: &mut ChangeSet,
    ) -> Result<BTreeMap<String, ModelObject>, TcError> {
        let mut objects = BTreeMap::new();
        for chunk in uids.chunks(cfg.chunk.max(1)) {
            let (op, answer) = match attributes {
                None => (
                    "Core-2007-09-DataManagement/loadObjects",
                    self.call(
                        "Core-2007-09-DataManagement/loadObjects",
                        json!({"uids": chunk}),
                    )
                    .await?,
                ),
                Some(attrs) => {
                    let objs: Vec<_> = chunk.iter().map(|u| json!({"uid": u})).collect();
                    (
                        "Core-2006-03-DataManagement/getProperties",
                        self.call(
                            "Core-2006-03-DataManagement/getProperties",
                            json!({"objects": objs, "attributes": attrs}),
                        )
                        .await?,
                    )
                }
            };
            let sd = ServiceData::parse(&answer, op)?;
            out.partial_errors.extend(sd.partial_errors);
            objects.extend(sd.objects);
        }
        Ok(objects)
    }

    /// Process plans changed since `watermark` (minus the overlap), with all their operations,
    /// read in pages and chunks: `performSearch` → `loadObjects` (plans) → `expandPSOneLevel` →
    /// `loadObjects` (operations) → `getProperties` (`item_id` of work areas, resources, parts).
    pub async fn changed_since(
        &self,
        watermark: Option<SystemTime>,
        cfg: &ReadConfig,
    ) -> Result<ChangeSet, TcError> {
        let since = watermark.map_or(SystemTime::UNIX_EPOCH, |w| {
            w.checked_sub(cfg.overlap).unwrap_or(SystemTime::UNIX_EPOCH)
        });
        let mut out = ChangeSet::default();
        let mut plan_uids = Vec::new();
        loop {
            let answer = self
                .call(
                    "Query-2012-10-Finder/performSearch",
                    json!({"searchInput": {"providerName": "Mfg0ChangedProcessProvider", "searchCriteria": {"type": "MEProcessRevision", "modifiedSince": wire::tc_date(since)}, "startIndex": plan_uids.len(), "maxToReturn": cfg.page}}),
                )
                .await?;
            let found = answer["searchResults"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r["uid"].as_str().map(str::to_owned))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            let total = answer["totalFound"].as_u64().unwrap_or(0) as usize;
            let got = found.len();
            plan_uids.extend(found);
            if got == 0 || plan_uids.len() >= total {
                break;
            }
        }
        if plan_uids.is_empty() {
            return Ok(out);
        }
        let plans = self.load(&plan_uids, None, cfg, &mut out).await?;
        // Operations of each plan.
        let mut ops_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for chunk in plan_uids.chunks(cfg.chunk.max(1)) {
            let answer = self
                .call(
                    "Cad-2007-01-StructureManagement/expandPSOneLevel",
                    json!({"input": {"parentBomLines": chunk}}),
                )
                .await?;
            for o in answer["output"].as_array().into_iter().flatten() {
                let Some(parent) = o["parent"]["itemRevOfBOMLine"]["uid"]
                    .as_str()
                    .or(o["parent"]["bomLine"]["uid"].as_str())
                else {
                    continue;
                };
                let children = o["children"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["itemRevOfBOMLine"]["uid"].as_str().map(str::to_owned))
                    .collect();
                ops_of.insert(parent.to_owned(), children);
            }
        }
        let op_uids: Vec<String> = ops_of.values().flatten().cloned().collect();
        let ops = self.load(&op_uids, None, cfg, &mut out).await?;
        // Names of what operations reference.
        let refs: BTreeSet<String> = ops
            .values()
            .flat_map(|o| {
                let p = Props::of(o);
                let mut r = p.refs("Mfg0workarea");
                r.extend(p.refs("Mfg0assigned_resources"));
                r.extend(p.refs("Mfg0consumed_material"));
                r
            })
            .collect();
        let refs: Vec<String> = refs.into_iter().collect();
        let named = self.load(&refs, Some(&["item_id"]), cfg, &mut out).await?;
        let name = |uid: &String| {
            named
                .get(uid)
                .and_then(|o| Props::of(o).optional("item_id"))
                .unwrap_or_else(|| uid.clone())
        };
        for uid in &plan_uids {
            let Some(o) = plans.get(uid) else { continue };
            let p = plan(o)?;
            out.high_watermark = Some(
                out.high_watermark
                    .map_or(p.last_modified, |w: SystemTime| w.max(p.last_modified)),
            );
            let mut operations = Vec::new();
            for op_uid in ops_of.get(uid).into_iter().flatten() {
                let Some(o) = ops.get(op_uid) else { continue };
                let pr = Props::of(o);
                let sequence = pr.number("mfg0sequence")?.unwrap_or(0.0);
                operations.push(Operation {
                    uid: o.uid.clone(),
                    plan_uid: uid.clone(),
                    id: pr.string("item_id")?,
                    name: pr.optional("object_name").unwrap_or_default(),
                    sequence: if sequence.is_finite()
                        && sequence >= 0.0
                        && sequence <= f64::from(u32::MAX)
                    {
                        sequence as u32
                    } else {
                        0
                    },
                    work_area: pr.refs("Mfg0workarea").first().map(name),
                    allocated_time_s: pr.number("allocated_time")?,
                    instructions: pr.optional("mes0work_instructions").unwrap_or_default(),
                    resources: pr.refs("Mfg0assigned_resources").iter().map(name).collect(),
                    consumed_parts: pr.refs("Mfg0consumed_material").iter().map(name).collect(),
                    obsolete: pr.flag("fnd0IsObsolete")?,
                    last_modified: pr.date("last_mod_date")?,
                });
            }
            operations.sort_by_key(|o| o.sequence);
            out.plans.push((p, operations));
        }
        Ok(out)
    }

    /// Sets properties on `uid` once per `idempotency_key` (stored in `mes0feedback_key`): a
    /// repeated push with the same key changes nothing. Returns whether it wrote.
    pub async fn set_properties_once(
        &self,
        uid: &str,
        props: &[(&str, Vec<String>)],
        idempotency_key: &str,
    ) -> Result<bool, TcError> {
        let answer = self
            .call(
                "Core-2006-03-DataManagement/getProperties",
                json!({"objects": [{"uid": uid}], "attributes": ["mes0feedback_key"]}),
            )
            .await?;
        let sd = ServiceData::parse(&answer, "getProperties")?;
        if let Some(o) = sd.objects.get(uid)
            && Props::of(o)
                .list("mes0feedback_key")
                .iter()
                .any(|k| k == idempotency_key)
        {
            return Ok(false);
        }
        let mut vec: Vec<_> = props
            .iter()
            .map(|(n, v)| json!({"name": n, "values": v}))
            .collect();
        vec.push(json!({"name": "mes0feedback_key", "values": [idempotency_key]}));
        let answer = self
            .call(
                "Core-2010-09-DataManagement/setProperties",
                json!({"info": [{"object": {"uid": uid}, "vecNameVal": vec}], "options": []}),
            )
            .await?;
        let sd = ServiceData::parse(&answer, "setProperties")?;
        if let Some(pe) = sd.partial_errors.first() {
            return Err(TcError::Service {
                qname: "setProperties partial error".into(),
                code: pe.errors.first().map_or(0, |e| e.code),
                message: pe
                    .errors
                    .first()
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
            });
        }
        Ok(true)
    }
}
