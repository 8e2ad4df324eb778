//! A deterministic manufacturing data set with Teamcenter's type and property names, and a change
//! stream over simulated time.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

/// The null UID of Teamcenter.
pub const NULL_UID: &str = "AAAAAAAAAAAAAA";

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
    /// Operations (`MEOPRevision`) per plan.
    pub ops_per_plan: u32,
    /// Work areas per plant.
    pub work_areas_per_plant: u32,
    /// Resources per plant.
    pub resources_per_plant: u32,
    /// Consumed parts per operation (at most).
    pub parts_per_op: u32,
    /// Changes per simulated hour (edits, new revisions, releases, obsoleted operations).
    pub changes_per_hour: f64,
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
            changes_per_hour: 6.0,
        }
    }
}

/// One model object as Teamcenter returns it: a class, a type, and properties whose `dbValues` are
/// all strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The UID.
    pub uid: String,
    /// `className` (and `type`).
    pub class: &'static str,
    /// Property name → `dbValues`.
    pub props: BTreeMap<String, Vec<String>>,
}

impl Object {
    fn new(uid: String, class: &'static str) -> Self {
        Self {
            uid,
            class,
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

/// Teamcenter's date form: `yyyy-MM-ddTHH:mm:ss+zzzz` (UTC here).
#[must_use]
pub fn tc_date(t: SystemTime) -> String {
    let dt: chrono::DateTime<chrono::Utc> = t.into();
    dt.format("%Y-%m-%dT%H:%M:%S+0000").to_string()
}

/// Parses [`tc_date`]'s form (any offset).
#[must_use]
pub fn parse_tc_date(s: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z")
        .ok()
        .map(SystemTime::from)
}

/// The data set: every object by UID, and the process revisions by last modification.
#[derive(Debug, Clone)]
pub struct Dataset {
    objects: BTreeMap<String, Object>,
    rng: StdRng,
    cfg: DataConfig,
    next_uid: u64,
    changes_applied: u64,
    last_advance: SystemTime,
}

impl Dataset {
    /// Generates the data set as of `now` (all objects modified a day before).
    #[must_use]
    pub fn generate(cfg: &DataConfig, now: SystemTime) -> Self {
        let mut d = Self {
            objects: BTreeMap::new(),
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg: cfg.clone(),
            next_uid: 0,
            changes_applied: 0,
            last_advance: now,
        };
        let base = now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now);
        for p in 0..cfg.plants {
            let plant = format!("P{:02}", p + 1);
            let areas: Vec<String> = (0..cfg.work_areas_per_plant)
                .map(|a| {
                    let uid = d.uid();
                    let mut o = Object::new(uid.clone(), "MEWorkareaRevision");
                    o.one("item_id", format!("{plant}-WA{:02}", a + 1));
                    o.one("item_revision_id", "A");
                    o.one("object_name", format!("Station {} / {plant}", a + 1));
                    o.one("last_mod_date", tc_date(base));
                    d.objects.insert(uid.clone(), o);
                    uid
                })
                .collect();
            let resources: Vec<String> = (0..cfg.resources_per_plant)
                .map(|r| {
                    let uid = d.uid();
                    let mut o = Object::new(uid.clone(), "Mfg0MEResourceRevision");
                    o.one("item_id", format!("{plant}-RS{:02}", r + 1));
                    o.one("item_revision_id", "A");
                    o.one(
                        "object_name",
                        [
                            "Torque wrench",
                            "Press",
                            "Robot cell",
                            "Vision system",
                            "Screwdriver",
                            "Gauge",
                        ][r as usize % 6],
                    );
                    o.one("last_mod_date", tc_date(base));
                    d.objects.insert(uid.clone(), o);
                    uid
                })
                .collect();
            for n in 0..cfg.plans_per_plant {
                let plan_uid = d.uid();
                let mut plan = Object::new(plan_uid.clone(), "MEProcessRevision");
                plan.one("item_id", format!("{plant}-PR{:04}", n + 1));
                plan.one("item_revision_id", "A");
                plan.one(
                    "object_name",
                    format!("Assemble module {} at {plant}", n + 1),
                );
                plan.one("mfg0plant", plant.clone());
                plan.one("last_mod_date", tc_date(base));
                plan.set("release_status_list", vec![]);
                plan.one("fnd0IsObsolete", "0");
                let mut ops = Vec::new();
                for k in 0..cfg.ops_per_plan {
                    let op_uid = d.uid();
                    let mut op = Object::new(op_uid.clone(), "MEOPRevision");
                    op.one(
                        "item_id",
                        format!("{plant}-OP{:04}-{:03}", n + 1, (k + 1) * 10),
                    );
                    op.one("item_revision_id", "A");
                    op.one("object_name", format!("Operation {}", (k + 1) * 10));
                    op.one("mfg0sequence", ((k + 1) * 10).to_string());
                    op.one("bl_parent", plan_uid.clone());
                    let area = areas
                        .get(d.rng.gen_range(0..areas.len().max(1)))
                        .cloned()
                        .unwrap_or_else(|| NULL_UID.to_owned());
                    op.one("Mfg0workarea", area);
                    op.one(
                        "allocated_time",
                        format!("{:.1}", d.rng.gen_range(5.0..300.0)),
                    );
                    op.one(
                        "mes0work_instructions",
                        format!(
                            "Step {} of plan {}: fit, fasten to spec, verify.",
                            (k + 1) * 10,
                            n + 1
                        ),
                    );
                    let nres = d.rng.gen_range(0..=resources.len().min(2));
                    op.set(
                        "Mfg0assigned_resources",
                        resources.iter().take(nres).cloned().collect(),
                    );
                    let nparts = d.rng.gen_range(0..=cfg.parts_per_op);
                    let parts: Vec<String> = (0..nparts)
                        .map(|i| {
                            let uid = d.uid();
                            let mut part = Object::new(uid.clone(), "Mfg0BvrPart");
                            part.one(
                                "item_id",
                                format!("PN-{:06}", d.next_uid * 10 + u64::from(i)),
                            );
                            part.one("object_name", format!("Part {}", d.next_uid));
                            part.one("quantity", d.rng.gen_range(1..5).to_string());
                            d.objects.insert(uid.clone(), part);
                            uid
                        })
                        .collect();
                    op.set("Mfg0consumed_material", parts);
                    op.one("last_mod_date", tc_date(base));
                    op.one("fnd0IsObsolete", "0");
                    d.objects.insert(op_uid.clone(), op);
                    ops.push(op_uid);
                }
                plan.set("bl_child_lines", ops);
                d.objects.insert(plan_uid, plan);
            }
        }
        d
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

    /// Every object.
    #[must_use]
    pub fn objects(&self) -> &BTreeMap<String, Object> {
        &self.objects
    }

    /// One object.
    #[must_use]
    pub fn get(&self, uid: &str) -> Option<&Object> {
        self.objects.get(uid)
    }

    /// Process revisions modified at or after `since`, oldest first.
    #[must_use]
    pub fn changed_processes(&self, since: SystemTime) -> Vec<&Object> {
        let mut v: Vec<&Object> = self
            .objects
            .values()
            .filter(|o| o.class == "MEProcessRevision")
            .filter(|o| {
                o.get("last_mod_date")
                    .and_then(parse_tc_date)
                    .is_some_and(|t| t >= since)
            })
            .collect();
        v.sort_by(|a, b| {
            a.get("last_mod_date")
                .cmp(&b.get("last_mod_date"))
                .then(a.uid.cmp(&b.uid))
        });
        v
    }

    /// Changes applied so far.
    #[must_use]
    pub fn changes_applied(&self) -> u64 {
        self.changes_applied
    }

    /// Applies the changes due between the last call and `now` (deterministic for a seed and the
    /// same sequence of `now`s): edits of operations, new plan revisions, releases, obsoleted
    /// operations. Each bumps the plan's `last_mod_date` to the change's time.
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
            .filter(|o| o.class == "MEProcessRevision")
            .map(|o| o.uid.clone())
            .collect();
        if plans.is_empty() {
            self.last_advance = now;
            return;
        }
        for i in 0..due {
            let at = self.last_advance + step * u32::try_from(i + 1).unwrap_or(u32::MAX);
            let plan_uid = plans[self.rng.gen_range(0..plans.len())].clone();
            let stamp = tc_date(at);
            let kind = self.rng.gen_range(0..4);
            let ops: Vec<String> = self
                .objects
                .get(&plan_uid)
                .and_then(|p| p.props.get("bl_child_lines"))
                .cloned()
                .unwrap_or_default();
            match kind {
                0 if !ops.is_empty() => {
                    let op = ops[self.rng.gen_range(0..ops.len())].clone();
                    let text = format!(
                        "Revised instruction {} at {stamp}.",
                        self.changes_applied + 1
                    );
                    if let Some(o) = self.objects.get_mut(&op) {
                        o.one("mes0work_instructions", text);
                        o.one("last_mod_date", stamp.clone());
                    }
                }
                1 => {
                    if let Some(p) = self.objects.get_mut(&plan_uid) {
                        let rev = p
                            .get("item_revision_id")
                            .unwrap_or("A")
                            .as_bytes()
                            .first()
                            .copied()
                            .unwrap_or(b'A');
                        p.one(
                            "item_revision_id",
                            ((rev.saturating_add(1)) as char).to_string(),
                        );
                    }
                }
                2 => {
                    if let Some(p) = self.objects.get_mut(&plan_uid) {
                        p.set("release_status_list", vec!["Released".to_owned()]);
                    }
                }
                _ if ops.len() > 1 => {
                    let op = ops[self.rng.gen_range(0..ops.len())].clone();
                    if let Some(o) = self.objects.get_mut(&op) {
                        o.one("fnd0IsObsolete", "1");
                        o.one("last_mod_date", stamp.clone());
                    }
                }
                _ => {}
            }
            if let Some(p) = self.objects.get_mut(&plan_uid) {
                p.one("last_mod_date", stamp);
            }
            self.changes_applied += 1;
        }
        self.last_advance += step * u32::try_from(due).unwrap_or(u32::MAX);
    }

    /// Sets properties (the feedback path); unknown objects are `Err` with the UID.
    pub fn set_properties(
        &mut self,
        uid: &str,
        props: &[(String, Vec<String>)],
        now: SystemTime,
    ) -> Result<(), String> {
        let o = self.objects.get_mut(uid).ok_or_else(|| uid.to_owned())?;
        for (k, v) in props {
            o.set(k, v.clone());
        }
        o.one("last_mod_date", tc_date(now));
        Ok(())
    }
}
