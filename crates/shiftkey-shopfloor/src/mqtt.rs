//! [`MqttSink`]: one retained, ISA-95-shaped JSON message per process revision, QoS 1, published
//! (and acknowledged by the broker) **before** the watermark advances in the SQL sink beside it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::{ApplyReport, Feedback, ProcessRecord, Sink, SinkError, SqlSink};

/// The message for a process revision: an ISA-95 operations definition with its segments.
#[must_use]
pub fn isa95(p: &ProcessRecord) -> Value {
    let published = p
        .last_modified
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({"OperationsDefinition": {
        "ID": p.id,
        "Version": p.revision,
        "Description": p.name,
        "HierarchyScope": p.plant,
        "OperationsType": "Production",
        "PublishedDate": published,
        "Released": p.released,
        "Obsolete": p.obsolete,
        "SourceUID": p.uid,
        "OperationsSegment": p.operations.iter().map(|o| json!({
            "ID": o.id,
            "Sequence": o.sequence,
            "Description": o.name,
            "HierarchyScope": o.work_area,
            "Duration": o.allocated_time_s.map(|s| format!("PT{s}S")),
            "WorkInstruction": o.work_instructions.iter().map(|d| json!({"ID": d.uid, "Description": d.name, "Type": d.kind})).collect::<Vec<_>>(),
            "EquipmentSpecification": o.resources.iter().map(|r| json!({"EquipmentID": r})).collect::<Vec<_>>(),
            "MaterialSpecification": o.consumed_parts.iter().map(|m| json!({"MaterialDefinitionID": m, "Use": "Consumed"})).collect::<Vec<_>>(),
            "Obsolete": o.obsolete,
            "SourceUID": o.uid,
        })).collect::<Vec<_>>(),
    }})
}

/// The topic of a process revision: `{prefix}/{plant}/process/{id}`.
#[must_use]
pub fn topic(prefix: &str, p: &ProcessRecord) -> String {
    let clean = |s: &str| s.replace(['/', '+', '#'], "_");
    format!("{prefix}/{}/process/{}", clean(&p.plant), clean(&p.id))
}

/// MQTT publishing in front of a [`SqlSink`] that keeps the watermark, the content hashes and the
/// feedback outbox.
#[derive(Debug, Clone)]
pub struct MqttSink {
    client: AsyncClient,
    prefix: String,
    store: Arc<SqlSink>,
    acked: Arc<AtomicU64>,
    ack_notify: Arc<Notify>,
    published: Arc<AtomicU64>,
    ack_timeout: Duration,
    _eventloop: Arc<tokio::task::JoinHandle<()>>,
}

impl MqttSink {
    /// Connects to the broker at `host:port` as `client_id`, publishing under `prefix`, with
    /// `store` keeping the watermark.
    #[must_use]
    pub fn new(host: &str, port: u16, client_id: &str, prefix: &str, store: Arc<SqlSink>) -> Self {
        let mut opts = MqttOptions::new(client_id, host, port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(false);
        let (client, mut eventloop) = AsyncClient::new(opts, 256);
        let acked = Arc::new(AtomicU64::new(0));
        let ack_notify = Arc::new(Notify::new());
        let (a, n) = (Arc::clone(&acked), Arc::clone(&ack_notify));
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::AcqRel);
                        n.notify_waiters();
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "MQTT connection error; reconnecting");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Self {
            client,
            prefix: prefix.trim_end_matches('/').to_owned(),
            store,
            acked,
            ack_notify,
            published: Arc::new(AtomicU64::new(0)),
            ack_timeout: Duration::from_secs(30),
            _eventloop: Arc::new(task),
        }
    }

    fn mqtt_error(what: String) -> SinkError {
        SinkError {
            what,
            source: sqlx::Error::Protocol("MQTT".into()),
        }
    }
}

#[async_trait]
impl Sink for MqttSink {
    async fn apply(
        &self,
        batch: &[ProcessRecord],
        watermark: SystemTime,
    ) -> Result<ApplyReport, SinkError> {
        for p in batch {
            let payload = isa95(p).to_string();
            self.client
                .publish(topic(&self.prefix, p), QoS::AtLeastOnce, true, payload)
                .await
                .map_err(|e| Self::mqtt_error(format!("publish {}: {e}", p.uid)))?;
            self.published.fetch_add(1, Ordering::AcqRel);
        }
        // Every message of this batch (and before) acknowledged by the broker before the watermark moves.
        let target = self.published.load(Ordering::Acquire);
        let wait = async {
            loop {
                let notified = self.ack_notify.notified();
                if self.acked.load(Ordering::Acquire) >= target {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(self.ack_timeout, wait)
            .await
            .map_err(|_| {
                Self::mqtt_error(format!(
                    "the broker did not acknowledge {} messages within {:?}",
                    batch.len(),
                    self.ack_timeout
                ))
            })?;
        self.store.apply(batch, watermark).await
    }

    async fn watermark(&self) -> Result<Option<SystemTime>, SinkError> {
        self.store.watermark().await
    }

    async fn reconciled(&self) -> Result<Option<SystemTime>, SinkError> {
        self.store.reconciled().await
    }

    async fn mark_reconciled(&self, at: SystemTime) -> Result<(), SinkError> {
        self.store.mark_reconciled(at).await
    }

    async fn stored_versions(
        &self,
        uids: &[String],
    ) -> Result<std::collections::BTreeMap<String, SystemTime>, SinkError> {
        self.store.stored_versions(uids).await
    }

    async fn pending_feedback(&self, limit: i64) -> Result<Vec<Feedback>, SinkError> {
        self.store.pending_feedback(limit).await
    }

    async fn mark_feedback_sent(&self, id: i64) -> Result<(), SinkError> {
        self.store.mark_feedback_sent(id).await
    }
}
