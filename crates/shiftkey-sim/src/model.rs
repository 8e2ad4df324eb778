//! Teamcenter's type hierarchy as far as the emulator needs it, which properties each type has,
//! and the object property policy (`header.policy`) that decides which properties an answer
//! carries (`docs/teamcenter-reads.md` §4, §5.6; S11's generated model classes).

use std::collections::BTreeMap;

use serde_json::Value;

/// The parent of a type (`None` at the root).
fn parent(type_name: &str) -> Option<&'static str> {
    Some(match type_name {
        "POM_object" | "RuntimeBusinessObject" => return None,
        "POM_application_object" => "POM_object",
        "WorkspaceObject" | "ReleaseStatus" | "ImanQuery" | "RevisionRule" => {
            "POM_application_object"
        }
        "Item" | "ItemRevision" | "Dataset" => "WorkspaceObject",
        "MEProcess" | "MEOP" | "MEWorkarea" | "Mfg0MEResource" => "Item",
        "MEProcessRevision" | "MEOPRevision" | "MEWorkareaRevision" | "Mfg0MEResourceRevision" => {
            "ItemRevision"
        }
        "PDF" | "Text" => "Dataset",
        "BOMLine" | "BOMWindow" => "RuntimeBusinessObject",
        "ImanItemLine" => "BOMLine",
        "ImanItemBOPLine" => "ImanItemLine",
        "Mfg0BvrProcess"
        | "Mfg0BvrOperation"
        | "Mfg0BvrWorkarea"
        | "Mfg0BvrPart"
        | "Mfg0BvrProcessResource" => "ImanItemBOPLine",
        _ => return None,
    })
}

/// Whether the emulator knows `type_name`.
pub(crate) fn known_type(type_name: &str) -> bool {
    parent(type_name).is_some() || matches!(type_name, "POM_object" | "RuntimeBusinessObject")
}

/// `type_name` and its ancestors, nearest first.
pub(crate) fn lineage(type_name: &str) -> Vec<&str> {
    let mut out = vec![type_name];
    let mut t = type_name;
    while let Some(p) = parent(t) {
        out.push(p);
        t = p;
    }
    out
}

/// Whether `type_name` is `ancestor` or one of its subtypes.
pub(crate) fn is_a(type_name: &str, ancestor: &str) -> bool {
    lineage(type_name).contains(&ancestor)
}

/// The properties a type defines itself (not inherited).
fn own_properties(type_name: &str) -> &'static [&'static str] {
    match type_name {
        "WorkspaceObject" => &[
            "object_name",
            "object_type",
            "object_desc",
            "object_string",
            "creation_date",
            "last_mod_date",
            "release_status_list",
            "owning_user",
        ],
        "Item" => &["item_id", "revision_list"],
        "ItemRevision" => &[
            "item_id",
            "item_revision_id",
            "items_tag",
            "IMAN_specification",
            "IMAN_reference",
            "IMAN_master_form_rev",
        ],
        "MEProcessRevision" | "MEOPRevision" => &[
            "IMAN_MEWorkInstruction",
            "IMAN_METarget",
            "IMAN_MEWorkArea",
            "root_activity",
        ],
        "Dataset" => &["ref_list"],
        "ReleaseStatus" => &["object_name", "date_released"],
        "ImanQuery" => &["query_name", "query_desc"],
        "RevisionRule" => &["object_name"],
        "BOMLine" => &[
            "bl_item_item_id",
            "bl_rev_item_revision_id",
            "bl_rev_object_name",
            "bl_item_object_name",
            "bl_rev_object_type",
            "bl_sequence_no",
            "bl_quantity",
            "bl_occ_type",
            "bl_occurrence_uid",
            "bl_parent",
            "bl_child_lines",
            "bl_all_child_lines",
            "bl_has_children",
            "bl_revision",
            "bl_line_object",
            "bl_indented_title",
        ],
        "ImanItemBOPLine" => &["bl_me_duration_time", "bl_me_work_time"],
        "Mfg0BvrOperation" => &[
            "Mfg0allocated_time",
            "Mfg0assigned_workarea",
            "Mfg0used_equipment",
            "Mfg0consumed_material",
            "Mfg0calc_duration",
        ],
        "Mfg0BvrProcess" => &["Mfg0sub_elements", "Mfg0child_discrete_ops"],
        "BOMWindow" => &["top_line"],
        _ => &[],
    }
}

/// Which properties exist, including site-defined ones (BMIDE extensions from the scenario).
#[derive(Debug, Clone, Default)]
pub(crate) struct Schema {
    site: BTreeMap<String, Vec<String>>,
}

impl Schema {
    pub(crate) fn new(site: BTreeMap<String, Vec<String>>) -> Self {
        Self { site }
    }

    /// Whether `type_name` (or an ancestor) defines `prop`.
    pub(crate) fn has(&self, type_name: &str, prop: &str) -> bool {
        lineage(type_name).iter().any(|t| {
            own_properties(t).contains(&prop)
                || self
                    .site
                    .get(*t)
                    .is_some_and(|v| v.iter().any(|p| p == prop))
        })
    }

    /// Every property of `type_name`, inherited ones included.
    pub(crate) fn all(&self, type_name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for t in lineage(type_name) {
            out.extend(own_properties(t).iter().map(|p| (*p).to_owned()));
            out.extend(self.site.get(t).into_iter().flatten().cloned());
        }
        out
    }
}

/// One property a policy asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub(crate) name: String,
    /// The `withProperties` modifier: referenced objects come along in `modelObjects`.
    pub(crate) with_properties: bool,
}

/// An object property policy from `header.policy`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    types: Vec<(String, Vec<Wanted>)>,
}

impl Policy {
    /// Parses `header.policy`. `null`, absent or `{}` is the server's default policy; a present
    /// policy of the wrong shape is refused as the server's parser would (`Err` says where).
    pub(crate) fn parse(policy: &Value) -> Result<Self, String> {
        let types = match policy {
            Value::Null => return Ok(Self::default()),
            Value::Object(m) if m.is_empty() => return Ok(Self::default()),
            Value::Object(m) => match m.get("types") {
                None => return Ok(Self::default()),
                Some(Value::Array(a)) => a,
                Some(_) => return Err("header.policy.types is not an array".into()),
            },
            _ => return Err("header.policy is not an object".into()),
        };
        let mut out = Vec::new();
        for (i, t) in types.iter().enumerate() {
            let name = t["name"]
                .as_str()
                .ok_or_else(|| format!("header.policy.types[{i}].name is not a string"))?;
            let mut wanted = Vec::new();
            for (j, p) in t["properties"].as_array().into_iter().flatten().enumerate() {
                let pname = p["name"].as_str().ok_or_else(|| {
                    format!("header.policy.types[{i}].properties[{j}].name is not a string")
                })?;
                let with_properties = p["modifiers"].as_array().into_iter().flatten().any(|m| {
                    m["name"] == "withProperties" && (m["Value"] == "true" || m["Value"] == true)
                });
                wanted.push(Wanted {
                    name: pname.to_owned(),
                    with_properties,
                });
            }
            out.push((name.to_owned(), wanted));
        }
        Ok(Self { types: out })
    }

    /// The properties asked for objects of `type_name` (entries for its ancestors apply too).
    /// Without any entry for it, the server's default policy: `object_string` only.
    pub(crate) fn wanted(&self, type_name: &str) -> Vec<Wanted> {
        let lineage = lineage(type_name);
        let mut out: Vec<Wanted> = Vec::new();
        for (t, props) in &self.types {
            if lineage.contains(&t.as_str()) {
                for p in props {
                    if let Some(w) = out.iter_mut().find(|w| w.name == p.name) {
                        w.with_properties |= p.with_properties;
                    } else {
                        out.push(p.clone());
                    }
                }
            }
        }
        if out.is_empty() && self.types.is_empty() {
            out.push(Wanted {
                name: "object_string".into(),
                with_properties: false,
            });
        }
        out
    }
}
