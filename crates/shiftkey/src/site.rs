//! `[teamcenter.read]` and `[teamcenter.feedback]`: the site mapping in the config file, turned
//! into `shiftkey-teamcenter`'s typed [`ReadConfig`] and [`FeedbackConfig`]. Defaults are the
//! standard model; every key is optional except `feedback.key_property`.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use shiftkey_teamcenter::{FeedbackConfig, FieldMap, ReadConfig, WindowMode};

/// `utc_offset_minutes`: `"auto"` or a number.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub(crate) enum OffsetSetting {
    /// Minutes east of UTC.
    Minutes(i32),
    /// `"auto"` (anything else is refused when the config is checked).
    Word(String),
}

/// `[teamcenter.read]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ReadSection {
    /// `saved_query` (default) or `business_object`.
    pub(crate) query: String,
    pub(crate) query_name: String,
    pub(crate) type_entry: String,
    pub(crate) modified_after_entry: String,
    /// Plan types (default `["MEProcessRevision"]`).
    pub(crate) types: Vec<String>,
    /// The server's UTC offset for query dates: `"auto"` (default: read from the server's own
    /// dates) or minutes east of UTC (standard time).
    pub(crate) utc_offset_minutes: OffsetSetting,
    /// `contexts` (default) or `bom_windows`.
    pub(crate) window: String,
    /// The revision rule's name (empty: the user's default rule): which revision of an item is
    /// current, and with `bom_windows` how plans open.
    pub(crate) revision_rule: String,
    /// `revision_rule` (default: the rule decides which revision of an item is current) or
    /// `every_revision` (no rule asked; every revision read is offered).
    pub(crate) current: String,
    pub(crate) depth: u32,
    pub(crate) chunk: usize,
    pub(crate) operation_types: Vec<String>,
    pub(crate) process_line_types: Vec<String>,
    pub(crate) work_instruction_relations: Vec<String>,
    /// A site property on the plan naming its plant.
    pub(crate) plant_property: String,
    /// The plant when there is no such property.
    pub(crate) plant: String,
    pub(crate) obsolete_statuses: Vec<String>,
    /// `s` (default), `min` or `h`.
    pub(crate) allocated_time_unit: String,
    /// Field → Teamcenter property overrides (keys as in [`FIELDS`]).
    pub(crate) properties: BTreeMap<String, String>,
}

impl Default for ReadSection {
    fn default() -> Self {
        let d = ReadConfig::default();
        let (query_name, type_entry, modified_after_entry) = match d.change_query {
            shiftkey_teamcenter::ChangeQuery::SavedQuery {
                name,
                type_entry,
                modified_after_entry,
            } => (name, type_entry, modified_after_entry),
            _ => Default::default(),
        };
        Self {
            query: "saved_query".into(),
            query_name,
            type_entry,
            modified_after_entry,
            types: d.process_types,
            utc_offset_minutes: OffsetSetting::Word("auto".to_owned()),
            window: "contexts".into(),
            revision_rule: String::new(),
            current: "revision_rule".into(),
            depth: d.depth,
            chunk: d.chunk,
            operation_types: d.operation_types,
            process_line_types: d.process_line_types,
            work_instruction_relations: d.work_instruction_relations,
            plant_property: String::new(),
            plant: String::new(),
            obsolete_statuses: d.fields.obsolete_statuses,
            allocated_time_unit: "s".into(),
            properties: BTreeMap::new(),
        }
    }
}

/// The field names `[teamcenter.read.properties]` accepts.
pub(crate) const FIELDS: [&str; 14] = [
    "plan_id",
    "plan_revision",
    "plan_name",
    "last_modified",
    "release_status",
    "op_id",
    "op_name",
    "sequence",
    "allocated_time",
    "work_area",
    "equipment",
    "consumed",
    "occurrence",
    "reference_id",
];

impl ReadSection {
    /// The typed read configuration; every error names the key.
    pub(crate) fn to_config(&self, overlap: std::time::Duration) -> anyhow::Result<ReadConfig> {
        let mut c = ReadConfig::default().with_overlap(overlap);
        c = match self.query.as_str() {
            "saved_query" => c.with_saved_query(
                &self.query_name,
                &self.type_entry,
                &self.modified_after_entry,
            ),
            "business_object" => c.with_business_object_query(),
            other => bail!(
                "`teamcenter.read.query`: `{other}` is neither `saved_query` nor `business_object`"
            ),
        };
        c = c.with_window(match self.window.as_str() {
            "contexts" => WindowMode::Contexts,
            "bom_windows" => WindowMode::BomWindows {
                revision_rule: (!self.revision_rule.is_empty()).then(|| self.revision_rule.clone()),
            },
            other => {
                bail!("`teamcenter.read.window`: `{other}` is neither `contexts` nor `bom_windows`")
            }
        });
        let rule = (!self.revision_rule.is_empty()).then(|| self.revision_rule.clone());
        c = c.with_current(match self.current.as_str() {
            "revision_rule" => shiftkey_teamcenter::CurrentRevision::ByRule {
                revision_rule: rule,
            },
            "every_revision" if rule.is_some() && self.window != "bom_windows" => bail!(
                "`teamcenter.read.revision_rule` is set, but with `current = \"every_revision\"` and `window = \"contexts\"` nothing uses it: remove it, or set `current = \"revision_rule\"`"
            ),
            "every_revision" => shiftkey_teamcenter::CurrentRevision::Every,
            other => bail!(
                "`teamcenter.read.current`: `{other}` is neither `revision_rule` (the rule decides which revision of an item is current) nor `every_revision`"
            ),
        });
        if self.types.is_empty() {
            bail!("`teamcenter.read.types` is empty: name at least one plan type");
        }
        if self.operation_types.is_empty() {
            bail!(
                "`teamcenter.read.operation_types` is empty: name at least one operation line type"
            );
        }
        if !(1..=20).contains(&self.depth) {
            bail!("`teamcenter.read.depth` = {} is outside 1..=20", self.depth);
        }
        if !(1..=10_000).contains(&self.chunk) {
            bail!(
                "`teamcenter.read.chunk` = {} is outside 1..=10000",
                self.chunk
            );
        }
        c.utc_offset = match &self.utc_offset_minutes {
            OffsetSetting::Word(w) if w == "auto" => shiftkey_teamcenter::UtcOffset::Auto,
            OffsetSetting::Word(w) => bail!(
                "`teamcenter.read.utc_offset_minutes` = \"{w}\": say \"auto\" (read the server's offset from its dates) or a number of minutes east of UTC"
            ),
            OffsetSetting::Minutes(m) if !(-14 * 60..=14 * 60).contains(m) => {
                bail!("`teamcenter.read.utc_offset_minutes` = {m} is not a UTC offset (-840..=840)")
            }
            OffsetSetting::Minutes(m) => shiftkey_teamcenter::UtcOffset::Minutes(*m),
        };
        c.process_types = self.types.clone();
        c.operation_types = self.operation_types.clone();
        c.process_line_types = self.process_line_types.clone();
        c.work_instruction_relations = self.work_instruction_relations.clone();
        c = c.with_depth(self.depth).with_chunk(self.chunk);
        let mut f = FieldMap::default();
        f.plant_property = (!self.plant_property.is_empty()).then(|| self.plant_property.clone());
        f.plant_default = self.plant.clone();
        f.obsolete_statuses = self.obsolete_statuses.clone();
        f.allocated_time_unit_s = match self.allocated_time_unit.as_str() {
            "s" => 1.0,
            "min" => 60.0,
            "h" => 3600.0,
            other => bail!(
                "`teamcenter.read.allocated_time_unit`: `{other}` is not one of `s`, `min`, `h`"
            ),
        };
        for (field, prop) in &self.properties {
            if prop.trim().is_empty() {
                bail!("`teamcenter.read.properties.{field}` is empty");
            }
            let slot = match field.as_str() {
                "plan_id" => &mut f.plan_id,
                "plan_revision" => &mut f.plan_revision,
                "plan_name" => &mut f.plan_name,
                "last_modified" => &mut f.last_modified,
                "release_status" => &mut f.release_status,
                "op_id" => &mut f.op_id,
                "op_name" => &mut f.op_name,
                "sequence" => &mut f.sequence,
                "allocated_time" => &mut f.allocated_time,
                "work_area" => &mut f.work_area,
                "equipment" => &mut f.equipment,
                "consumed" => &mut f.consumed,
                "occurrence" => &mut f.occurrence,
                "reference_id" => &mut f.reference_id,
                other => bail!(
                    "`teamcenter.read.properties.{other}` is not a field; the fields are {}",
                    FIELDS.join(", ")
                ),
            };
            *slot = prop.clone();
        }
        Ok(c.with_fields(f))
    }
}

/// `[teamcenter.feedback]`: site-defined properties on the operation revision.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeedbackSection {
    #[serde(default = "default_feedback_type", rename = "type")]
    pub(crate) type_name: String,
    /// `properties` (default: a property per field) or `json` (one property, `property`,
    /// holds every field and the key as one JSON document).
    #[serde(default)]
    pub(crate) format: Option<String>,
    /// With `format = "properties"`: the property that keeps the idempotency key.
    #[serde(default)]
    pub(crate) key_property: Option<String>,
    /// With `format = "json"`: the one property that holds the document.
    #[serde(default)]
    pub(crate) property: Option<String>,
    #[serde(default)]
    pub(crate) completed_count: Option<String>,
    #[serde(default)]
    pub(crate) actual_cycle_time: Option<String>,
    #[serde(default)]
    pub(crate) deviation: Option<String>,
}

fn default_feedback_type() -> String {
    "MEOPRevision".to_owned()
}

impl FeedbackSection {
    /// The typed feedback configuration.
    pub(crate) fn to_config(&self) -> anyhow::Result<FeedbackConfig> {
        let named = |key: &str, v: &Option<String>| -> anyhow::Result<String> {
            let v = v.as_deref().map(str::trim).unwrap_or_default();
            if v.is_empty() {
                bail!("`teamcenter.feedback.{key}` is empty or missing: name the site property");
            }
            Ok(v.to_owned())
        };
        let json = match self.format.as_deref().unwrap_or("properties") {
            "properties" => false,
            "json" => true,
            other => bail!(
                "`teamcenter.feedback.format` = \"{other}\": say \"properties\" (a property per field) or \"json\" (one property holds every field)"
            ),
        };
        let mut c = if json {
            if self.key_property.is_some() {
                bail!(
                    "`teamcenter.feedback.key_property` is for format = \"properties\": with \"json\" the key goes into `property` with every field"
                );
            }
            let mut c = FeedbackConfig::new(named("property", &self.property)?);
            c.format = shiftkey_teamcenter::FeedbackFormat::Json;
            c
        } else {
            if self.property.is_some() {
                bail!(
                    "`teamcenter.feedback.property` is for format = \"json\"; with \"properties\" name `key_property`, `completed_count`, `actual_cycle_time` and `deviation`"
                );
            }
            let mut c = FeedbackConfig::new(named("key_property", &self.key_property)?);
            let field = |v: &Option<String>| v.as_deref().map(str::trim).map(str::to_owned);
            c.completed_count = field(&self.completed_count);
            c.actual_cycle_time = field(&self.actual_cycle_time);
            c.deviation = field(&self.deviation);
            c
        };
        c.type_name.clone_from(&self.type_name);
        if json {
            c.completed_count.clone_from(&self.completed_count);
            c.actual_cycle_time.clone_from(&self.actual_cycle_time);
            c.deviation.clone_from(&self.deviation);
        }
        c.check()
            .map_err(|e| anyhow::anyhow!("`teamcenter.feedback`: {e}"))?;
        Ok(c)
    }
}

/// Both, from the `[teamcenter]` section when present.
pub(crate) fn configs(
    tc: &crate::config::TeamcenterConfig,
    overlap: std::time::Duration,
) -> anyhow::Result<(ReadConfig, Option<FeedbackConfig>)> {
    let read = tc.read.to_config(overlap).context("in [teamcenter.read]")?;
    let feedback = tc
        .feedback
        .as_ref()
        .map(FeedbackSection::to_config)
        .transpose()
        .context("in [teamcenter.feedback]")?;
    Ok((read, feedback))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::ReadSection;
    use shiftkey_teamcenter::CurrentRevision;

    fn read(toml: &str) -> anyhow::Result<shiftkey_teamcenter::ReadConfig> {
        use figment::providers::Format as _;
        let section: ReadSection =
            figment::Figment::from(figment::providers::Toml::string(toml)).extract()?;
        section.to_config(std::time::Duration::from_secs(300))
    }

    #[test]
    fn the_revision_rule_decides_the_current_revision_unless_every_revision_is_asked_for() {
        assert_eq!(
            read("").unwrap().current,
            CurrentRevision::ByRule {
                revision_rule: None
            },
            "default: the user's default rule"
        );
        let named = read("revision_rule = \"Any Status; Working\"").unwrap();
        assert_eq!(
            named.current,
            CurrentRevision::ByRule {
                revision_rule: Some("Any Status; Working".into())
            }
        );
        assert_eq!(
            named.window,
            shiftkey_teamcenter::WindowMode::Contexts,
            "the rule does not change how plans open"
        );
        assert_eq!(
            read("current = \"every_revision\"\nwindow = \"bom_windows\"\nrevision_rule = \"Latest Working\"")
                .unwrap()
                .current,
            CurrentRevision::Every
        );
        assert_eq!(
            read("current = \"every_revision\"").unwrap().current,
            CurrentRevision::Every
        );
        let unused = read("current = \"every_revision\"\nrevision_rule = \"Latest Working\"")
            .unwrap_err()
            .to_string();
        assert!(unused.contains("nothing uses it"), "{unused}");
        let e = read("current = \"latest\"").unwrap_err().to_string();
        assert!(
            e.contains("`teamcenter.read.current`: `latest` is neither"),
            "{e}"
        );
    }
}
