//! Feedback written back to site-defined properties, idempotently (a key records the newest
//! outbox row applied).

use serde_json::{Value, json};

use crate::client::TcClient;
use crate::error::TcError;
use crate::site::{FeedbackConfig, FeedbackFormat};
use crate::wire::{Props, ServiceData};

use super::*;

/// The row a stored key (or JSON document) says was applied; `None` for anything else (a key
/// written by someone else counts as no row).
pub(crate) fn applied_row(value: &str, json: bool) -> Option<i64> {
    if json {
        serde_json::from_str::<Value>(value).ok()?["row"].as_i64()
    } else {
        value.strip_prefix(FEEDBACK_KEY_PREFIX)?.parse().ok()
    }
}

impl TcClient {
    /// Writes the feedback row `row` (its outbox id) to the operation revision `uid`, with the
    /// site-defined properties of `cfg`; returns whether it wrote. The key property records the
    /// newest row applied (`shiftkey-feedback-<row>`, or `"row"` in the JSON document), and it is
    /// read first: a row not newer than the one recorded is not written again. So replaying any
    /// number of rows (a push cut off between Teamcenter and the outbox) writes no row twice,
    /// and the server keeps the newest row's values. Every field goes out with the key in one
    /// `setProperties` (a missing cycle time clears its property instead of leaving an older
    /// row's). A property the site lacks is a [`TcError::Site`] naming it.
    pub async fn write_feedback(
        &self,
        cfg: &FeedbackConfig,
        uid: &str,
        values: FeedbackValues<'_>,
        row: i64,
    ) -> Result<bool, TcError> {
        let answer = self
            .call(
                GET_PROPERTIES,
                json!({"objects": [{"uid": uid}], "attributes": [cfg.key_property]}),
            )
            .await?;
        let sd = ServiceData::parse(&answer, GET_PROPERTIES)?;
        if !sd.partial_errors.is_empty() {
            return Err(TcError::Site {
                detail: format!(
                    "reading the feedback key `{}` of {uid}: {}",
                    cfg.key_property,
                    describe(&sd.partial_errors)
                ),
            });
        }
        let json = cfg.format == FeedbackFormat::Json;
        let applied = sd
            .objects
            .get(uid)
            .map(|o| Props::of(o).list(&cfg.key_property))
            .unwrap_or_default()
            .iter()
            .filter_map(|v| applied_row(v, json))
            .max();
        if applied.is_some_and(|a| a >= row) {
            return Ok(false);
        }
        let key = format!("{FEEDBACK_KEY_PREFIX}{row}");
        let vec = if json {
            let doc = json!({
                "key": key,
                "row": row,
                "completed_count": values.completed_count,
                "actual_cycle_time_s": values.actual_cycle_time_s,
                "deviation": values.deviation,
            });
            vec![json!({"name": cfg.key_property, "values": [doc.to_string()]})]
        } else {
            let mut vec = vec![json!({"name": cfg.key_property, "values": [key]})];
            if let Some(p) = &cfg.completed_count {
                vec.push(json!({"name": p, "values": [values.completed_count.to_string()]}));
            }
            if let Some(p) = &cfg.actual_cycle_time {
                let t = values
                    .actual_cycle_time_s
                    .map(|t| format!("{t}"))
                    .unwrap_or_default();
                vec.push(json!({"name": p, "values": [t]}));
            }
            if let Some(p) = &cfg.deviation {
                vec.push(json!({"name": p, "values": [values.deviation]}));
            }
            vec
        };
        let op = "Core-2010-09-DataManagement/setProperties";
        let answer = self
            .write(
                op,
                json!({"info": [{"object": {"uid": uid}, "timestamp": "", "vecNameVal": vec}], "options": []}),
            )
            .await?;
        let sd = ServiceData::parse(&answer, op)?;
        if !sd.partial_errors.is_empty() {
            return Err(TcError::Site {
                detail: format!(
                    "writing feedback to {uid}: {}",
                    describe(&sd.partial_errors)
                ),
            });
        }
        Ok(true)
    }
}
