//! Windows on a plan's bill of process: opening them (BOM windows or structure contexts, by a
//! revision rule), closing them on every path, and the closes that failed (orphans) retried
//! before the next open in the same session.

use serde_json::{Value, json};

use crate::client::TcClient;
use crate::error::TcError;
use crate::site::{ReadConfig, WindowMode};
use crate::wire::{self, PartialError, Props, ServiceData};

use super::*;

/// A `revRuleConfigInfo` configuring by `rule` (see [`TcClient::rule_ref`]) today, with no unit,
/// end item or override folder (S11 `RevisionRuleConfigInfo`).
pub(crate) fn rev_rule_config(rule: &Value) -> Value {
    json!({"clientId": "", "revRule": rule,
        "props": {"unitNo": -1, "date": "0001-01-01T00:00:00", "today": true, "endItem": "",
            "endItemRevision": "", "overrideFolders": []}})
}

/// Open windows of one traversal round.
#[derive(Debug, Clone)]
pub(crate) struct Opened {
    /// What to close: top lines (contexts) or window UIDs (BOM windows).
    pub(crate) handles: Vec<String>,
    /// Plan UID → its top line.
    pub(crate) tops: Vec<(String, String)>,
    /// Plans that could not be opened.
    pub(crate) skipped: Vec<String>,
    pub(crate) partial_errors: Vec<PartialError>,
    /// The session generation the windows belong to.
    pub(crate) generation: Option<u64>,
    /// The open was sent again after a lost answer: retire the session after the traversal.
    pub(crate) retire: bool,
}

/// A window close that failed: tried again before the next open in the same session (once); if
/// that fails too, the session is retired so that the windows die with it. Windows of a session
/// that has since been replaced died with it and are forgotten.
#[derive(Debug, Clone)]
pub(crate) struct Orphan {
    pub(crate) generation: Option<u64>,
    pub(crate) operation: &'static str,
    pub(crate) body: Value,
}

/// Closes windows when dropped without [`WindowGuard::close`] (an error or a cancelled future),
/// in a background task; never with a session other than the one that opened them.
#[derive(Debug)]
pub(crate) struct WindowGuard {
    pub(crate) tc: TcClient,
    pub(crate) contexts: bool,
    pub(crate) handles: Vec<String>,
    pub(crate) generation: Option<u64>,
}

impl WindowGuard {
    pub(crate) fn request(&self) -> (&'static str, Value) {
        if self.contexts {
            (
                "Manufacturing-2011-06-DataManagement/closeContexts",
                json!({"contexts": self.handles}),
            )
        } else {
            (
                "Cad-2007-01-StructureManagement/closeBOMWindows",
                json!({"bomWindows": self.handles}),
            )
        }
    }

    /// Whether the windows' session is still the one in use (else they died or will die with it).
    pub(crate) fn same_session(&self) -> bool {
        self.tc.window_generation() == self.generation
    }

    pub(crate) async fn close(mut self) {
        if self.handles.is_empty() || !self.same_session() {
            self.handles.clear();
            return;
        }
        let (op, body) = self.request();
        let body_again = body.clone();
        self.handles.clear();
        let bound = self.tc.windows_follow_token();
        match self
            .tc
            .call_under(op, body, json!({}), bound)
            .await
            .map(|(a, _)| a)
        {
            Ok(answer) => {
                if let Ok(sd) = ServiceData::parse(&answer, op)
                    && !sd.partial_errors.is_empty()
                {
                    tracing::warn!(errors = %describe(&sd.partial_errors), "closing Teamcenter windows reported errors");
                }
            }
            Err(e) if session_lost(&e) => {
                tracing::debug!("the windows died with their session before the close");
            }
            Err(e) => {
                tracing::warn!(error = %e, "closing Teamcenter windows failed; trying again before the next open");
                self.tc.remember_orphan(self.generation, op, body_again);
            }
        }
    }
}

impl Drop for WindowGuard {
    fn drop(&mut self) {
        if self.handles.is_empty() || !self.same_session() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (op, body) = self.request();
        let tc = self.tc.clone();
        let generation = self.generation;
        rt.spawn(async move {
            let bound = tc.windows_follow_token();
            if let Err(e) = tc.call_under(op, body.clone(), json!({}), bound).await
                && !session_lost(&e)
            {
                tracing::warn!(error = %e, "closing Teamcenter windows after an interrupted read failed; trying again before the next open");
                tc.remember_orphan(generation, op, body);
            }
        });
    }
}

impl TcClient {
    /// The session generation windows opened now belong to (`None` behind a gateway).
    pub(crate) fn window_generation(&self) -> Option<u64> {
        self.generation().filter(|_| self.windows_follow_token())
    }

    /// Replaces the session between traversals (windows that cannot be closed die with the old
    /// one, logged out shortly after the new login). The token is swapped out at once, so the next
    /// call waits for the new session instead of mixing two.
    /// Only while `generation` (the session the windows belong to) is still the current one: a
    /// session that has already been replaced took its windows with it.
    pub(crate) fn retire_session(&self, generation: Option<u64>) {
        if !self.windows_follow_token() {
            return;
        }
        let manager = self.middleware().manager();
        if let Some(g) = generation.filter(|g| self.generation() == Some(*g))
            && manager.invalidate(g) == shiftkey_auth::Invalidation::TooSoon
        {
            manager.refresh_now();
        }
    }

    pub(crate) fn remember_orphan(
        &self,
        generation: Option<u64>,
        operation: &'static str,
        body: Value,
    ) {
        if let Ok(mut o) = self.orphans.lock() {
            o.push(Orphan {
                generation,
                operation,
                body,
            });
        }
    }

    /// Tries the failed closes of this session once more; if one fails again, retires the
    /// session (a new login now; the old one, and its windows, are logged out shortly).
    pub(crate) async fn close_orphans(&self) {
        loop {
            // One at a time: a cancelled future (a stop) loses no other orphan.
            let next = match self.orphans.lock() {
                Ok(mut o) => o.pop(),
                Err(_) => return,
            };
            let Some(o) = next else { return };
            // Checked before each close: their session may have been replaced meanwhile, and its
            // windows died with it (their lines must never be sent under another session).
            if o.generation != self.window_generation() {
                continue;
            }
            let bound = self.windows_follow_token();
            match self.call_under(o.operation, o.body, json!({}), bound).await {
                Ok(_) => tracing::info!("windows a failed close left open are closed now"),
                Err(e) if session_lost(&e) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "windows cannot be closed; retiring the session so that they do not outlive it");
                    self.retire_session(o.generation);
                }
            }
        }
    }

    /// Opens one window per plan in `group`.
    pub(crate) async fn open(
        &self,
        group: &[ProcessPlan],
        cfg: &ReadConfig,
    ) -> Result<Opened, TcError> {
        self.close_orphans().await;
        let (op, body, contexts) = match &cfg.window {
            WindowMode::Contexts => {
                let settings = json!({"type": "", "stringProps": {}, "tagProps": {}, "boolProps": {}, "intProps": {},
                    "dateProps": {}, "doubleProps": {}, "floatProps": {}, "stringArrayProps": {}, "tagArrayProps": {},
                    "boolArrayProps": {}, "intArrayProps": {}, "dateArrayProps": {}, "doubleArrayProps": {},
                    "floatArrayProps": {}, "compoundCreateInput": {}});
                let input: Vec<Value> = group
                    .iter()
                    .map(|p| json!({"object": {"uid": p.uid, "type": "MEProcessRevision"}, "openViews": false,
                        "openAssociatedContexts": false, "contextSettings": settings}))
                    .collect();
                (
                    "Manufacturing-2011-06-DataManagement/openContexts",
                    json!({"input": input}),
                    true,
                )
            }
            WindowMode::BomWindows { revision_rule } => {
                let rule = self.rule_ref(revision_rule.as_deref()).await?;
                let info: Vec<Value> = group
                    .iter()
                    .map(|p| json!({"clientId": p.uid, "item": "", "itemRev": {"uid": p.uid, "type": "MEProcessRevision"}, "bomView": "",
                        "revRuleConfigInfo": rev_rule_config(&rule),
                        "objectForConfigure": "", "activeAssemblyArrangement": ""}))
                    .collect();
                (
                    "Cad-2007-01-StructureManagement/createBOMWindows",
                    json!({"info": info}),
                    false,
                )
            }
        };
        let (answer, generation, retire, partial_errors) = self.open_windows(op, body).await?;
        let mut opened = Opened {
            handles: Vec::new(),
            tops: Vec::new(),
            skipped: Vec::new(),
            partial_errors,
            generation,
            retire,
        };
        for o in answer["output"].as_array().into_iter().flatten() {
            if contexts {
                for c in o["contexts"].as_array().into_iter().flatten() {
                    if let (Some(top), Some(plan)) =
                        (wire::ref_uid(&c["context"]), wire::ref_uid(&c["object"]))
                    {
                        opened.handles.push(top.to_owned());
                        opened.tops.push((plan.to_owned(), top.to_owned()));
                    }
                }
            } else if let (Some(window), Some(top), Some(plan)) = (
                wire::ref_uid(&o["bomWindow"]),
                wire::ref_uid(&o["bomLine"]),
                o["clientId"].as_str(),
            ) {
                opened.handles.push(window.to_owned());
                opened.tops.push((plan.to_owned(), top.to_owned()));
            }
        }
        for p in group {
            if !opened.tops.iter().any(|(plan, _)| *plan == p.uid) {
                tracing::warn!(plan = %p.id, uid = %p.uid, "Teamcenter could not open the plan; it is left out of this cycle");
                opened.skipped.push(p.uid.clone());
            }
        }
        Ok(opened)
    }

    /// Sends a window open (`openContexts`, `createBOMWindows`): the answer, the session
    /// generation the windows belong to, whether the open was sent again after a lost answer
    /// (retire the session once the windows it can name are closed), and the open's partial
    /// errors.
    ///
    /// An open whose answer was lost (a timeout, a cut connection) may have opened windows nobody
    /// can name to close; they would live as long as the session. Then the session is retired: a
    /// new login now, and the old one is logged out (its windows with it) once its requests are
    /// done. A refusal (429, 503) opened nothing and is simply retried; an answered exception or
    /// an open circuit opened nothing either.
    pub(crate) async fn open_windows(
        &self,
        op: &'static str,
        body: Value,
    ) -> Result<(Value, Option<u64>, bool, Vec<PartialError>), TcError> {
        let sent_under = self.generation();
        let (answer, under, retire) = match self.call_creating(op, body).await {
            Ok(v) => v,
            Err(e) => {
                if e.answer_lost() {
                    tracing::warn!(error = %e, "an answer to a window open was lost; retiring the session so that no window outlives it");
                    self.retire_session(sent_under);
                }
                return Err(e);
            }
        };
        let generation = under.filter(|_| self.windows_follow_token());
        // The windows exist now: an odd ServiceData must not lose track of them.
        let partial_errors = ServiceData::parse(&answer, op)
            .map(|sd| sd.partial_errors)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the open's ServiceData did not parse");
                Vec::new()
            });
        Ok((answer, generation, retire, partial_errors))
    }

    /// The `revRule` of a `revRuleConfigInfo`: the named rule's UID, or `""` (the user's default).
    pub(crate) async fn rule_ref(&self, name: Option<&str>) -> Result<Value, TcError> {
        Ok(match name {
            Some(r) => json!({"uid": self.revision_rule(r).await?}),
            None => json!(""),
        })
    }

    /// The UID of the revision rule named `name` (`getRevisionRules`).
    pub async fn revision_rule(&self, name: &str) -> Result<String, TcError> {
        let op = "Cad-2007-01-StructureManagement/getRevisionRules";
        let answer = self
            .call_with_policy(
                op,
                serde_json::json!({}),
                wire::policy(&[("RevisionRule", vec![("object_name", false)])]),
            )
            .await?;
        let sd = ServiceData::parse(&answer, op)?;
        let rules: Vec<(String, String)> = answer["output"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| wire::ref_uid(&r["revRule"]))
            .map(|u| {
                let n = sd
                    .objects
                    .get(u)
                    .and_then(|o| Props::of(o).optional("object_name"))
                    .unwrap_or_default();
                (u.to_owned(), n)
            })
            .collect();
        rules
            .iter()
            .find(|(_, n)| n == name)
            .map(|(u, _)| u.clone())
            .ok_or_else(|| TcError::Site {
                detail: format!(
                    "no revision rule is named `{name}`; the site has {}",
                    rules
                        .iter()
                        .map(|(_, n)| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    /// A call inside the windows: `None` when the windows' session died under it (it is then
    /// not resent) or it was answered under another session.
    pub(crate) async fn in_window(
        &self,
        op: &str,
        body: Value,
        policy: Value,
        generation: Option<u64>,
    ) -> Result<Option<(Value, ServiceData)>, TcError> {
        // The session already changed (a proactive or reactive re-login): the lines are stale.
        if self.window_generation() != generation {
            return Ok(None);
        }
        let bound = self.windows_follow_token();
        let (answer, under) = match self.call_under(op, body, policy, bound).await {
            Ok(r) => r,
            Err(e) if session_lost(&e) || self.window_generation() != generation => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if under.filter(|_| bound) != generation {
            return Ok(None);
        }
        let sd = ServiceData::parse(&answer, op)?;
        if !sd.partial_errors.is_empty() {
            return Err(unexpected(op, describe(&sd.partial_errors)));
        }
        Ok(Some((answer, sd)))
    }
}
