//! The data operations of the emulated Teamcenter, in the shapes of `docs/teamcenter-reads.md`, and
//! refusing what the real server refuses: a body of the wrong shape (error 214086 under HTTP 500),
//! an unknown operation, a BOM line that is not a live line of a window of the caller's session,
//! a saved-query entry the query does not have, a date value not in `dd-MMM-yyyy HH:mm`, a
//! property the type does not have.
//!
//! Windows (`openContexts`, `createBOMWindows`) belong to the session that opened them and die
//! with it. Their lines have runtime UIDs `SR::N::<line type>..<window>.<occurrence>`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::config::TcConfig;
use crate::data::{Dataset, NULL_UID, Object, parse_tc_date};
use crate::model::{Policy, Schema, Wanted, is_a, known_type};
use crate::wire;

/// A request the server refuses as a whole: `InternalServerException` under HTTP 500.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: u32,
    pub(crate) message: String,
}

impl Refusal {
    /// A body that does not match the operation's schema (error 214086, "invalid syntax").
    fn syntax(what: impl Into<String>) -> Self {
        Self {
            code: wire::INVALID_SYNTAX,
            message: format!("invalid syntax: {}", what.into()),
        }
    }
}

/// A kind of window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowKind {
    /// `openContexts`: closed by `closeContexts` with its top line.
    Context,
    /// `createBOMWindows`: closed by `closeBOMWindows` with the window.
    Bom,
}

/// One open window.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    pub(crate) session: String,
    pub(crate) kind: WindowKind,
    /// The process revision at the top.
    pub(crate) top: String,
}

/// Open windows, by number.
#[derive(Debug, Default)]
pub(crate) struct Windows {
    next: u64,
    pub(crate) open: HashMap<u64, Window>,
    /// Windows opened, closed by the client, and gone with their session.
    pub(crate) opened: u64,
    pub(crate) closed: u64,
    pub(crate) died: u64,
    /// Windows the client closed: naming one again (a close retried after a lost answer) is
    /// refused but not counted as a stale reference.
    closed_ids: std::collections::HashSet<u64>,
}

impl Windows {
    /// Every window of `session` dies with it.
    pub(crate) fn session_ended(&mut self, session: &str) {
        let before = self.open.len();
        self.open.retain(|_, w| w.session != session);
        self.died += (before - self.open.len()) as u64;
    }

    /// The client closed window `n`.
    fn close(&mut self, n: u64) {
        self.open.remove(&n);
        self.closed_ids.insert(n);
        self.closed += 1;
    }

    /// Every window dies (a restart).
    pub(crate) fn all_died(&mut self) {
        self.died += self.open.len() as u64;
        self.open.clear();
    }
}

const TOP: &str = "TOP";

/// A runtime line: which window, and which occurrence (or the top line).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    window: u64,
    line_type: String,
    /// An occurrence UID, or `None` for the top line.
    occurrence: Option<String>,
}

fn line_uid(window: u64, line_type: &str, occurrence: Option<&str>) -> String {
    format!("SR::N::{line_type}..{window}.{}", occurrence.unwrap_or(TOP))
}

fn parse_line(uid: &str) -> Option<Line> {
    let rest = uid.strip_prefix("SR::N::")?;
    let (line_type, rest) = rest.split_once("..")?;
    let (window, occ) = rest.split_once('.')?;
    Some(Line {
        window: window.parse().ok()?,
        line_type: line_type.to_owned(),
        occurrence: (occ != TOP).then(|| occ.to_owned()),
    })
}

fn window_uid(n: u64) -> String {
    format!("BOM::{n}")
}

/// The UID in a reference: `"uid"`, `{"uid": ...}` (`docs/teamcenter-reads.md` §0.1).
fn ref_uid(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Object(m) => m.get("uid").and_then(Value::as_str),
        _ => None,
    }
}

fn null_ref() -> Value {
    json!({"uid": NULL_UID, "className": "unknownClass", "type": "unknownType"})
}

fn partial(uid: Option<&str>, index: usize, code: u32, message: String) -> Value {
    let mut pe = json!({"clientIndex": index, "errorValues": [{"code": code, "level": 3, "message": message}]});
    if let Some(u) = uid {
        pe["uid"] = json!(u);
    }
    pe
}

fn array<'v>(v: &'v Value, key: &str) -> Result<&'v Vec<Value>, Refusal> {
    v.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| Refusal::syntax(format!("body.{key} must be an array")))
}

fn strings(v: &Value, key: &str) -> Result<Vec<String>, Refusal> {
    array(v, key)?
        .iter()
        .map(|x| {
            x.as_str()
                .map(str::to_owned)
                .ok_or_else(|| Refusal::syntax(format!("body.{key} must hold strings")))
        })
        .collect()
}

/// The saved-query date form, `dd-MMM-yyyy HH:mm` (`docs/teamcenter-reads.md` §2.5), read in the
/// server's time zone.
fn parse_query_date(value: &str, offset_minutes: i32) -> Option<SystemTime> {
    let naive = chrono::NaiveDateTime::parse_from_str(value.trim(), "%d-%b-%Y %H:%M").ok()?;
    let offset = chrono::FixedOffset::east_opt(offset_minutes.checked_mul(60)?)?;
    naive
        .and_local_timezone(offset)
        .single()
        .map(SystemTime::from)
}

/// `*` matches any run of characters; case-insensitive like Teamcenter's queries.
fn wildcard(pattern: &str, value: &str) -> bool {
    let (p, v) = (pattern.to_lowercase(), value.to_lowercase());
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == v;
    }
    let mut rest = v.as_str();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(pos) = rest.find(part) {
            rest = &rest[pos + part.len()..];
        } else {
            return false;
        }
    }
    true
}

/// A field of a saved query (`describeSavedQueries`).
#[derive(Debug, Clone)]
pub(crate) struct Field {
    pub(crate) attribute: &'static str,
    pub(crate) entry: String,
    pub(crate) math: &'static str,
}

/// The fields of a built-in query, with the site's entry names.
pub(crate) fn query_fields(name: &str, cfg: &TcConfig) -> Vec<Field> {
    let base: &[(&str, &str, &str)] = match name {
        "Item Revision..." => &[
            ("item_id", "Item ID", "="),
            ("item_revision_id", "Revision", "="),
            ("object_name", "Name", "="),
            ("object_type", "Type", "="),
            ("owning_user", "Owning User", "="),
            ("creation_date", "Created After", ">="),
            ("creation_date", "Created Before", "<="),
            ("last_mod_date", "Modified After", ">="),
            ("last_mod_date", "Modified Before", "<="),
            ("date_released", "Released After", ">="),
            ("date_released", "Released Before", "<="),
        ],
        "General..." => &[
            ("object_name", "Name", "="),
            ("object_desc", "Description", "="),
            ("object_type", "Type", "="),
            ("owning_user", "Owning User", "="),
            ("creation_date", "Created After", ">="),
            ("creation_date", "Created Before", "<="),
            ("last_mod_date", "Modified After", ">="),
            ("last_mod_date", "Modified Before", "<="),
        ],
        "Item..." => &[("item_id", "Item ID", "="), ("object_type", "Type", "=")],
        _ => &[],
    };
    base.iter()
        .map(|(attribute, entry, math)| Field {
            attribute,
            entry: cfg
                .entry_names
                .get(*entry)
                .cloned()
                .unwrap_or_else(|| (*entry).to_owned()),
            math,
        })
        .collect()
}

/// One request's view of the server.
pub(crate) struct Ctx<'a> {
    pub(crate) data: &'a mut Dataset,
    pub(crate) windows: &'a mut Windows,
    pub(crate) schema: &'a Schema,
    pub(crate) cfg: &'a TcConfig,
    /// The caller's session (windows are per session).
    pub(crate) session: &'a str,
    pub(crate) policy: Policy,
    pub(crate) wall: SystemTime,
    /// References to runtime lines or windows that are not live in this session (counted).
    pub(crate) stale: std::cell::Cell<u64>,
}

/// What an answer's `modelObjects` collects.
#[derive(Default)]
struct Model {
    objects: serde_json::Map<String, Value>,
}

impl Ctx<'_> {
    /// Runs `op` on `input` (the body). `None`: no such operation.
    pub(crate) fn dispatch(&mut self, op: &str, input: &Value) -> Option<Result<Value, Refusal>> {
        if self.cfg.missing_operations.iter().any(|m| m == op) {
            return None;
        }
        Some(match op {
            "Query-2010-04-SavedQuery/findSavedQueries" => self.find_saved_queries(input),
            "Query-2006-03-SavedQuery/getSavedQueries" => Ok(self.get_saved_queries()),
            "Query-2006-03-SavedQuery/describeSavedQueries" => self.describe_saved_queries(input),
            "Query-2008-06-SavedQuery/executeSavedQueries" => self.execute_saved_queries(input),
            "Query-2010-09-SavedQuery/executeBusinessObjectQueries" => {
                self.execute_bo_queries(input)
            }
            "Core-2007-09-DataManagement/loadObjects" => self.load_objects(input),
            "Core-2006-03-DataManagement/getProperties" => self.get_properties(input),
            "Core-2011-06-Session/getTypeDescriptions" => self.type_descriptions(input),
            "Cad-2007-01-StructureManagement/getRevisionRules" => Ok(self.revision_rules()),
            "Cad-2007-01-StructureManagement/createBOMWindows" => self.create_bom_windows(input),
            "Cad-2007-01-StructureManagement/closeBOMWindows" => self.close_bom_windows(input),
            "Manufacturing-2011-06-DataManagement/openContexts" => self.open_contexts(input),
            "Manufacturing-2011-06-DataManagement/closeContexts" => self.close_contexts(input),
            "Cad-2007-01-StructureManagement/expandPSOneLevel" => self.expand_one_level(input),
            "Core-2007-09-DataManagement/expandGRMRelationsForPrimary" => self.expand_grm(input),
            "Core-2010-09-DataManagement/setProperties" => self.set_properties(input),
            _ => return None,
        })
    }

    // ---- objects and properties -------------------------------------------------------------

    /// The type of a persistent object or a live line of this session.
    fn type_of(&self, uid: &str) -> Option<String> {
        if let Some(o) = self.data.get(uid) {
            return Some(o.type_name.clone());
        }
        self.live_line(uid).map(|l| l.line_type)
    }

    /// A line of a window open in this session.
    fn live_line(&self, uid: &str) -> Option<Line> {
        let line = parse_line(uid)?;
        let w = self.windows.open.get(&line.window)?;
        if w.session != self.session {
            return None;
        }
        match &line.occurrence {
            None => Some(line),
            Some(o) => self.data.occurrence(o).map(|_| line),
        }
    }

    /// The revision a line shows.
    fn line_revision(&self, line: &Line) -> Option<String> {
        match &line.occurrence {
            None => self.windows.open.get(&line.window).map(|w| w.top.clone()),
            Some(o) => self.data.occurrence(o).map(|o| o.revision.clone()),
        }
    }

    fn child_lines(&self, line: &Line) -> Vec<String> {
        let children = match &line.occurrence {
            None => self
                .windows
                .open
                .get(&line.window)
                .and_then(|w| self.data.structure(&w.top))
                .map(<[String]>::to_vec)
                .unwrap_or_default(),
            Some(o) => self.data.children(o),
        };
        children
            .iter()
            .filter_map(|c| self.data.occurrence(c))
            .map(|c| line_uid(line.window, c.line_type, Some(&c.uid)))
            .collect()
    }

    /// The `dbValues` of `prop` on `uid` (a persistent object or a live line).
    fn values(&self, uid: &str, prop: &str) -> Vec<String> {
        if let Some(o) = self.data.get(uid) {
            return match prop {
                "object_string" => vec![format!(
                    "{}/{};{}",
                    o.get("item_id").unwrap_or_default(),
                    o.get("item_revision_id").unwrap_or_default(),
                    o.get("object_name").unwrap_or_default()
                )],
                _ if prop.starts_with("IMAN_") => self
                    .data
                    .relations(uid)
                    .iter()
                    .filter(|(r, _)| r == prop)
                    .map(|(_, s)| s.clone())
                    .collect(),
                _ => o.props.get(prop).cloned().unwrap_or_default(),
            };
        }
        let Some(line) = self.live_line(uid) else {
            return Vec::new();
        };
        let rev = self.line_revision(&line).unwrap_or_default();
        let r = self.data.get(&rev);
        let rp = |p: &str| r.and_then(|r| r.get(p)).unwrap_or_default().to_owned();
        let occ = line
            .occurrence
            .as_deref()
            .and_then(|o| self.data.occurrence(o));
        let to_line = |occ: &str| {
            self.data
                .occurrence(occ)
                .map(|o| line_uid(line.window, o.line_type, Some(&o.uid)))
                .unwrap_or_else(|| NULL_UID.to_owned())
        };
        match prop {
            "bl_item_item_id" => vec![rp("item_id")],
            "bl_rev_item_revision_id" => vec![rp("item_revision_id")],
            "bl_rev_object_name" | "bl_item_object_name" => vec![rp("object_name")],
            "bl_rev_object_type" => vec![rp("object_type")],
            "bl_sequence_no" => vec![occ.map(|o| o.sequence.clone()).unwrap_or_default()],
            "bl_quantity" => vec![String::new()],
            "bl_occ_type" => vec![occ.map(|o| o.occ_type.clone()).unwrap_or_default()],
            "bl_occurrence_uid" => vec![occ.map(|o| o.uid.clone()).unwrap_or_default()],
            "bl_revision" => vec![rev.clone()],
            "bl_child_lines" | "bl_all_child_lines" | "Mfg0sub_elements" => self.child_lines(&line),
            "bl_has_children" => vec![
                if self.child_lines(&line).is_empty() {
                    "0"
                } else {
                    "1"
                }
                .to_owned(),
            ],
            "bl_indented_title" => vec![format!(
                "{}/{};1-{}",
                rp("item_id"),
                rp("item_revision_id"),
                rp("object_name")
            )],
            "Mfg0allocated_time" => vec![
                occ.and_then(|o| o.allocated_time.clone())
                    .unwrap_or_default(),
            ],
            "Mfg0assigned_workarea" => vec![
                occ.and_then(|o| o.work_area.as_deref())
                    .map_or_else(|| NULL_UID.to_owned(), to_line),
            ],
            "Mfg0used_equipment" => occ
                .map(|o| o.equipment.iter().map(|e| to_line(e)).collect())
                .unwrap_or_default(),
            "Mfg0consumed_material" => occ
                .map(|o| o.consumed.iter().map(|c| to_line(c)).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// `{uid, className, type}` of a persistent object or live line.
    fn reference(&self, uid: &str) -> Value {
        match self.type_of(uid) {
            Some(t) => json!({"uid": uid, "className": t, "type": t}),
            None => null_ref(),
        }
    }

    /// Adds `uid` with the policy's properties (plus `extra`) to `model`, and the objects its
    /// `withProperties` references point at.
    fn add(&self, model: &mut Model, uid: &str, extra: &[String]) {
        self.add_depth(model, uid, extra, 0);
    }

    fn add_depth(&self, model: &mut Model, uid: &str, extra: &[String], depth: u32) {
        let Some(t) = self.type_of(uid) else { return };
        let mut wanted = self.policy.wanted(&t);
        for e in extra {
            if !wanted.iter().any(|w| &w.name == e) {
                wanted.push(Wanted {
                    name: e.clone(),
                    with_properties: false,
                });
            }
        }
        let entry = model.objects.entry(uid.to_owned()).or_insert_with(
            || json!({"objectID": uid, "uid": uid, "className": t, "type": t, "props": {}}),
        );
        let mut follow = Vec::new();
        for w in &wanted {
            // A policy naming a property the type lacks is ignored, as for a policy that lists
            // properties of several types [I].
            if !self.schema.has(&t, &w.name) {
                continue;
            }
            let values = self.values(uid, &w.name);
            if w.with_properties {
                follow.extend(
                    values
                        .iter()
                        .filter(|v| v.as_str() != NULL_UID)
                        .filter(|v| self.cfg.follow_line_references || parse_line(v).is_none())
                        .cloned(),
                );
            }
            // Dates go out in the server's own time zone, with its offset (`…-05:00`), as a
            // real server writes them.
            let values: Vec<String> = values
                .into_iter()
                .map(|v| in_server_zone(v, self.cfg.utc_offset_minutes))
                .collect();
            entry["props"][&w.name] = json!({"dbValues": values, "uiValues": values});
        }
        if depth < 2 {
            for f in follow {
                if !model.objects.contains_key(&f) {
                    self.add_depth(model, &f, &[], depth + 1);
                }
            }
        }
    }

    fn service_data(model: Model, plain: &[String], partial_errors: Vec<Value>) -> Value {
        json!({"plain": plain, "modelObjects": model.objects, "partialErrors": partial_errors})
    }

    fn not_found(&self, uid: &str, index: usize) -> Value {
        let window = parse_line(uid)
            .map(|l| l.window)
            .or_else(|| uid.strip_prefix("BOM::").and_then(|n| n.parse().ok()));
        if window.is_some_and(|w| !self.windows.closed_ids.contains(&w)) {
            self.stale.set(self.stale.get() + 1);
        }
        partial(
            Some(uid),
            index,
            wire::NO_SUCH_OBJECT,
            format!("The object {uid} does not exist (or is not a live line of this session)."),
        )
    }

    fn load_objects(&self, input: &Value) -> Result<Value, Refusal> {
        let uids = strings(input, "uids")?;
        let mut model = Model::default();
        let mut plain = Vec::new();
        let mut errors = Vec::new();
        for (i, uid) in uids.iter().enumerate() {
            if self.type_of(uid).is_some() {
                self.add(&mut model, uid, &[]);
                plain.push(uid.clone());
            } else {
                errors.push(self.not_found(uid, i));
            }
        }
        let mut sd = Self::service_data(model, &plain, errors);
        sd[".QName"] = json!(wire::SERVICE_DATA);
        Ok(sd)
    }

    fn get_properties(&self, input: &Value) -> Result<Value, Refusal> {
        let objects = array(input, "objects")?;
        let attributes = strings(input, "attributes")?;
        let mut model = Model::default();
        let mut plain = Vec::new();
        let mut errors = Vec::new();
        for (i, o) in objects.iter().enumerate() {
            let uid =
                ref_uid(o).ok_or_else(|| Refusal::syntax("body.objects[] must be references"))?;
            let Some(t) = self.type_of(uid) else {
                errors.push(self.not_found(uid, i));
                continue;
            };
            let (known, unknown): (Vec<String>, Vec<String>) = attributes
                .iter()
                .cloned()
                .partition(|a| self.schema.has(&t, a));
            for a in unknown {
                errors.push(partial(
                    Some(uid),
                    i,
                    wire::NO_SUCH_PROPERTY,
                    format!("The property {a} does not exist on type {t}."),
                ));
            }
            self.add(&mut model, uid, &known);
            plain.push(uid.to_owned());
        }
        let mut sd = Self::service_data(model, &plain, errors);
        sd[".QName"] = json!(wire::SERVICE_DATA);
        Ok(sd)
    }

    /// `Core-2011-06-Session/getTypeDescriptions`: a `TypeSchema` (`types`, `lovs`, `tools`), no
    /// ServiceData; unknown type names are ignored (documented for the 2015-10 variant, assumed
    /// here) \[V shape: S11 `metamodel/ModelType.hxx`, `PropertyDescriptor.hxx`\].
    fn type_descriptions(&self, input: &Value) -> Result<Value, Refusal> {
        let names = strings(input, "typeNames")?;
        let types: Vec<Value> = names
            .iter()
            .filter(|n| known_type(n))
            .map(|n| {
                let props: Vec<Value> = self
                    .schema
                    .all(n)
                    .into_iter()
                    .map(|p| json!({"name": p, "displayName": p, "valueType": 8, "propertyType": 2, "anArray": false, "constants": []}))
                    .collect();
                let lineage = crate::model::lineage(n);
                json!({"name": n, "className": n, "displayName": n,
                       "parentTypeName": lineage.get(1).copied().unwrap_or_default(),
                       "propertyDescriptors": props, "constants": []})
            })
            .collect();
        Ok(json!({"types": types, "lovs": [], "tools": []}))
    }

    // ---- saved queries ----------------------------------------------------------------------

    fn query_objects(&self) -> Vec<&Object> {
        self.data
            .objects()
            .values()
            .filter(|o| o.type_name == "ImanQuery")
            .collect()
    }

    fn find_saved_queries(&self, input: &Value) -> Result<Value, Refusal> {
        let criteria = array(input, "inputCriteria")?;
        let mut found = Vec::new();
        for c in criteria {
            let names = strings(c, "queryNames")?;
            if !c["queryType"].is_i64() {
                return Err(Refusal::syntax(
                    "inputCriteria[].queryType must be an integer",
                ));
            }
            for q in self.query_objects() {
                let name = q.get("query_name").unwrap_or_default();
                if names.iter().any(|n| wildcard(n, name)) && !found.contains(&q.uid) {
                    found.push(q.uid.clone());
                }
            }
        }
        let mut model = Model::default();
        for uid in &found {
            self.add(&mut model, uid, &[]);
        }
        Ok(json!({
            ".QName": "http://teamcenter.com/Schemas/Query/2010-04/SavedQuery.FindSavedQueriesResponse",
            "savedQueries": found.iter().map(|u| self.reference(u)).collect::<Vec<_>>(),
            "ServiceData": Self::service_data(model, &found, Vec::new()),
        }))
    }

    fn get_saved_queries(&self) -> Value {
        let queries: Vec<Value> = self
            .query_objects()
            .iter()
            .map(|q| {
                json!({"query": self.reference(&q.uid), "name": q.get("query_name"), "description": q.get("query_desc")})
            })
            .collect();
        json!({"queries": queries, "ServiceData": {"plain": []}})
    }

    fn query_name(&self, uid: &str) -> Option<String> {
        self.data
            .get(uid)
            .filter(|o| o.type_name == "ImanQuery")
            .and_then(|o| o.get("query_name"))
            .map(str::to_owned)
    }

    fn describe_saved_queries(&self, input: &Value) -> Result<Value, Refusal> {
        let queries = array(input, "queries")?;
        let mut lists = Vec::new();
        let mut errors = Vec::new();
        for (i, q) in queries.iter().enumerate() {
            let uid =
                ref_uid(q).ok_or_else(|| Refusal::syntax("body.queries[] must be references"))?;
            let Some(name) = self.query_name(uid) else {
                errors.push(self.not_found(uid, i));
                lists.push(json!({"fields": []}));
                continue;
            };
            let fields: Vec<Value> = query_fields(&name, self.cfg)
                .iter()
                .map(|f| {
                    json!({"attributeName": f.attribute, "entryName": f.entry, "logicalOperation": "AND",
                           "mathOperation": f.math, "value": "", "attributeType": if f.attribute.ends_with("_date") || f.attribute == "date_released" { 2 } else { 8 },
                           "lov": null_ref()})
                })
                .collect();
            lists.push(json!({"fields": fields}));
        }
        Ok(json!({"fieldLists": lists, "ServiceData": {"partialErrors": errors}}))
    }

    /// Whether `o` satisfies `attribute math value` (values already checked).
    fn matches(&self, o: &Object, attribute: &str, math: &str, value: &str) -> bool {
        let offset = self.cfg.utc_offset_minutes;
        let date_of = |p: &str| -> Option<SystemTime> {
            if p == "date_released" {
                o.props
                    .get("release_status_list")
                    .into_iter()
                    .flatten()
                    .filter_map(|s| self.data.get(s))
                    .filter_map(|s| s.get("date_released").and_then(parse_tc_date))
                    .max()
            } else {
                o.get(p).and_then(parse_tc_date)
            }
        };
        if attribute.ends_with("_date") || attribute == "date_released" {
            let (Some(have), Some(want)) = (date_of(attribute), parse_query_date(value, offset))
            else {
                return false;
            };
            return match math {
                ">=" => have >= want,
                ">" => have > want,
                "<=" => have <= want,
                "<" => have < want,
                "=" => have == want,
                "!=" => have != want,
                _ => false,
            };
        }
        let have = o.get(attribute).unwrap_or_default();
        match math {
            "=" => value.split(';').any(|v| wildcard(v.trim(), have)),
            "!=" => !value.split(';').any(|v| wildcard(v.trim(), have)),
            "Contain" => have.to_lowercase().contains(&value.to_lowercase()),
            "IS_NULL" => have.is_empty(),
            "IS_NOT_NULL" => !have.is_empty(),
            _ => false,
        }
    }

    fn revisions(&self) -> impl Iterator<Item = &Object> {
        self.data
            .objects()
            .values()
            .filter(|o| is_a(&o.type_name, "ItemRevision"))
    }

    fn execute_saved_queries(&self, input: &Value) -> Result<Value, Refusal> {
        let inputs = array(input, "input")?;
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (i, q) in inputs.iter().enumerate() {
            let uid = ref_uid(&q["query"])
                .ok_or_else(|| Refusal::syntax("input[].query must be a reference"))?;
            let entries = strings(q, "entries")?;
            let values = strings(q, "values")?;
            if entries.len() != values.len() {
                return Err(Refusal::syntax(
                    "input[].entries and input[].values differ in length",
                ));
            }
            if !q["maxNumToReturn"].is_i64() || !q["resultsType"].is_i64() {
                return Err(Refusal::syntax(
                    "input[].maxNumToReturn and resultsType must be integers",
                ));
            }
            let Some(name) = self.query_name(uid) else {
                errors.push(self.not_found(uid, i));
                results.push(json!({"objectUIDS": [], "objectsRelMap": []}));
                continue;
            };
            let fields = query_fields(&name, self.cfg);
            let mut clauses = Vec::new();
            let mut bad = None;
            for (e, v) in entries.iter().zip(&values) {
                match fields.iter().find(|f| &f.entry == e) {
                    None => {
                        bad = Some((
                            wire::NO_SUCH_ENTRY,
                            format!("The query {name} has no entry named {e}."),
                        ));
                    }
                    Some(f)
                        if (f.attribute.ends_with("_date") || f.attribute == "date_released")
                            && parse_query_date(v, 0).is_none() =>
                    {
                        bad = Some((
                            wire::BAD_DATE,
                            format!(
                                "The value {v} of entry {e} is not a date in the format dd-MMM-yyyy HH:mm."
                            ),
                        ));
                    }
                    Some(f) => clauses.push((f.attribute, f.math, v.clone())),
                }
            }
            if let Some((code, message)) = bad {
                errors.push(partial(Some(uid), i, code, message));
                results.push(json!({"objectUIDS": [], "objectsRelMap": []}));
                continue;
            }
            let max = q["maxNumToReturn"].as_i64().unwrap_or(0);
            let mut uids: Vec<String> = self
                .revisions()
                .filter(|o| clauses.iter().all(|(a, m, v)| self.matches(o, a, m, v)))
                .map(|o| o.uid.clone())
                .collect();
            if max > 0 {
                uids.truncate(usize::try_from(max).unwrap_or(usize::MAX));
            }
            results.push(json!({"objectUIDS": uids, "objectsRelMap": []}));
        }
        Ok(json!({
            ".QName": "http://teamcenter.com/Schemas/Query/2007-09/SavedQuery.SavedQueriesResponse",
            "arrayOfResults": results,
            "ServiceData": {"partialErrors": errors},
        }))
    }

    fn execute_bo_queries(&self, input: &Value) -> Result<Value, Refusal> {
        const OPS: [&str; 9] = [
            "=",
            "!=",
            ">",
            ">=",
            "<",
            "<=",
            "Contain",
            "IS_NULL",
            "IS_NOT_NULL",
        ];
        let inputs = array(input, "inputs")?;
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (i, q) in inputs.iter().enumerate() {
            let type_name = q["typeName"]
                .as_str()
                .ok_or_else(|| Refusal::syntax("inputs[].typeName must be a string"))?;
            let clauses = array(q, "clauses")?;
            let mut parsed = Vec::new();
            let mut bad = None;
            if !known_type(type_name) {
                bad = Some((
                    wire::NO_SUCH_TYPE,
                    format!("The type {type_name} does not exist."),
                ));
            }
            for c in clauses {
                let (Some(prop), Some(value), Some(math), Some(logic)) = (
                    c["propName"].as_str(),
                    c["propValue"].as_str(),
                    c["mathOperator"].as_str(),
                    c["logicOperator"].as_str(),
                ) else {
                    return Err(Refusal::syntax(
                        "inputs[].clauses[] needs propName, propValue, mathOperator, logicOperator",
                    ));
                };
                if !OPS.contains(&math) || !matches!(logic, "AND" | "OR") {
                    return Err(Refusal::syntax(format!(
                        "operator {math} / {logic} is not legal"
                    )));
                }
                if !self.schema.has(type_name, prop) {
                    bad = Some((
                        wire::NO_SUCH_PROPERTY,
                        format!("The property {prop} does not exist on type {type_name}."),
                    ));
                } else if prop.ends_with("_date") && parse_query_date(value, 0).is_none() {
                    bad = Some((
                        wire::BAD_DATE,
                        format!(
                            "The value {value} of {prop} is not a date in the format dd-MMM-yyyy HH:mm."
                        ),
                    ));
                }
                parsed.push((prop, math, value, logic));
            }
            if let Some((code, message)) = bad {
                errors.push(partial(None, i, code, message));
                results.push(json!({"objectUIDS": [], "objectsRelMap": []}));
                continue;
            }
            let uids: Vec<String> = self
                .revisions()
                .filter(|o| is_a(&o.type_name, type_name))
                .filter(|o| {
                    let mut acc: Option<bool> = None;
                    for (p, m, v, l) in &parsed {
                        let r = self.matches(o, p, m, v);
                        acc = Some(match (acc, *l) {
                            (None, _) => r,
                            (Some(a), "OR") => a || r,
                            (Some(a), _) => a && r,
                        });
                    }
                    acc.unwrap_or(true)
                })
                .map(|o| o.uid.clone())
                .collect();
            let mut uids = uids;
            if let Some(max) = q["maxNumToReturn"].as_u64().filter(|m| *m > 0) {
                uids.truncate(usize::try_from(max).unwrap_or(usize::MAX));
            }
            results.push(json!({"objectUIDS": uids, "objectsRelMap": []}));
        }
        Ok(json!({"arrayOfResults": results, "ServiceData": {"partialErrors": errors}}))
    }

    // ---- windows ----------------------------------------------------------------------------

    fn open_window(&mut self, kind: WindowKind, top: &str) -> u64 {
        self.windows.next += 1;
        let n = self.windows.next;
        self.windows.open.insert(
            n,
            Window {
                session: self.session.to_owned(),
                kind,
                top: top.to_owned(),
            },
        );
        self.windows.opened += 1;
        n
    }

    fn revision_rules(&self) -> Value {
        let rules: Vec<&Object> = self
            .data
            .objects()
            .values()
            .filter(|o| o.type_name == "RevisionRule")
            .collect();
        let mut model = Model::default();
        for r in &rules {
            self.add(&mut model, &r.uid, &[]);
        }
        let plain: Vec<String> = rules.iter().map(|r| r.uid.clone()).collect();
        json!({
            "output": rules.iter().map(|r| json!({"revRule": self.reference(&r.uid), "hasValueStatus": {"date": false, "unitNo": false, "endItem": false}, "overrideFolders": []})).collect::<Vec<_>>(),
            "ServiceData": Self::service_data(model, &plain, Vec::new()),
        })
    }

    fn openable(&self, uid: &str) -> bool {
        self.data.structure(uid).is_some()
    }

    fn open_contexts(&mut self, input: &Value) -> Result<Value, Refusal> {
        let inputs = array(input, "input")?.clone();
        let mut output = Vec::new();
        let mut created = Vec::new();
        let mut errors = Vec::new();
        for (i, item) in inputs.iter().enumerate() {
            let uid = ref_uid(&item["object"])
                .ok_or_else(|| Refusal::syntax("input[].object must be a reference"))?;
            if !item["contextSettings"].is_object() {
                return Err(Refusal::syntax("input[].contextSettings must be an object"));
            }
            if !self.openable(uid) {
                errors.push(partial(
                    Some(uid),
                    i,
                    wire::CANNOT_OPEN,
                    format!("The object {uid} cannot be opened as a process context."),
                ));
                continue;
            }
            let w = self.open_window(WindowKind::Context, uid);
            let top = line_uid(w, "Mfg0BvrProcess", None);
            created.push(top.clone());
            output.push(json!({
                "contexts": [{"context": self.reference(&top), "object": self.reference(uid), "views": [], "structureContext": null_ref()}],
                "collaborationContext": null_ref(),
            }));
        }
        let mut model = Model::default();
        for l in &created {
            self.add(&mut model, l, &[]);
        }
        let mut sd = Self::service_data(model, &[], errors);
        sd["created"] = json!(created);
        Ok(json!({"output": output, "ServiceData": sd}))
    }

    fn close_contexts(&mut self, input: &Value) -> Result<Value, Refusal> {
        let contexts = array(input, "contexts")?.clone();
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for (i, c) in contexts.iter().enumerate() {
            let uid =
                ref_uid(c).ok_or_else(|| Refusal::syntax("body.contexts[] must be references"))?;
            match self.live_line(uid) {
                Some(l)
                    if l.occurrence.is_none()
                        && self
                            .windows
                            .open
                            .get(&l.window)
                            .is_some_and(|w| w.kind == WindowKind::Context) =>
                {
                    self.windows.close(l.window);
                    deleted.push(uid.to_owned());
                }
                _ => errors.push(self.not_found(uid, i)),
            }
        }
        Ok(json!({".QName": wire::SERVICE_DATA, "deleted": deleted, "partialErrors": errors}))
    }

    fn create_bom_windows(&mut self, input: &Value) -> Result<Value, Refusal> {
        let infos = array(input, "info")?.clone();
        let mut output = Vec::new();
        let mut errors = Vec::new();
        let mut lines = Vec::new();
        for (i, info) in infos.iter().enumerate() {
            let client_id = info["clientId"].as_str().unwrap_or_default().to_owned();
            let rc = &info["revRuleConfigInfo"];
            if !rc.is_object() || !rc["props"].is_object() {
                return Err(Refusal::syntax(
                    "info[].revRuleConfigInfo.props must be an object",
                ));
            }
            let rule = ref_uid(&rc["revRule"]).unwrap_or_default();
            if !rule.is_empty()
                && self
                    .data
                    .get(rule)
                    .is_none_or(|r| r.type_name != "RevisionRule")
            {
                errors.push(partial(
                    Some(rule),
                    i,
                    wire::NO_SUCH_OBJECT,
                    format!("The revision rule {rule} does not exist."),
                ));
                continue;
            }
            let mut rev = ref_uid(&info["itemRev"]).unwrap_or_default().to_owned();
            if rev.is_empty() {
                // An item: the server picks its revision by the rule (S4/S12 pass only the item).
                let Some(item) = ref_uid(&info["item"]).filter(|u| !u.is_empty()) else {
                    return Err(Refusal::syntax(
                        "info[] names neither an itemRev nor an item",
                    ));
                };
                let rule_name = self
                    .data
                    .get(rule)
                    .and_then(|r| r.get("object_name"))
                    .unwrap_or_default();
                match self.data.configured_revision(item, rule_name) {
                    Some(r) => rev = r,
                    None => {
                        errors.push(partial(
                            Some(item),
                            i,
                            wire::CANNOT_OPEN,
                            format!("No revision of {item} is configured by the revision rule."),
                        ));
                        continue;
                    }
                }
                // Any configured revision opens: a window on an item without a structure has a
                // top line and no children.
                let w = self.open_window(WindowKind::Bom, &rev);
                let top = line_uid(w, "BOMLine", None);
                lines.push(top.clone());
                output.push(json!({"clientId": client_id,
                    "bomWindow": {"uid": window_uid(w), "className": "BOMWindow", "type": "BOMWindow"},
                    "bomLine": self.reference(&top)}));
                continue;
            }
            let rev = rev.as_str();
            if !self.openable(rev) {
                errors.push(partial(
                    Some(rev),
                    i,
                    wire::CANNOT_OPEN,
                    format!("The object {rev} has no structure to open."),
                ));
                continue;
            }
            let w = self.open_window(WindowKind::Bom, rev);
            let top = line_uid(w, "Mfg0BvrProcess", None);
            lines.push(top.clone());
            output.push(json!({"clientId": client_id,
                "bomWindow": {"uid": window_uid(w), "className": "BOMWindow", "type": "BOMWindow"},
                "bomLine": self.reference(&top)}));
        }
        let mut model = Model::default();
        for l in &lines {
            self.add(&mut model, l, &[]);
        }
        Ok(json!({
            ".QName": "http://teamcenter.com/Schemas/Cad/2007-01/StructureManagement.CreateBOMWindowsResponse",
            "output": output,
            "ServiceData": Self::service_data(model, &[], errors),
        }))
    }

    fn close_bom_windows(&mut self, input: &Value) -> Result<Value, Refusal> {
        let windows = array(input, "bomWindows")?.clone();
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for (i, w) in windows.iter().enumerate() {
            let uid = ref_uid(w)
                .ok_or_else(|| Refusal::syntax("body.bomWindows[] must be references"))?;
            let n = uid
                .strip_prefix("BOM::")
                .and_then(|n| n.parse::<u64>().ok());
            let live = n.filter(|n| {
                self.windows
                    .open
                    .get(n)
                    .is_some_and(|w| w.session == self.session && w.kind == WindowKind::Bom)
            });
            match live {
                Some(n) => {
                    self.windows.close(n);
                    deleted.push(uid.to_owned());
                }
                None => errors.push(self.not_found(uid, i)),
            }
        }
        Ok(json!({"ServiceData": {"deleted": deleted, "partialErrors": errors}}))
    }

    fn expand_one_level(&self, input: &Value) -> Result<Value, Refusal> {
        const FILTERS: [&str; 5] = [
            "None",
            "ExcludeOverridden",
            "ExcludeICHistory",
            "ExcludeGDEs",
            "ExcludeNonImanItemLines",
        ];
        let inner = &input["input"];
        if !inner.is_object() {
            return Err(Refusal::syntax("body.input must be an object"));
        }
        let parents = array(inner, "parentBomLines")?;
        if !inner["excludeFilter"]
            .as_str()
            .is_some_and(|f| FILTERS.contains(&f))
        {
            return Err(Refusal::syntax(
                "body.input.excludeFilter must be one of None, ExcludeOverridden, ExcludeICHistory, ExcludeGDEs, ExcludeNonImanItemLines",
            ));
        }
        let pref = &input["pref"];
        // `info` may be left out (S4 does on expandPSAllLevels); when given it is an array.
        if !pref["expItemRev"].is_boolean() || !(pref["info"].is_null() || pref["info"].is_array())
        {
            return Err(Refusal::syntax(
                "body.pref needs expItemRev (boolean), and info must be an array when given",
            ));
        }

        let mut output = Vec::new();
        let mut plain = Vec::new();
        let mut errors = Vec::new();
        let mut model = Model::default();
        for (i, p) in parents.iter().enumerate() {
            let uid = ref_uid(p)
                .ok_or_else(|| Refusal::syntax("body.input.parentBomLines[] must be references"))?;
            let Some(line) = self.live_line(uid) else {
                errors.push(self.not_found(uid, i));
                continue;
            };
            let rev = self.line_revision(&line).unwrap_or_default();
            let children: Vec<Value> = self
                .child_lines(&line)
                .into_iter()
                .map(|c| {
                    let crev = parse_line(&c)
                        .and_then(|l| self.line_revision(&l))
                        .unwrap_or_default();
                    self.add(&mut model, &c, &[]);
                    self.add(&mut model, &crev, &[]);
                    plain.push(c.clone());
                    json!({"bomLine": self.reference(&c), "itemRevOfBOMLine": self.reference(&crev), "datasets": []})
                })
                .collect();
            output.push(json!({"parent": {"bomLine": self.reference(uid), "itemRevOfBOMLine": self.reference(&rev), "parentDatasets": []}, "children": children}));
        }
        Ok(json!({"output": output, "ServiceData": Self::service_data(model, &plain, errors)}))
    }

    fn expand_grm(&self, input: &Value) -> Result<Value, Refusal> {
        let primaries = array(input, "primaryObjects")?;
        let pref = &input["pref"];
        if !pref.is_object() {
            return Err(Refusal::syntax("body.pref must be an object"));
        }
        let info = pref["info"].as_array().cloned().unwrap_or_default();
        let mut filters: Vec<(String, Vec<String>)> = Vec::new();
        for f in &info {
            let Some(rel) = f["relationTypeName"].as_str() else {
                return Err(Refusal::syntax(
                    "pref.info[] needs relationTypeName (the 2007-09 shape)",
                ));
            };
            let types = f["otherSideObjectTypes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect();
            filters.push((rel.to_owned(), types));
        }
        let mut output = Vec::new();
        let mut errors = Vec::new();
        let mut plain = BTreeSet::new();
        let mut model = Model::default();
        for (i, p) in primaries.iter().enumerate() {
            let uid = ref_uid(p)
                .ok_or_else(|| Refusal::syntax("body.primaryObjects[] must be references"))?;
            if self.data.get(uid).is_none() {
                errors.push(self.not_found(uid, i));
                continue;
            }
            if filters.is_empty() {
                errors.push(partial(
                    Some(uid),
                    i,
                    wire::NO_RELATION_FILTER,
                    "No relation filter was given.".into(),
                ));
                continue;
            }
            let mut by_relation: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for (rel, secondary) in self.data.relations(uid) {
                let Some(s) = self.data.get(secondary) else {
                    continue;
                };
                let wanted = filters.iter().any(|(r, types)| {
                    (r.is_empty() || r == rel)
                        && (types.is_empty() || types.iter().any(|t| is_a(&s.type_name, t)))
                });
                if wanted {
                    self.add(&mut model, secondary, &[]);
                    plain.insert(secondary.clone());
                    by_relation.entry(rel.clone()).or_default().push(json!({
                        "otherSideObject": self.reference(secondary),
                        "relation": {"uid": format!("R{secondary}"), "className": rel, "type": rel},
                    }));
                }
            }
            output.push(json!({
                "inputObject": self.reference(uid),
                "relationshipData": by_relation.into_iter().map(|(r, objs)| json!({"relationName": r, "relationshipObjects": objs})).collect::<Vec<_>>(),
            }));
        }
        let plain: Vec<String> = plain.into_iter().collect();
        Ok(json!({"output": output, "ServiceData": Self::service_data(model, &plain, errors)}))
    }

    fn set_properties(&mut self, input: &Value) -> Result<Value, Refusal> {
        let infos = array(input, "info")?.clone();
        let mut updated = Vec::new();
        let mut errors = Vec::new();
        for (i, info) in infos.iter().enumerate() {
            let uid = ref_uid(&info["object"])
                .ok_or_else(|| Refusal::syntax("info[].object must be a reference"))?;
            let pairs = array(info, "vecNameVal")?;
            let mut props = Vec::new();
            for nv in pairs {
                let name = nv["name"]
                    .as_str()
                    .ok_or_else(|| Refusal::syntax("vecNameVal[].name must be a string"))?;
                props.push((name.to_owned(), strings(nv, "values")?));
            }
            let Some(t) = self.data.get(uid).map(|o| o.type_name.clone()) else {
                errors.push(self.not_found(uid, i));
                continue;
            };
            if let Some((name, _)) = props.iter().find(|(n, _)| !self.schema.has(&t, n)) {
                errors.push(partial(
                    Some(uid),
                    i,
                    wire::SET_PROPERTY_MISSING,
                    format!("The property {name} does not exist on type {t}."),
                ));
                continue;
            }
            if self.data.set_properties(uid, &props, self.wall).is_ok() {
                updated.push(uid.to_owned());
            }
        }
        let mut model = Model::default();
        for u in &updated {
            self.add(&mut model, u, &[]);
        }
        let mut sd = Self::service_data(model, &[], errors);
        sd["updated"] = json!(updated);
        Ok(json!({"ServiceData": sd, "objPropMap": {}}))
    }
}

/// A stored date (`…+00:00`) as the server writes it: in its time zone, `offset_minutes` east of
/// UTC. Anything else (and the null date) is returned unchanged.
fn in_server_zone(value: String, offset_minutes: i32) -> String {
    if value.starts_with("0001-01-01T00:00:00") || !value.ends_with("+00:00") {
        return value;
    }
    let (Some(t), Some(zone)) = (
        crate::data::parse_tc_date(&value),
        chrono::FixedOffset::east_opt(offset_minutes.saturating_mul(60)),
    ) else {
        return value;
    };
    chrono::DateTime::<chrono::Utc>::from(t)
        .with_timezone(&zone)
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_teamcenter_queries() {
        assert!(wildcard("Item Revision*", "Item Revision..."));
        assert!(wildcard("*", "anything"));
        assert!(wildcard("meprocessrevision", "MEProcessRevision"));
        assert!(!wildcard("MEOP*", "MEProcessRevision"));
        assert!(wildcard("*Rev*ion", "MEProcessRevision"));
    }

    #[test]
    fn query_dates_are_display_strings_in_the_server_zone() {
        let utc = parse_query_date("01-Jan-2024 00:00", 0).unwrap();
        let cet = parse_query_date("01-Jan-2024 01:00", 60).unwrap();
        assert_eq!(utc, cet);
        assert!(parse_query_date("2024-01-01T00:00:00+00:00", 0).is_none());
        assert!(parse_query_date("01-Jan-2024", 0).is_none());
    }

    #[test]
    fn line_uids_round_trip() {
        let u = line_uid(7, "Mfg0BvrOperation", Some("abc$x9Q"));
        assert_eq!(
            parse_line(&u),
            Some(Line {
                window: 7,
                line_type: "Mfg0BvrOperation".into(),
                occurrence: Some("abc$x9Q".into())
            })
        );
        assert_eq!(
            parse_line(&line_uid(3, "Mfg0BvrProcess", None))
                .unwrap()
                .occurrence,
            None
        );
        assert_eq!(parse_line("QwhF92$rppgr6D"), None);
    }
}
