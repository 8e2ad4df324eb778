//! Which plans changed: the saved (or business-object) query, its UID cached per session, and
//! the plans' properties (`docs/teamcenter-reads.md` §9 steps 1–2).

use std::collections::BTreeSet;
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::client::TcClient;
use crate::error::TcError;
use crate::site::{ChangeQuery, ReadConfig};
use crate::wire::{self, Props, ServiceData};

use super::*;

impl TcClient {
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
    pub(crate) async fn load_plans(
        &self,
        uids: &[String],
        cfg: &ReadConfig,
    ) -> Result<ChangedPlans, TcError> {
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
    pub(crate) async fn changed_uids(
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
    pub(crate) async fn saved_query(
        &self,
        name: &str,
        entries: &[&String],
    ) -> Result<String, TcError> {
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
}
