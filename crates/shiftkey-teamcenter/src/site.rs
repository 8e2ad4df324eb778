//! The site mapping: which query finds changed plans, how a bill of process is opened and walked,
//! and which Teamcenter property feeds each shop-floor field. Defaults are the standard model
//! (`docs/teamcenter-reads.md`); every fact marked inferred there is a setting here.

use std::time::Duration;

/// How changed process revisions are found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeQuery {
    /// A saved query (`findSavedQueries` → `describeSavedQueries` → `executeSavedQueries`) with a
    /// type entry and a modified-after entry. Entry names are display strings, localized per
    /// site: check them with `shiftkey doctor`.
    SavedQuery {
        /// The query's name (default `Item Revision...`).
        name: String,
        /// The entry that takes the type names, `;`-separated (default `Type`).
        type_entry: String,
        /// The entry that takes the date (default `Modified After`).
        modified_after_entry: String,
    },
    /// `executeBusinessObjectQueries`, one input per type, with `property >= date`: needs no site
    /// query and no locale-bound entry names. The date value format is not verified \[I\].
    BusinessObject {
        /// The date property (default `last_mod_date`).
        property: String,
    },
}

impl Default for ChangeQuery {
    fn default() -> Self {
        Self::SavedQuery {
            name: "Item Revision...".to_owned(),
            type_entry: "Type".to_owned(),
            modified_after_entry: "Modified After".to_owned(),
        }
    }
}

/// How a process is opened for traversal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WindowMode {
    /// `Manufacturing-2011-06-DataManagement/openContexts` on the process revision (default;
    /// the user's default revision rule applies) → `closeContexts`.
    #[default]
    Contexts,
    /// `Cad-2007-01-StructureManagement/createBOMWindows` with the named revision rule (checked
    /// against `getRevisionRules`; `None`: the default rule) → `closeBOMWindows`. That this yields
    /// bill-of-process lines is not verified \[I\].
    BomWindows {
        /// The revision rule's `object_name`, e.g. `Latest Working`.
        revision_rule: Option<String>,
    },
}

/// Which revision of an item the shop floor runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CurrentRevision {
    /// The one the revision rule configures (default: the user's default rule), asked of the
    /// server for the items of the plans each batch reads: `createBOMWindows` on the *item*
    /// with the rule (the server picks the revision, as S4/S12 use it), `getProperties`
    /// `bl_revision` on its top line, `closeBOMWindows`. That a window opens on an item whose
    /// revision has no structure is not verified \[I\]: where a site refuses it, use
    /// [`CurrentRevision::Every`].
    ByRule {
        /// The rule's `object_name` (checked against `getRevisionRules`); `None`: the user's
        /// default rule.
        revision_rule: Option<String>,
    },
    /// Every revision read is current (no rule is asked; older revisions stay offered).
    Every,
}

impl Default for CurrentRevision {
    fn default() -> Self {
        Self::ByRule {
            revision_rule: None,
        }
    }
}

/// Which Teamcenter property feeds each shop-floor field.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FieldMap {
    /// Plan (revision) `item_id`.
    pub plan_id: String,
    /// Plan `item_revision_id`.
    pub plan_revision: String,
    /// Plan `object_name`.
    pub plan_name: String,
    /// The date property that moves on change (`last_mod_date`).
    pub last_modified: String,
    /// The release status list (`release_status_list`, read with the statuses' `object_name`).
    pub release_status: String,
    /// A site property on the plan revision naming its plant (none in the standard model).
    pub plant_property: Option<String>,
    /// The plant when no property is configured, or it is empty.
    pub plant_default: String,
    /// Release statuses that make a plan or operation obsolete (default `Obsolete`).
    pub obsolete_statuses: Vec<String>,
    /// Operation line: the operation's id (`bl_item_item_id`).
    pub op_id: String,
    /// Operation line: its name (`bl_rev_object_name`).
    pub op_name: String,
    /// Operation line: sequence (`bl_sequence_no`).
    pub sequence: String,
    /// Operation line: allocated time (`Mfg0allocated_time`).
    pub allocated_time: String,
    /// Seconds per unit of the allocated time (default 1: seconds). The unit is a site
    /// preference and not verified \[I\].
    pub allocated_time_unit_s: f64,
    /// Operation line: the work area line (`Mfg0assigned_workarea`).
    pub work_area: String,
    /// Operation line: equipment lines (`Mfg0used_equipment`).
    pub equipment: String,
    /// Operation line: consumed part lines (`Mfg0consumed_material`).
    pub consumed: String,
    /// Operation line: the persistent occurrence UID (`bl_occurrence_uid`).
    pub occurrence: String,
    /// Referenced lines (work area, equipment, parts): the id shown (`bl_item_item_id`).
    pub reference_id: String,
}

impl Default for FieldMap {
    fn default() -> Self {
        let s = str::to_owned;
        Self {
            plan_id: s("item_id"),
            plan_revision: s("item_revision_id"),
            plan_name: s("object_name"),
            last_modified: s("last_mod_date"),
            release_status: s("release_status_list"),
            plant_property: None,
            plant_default: String::new(),
            obsolete_statuses: vec![s("Obsolete")],
            op_id: s("bl_item_item_id"),
            op_name: s("bl_rev_object_name"),
            sequence: s("bl_sequence_no"),
            allocated_time: s("Mfg0allocated_time"),
            allocated_time_unit_s: 1.0,
            work_area: s("Mfg0assigned_workarea"),
            equipment: s("Mfg0used_equipment"),
            consumed: s("Mfg0consumed_material"),
            occurrence: s("bl_occurrence_uid"),
            reference_id: s("bl_item_item_id"),
        }
    }
}

/// The server's offset from UTC, which saved-query date values are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UtcOffset {
    /// Read from the dates the server itself returns (every `dbValues` date carries its offset,
    /// `2026-03-01T10:22:33-05:00`): the smallest offset seen is used, so across a daylight
    /// saving change the query starts up to an hour early, never late. Until a date has been
    /// seen (the first read after a start, when the sink already has a watermark) the query
    /// starts as early as any zone could need (UTC−12), and the dates it returns teach the
    /// offset. See [`crate::TcClient::server_utc_offsets`].
    #[default]
    Auto,
    /// Fixed, in minutes east of UTC. A value the server's dates disagree with is reported by
    /// [`crate::TcClient::offset_disagreement`].
    Minutes(i32),
}

/// The earliest UTC offset there is (UTC−12): where the offset is not known yet, a query date
/// written in it starts early enough for any server.
pub const EARLIEST_UTC_OFFSET_MINUTES: i32 = -12 * 60;

/// How to read manufacturing data from a site. Build it from [`ReadConfig::default`] (the
/// standard model) and the `with_*` methods.
///
/// ```
/// use std::time::Duration;
/// use shiftkey_teamcenter::{ReadConfig, WindowMode};
///
/// let cfg = ReadConfig::default()
///     .with_saved_query("Item Revision...", "Typ", "Geändert nach")
///     .with_window(WindowMode::BomWindows { revision_rule: Some("Latest Working".into()) })
///     .with_utc_offset_minutes(60)
///     .with_overlap(Duration::from_secs(600));
/// assert_eq!(cfg.process_types, ["MEProcessRevision"]);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReadConfig {
    /// How changed plans are found.
    pub change_query: ChangeQuery,
    /// Types that are plans (default `MEProcessRevision`).
    pub process_types: Vec<String>,
    /// The server's offset from UTC, for query date values (written in the server's local
    /// time). Default [`UtcOffset::Auto`]: read from the dates the server returns.
    pub utc_offset: UtcOffset,
    /// Overlap subtracted from the watermark against clock skew (default 5 min).
    pub overlap: Duration,
    /// Objects per `loadObjects` / `getProperties` / `expandGRMRelationsForPrimary` /
    /// `expandPSOneLevel` call (default 200).
    pub chunk: usize,
    /// Plans opened together in one round of windows (default 50).
    pub window_batch: usize,
    /// How a plan is opened.
    pub window: WindowMode,
    /// Levels expanded below the plan's top line (default 4: nested processes).
    pub depth: u32,
    /// Line types that are operations (default `Mfg0BvrOperation`).
    pub operation_types: Vec<String>,
    /// Line types expanded further to find operations (default the process and station types).
    pub process_line_types: Vec<String>,
    /// Relations whose datasets are the work instructions (default `IMAN_MEWorkInstruction`).
    pub work_instruction_relations: Vec<String>,
    /// Which property feeds which field.
    pub fields: FieldMap,
    /// Which revision of an item is current (default: the one the user's default rule
    /// configures).
    pub current: CurrentRevision,
}

impl Default for ReadConfig {
    fn default() -> Self {
        let v = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        Self {
            change_query: ChangeQuery::default(),
            process_types: v(&["MEProcessRevision"]),
            utc_offset: UtcOffset::Auto,
            overlap: Duration::from_secs(300),
            chunk: 200,
            window_batch: 50,
            window: WindowMode::default(),
            depth: 4,
            operation_types: v(&["Mfg0BvrOperation"]),
            process_line_types: v(&[
                "Mfg0BvrProcess",
                "Mfg0BvrProcessStation",
                "Mfg0BvrProcessLine",
                "Mfg0BvrProcessArea",
            ]),
            work_instruction_relations: v(&["IMAN_MEWorkInstruction"]),
            fields: FieldMap::default(),
            current: CurrentRevision::default(),
        }
    }
}

impl ReadConfig {
    /// Finds changes with the saved query `name` and its entries.
    #[must_use]
    pub fn with_saved_query(
        mut self,
        name: impl Into<String>,
        type_entry: impl Into<String>,
        modified_after_entry: impl Into<String>,
    ) -> Self {
        self.change_query = ChangeQuery::SavedQuery {
            name: name.into(),
            type_entry: type_entry.into(),
            modified_after_entry: modified_after_entry.into(),
        };
        self
    }

    /// Finds changes with `executeBusinessObjectQueries` on `last_mod_date`.
    #[must_use]
    pub fn with_business_object_query(mut self) -> Self {
        self.change_query = ChangeQuery::BusinessObject {
            property: "last_mod_date".to_owned(),
        };
        self
    }

    /// Opens plans this way.
    #[must_use]
    pub fn with_window(mut self, window: WindowMode) -> Self {
        self.window = window;
        self
    }

    /// The server's UTC offset for query dates, fixed (minutes east of UTC). Where the server
    /// observes daylight saving, give its standard (winter) offset: in summer the query then
    /// starts an hour early, never late. Prefer the default, [`UtcOffset::Auto`].
    #[must_use]
    pub fn with_utc_offset_minutes(mut self, minutes: i32) -> Self {
        self.utc_offset = UtcOffset::Minutes(minutes);
        self
    }

    /// The watermark overlap.
    #[must_use]
    pub fn with_overlap(mut self, overlap: Duration) -> Self {
        self.overlap = overlap;
        self
    }

    /// Levels expanded below a plan.
    #[must_use]
    pub fn with_depth(mut self, depth: u32) -> Self {
        self.depth = depth;
        self
    }

    /// Objects per call.
    #[must_use]
    pub fn with_chunk(mut self, chunk: usize) -> Self {
        self.chunk = chunk;
        self
    }

    /// The field mapping.
    #[must_use]
    pub fn with_fields(mut self, fields: FieldMap) -> Self {
        self.fields = fields;
        self
    }

    /// How the current revision of an item is decided.
    #[must_use]
    pub fn with_current(mut self, current: CurrentRevision) -> Self {
        self.current = current;
        self
    }
}

/// Where shop-floor feedback goes: site-defined (BMIDE) properties on the operation revision.
/// There is no standard property for it (`docs/teamcenter-reads.md` §7.3); without this
/// configuration shiftkey writes no feedback.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FeedbackConfig {
    /// The type that carries the properties (default `MEOPRevision`; checked by `doctor`).
    pub type_name: String,
    /// The property holding the idempotency key of the last write (required); with
    /// [`FeedbackFormat::Json`], the one property that holds the whole feedback document.
    pub key_property: String,
    /// The property for the completed count, if any.
    pub completed_count: Option<String>,
    /// The property for the actual cycle time in seconds, if any.
    pub actual_cycle_time: Option<String>,
    /// The property for the deviation note, if any.
    pub deviation: Option<String>,
    /// One property per field (default), or one JSON document in `key_property`.
    pub format: FeedbackFormat,
}

/// How feedback is laid out on the operation revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FeedbackFormat {
    /// A property per field, and the key in `key_property`.
    #[default]
    Properties,
    /// One property (`key_property`) holds every field and the key as one JSON document
    /// (`{"key": "shiftkey-feedback-12", "row": 12, "completed_count": 7,
    /// "actual_cycle_time_s": 58.0, "deviation": ""}`): the common site pattern of one
    /// free-form MES property.
    Json,
}

impl FeedbackConfig {
    /// Feedback keyed by `key_property` on `MEOPRevision`, no value properties yet.
    pub fn new(key_property: impl Into<String>) -> Self {
        Self {
            type_name: "MEOPRevision".to_owned(),
            key_property: key_property.into(),
            completed_count: None,
            actual_cycle_time: None,
            deviation: None,
            format: FeedbackFormat::Properties,
        }
    }

    /// Whether every field of a feedback row reaches Teamcenter, and nothing overwrites
    /// anything: with [`FeedbackFormat::Properties`] each field (`completed_count`,
    /// `actual_cycle_time`, `deviation`) names a property and no two (the key included) name
    /// the same one; with [`FeedbackFormat::Json`] no field names one of its own. `Err` says
    /// which field, in the configuration's words.
    ///
    /// ```
    /// use shiftkey_teamcenter::FeedbackConfig;
    /// let mut fb = FeedbackConfig::new("xx4_key");
    /// fb.completed_count = Some("xx4_done".into());
    /// fb.actual_cycle_time = Some("xx4_time".into());
    /// assert!(fb.check().unwrap_err().contains("`deviation` has no property"));
    /// fb.deviation = Some("xx4_done".into());
    /// assert!(fb.check().unwrap_err().contains("`completed_count` and `deviation`"));
    /// fb.deviation = Some("xx4_note".into());
    /// assert!(fb.check().is_ok());
    /// ```
    pub fn check(&self) -> Result<(), String> {
        let fields = [
            ("completed_count", &self.completed_count),
            ("actual_cycle_time", &self.actual_cycle_time),
            ("deviation", &self.deviation),
        ];
        match self.format {
            FeedbackFormat::Json => {
                if let Some((field, _)) = fields.iter().find(|(_, p)| p.is_some()) {
                    return Err(format!(
                        "`{field}` names a property of its own, but format = \"json\" writes every field into `{}`: remove it",
                        self.key_property
                    ));
                }
                Ok(())
            }
            _ => {
                if let Some((field, _)) = fields.iter().find(|(_, p)| p.is_none()) {
                    return Err(format!(
                        "`{field}` has no property: every field of a feedback row must reach Teamcenter; name a site property for it, or choose format = \"json\" (one property holds every field)"
                    ));
                }
                let mut named: Vec<(&str, &str)> =
                    vec![("key_property", self.key_property.as_str())];
                for (field, p) in fields {
                    let p = p.as_deref().unwrap_or_default();
                    if let Some((other, _)) = named.iter().find(|(_, q)| *q == p) {
                        return Err(format!(
                            "`{other}` and `{field}` both name the property `{p}`: one would overwrite the other"
                        ));
                    }
                    named.push((field, p));
                }
                Ok(())
            }
        }
    }

    /// Every property this configuration writes.
    #[must_use]
    pub fn properties(&self) -> Vec<&str> {
        let mut v = vec![self.key_property.as_str()];
        v.extend(
            [
                &self.completed_count,
                &self.actual_cycle_time,
                &self.deviation,
            ]
            .into_iter()
            .flatten()
            .map(String::as_str),
        );
        v
    }
}
