//! A deterministic bill of process with Teamcenter's type and property names
//! (`docs/teamcenter-reads.md` §5.6), a planner who edits it over simulated time, and the truth a
//! sync is compared with.
//!
//! Persistent objects (revisions, datasets, release statuses, saved queries, revision rules) live in
//! [`Dataset::objects`]; the structure of each process revision is a tree of [`Occurrence`]s, which
//! the server shows as runtime BOM lines only inside an open window.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

/// The null UID of Teamcenter.
pub const NULL_UID: &str = "AAAAAAAAAAAAAA";

/// The relation that attaches work instructions to an operation revision.
pub const WORK_INSTRUCTION: &str = "IMAN_MEWorkInstruction";

/// What to generate.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Seed of the generator and the change stream.
    pub seed: u64,
    /// Plants.
    pub plants: u32,
    /// Process plans (`MEProcessRevision`) per plant.
    pub plans_per_plant: u32,
    /// Operations (`MEOPRevision` under `Mfg0BvrOperation` lines) per plan.
    pub ops_per_plan: u32,
    /// Work areas per plant.
    pub work_areas_per_plant: u32,
    /// Resources per plant.
    pub resources_per_plant: u32,
    /// Consumed parts per operation (at most).
    pub parts_per_op: u32,
    /// Work-instruction datasets per operation (`IMAN_MEWorkInstruction`).
    pub instructions_per_op: u32,
    /// Nested sub-processes (`Mfg0BvrProcess` lines, each with two operations) per plan.
    pub nested_processes: u32,
    /// Changes per simulated hour (line edits, revision edits, releases, removed operations,
    /// new work instructions).
    pub changes_per_hour: f64,
    /// Whether an edit of the structure (a line property, an operation revision, a removed
    /// operation, a new work instruction) also moves the process revision's `last_mod_date`.
    /// Unknown for a real site (`docs/teamcenter-reads.md` §2.8); default true.
    pub structure_edit_moves_plan: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            seed: 7,
            plants: 2,
            plans_per_plant: 10,
            ops_per_plan: 8,
            work_areas_per_plant: 4,
            resources_per_plant: 6,
            parts_per_op: 3,
            instructions_per_op: 1,
            nested_processes: 0,
            changes_per_hour: 6.0,
            structure_edit_moves_plan: true,
        }
    }
}

/// One persistent model object: a type and properties whose `dbValues` are all strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The UID.
    pub uid: String,
    /// The business object type (`MEOPRevision`, `PDF`, ...), also its `className` here.
    pub type_name: String,
    /// Property name → `dbValues`.
    pub props: BTreeMap<String, Vec<String>>,
}

impl Object {
    fn new(uid: String, type_name: &str) -> Self {
        Self {
            uid,
            type_name: type_name.to_owned(),
            props: BTreeMap::new(),
        }
    }

    fn set(&mut self, name: &str, values: Vec<String>) {
        self.props.insert(name.to_owned(), values);
    }

    fn one(&mut self, name: &str, value: impl Into<String>) {
        self.set(name, vec![value.into()]);
    }

    /// The first `dbValue` of `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&str> {
        self.props
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

/// One occurrence in a bill of process: what a BOM line shows inside a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    /// The persistent occurrence UID (`bl_occurrence_uid`).
    pub uid: String,
    /// The revision the line shows (`itemRevOfBOMLine`).
    pub revision: String,
    /// The line type (`Mfg0BvrOperation`, `Mfg0BvrProcess`, `Mfg0BvrWorkarea`, ...).
    pub line_type: &'static str,
    /// `bl_occ_type` (`MEConsumed`, `MEWorkArea`, `MEResource`, empty for operations).
    pub occ_type: String,
    /// `bl_sequence_no`.
    pub sequence: String,
    /// `Mfg0allocated_time` (operations only).
    pub allocated_time: Option<String>,
    /// Child occurrences (for an operation: its work area, equipment and parts).
    pub children: Vec<String>,
    /// `Mfg0assigned_workarea`: a child occurrence.
    pub work_area: Option<String>,
    /// `Mfg0used_equipment`: child occurrences.
    pub equipment: Vec<String>,
    /// `Mfg0consumed_material`: child occurrences.
    pub consumed: Vec<String>,
}

/// An operation as the data set holds it, with references resolved to item ids: what a correct
/// read must return.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationTruth {
    /// The operation revision UID.
    pub revision: String,
    /// The occurrence UID.
    pub occurrence: String,
    /// `item_id` of the revision.
    pub id: String,
    /// `object_name` of the revision.
    pub name: String,
    /// `bl_sequence_no`.
    pub sequence: String,
    /// `Mfg0allocated_time`.
    pub allocated_time: Option<String>,
    /// `item_id` of the work area.
    pub work_area: Option<String>,
    /// `item_id`s of the equipment.
    pub equipment: Vec<String>,
    /// `item_id`s of the consumed parts.
    pub consumed: Vec<String>,
    /// UIDs of the work-instruction datasets.
    pub instructions: Vec<String>,
}

/// Teamcenter's `dbValues` date form: `yyyy-MM-ddTHH:mm:ss+hh:mm` (UTC here; colon in the offset
/// as the Siemens parser expects, `docs/teamcenter-reads.md` §0.2).
#[must_use]
pub fn tc_date(t: SystemTime) -> String {
    let dt: chrono::DateTime<chrono::Utc> = t.into();
    dt.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
}

/// Parses [`tc_date`]'s form (any offset, with or without the colon).
#[must_use]
pub fn parse_tc_date(s: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%:z")
        .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z"))
        .ok()
        .map(SystemTime::from)
}

/// The data set.
#[derive(Debug, Clone)]
pub struct Dataset {
    objects: BTreeMap<String, Object>,
    occurrences: BTreeMap<String, Occurrence>,
    /// Process revision → its top-level occurrences.
    structures: BTreeMap<String, Vec<String>>,
    /// Primary UID → (relation, secondary UID).
    relations: BTreeMap<String, Vec<(String, String)>>,
    rng: StdRng,
    cfg: DataConfig,
    next_uid: u64,
    changes_applied: u64,
    last_advance: SystemTime,
    /// How many times each (property, value) was written by `setProperties`: the evidence that a
    /// feedback write happened exactly once.
    written: BTreeMap<(String, String), u64>,
}

const REVISION_TYPES: [&str; 5] = [
    "MEProcessRevision",
    "MEOPRevision",
    "MEWorkareaRevision",
    "Mfg0MEResourceRevision",
    "ItemRevision",
];

impl Dataset {
    /// Generates the data set as of `now` (everything last modified a day before).
    #[must_use]
    pub fn generate(cfg: &DataConfig, now: SystemTime) -> Self {
        let mut d = Self {
            objects: BTreeMap::new(),
            occurrences: BTreeMap::new(),
            structures: BTreeMap::new(),
            relations: BTreeMap::new(),
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg: cfg.clone(),
            next_uid: 0,
            changes_applied: 0,
            written: BTreeMap::new(),
            last_advance: now,
        };
        let base = tc_date(now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now));
        for rule in ["Latest Working", "Any Status; Working", "Precise; Working"] {
            let uid = d.uid();
            let mut o = Object::new(uid.clone(), "RevisionRule");
            o.one("object_name", rule);
            d.objects.insert(uid, o);
        }
        for p in 0..cfg.plants {
            let plant = format!("P{:02}", p + 1);
            let areas: Vec<String> = (0..cfg.work_areas_per_plant)
                .map(|a| {
                    d.revision(
                        "MEWorkareaRevision",
                        &format!("{plant}-WA{:02}", a + 1),
                        &format!("Station {} / {plant}", a + 1),
                        &base,
                    )
                })
                .collect();
            let resources: Vec<String> = (0..cfg.resources_per_plant)
                .map(|r| {
                    let name = [
                        "Torque wrench",
                        "Press",
                        "Robot cell",
                        "Vision system",
                        "Screwdriver",
                        "Gauge",
                    ][r as usize % 6];
                    d.revision(
                        "Mfg0MEResourceRevision",
                        &format!("{plant}-RS{:02}", r + 1),
                        name,
                        &base,
                    )
                })
                .collect();
            for n in 0..cfg.plans_per_plant {
                let plan_id = format!("{plant}-PR{:04}", n + 1);
                let plan = d.revision(
                    "MEProcessRevision",
                    &plan_id,
                    &format!("Assemble module {} at {plant}", n + 1),
                    &base,
                );
                let mut top = Vec::new();
                for k in 0..cfg.ops_per_plan {
                    let op = d.operation(&plan_id, k, &areas, &resources, &base);
                    top.push(op);
                }
                for s in 0..cfg.nested_processes {
                    let sub_id = format!("{plan_id}-S{}", s + 1);
                    let sub = d.revision(
                        "MEProcessRevision",
                        &sub_id,
                        &format!("Sub-process {} of {plan_id}", s + 1),
                        &base,
                    );
                    let ops: Vec<String> = (0..2)
                        .map(|k| d.operation(&sub_id, k, &areas, &resources, &base))
                        .collect();
                    d.structures.insert(sub.clone(), ops);
                    let occ = d.uid();
                    d.occurrences.insert(
                        occ.clone(),
                        Occurrence {
                            uid: occ.clone(),
                            revision: sub,
                            line_type: "Mfg0BvrProcess",
                            occ_type: String::new(),
                            sequence: ((cfg.ops_per_plan + s + 1) * 10).to_string(),
                            allocated_time: None,
                            children: Vec::new(),
                            work_area: None,
                            equipment: Vec::new(),
                            consumed: Vec::new(),
                        },
                    );
                    top.push(occ);
                }
                d.structures.insert(plan, top);
            }
        }
        d
    }

    /// A new revision object of `type_name` with the standard properties, revision `A` of a new
    /// item (`items_tag`).
    fn revision(&mut self, type_name: &str, id: &str, name: &str, date: &str) -> String {
        let uid = self.uid();
        // The item's UID is derived from its first revision's (unique), so that adding items
        // leaves every other UID of a seed as it was.
        let item_uid = format!("{}x9I", &uid[..uid.len() - 3]);
        let item_type = match type_name.strip_suffix("Revision") {
            Some("Item") | None => "Item",
            Some(t) => t,
        };
        let mut item = Object::new(item_uid.clone(), item_type);
        item.one("item_id", id);
        item.one("object_name", name);
        item.one("object_type", item_type);
        item.one("creation_date", date);
        item.one("last_mod_date", date);
        item.set("revision_list", vec![uid.clone()]);
        self.objects.insert(item_uid.clone(), item);
        let mut o = Object::new(uid.clone(), type_name);
        o.one("item_id", id);
        o.one("item_revision_id", "A");
        o.one("items_tag", item_uid);
        o.one("object_name", name);
        o.one("object_type", type_name);
        o.one("object_desc", "");
        o.one("creation_date", date);
        o.one("last_mod_date", date);
        o.set("release_status_list", Vec::new());
        o.one("owning_user", "uUSER");
        self.objects.insert(uid.clone(), o);
        uid
    }

    /// An operation revision, its occurrence and its children (work area, equipment, parts),
    /// and its work-instruction datasets. Returns the occurrence UID.
    fn operation(
        &mut self,
        plan_id: &str,
        k: u32,
        areas: &[String],
        resources: &[String],
        date: &str,
    ) -> String {
        let seq = (k + 1) * 10;
        let op_id = format!("{plan_id}-OP{seq:03}");
        let rev = self.revision("MEOPRevision", &op_id, &format!("Operation {seq}"), date);
        let mut children = Vec::new();
        let work_area = areas
            .get(self.rng.gen_range(0..areas.len().max(1)))
            .cloned();
        let work_area = work_area.map(|a| {
            let occ = self.child(&a, "Mfg0BvrWorkarea", "MEWorkArea");
            children.push(occ.clone());
            occ
        });
        let n_eq = self.rng.gen_range(0..=resources.len().min(2));
        let equipment: Vec<String> = resources
            .iter()
            .take(n_eq)
            .cloned()
            .collect::<Vec<_>>()
            .into_iter()
            .map(|r| {
                let occ = self.child(&r, "Mfg0BvrProcessResource", "MEResource");
                children.push(occ.clone());
                occ
            })
            .collect();
        let n_parts = self.rng.gen_range(0..=self.cfg.parts_per_op);
        let consumed: Vec<String> = (0..n_parts)
            .map(|i| {
                let pn = format!("PN-{:06}", self.next_uid * 10 + u64::from(i));
                let part = self.revision("ItemRevision", &pn, &format!("Part {pn}"), date);
                let occ = self.child(&part, "Mfg0BvrPart", "MEConsumed");
                children.push(occ.clone());
                occ
            })
            .collect();
        for i in 0..self.cfg.instructions_per_op {
            self.attach(
                &rev,
                WORK_INSTRUCTION,
                &format!("WI-{op_id}-{}.pdf", i + 1),
                "PDF",
            );
        }
        // A specification that is not a work instruction: listed only if that relation is asked.
        if k == 0 {
            self.attach(
                &rev,
                "IMAN_specification",
                &format!("SPEC-{op_id}.txt"),
                "Text",
            );
        }
        let occ = self.uid();
        let time = format!("{:.1}", self.rng.gen_range(5.0..300.0));
        self.occurrences.insert(
            occ.clone(),
            Occurrence {
                uid: occ.clone(),
                revision: rev,
                line_type: "Mfg0BvrOperation",
                occ_type: String::new(),
                sequence: seq.to_string(),
                allocated_time: Some(time),
                children,
                work_area,
                equipment,
                consumed,
            },
        );
        occ
    }

    fn child(&mut self, revision: &str, line_type: &'static str, occ_type: &str) -> String {
        let occ = self.uid();
        self.occurrences.insert(
            occ.clone(),
            Occurrence {
                uid: occ.clone(),
                revision: revision.to_owned(),
                line_type,
                occ_type: occ_type.to_owned(),
                sequence: String::new(),
                allocated_time: None,
                children: Vec::new(),
                work_area: None,
                equipment: Vec::new(),
                consumed: Vec::new(),
            },
        );
        occ
    }

    /// A dataset of `type_name` attached to `primary` by `relation`.
    fn attach(&mut self, primary: &str, relation: &str, name: &str, type_name: &str) -> String {
        let uid = self.uid();
        let mut ds = Object::new(uid.clone(), type_name);
        ds.one("object_name", name);
        ds.one("object_type", type_name);
        ds.set("ref_list", Vec::new());
        self.objects.insert(uid.clone(), ds);
        self.relations
            .entry(primary.to_owned())
            .or_default()
            .push((relation.to_owned(), uid.clone()));
        uid
    }

    fn uid(&mut self) -> String {
        self.next_uid += 1;
        // 14 characters like real UIDs: a bijective mix of the counter (unique), 6 bits a character,
        // and a fixed tail so no UID is ever the null UID.
        let n = self.next_uid.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.cfg.seed.rotate_left(17);
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_$";
        let mut uid: String = (0..11)
            .map(|i| alphabet[((n >> (i * 6)) & 63) as usize] as char)
            .collect();
        uid.push_str("x9Q");
        uid
    }

    /// Adds a saved query (`ImanQuery`) named `name`.
    pub fn add_saved_query(&mut self, name: &str) -> String {
        let uid = self.uid();
        let mut o = Object::new(uid.clone(), "ImanQuery");
        o.one("query_name", name);
        o.one("query_desc", format!("{name} (emulated)"));
        self.objects.insert(uid.clone(), o);
        uid
    }

    /// Every persistent object.
    #[must_use]
    pub fn objects(&self) -> &BTreeMap<String, Object> {
        &self.objects
    }

    /// One persistent object.
    #[must_use]
    pub fn get(&self, uid: &str) -> Option<&Object> {
        self.objects.get(uid)
    }

    /// One occurrence.
    #[must_use]
    pub fn occurrence(&self, uid: &str) -> Option<&Occurrence> {
        self.occurrences.get(uid)
    }

    /// One persistent object, to edit (a test planting odd data).
    pub fn object_mut(&mut self, uid: &str) -> Option<&mut Object> {
        self.objects.get_mut(uid)
    }

    /// One occurrence, to edit (a test planting odd data).
    pub fn occurrence_mut(&mut self, uid: &str) -> Option<&mut Occurrence> {
        self.occurrences.get_mut(uid)
    }

    /// The top-level occurrences of a process revision (`None`: not a process with a structure).
    #[must_use]
    pub fn structure(&self, process: &str) -> Option<&[String]> {
        self.structures.get(process).map(Vec::as_slice)
    }

    /// The children of an occurrence: its own children, or the structure of the process it shows.
    #[must_use]
    pub fn children(&self, occurrence: &str) -> Vec<String> {
        let Some(o) = self.occurrences.get(occurrence) else {
            return Vec::new();
        };
        match self.structures.get(&o.revision) {
            Some(s) => s.clone(),
            None => o.children.clone(),
        }
    }

    /// What `primary` has attached, as (relation, secondary) pairs.
    #[must_use]
    pub fn relations(&self, primary: &str) -> &[(String, String)] {
        self.relations.get(primary).map_or(&[], Vec::as_slice)
    }

    /// Whether `type_name` is one of the revision types the data set holds.
    #[must_use]
    pub fn is_revision_type(type_name: &str) -> bool {
        REVISION_TYPES.contains(&type_name)
    }

    /// Process revisions modified at or after `since`, oldest first.
    #[must_use]
    pub fn changed_processes(&self, since: SystemTime) -> Vec<&Object> {
        let mut v: Vec<&Object> = self
            .objects
            .values()
            .filter(|o| o.type_name == "MEProcessRevision" && self.structures.contains_key(&o.uid))
            .filter(|o| {
                o.get("last_mod_date")
                    .and_then(parse_tc_date)
                    .is_some_and(|t| t >= since)
            })
            .collect();
        v.sort_by(|a, b| {
            a.get("last_mod_date")
                .and_then(parse_tc_date)
                .cmp(&b.get("last_mod_date").and_then(parse_tc_date))
                .then(a.uid.cmp(&b.uid))
        });
        v
    }

    /// The operations of a process revision, depth first through nested processes, with their
    /// references resolved: what a correct read returns.
    #[must_use]
    pub fn operations_of(&self, process: &str) -> Vec<OperationTruth> {
        let mut out = Vec::new();
        let mut stack: Vec<String> = self
            .structures
            .get(process)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .rev()
            .collect();
        let item_id = |occ: &str| {
            self.occurrences
                .get(occ)
                .and_then(|o| self.objects.get(&o.revision))
                .and_then(|r| r.get("item_id"))
                .unwrap_or_default()
                .to_owned()
        };
        while let Some(occ) = stack.pop() {
            let Some(o) = self.occurrences.get(&occ) else {
                continue;
            };
            if o.line_type == "Mfg0BvrProcess" {
                stack.extend(self.children(&occ).into_iter().rev());
                continue;
            }
            let Some(rev) = self.objects.get(&o.revision) else {
                continue;
            };
            out.push(OperationTruth {
                revision: rev.uid.clone(),
                occurrence: o.uid.clone(),
                id: rev.get("item_id").unwrap_or_default().to_owned(),
                name: rev.get("object_name").unwrap_or_default().to_owned(),
                sequence: o.sequence.clone(),
                allocated_time: o.allocated_time.clone(),
                work_area: o.work_area.as_deref().map(item_id),
                equipment: o.equipment.iter().map(|e| item_id(e)).collect(),
                consumed: o.consumed.iter().map(|c| item_id(c)).collect(),
                instructions: self
                    .relations(&rev.uid)
                    .iter()
                    .filter(|(r, _)| r == WORK_INSTRUCTION)
                    .map(|(_, s)| s.clone())
                    .collect(),
            });
        }
        out
    }

    /// Changes applied so far.
    #[must_use]
    pub fn changes_applied(&self) -> u64 {
        self.changes_applied
    }

    /// The operation occurrences directly under a plan.
    fn plan_operations(&self, plan: &str) -> Vec<String> {
        self.structures
            .get(plan)
            .into_iter()
            .flatten()
            .filter(|o| {
                self.occurrences
                    .get(*o)
                    .is_some_and(|o| o.line_type == "Mfg0BvrOperation")
            })
            .cloned()
            .collect()
    }

    /// Applies the changes due between the last call and `now` (deterministic for a seed and the
    /// same sequence of `now`s). Kinds: a line edit (allocated time), an operation revision edit,
    /// a new work instruction, a removed operation (structure edits: they move the plan's
    /// `last_mod_date` only when `structure_edit_moves_plan`), a release, a plan rename.
    pub fn advance(&mut self, now: SystemTime) {
        let Ok(span) = now.duration_since(self.last_advance) else {
            return;
        };
        let due = (span.as_secs_f64() / 3600.0 * self.cfg.changes_per_hour).floor() as u64;
        if due == 0 {
            return;
        }
        let step = span / u32::try_from(due.min(u64::from(u32::MAX))).unwrap_or(u32::MAX);
        let plans: Vec<String> = self
            .objects
            .values()
            .filter(|o| o.type_name == "MEProcessRevision")
            .filter(|o| self.structures.contains_key(&o.uid))
            .map(|o| o.uid.clone())
            .collect();
        if plans.is_empty() {
            self.last_advance = now;
            return;
        }
        for i in 0..due {
            let at = self.last_advance + step * u32::try_from(i + 1).unwrap_or(u32::MAX);
            let plan = plans[self.rng.gen_range(0..plans.len())].clone();
            self.change(&plan, &tc_date(at));
            self.changes_applied += 1;
        }
        self.last_advance += step * u32::try_from(due).unwrap_or(u32::MAX);
    }

    fn change(&mut self, plan: &str, stamp: &str) {
        let ops = self.plan_operations(plan);
        let kind = self.rng.gen_range(0..6);
        let op = (!ops.is_empty()).then(|| ops[self.rng.gen_range(0..ops.len())].clone());
        let structural = match (kind, op) {
            (0, Some(op)) => {
                let t = format!("{:.1}", self.rng.gen_range(5.0..300.0));
                if let Some(o) = self.occurrences.get_mut(&op) {
                    o.allocated_time = Some(t);
                }
                true
            }
            (1, Some(op)) => {
                let n = self.changes_applied + 1;
                if let Some(rev) = self.occurrences.get(&op).map(|o| o.revision.clone())
                    && let Some(r) = self.objects.get_mut(&rev)
                {
                    r.one("object_name", format!("Operation revised by change {n}"));
                    r.one("last_mod_date", stamp);
                }
                true
            }
            (2, Some(op)) => {
                if let Some(rev) = self.occurrences.get(&op).map(|o| o.revision.clone()) {
                    let n = self.changes_applied + 1;
                    self.attach(&rev, WORK_INSTRUCTION, &format!("WI-change-{n}.pdf"), "PDF");
                    if let Some(r) = self.objects.get_mut(&rev) {
                        r.one("last_mod_date", stamp);
                    }
                }
                true
            }
            (3, Some(op)) if ops.len() > 1 => {
                if let Some(s) = self.structures.get_mut(plan) {
                    s.retain(|o| *o != op);
                }
                true
            }
            (4, _) => {
                self.set_status(plan, "Released", stamp);
                false
            }
            _ => {
                let n = self.changes_applied + 1;
                if let Some(p) = self.objects.get_mut(plan) {
                    p.one("object_name", format!("Plan renamed by change {n}"));
                }
                false
            }
        };
        if (!structural || self.cfg.structure_edit_moves_plan)
            && let Some(p) = self.objects.get_mut(plan)
        {
            p.one("last_mod_date", stamp);
        }
    }

    /// Gives `revision` the release status `status` (its only one) at `stamp`, without moving its
    /// `last_mod_date` (see [`Dataset::release`]).
    fn set_status(&mut self, revision: &str, status: &str, stamp: &str) {
        let uid = self.uid();
        let mut o = Object::new(uid.clone(), "ReleaseStatus");
        o.one("object_name", status);
        o.one("date_released", stamp);
        self.objects.insert(uid.clone(), o);
        if let Some(p) = self.objects.get_mut(revision) {
            p.set("release_status_list", vec![uid]);
        }
    }

    /// Releases `revision` with the status `status` (e.g. `Released`) at `now`; its
    /// `last_mod_date` moves, as adding a status modifies the revision.
    pub fn release(&mut self, revision: &str, status: &str, now: SystemTime) {
        let stamp = tc_date(now);
        self.set_status(revision, status, &stamp);
        if let Some(p) = self.objects.get_mut(revision) {
            p.one("last_mod_date", stamp);
        }
    }

    /// Revises `revision`: a new revision of the same item (the next letter), working (no
    /// status), created and modified at `now`, holding the same bill of process (the same
    /// occurrences). `None` when `revision` is not a revision of an item.
    pub fn revise(&mut self, revision: &str, now: SystemTime) -> Option<String> {
        let old = self.objects.get(revision)?.clone();
        let item_uid = old.get("items_tag")?.to_owned();
        let letter = old
            .get("item_revision_id")
            .and_then(|r| r.chars().next())
            .map_or('A', |c| char::from_u32(u32::from(c) + 1).unwrap_or(c));
        let uid = self.uid();
        let stamp = tc_date(now);
        let mut o = old;
        o.uid.clone_from(&uid);
        o.one("item_revision_id", letter.to_string());
        o.one("creation_date", stamp.clone());
        o.one("last_mod_date", stamp);
        o.set("release_status_list", Vec::new());
        self.objects.insert(uid.clone(), o);
        if let Some(s) = self.structures.get(revision).cloned() {
            self.structures.insert(uid.clone(), s);
        }
        if let Some(item) = self.objects.get_mut(&item_uid) {
            item.props
                .entry("revision_list".to_owned())
                .or_default()
                .push(uid.clone());
        }
        Some(uid)
    }

    /// The revision of `item` that the revision rule named `rule` configures (`""`: the default
    /// rule, `Latest Working`), the way Teamcenter's standard rules read for a top item:
    /// - `Latest Working` and `Precise; Working`: the newest working revision (no release
    ///   status), else the newest revision;
    /// - `Any Status; Working`: the newest revision with any status, else the newest working one.
    ///
    /// "Newest" is by creation date, then revision id. `None`: an unknown rule or item.
    #[must_use]
    pub fn configured_revision(&self, item: &str, rule: &str) -> Option<String> {
        let revisions = self.objects.get(item)?.props.get("revision_list")?;
        let mut revs: Vec<&Object> = revisions
            .iter()
            .filter_map(|r| self.objects.get(r))
            .collect();
        revs.sort_by(|a, b| {
            let created = |o: &Object| o.get("creation_date").and_then(parse_tc_date);
            created(a)
                .cmp(&created(b))
                .then_with(|| a.get("item_revision_id").cmp(&b.get("item_revision_id")))
        });
        let released = |o: &&&Object| !o.props.get("release_status_list").is_none_or(Vec::is_empty);
        let newest_working = revs.iter().rev().find(|o| !released(o));
        let newest_released = revs.iter().rev().find(released);
        let pick = match rule {
            "" | "Latest Working" | "Precise; Working" => newest_working.or(revs.last()),
            "Any Status; Working" => newest_released.or(newest_working),
            _ => None,
        };
        pick.map(|o| o.uid.clone())
    }

    /// How many times `setProperties` wrote `value` into `property` (any object).
    #[must_use]
    pub fn times_written(&self, property: &str, value: &str) -> u64 {
        self.written
            .get(&(property.to_owned(), value.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Sets properties (the feedback path). Unknown objects are `Err` with the UID.
    pub fn set_properties(
        &mut self,
        uid: &str,
        props: &[(String, Vec<String>)],
        now: SystemTime,
    ) -> Result<(), String> {
        let o = self.objects.get_mut(uid).ok_or_else(|| uid.to_owned())?;
        for (k, v) in props {
            o.set(k, v.clone());
            for value in v {
                *self.written.entry((k.clone(), value.clone())).or_default() += 1;
            }
        }
        o.one("last_mod_date", tc_date(now));
        Ok(())
    }
}
