//! Which revision of an item the shop floor runs: the one the site's revision rule configures,
//! asked of the server (`docs/teamcenter-reads.md` §5.1, §5.2). A plan's older revisions come
//! back from the change query as plans of their own; without this, each would be offered as work.
//!
//! Calls, for the items of a batch of plans: `getRevisionRules` (only for a named rule),
//! `createBOMWindows` with the *item* and the rule (the server picks the revision, as S4/S12 open
//! items), `getProperties` `bl_revision` on the top lines, `closeBOMWindows`. The windows are
//! closed on every path, and an answer under another session starts the round again, as for a
//! bill-of-process traversal.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::client::TcClient;
use crate::error::{ErrorValue, TcError};
use crate::mfg::{GET_PROPERTIES, ProcessPlan, WindowGuard, rev_rule_config};
use crate::site::{CurrentRevision, ReadConfig};
use crate::wire::{PartialError, Props};

const CREATE: &str = "Cad-2007-01-StructureManagement/createBOMWindows";

/// Which revision of each item is current, as [`TcClient::current_revisions`] found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurrentRevisions {
    /// Item UID → the revision its rule configures.
    pub by_item: BTreeMap<String, String>,
    /// Items the rule configured no revision of (the server's partial error says why), and plans
    /// that name no item: none of their revisions is current.
    pub unresolved: Vec<PartialError>,
    /// [`CurrentRevision::Every`]: every revision is current.
    every: bool,
}

impl CurrentRevisions {
    /// Every revision is current ([`CurrentRevision::Every`]).
    #[must_use]
    pub fn every() -> Self {
        Self {
            every: true,
            ..Self::default()
        }
    }

    /// Whether `plan` is the current revision of its item.
    ///
    /// ```
    /// use shiftkey_teamcenter::{CurrentRevisions, ProcessPlan};
    ///
    /// let plan = |uid: &str, revision: &str| ProcessPlan {
    ///     uid: uid.into(), id: "P01-PR0001".into(), revision: revision.into(), name: String::new(),
    ///     plant: String::new(), release_status: vec![], last_modified: std::time::SystemTime::UNIX_EPOCH,
    ///     obsolete: false, plan_type: "MEProcessRevision".into(), item_uid: Some("ITEM".into()),
    /// };
    /// let mut current = CurrentRevisions::default();
    /// current.by_item.insert("ITEM".into(), "REV-B".into());
    /// assert!(current.is_current(&plan("REV-B", "B")));
    /// assert!(!current.is_current(&plan("REV-A", "A")));
    /// assert!(CurrentRevisions::every().is_current(&plan("REV-A", "A")));
    /// ```
    #[must_use]
    pub fn is_current(&self, plan: &ProcessPlan) -> bool {
        self.every
            || plan
                .item_uid
                .as_ref()
                .and_then(|i| self.by_item.get(i))
                .is_some_and(|r| *r == plan.uid)
    }
}

impl CurrentRevisions {
    /// [`CurrentRevisions::is_current`] as the shop floor records it: `None` where no rule was
    /// asked ([`CurrentRevision::Every`]: every revision is offered).
    #[must_use]
    pub fn of(&self, plan: &ProcessPlan) -> Option<bool> {
        (!self.every).then(|| self.is_current(plan))
    }
}

/// The item type of a revision type (`MEProcessRevision` → `MEProcess`), Teamcenter's naming rule.
fn item_type(revision_type: &str) -> &str {
    match revision_type.strip_suffix("Revision") {
        Some(t) if !t.is_empty() && t != "Item" => t,
        _ => "Item",
    }
}

fn unresolved(uid: &str, message: String) -> PartialError {
    PartialError {
        uid: Some(uid.to_owned()),
        client_index: None,
        errors: vec![ErrorValue {
            code: 0,
            level: 3,
            message,
        }],
    }
}

impl TcClient {
    /// Which revision of each item of `plans` is current under `cfg.current`: for
    /// [`CurrentRevision::ByRule`] the server configures each item with the rule (windows of
    /// `cfg.window_batch` items at a time); for [`CurrentRevision::Every`] no call is made.
    ///
    /// # Errors
    /// A named rule the site does not have ([`TcError::Site`]), a failed call, or windows lost
    /// three times in a row to session changes.
    pub async fn current_revisions(
        &self,
        plans: &[ProcessPlan],
        cfg: &ReadConfig,
    ) -> Result<CurrentRevisions, TcError> {
        let CurrentRevision::ByRule { revision_rule } = &cfg.current else {
            return Ok(CurrentRevisions::every());
        };
        let mut out = CurrentRevisions::default();
        let mut items: BTreeMap<&str, &str> = BTreeMap::new();
        for p in plans {
            match &p.item_uid {
                Some(i) => {
                    items.insert(i, item_type(&p.plan_type));
                }
                None => out.unresolved.push(unresolved(
                    &p.uid,
                    format!(
                        "plan {} revision {} names no item (`items_tag`), so its current revision cannot be asked",
                        p.id, p.revision
                    ),
                )),
            }
        }
        if items.is_empty() {
            return Ok(out);
        }
        let rule = self.rule_ref(revision_rule.as_deref()).await?;
        let items: Vec<(&str, &str)> = items.into_iter().collect();
        for group in items.chunks(cfg.window_batch.max(1)) {
            const ATTEMPTS: u32 = 3;
            let mut attempt = 0;
            let (found, errors) = loop {
                attempt += 1;
                match self.configure(group, &rule, cfg).await? {
                    Some(r) => break r,
                    None if attempt < ATTEMPTS => tracing::info!(
                        attempt,
                        "the Teamcenter session changed while asking the revision rule; opening again"
                    ),
                    None => return Err(TcError::WindowLost { attempts: attempt }),
                }
            };
            out.by_item.extend(found);
            out.unresolved.extend(errors);
        }
        Ok(out)
    }

    /// One round: open a window per item, read the revision each top line shows, close. `None`:
    /// the session changed under the windows.
    async fn configure(
        &self,
        items: &[(&str, &str)],
        rule: &Value,
        cfg: &ReadConfig,
    ) -> Result<Option<(BTreeMap<String, String>, Vec<PartialError>)>, TcError> {
        self.close_orphans().await;
        let info: Vec<Value> = items
            .iter()
            .map(|(uid, t)| json!({"clientId": uid, "item": {"uid": uid, "type": t}, "itemRev": "", "bomView": "",
                "revRuleConfigInfo": rev_rule_config(rule),
                "objectForConfigure": "", "activeAssemblyArrangement": ""}))
            .collect();
        let (answer, generation, retire, mut errors) =
            self.open_windows(CREATE, json!({"info": info})).await?;
        let mut windows = Vec::new();
        let mut tops: Vec<(String, String)> = Vec::new();
        for o in answer["output"].as_array().into_iter().flatten() {
            // Every window that came back is closed, whatever else its entry lacks.
            if let Some(window) = crate::wire::ref_uid(&o["bomWindow"]) {
                windows.push(window.to_owned());
            }
            if let (Some(top), Some(item)) =
                (crate::wire::ref_uid(&o["bomLine"]), o["clientId"].as_str())
            {
                tops.push((item.to_owned(), top.to_owned()));
            }
        }
        let guard = WindowGuard {
            tc: self.clone(),
            contexts: false,
            handles: windows,
            generation,
        };
        let read = self.top_revisions(&tops, cfg, generation).await;
        guard.close().await;
        if retire {
            tracing::warn!(
                "a window open was sent again after a lost answer; retiring the session so that no window outlives it"
            );
            self.retire_session(generation);
        }
        let Some((found, mut unread)) = read? else {
            return Ok(None);
        };
        // Only items left without a current revision are reported, each once: with the server's
        // partial error about it where there is one (by UID or input index).
        let mut out = Vec::new();
        for (index, (item, _)) in items.iter().enumerate() {
            if found.contains_key(*item) {
                continue;
            }
            let ours = |e: &&PartialError| {
                e.uid.as_deref() == Some(*item) || e.client_index == i64::try_from(index).ok()
            };
            if let Some(pos) = unread.iter().position(|e| e.uid.as_deref() == Some(*item)) {
                out.push(unread.swap_remove(pos));
            } else if let Some(e) = errors.iter().find(ours) {
                out.push(PartialError {
                    uid: Some((*item).to_owned()),
                    ..e.clone()
                });
            } else {
                out.push(unresolved(
                    item,
                    "the revision rule's window for it did not open".to_owned(),
                ));
            }
        }
        errors.retain(|e| !out.iter().any(|o| o.errors == e.errors));
        for e in &errors {
            tracing::debug!("a partial error of the revision rule's windows: {e}");
        }
        Ok(Some((found, out)))
    }

    /// Item → the revision its top line shows (`bl_revision`), and the items whose line shows
    /// none (a revision the service user may not read). `None`: the session changed.
    async fn top_revisions(
        &self,
        tops: &[(String, String)],
        cfg: &ReadConfig,
        generation: Option<u64>,
    ) -> Result<Option<(BTreeMap<String, String>, Vec<PartialError>)>, TcError> {
        let mut out = BTreeMap::new();
        let mut unread = Vec::new();
        for chunk in tops.chunks(cfg.chunk.max(1)) {
            let lines: Vec<&str> = chunk.iter().map(|(_, l)| l.as_str()).collect();
            let body = json!({"objects": lines, "attributes": ["bl_revision"]});
            let Some((_, sd)) = self
                .in_window(GET_PROPERTIES, body, json!({}), generation)
                .await?
            else {
                return Ok(None);
            };
            for (item, line) in chunk {
                match sd
                    .objects
                    .get(line)
                    .and_then(|o| Props::of(o).refs("bl_revision").into_iter().next())
                {
                    Some(rev) => {
                        out.insert(item.clone(), rev);
                    }
                    // One odd item does not stop the others (nor the sync).
                    None => unread.push(unresolved(
                        item,
                        format!("the top line {line} of its window shows no `bl_revision`"),
                    )),
                }
            }
        }
        Ok(Some((out, unread)))
    }
}

#[cfg(test)]
mod tests {
    use super::item_type;

    #[test]
    fn an_item_type_is_its_revision_type_without_the_suffix() {
        assert_eq!(item_type("MEProcessRevision"), "MEProcess");
        assert_eq!(item_type("ItemRevision"), "Item");
        assert_eq!(item_type("Revision"), "Item");
        assert_eq!(item_type("S4_Plan"), "Item");
    }
}
