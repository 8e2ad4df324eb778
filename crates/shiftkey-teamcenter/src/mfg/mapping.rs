//! Teamcenter's objects as the crate's types: a revision as a [`ProcessPlan`], an operation
//! line as an [`Operation`], release statuses by name.

use std::collections::BTreeMap;

use crate::error::TcError;
use crate::site::ReadConfig;
use crate::wire::{ModelObject, Props};

use super::*;

/// Status names of a revision's release status list, resolved through `objects`.
pub(crate) fn status_names(
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

pub(crate) fn plan(
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
pub(crate) fn operation(
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
