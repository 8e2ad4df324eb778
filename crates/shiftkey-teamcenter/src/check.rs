//! A read-only check of a site against a [`ReadConfig`] (and a [`FeedbackConfig`]): does the
//! saved query exist with the configured entries, does every configured type and property exist
//! (`Core-2011-06-Session/getTypeDescriptions`), does the revision rule exist, can the service
//! user open one process. Each finding says what the Teamcenter administrator must create.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use crate::client::TcClient;
use crate::error::TcError;
use crate::site::{ChangeQuery, CurrentRevision, FeedbackConfig, ReadConfig, WindowMode};

/// One result of [`TcClient::check_site`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finding {
    /// What was checked (`saved-query`, `types`, `revision-rule`, `open-process`, `feedback`).
    pub check: &'static str,
    /// Whether it passed (a check that could not be made is not failed: see `checked`).
    pub ok: bool,
    /// Whether it could be made at all (`false`: this server cannot answer it, and no other
    /// verified route exists; shown as a warning).
    pub checked: bool,
    /// What was found.
    pub detail: String,
    /// What the administrator must create or change, when it failed.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, detail: String) -> Self {
        Self {
            check,
            ok: true,
            checked: true,
            detail,
            fix: None,
        }
    }

    fn fail(check: &'static str, detail: String, fix: String) -> Self {
        Self {
            check,
            ok: false,
            checked: true,
            detail,
            fix: Some(fix),
        }
    }

    fn unchecked(check: &'static str, detail: String) -> Self {
        Self {
            check,
            ok: true,
            checked: false,
            detail,
            fix: None,
        }
    }
}

impl TcClient {
    /// Every property of each type in `types` that exists on the site
    /// (`Core-2011-06-Session/getTypeDescriptions`; unknown types are left out of the answer).
    pub async fn type_properties(
        &self,
        types: &[&str],
    ) -> Result<BTreeMap<String, BTreeSet<String>>, TcError> {
        let op = "Core-2011-06-Session/getTypeDescriptions";
        let answer = self.call(op, json!({"typeNames": types})).await?;
        let Some(list) = answer["types"].as_array() else {
            return Err(TcError::Unexpected {
                operation: op.to_owned(),
                detail: "no types array".into(),
            });
        };
        Ok(list
            .iter()
            .filter_map(|t| {
                let name = t["name"].as_str()?.to_owned();
                let props = t["propertyDescriptors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["name"].as_str().map(str::to_owned))
                    .collect();
                Some((name, props))
            })
            .collect())
    }

    /// Checks the site against `read` (and `feedback`), read-only: each part on its own (the
    /// saved query, what it finds of each type, the server's UTC offset, each type's
    /// properties, the revision rule, opening one plan), one [`Finding`] each, every one made
    /// whatever another found. An operation the server does not have is "cannot check on this
    /// server" ([`Finding::checked`] false) and, where another verified route exists, checked
    /// that way instead (a plan type's properties read from one plan with `getProperties`).
    /// `Err` only when Teamcenter cannot be asked at all (no session, no connection).
    pub async fn check_site(
        &self,
        read: &ReadConfig,
        feedback: Option<&FeedbackConfig>,
    ) -> Result<Vec<Finding>, TcError> {
        let mut out = Vec::new();
        if let ChangeQuery::SavedQuery {
            name,
            type_entry,
            modified_after_entry,
        } = &read.change_query
        {
            match self.describe_query(name).await {
                Ok((_, entries)) => {
                    let missing: Vec<&String> = [type_entry, modified_after_entry]
                        .into_iter()
                        .filter(|e| !entries.contains(e))
                        .collect();
                    if missing.is_empty() {
                        out.push(Finding::ok(
                            "saved-query",
                            format!("`{name}` has the entries `{type_entry}` and `{modified_after_entry}`"),
                        ));
                    } else {
                        out.push(Finding::fail(
                            "saved-query",
                            format!(
                                "`{name}` has no entry {}; its entries are {}",
                                missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", "),
                                entries.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
                            ),
                            "in Query Builder add the clauses `object_type =` and `last_mod_date >=` to the query, or set [teamcenter.read] type_entry / modified_after_entry to the entry names above (they are localized)".into(),
                        ));
                    }
                }
                Err(TcError::Site { detail }) => out.push(Finding::fail(
                    "saved-query",
                    detail,
                    format!("in Query Builder create `{name}` on ItemRevision with the clauses `Type` (object_type =) and `Modified After` (last_mod_date >=), or set [teamcenter.read] query = \"business_object\""),
                )),
                Err(e) if cannot_ask(&e) => return Err(e),
                Err(e) => out.push(Finding::fail(
                    "saved-query",
                    format!("`{name}`: {e}"),
                    "see the message: the server refused to describe the query".into(),
                )),
            }
        }

        // Each configured type: the change query finds at least one (a type that matches
        // nothing would sync nothing, every cycle). Reading it also shows the server's offset,
        // and gives an object to read properties from if the type descriptions cannot be had.
        let mut samples: BTreeMap<String, String> = BTreeMap::new();
        for t in &read.process_types {
            let mut one = read.clone();
            one.process_types = vec![t.clone()];
            match self.changed_plans_limited(&one, 1).await {
                Ok(plans) if plans.is_empty() => out.push(Finding::fail(
                    "query-finds",
                    format!("the change query finds no `{t}`"),
                    format!("check that `{t}` is the site's plan *revision* type (e.g. `MEProcessRevision`, not `MEProcess`), that the saved query's type clause accepts it, and that the service user can read such objects"),
                )),
                Ok(plans) => {
                    let p = &plans[0];
                    samples.insert(t.clone(), p.uid.clone());
                    out.push(Finding::ok(
                        "query-finds",
                        format!("the change query finds `{t}` objects (e.g. {} rev {})", p.id, p.revision),
                    ));
                }
                Err(e) if cannot_ask(&e) => return Err(e),
                Err(e) => out.push(Finding::fail(
                    "query-finds",
                    format!("`{t}`: {e}"),
                    "see the saved-query line above".into(),
                )),
            }
        }
        if !samples.is_empty() {
            out.push(match (self.offset_disagreement(read), self.server_utc_offsets()) {
                (Some(why), _) => Finding::fail(
                    "utc-offset",
                    why,
                    "remove `utc_offset_minutes` from [teamcenter.read] (the default, \"auto\", reads the server's offset from its dates)".into(),
                ),
                (None, Some((lo, hi))) => Finding::ok(
                    "utc-offset",
                    if lo == hi {
                        format!("the server's dates are in UTC{}{:02}:{:02}", if lo < 0 { '-' } else { '+' }, lo.abs() / 60, lo.abs() % 60)
                    } else {
                        format!("the server's dates are in UTC offsets {lo} to {hi} min (daylight saving): queries use {lo}")
                    },
                ),
                (None, None) => Finding::ok("utc-offset", "the server's dates carry no offset to check".into()),
            });
        }

        let f = &read.fields;
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut want = |t: &str, props: &[&String]| {
            wanted
                .entry(t.to_owned())
                .or_default()
                .extend(props.iter().map(|p| (*p).clone()));
        };
        let mut plan_props = vec![
            &f.plan_id,
            &f.plan_revision,
            &f.plan_name,
            &f.last_modified,
            &f.release_status,
        ];
        if let Some(p) = &f.plant_property {
            plan_props.push(p);
        }
        for t in &read.process_types {
            want(t, &plan_props);
        }
        let line_props = [
            &f.op_id,
            &f.op_name,
            &f.sequence,
            &f.occurrence,
            &f.reference_id,
        ];
        let op_props = [&f.allocated_time, &f.work_area, &f.equipment, &f.consumed];
        for t in &read.operation_types {
            want(t, &line_props);
            want(t, &op_props);
        }
        let relations: Vec<&String> = read.work_instruction_relations.iter().collect();
        want("MEOPRevision", &relations);
        let mut feedback_props = Vec::new();
        if let Some(fb) = feedback {
            feedback_props = fb.properties().into_iter().map(str::to_owned).collect();
            let refs: Vec<&String> = feedback_props.iter().collect();
            want(&fb.type_name, &refs);
        }
        let names: Vec<&str> = wanted.keys().map(String::as_str).collect();
        let site = match self.type_properties(&names).await {
            Ok(site) => Some(site),
            Err(e) if cannot_ask(&e) => return Err(e),
            Err(e) => {
                // This server cannot describe types: read a plan type's properties from one
                // plan instead; the others cannot be checked here.
                for (t, props) in &wanted {
                    let finding = match samples.get(t) {
                        Some(uid) => self.properties_of_one(t, uid, props).await?,
                        None => Finding::unchecked(
                            "types",
                            format!(
                                "`{t}`: cannot check on this server (getTypeDescriptions: {e}); its properties are checked when the sync reads them"
                            ),
                        ),
                    };
                    out.push(finding);
                }
                None
            }
        };
        for (t, props) in wanted.iter().filter(|_| site.is_some()) {
            let Some(have) = site.as_ref().and_then(|s| s.get(t)) else {
                out.push(Finding::fail(
                    "types",
                    format!("the type `{t}` does not exist on this site"),
                    format!("deploy the template that defines `{t}` (Manufacturing Process Planner for the Mfg0/ME types), or configure the site's own type"),
                ));
                continue;
            };
            let missing: BTreeSet<&String> = props.iter().filter(|p| !have.contains(*p)).collect();
            let is_feedback = feedback.is_some_and(|fb| &fb.type_name == t);
            if missing.is_empty() {
                out.push(Finding::ok(
                    "types",
                    format!(
                        "`{t}` has {}",
                        props
                            .iter()
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .map(|p| format!("`{p}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            } else {
                let list = missing
                    .iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let fix = if is_feedback && missing.iter().all(|m| feedback_props.contains(m)) {
                    format!(
                        "in BMIDE add the string properties {list} to `{t}` (site-defined feedback properties; the service user needs write access), or change [teamcenter.feedback]"
                    )
                } else {
                    format!(
                        "set [teamcenter.read.properties] to this site's property names for {list}, or add them in BMIDE to `{t}`"
                    )
                };
                out.push(Finding::fail(
                    "types",
                    format!("`{t}` has no property {list}"),
                    fix,
                ));
            }
        }

        let named_rule = match (&read.window, &read.current) {
            (
                WindowMode::BomWindows {
                    revision_rule: Some(rule),
                },
                _,
            )
            | (
                _,
                CurrentRevision::ByRule {
                    revision_rule: Some(rule),
                },
            ) => Some(rule),
            _ => None,
        };
        if let Some(rule) = named_rule {
            match self.revision_rule(rule).await {
                Ok(_) => out.push(Finding::ok("revision-rule", format!("`{rule}` exists"))),
                Err(TcError::Site { detail }) => out.push(Finding::fail(
                    "revision-rule",
                    detail,
                    "set [teamcenter.read] revision_rule to one of the rules above, or create it in Structure Manager".into(),
                )),
                Err(e) if cannot_ask(&e) => return Err(e),
                Err(e) => out.push(Finding::unchecked(
                    "revision-rule",
                    format!("`{rule}`: cannot check on this server ({e})"),
                )),
            }
        }

        if out.iter().all(|f| f.ok) {
            out.push(match self.sample_plan(read).await {
                Ok(Some((plan, ops, docs))) => Finding::ok(
                    "open-process",
                    format!("opened {} rev {} ({}): {ops} operation(s), {docs} work instruction(s); window closed", plan.id, plan.revision, plan.name),
                ),
                Ok(None) => Finding::fail(
                    "open-process",
                    "the change query found no process revision to open".into(),
                    "check that the service user can read MEProcessRevision objects (its group's access rules) and that [teamcenter.read] types names the site's plan types".into(),
                ),
                Err(e) if cannot_ask(&e) => return Err(e),
                Err(e) => Finding::fail(
                    "open-process",
                    e.to_string(),
                    "give the service user read access to process plans and the Manufacturing Process Planner license, or check [teamcenter.read] window".into(),
                ),
            });
        } else {
            // Opening a plan through a mapping that is known wrong would only add confusing
            // errors: said, not tried.
            out.push(Finding::unchecked(
                "open-process",
                "not tried: a line above failed; fix it first".into(),
            ));
        }
        Ok(out)
    }

    /// The `types` finding for `t` from one of its objects (`uid`), read with `getProperties`:
    /// the route where the server cannot describe types.
    async fn properties_of_one(
        &self,
        t: &str,
        uid: &str,
        props: &[String],
    ) -> Result<Finding, TcError> {
        let op = "Core-2006-03-DataManagement/getProperties";
        let wanted: BTreeSet<&String> = props.iter().collect();
        let answer = match self
            .call(op, json!({"objects": [{"uid": uid}], "attributes": wanted}))
            .await
        {
            Ok(a) => a,
            Err(e) if cannot_ask(&e) => return Err(e),
            Err(e) => {
                return Ok(Finding::fail(
                    "types",
                    format!("`{t}` (read from {uid}, the server cannot describe types): {e}"),
                    format!(
                        "set [teamcenter.read.properties] to this site's property names, or add them in BMIDE to `{t}`"
                    ),
                ));
            }
        };
        let sd = match crate::wire::ServiceData::parse(&answer, op) {
            Ok(sd) => sd,
            Err(e) => {
                return Ok(Finding::unchecked(
                    "types",
                    format!("`{t}`: cannot check on this server ({e})"),
                ));
            }
        };
        let have = sd.objects.get(uid).map(|o| &o.props);
        let missing: Vec<String> = wanted
            .iter()
            .filter(|p| !have.is_some_and(|h| h.contains_key(p.as_str())))
            .map(|p| format!("`{p}`"))
            .collect();
        Ok(if missing.is_empty() && sd.partial_errors.is_empty() {
            Finding::ok(
                "types",
                format!(
                    "`{t}` has {} (read from one plan: the server cannot describe types)",
                    wanted
                        .iter()
                        .map(|p| format!("`{p}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        } else {
            Finding::fail(
                "types",
                format!(
                    "`{t}` has no property {} (read from one plan)",
                    missing.join(", ")
                ),
                format!(
                    "set [teamcenter.read.properties] to this site's property names, or add them in BMIDE to `{t}`"
                ),
            )
        })
    }
}

/// Whether `e` means Teamcenter cannot be asked at all (no connection, no session): the check
/// stops there, since every other part would say the same.
fn cannot_ask(e: &TcError) -> bool {
    matches!(
        e,
        TcError::Http(_) | TcError::InvalidCredentials { .. } | TcError::SessionRejected { .. }
    )
}
