//! The bill of process inside a window: operation lines one level down, the lines they
//! reference, and work instructions by relation (§9 steps 3–6).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::client::TcClient;
use crate::error::TcError;
use crate::site::{ReadConfig, WindowMode};
use crate::wire::{self, ModelObject, PartialError, Props, ServiceData};

use super::*;

/// What one traversal round found: operation lines and the objects the answers carried.
#[derive(Debug, Default)]
pub(crate) struct Walk {
    /// (plan UID, line, revision UID) in tree order.
    pub(crate) ops: Vec<(String, ModelObject, Option<String>)>,
    /// Every model object seen (revisions, release statuses, lines).
    pub(crate) objects: BTreeMap<String, ModelObject>,
    /// Referenced line UID → its id.
    pub(crate) names: BTreeMap<String, String>,
}

impl TcClient {
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

    /// Expands the opened plans down to `cfg.depth` levels and resolves the lines the operations
    /// reference. `None`: the session changed, start over.
    pub(crate) async fn walk(
        &self,
        opened: &Opened,
        cfg: &ReadConfig,
    ) -> Result<Option<Walk>, TcError> {
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
    pub(crate) async fn work_instructions(
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
}
