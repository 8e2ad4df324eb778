//! [`MqttSink`]: one retained, ISA-95-shaped JSON message per process revision, QoS 1 or 2,
//! published (and acknowledged by the broker) **before** the watermark advances in the SQL sink
//! beside it; over TCP or TLS, with a user name and password when the broker wants them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
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

/// The quality of service of the sink's messages. The watermark moves only once the broker has
/// acknowledged every message of a batch, so QoS 0 (never acknowledged) is not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MqttQos {
    /// QoS 1: acknowledged by `PUBACK`; a retry after a lost acknowledgement can deliver a
    /// message twice (harmless: messages are retained states, not events).
    #[default]
    AtLeastOnce,
    /// QoS 2: acknowledged by `PUBCOMP`, delivered once.
    ExactlyOnce,
}

/// TLS to the broker.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MqttTls {
    /// Trust the system's root certificates.
    SystemRoots,
    /// Trust only the certificates of this PEM text (a plant's own CA).
    CaPem(Vec<u8>),
}

impl std::fmt::Debug for MqttTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SystemRoots => f.write_str("SystemRoots"),
            Self::CaPem(pem) => write!(f, "CaPem({} bytes)", pem.len()),
        }
    }
}

/// Where and how an [`MqttSink`] publishes.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use shiftkey_shopfloor::{MqttQos, MqttSettings, MqttTls};
///
/// let settings = MqttSettings::new("broker.plant.example", 8883, "shiftkey-sync", "plant/shiftkey")
///     .with_tls(MqttTls::SystemRoots)
///     .with_credentials("sync", "from-a-secret-store")
///     .with_qos(MqttQos::ExactlyOnce)
///     .with_ack_timeout(Duration::from_secs(10));
/// assert!(!format!("{settings:?}").contains("from-a-secret-store"));
/// ```
#[derive(Clone)]
pub struct MqttSettings {
    host: String,
    port: u16,
    client_id: String,
    prefix: String,
    qos: MqttQos,
    tls: Option<MqttTls>,
    credentials: Option<(String, zeroize::Zeroizing<String>)>,
    ack_timeout: Duration,
}

impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("prefix", &self.prefix)
            .field("qos", &self.qos)
            .field("tls", &self.tls)
            .field("username", &self.credentials.as_ref().map(|(u, _)| u))
            .field("ack_timeout", &self.ack_timeout)
            .finish_non_exhaustive()
    }
}

impl MqttSettings {
    /// Plain TCP to `host:port` as `client_id`, publishing under `prefix`, QoS 1, no credentials,
    /// 30 s for the broker to acknowledge a batch.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        client_id: impl Into<String>,
        prefix: impl Into<String>,
    ) -> Self {
        Self {
            host: host.into(),
            port,
            client_id: client_id.into(),
            prefix: prefix.into(),
            qos: MqttQos::default(),
            tls: None,
            credentials: None,
            ack_timeout: Duration::from_secs(30),
        }
    }

    /// The quality of service (default QoS 1).
    #[must_use]
    pub fn with_qos(mut self, qos: MqttQos) -> Self {
        self.qos = qos;
        self
    }

    /// TLS to the broker, trusting `tls`'s roots.
    #[must_use]
    pub fn with_tls(mut self, tls: MqttTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// A user name and password for the broker (kept out of `Debug`, zeroed on drop).
    #[must_use]
    pub fn with_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.credentials = Some((username.into(), zeroize::Zeroizing::new(password.into())));
        self
    }

    /// How long the broker may take to acknowledge a batch before `apply` fails (default 30 s).
    #[must_use]
    pub fn with_ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    fn transport(&self) -> Result<Option<Transport>, SinkError> {
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let mut roots = rustls::RootCertStore::empty();
        match tls {
            MqttTls::SystemRoots => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // A malformed system certificate is skipped, as browsers do.
                    let _ = roots.add(cert);
                }
            }
            MqttTls::CaPem(pem) => {
                use rustls::pki_types::CertificateDer;
                use rustls::pki_types::pem::PemObject as _;
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| {
                        MqttSink::mqtt_error(format!("the MQTT CA certificates: {e}"))
                    })?;
                    roots.add(cert).map_err(|e| {
                        MqttSink::mqtt_error(format!("the MQTT CA certificates: {e}"))
                    })?;
                }
            }
        }
        if roots.is_empty() {
            return Err(MqttSink::mqtt_error(
                "TLS to the MQTT broker: no root certificate to trust".to_owned(),
            ));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| MqttSink::mqtt_error(format!("TLS to the MQTT broker: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Some(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
            config,
        )))))
    }
}

/// MQTT publishing in front of a [`SqlSink`] that keeps the watermark, the content hashes and the
/// feedback outbox.
#[derive(Debug, Clone)]
pub struct MqttSink {
    client: AsyncClient,
    prefix: String,
    qos: QoS,
    store: Arc<SqlSink>,
    acked: Arc<AtomicU64>,
    ack_notify: Arc<Notify>,
    published: Arc<AtomicU64>,
    ack_timeout: Duration,
    last_error: Arc<Mutex<Option<String>>>,
    /// Bumped when the broker answers a reconnect without our session: what was in flight is lost.
    lost_sessions: Arc<AtomicU64>,
    _eventloop: Arc<tokio::task::JoinHandle<()>>,
}

impl MqttSink {
    /// Connects to the broker at `host:port` (plain TCP, no credentials, QoS 1) as `client_id`,
    /// publishing under `prefix`, with `store` keeping the watermark.
    #[must_use]
    pub fn new(host: &str, port: u16, client_id: &str, prefix: &str, store: Arc<SqlSink>) -> Self {
        let settings = MqttSettings::new(host, port, client_id, prefix);
        Self::start(&settings, None, store)
    }

    /// Connects as `settings` say, with `store` keeping the watermark. The connection is made
    /// (and remade) in the background; a broker that cannot be reached or refuses the
    /// credentials makes `apply` fail within the acknowledgement timeout, naming the last
    /// connection error.
    ///
    /// # Errors
    /// When the TLS settings cannot be used (a CA file that holds no certificate).
    pub fn connect(settings: &MqttSettings, store: Arc<SqlSink>) -> Result<Self, SinkError> {
        let transport = settings.transport()?;
        Ok(Self::start(settings, transport, store))
    }

    fn start(settings: &MqttSettings, transport: Option<Transport>, store: Arc<SqlSink>) -> Self {
        let mut opts = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(false);
        if let Some(t) = transport {
            opts.set_transport(t);
        }
        if let Some((user, password)) = &settings.credentials {
            opts.set_credentials(user.clone(), password.as_str());
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 256);
        let acked = Arc::new(AtomicU64::new(0));
        let ack_notify = Arc::new(Notify::new());
        let last_error = Arc::new(Mutex::new(None));
        let published = Arc::new(AtomicU64::new(0));
        let lost_sessions = Arc::new(AtomicU64::new(0));
        let (a, n, e, p, l) = (
            Arc::clone(&acked),
            Arc::clone(&ack_notify),
            Arc::clone(&last_error),
            Arc::clone(&published),
            Arc::clone(&lost_sessions),
        );
        let task = tokio::spawn(async move {
            let mut connected_before = false;
            loop {
                match eventloop.poll().await {
                    // QoS 1 completes with PUBACK, QoS 2 with PUBCOMP: one per message either way.
                    Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                        a.fetch_add(1, Ordering::AcqRel);
                        n.notify_waiters();
                    }
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if let Ok(mut last) = e.lock() {
                            *last = None;
                        }
                        // A reconnect without our session: rumqttc drops the messages in flight,
                        // so their acknowledgements never come. Count them as settled and tell
                        // the batch waiting on them to fail (it is published again).
                        if connected_before && !ack.session_present {
                            a.store(p.load(Ordering::Acquire), Ordering::Release);
                            l.fetch_add(1, Ordering::AcqRel);
                            n.notify_waiters();
                        }
                        connected_before = true;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "MQTT connection error; reconnecting");
                        if let Ok(mut last) = e.lock() {
                            *last = Some(err.to_string());
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Self {
            client,
            prefix: settings.prefix.trim_end_matches('/').to_owned(),
            qos: match settings.qos {
                MqttQos::AtLeastOnce => QoS::AtLeastOnce,
                MqttQos::ExactlyOnce => QoS::ExactlyOnce,
            },
            store,
            acked,
            ack_notify,
            published,
            ack_timeout: settings.ack_timeout,
            last_error,
            lost_sessions,
            _eventloop: Arc::new(task),
        }
    }

    fn mqtt_error(what: String) -> SinkError {
        SinkError::plain(what)
    }
}

#[async_trait]
impl Sink for MqttSink {
    async fn apply(
        &self,
        batch: &[ProcessRecord],
        watermark: SystemTime,
    ) -> Result<ApplyReport, SinkError> {
        self.apply_marked(batch, &[], watermark).await
    }

    /// Publishes the batch's current revisions, then marks and commits in the SQL store. A mark
    /// for a revision outside the batch changes the tables only: its message was published when
    /// it was read (the item's topic keeps the last one published).
    async fn apply_marked(
        &self,
        batch: &[ProcessRecord],
        marks: &[crate::CurrentMark],
        watermark: SystemTime,
    ) -> Result<ApplyReport, SinkError> {
        // One deadline for the whole batch: publishing waits for room in the client's queue,
        // which only drains while connected.
        let sessions = self.lost_sessions.load(Ordering::Acquire);
        // One retained message per item: a superseded revision must not replace the current one's.
        let to_publish: Vec<&ProcessRecord> =
            batch.iter().filter(|p| p.current != Some(false)).collect();
        let publish_and_wait = async {
            for p in &to_publish {
                let payload = isa95(p).to_string();
                self.client
                    .publish(topic(&self.prefix, p), self.qos, true, payload)
                    .await
                    .map_err(|e| Self::mqtt_error(format!("publish {}: {e}", p.uid)))?;
                self.published.fetch_add(1, Ordering::AcqRel);
            }
            // Every message of this batch (and before) acknowledged by the broker before the
            // watermark moves.
            let target = self.published.load(Ordering::Acquire);
            loop {
                let notified = self.ack_notify.notified();
                if self.lost_sessions.load(Ordering::Acquire) != sessions {
                    return Err(Self::mqtt_error(
                        "the broker reconnected without this client's session, losing messages \
                         in flight; the batch is published again"
                            .to_owned(),
                    ));
                }
                if self.acked.load(Ordering::Acquire) >= target {
                    return Ok(());
                }
                notified.await;
            }
        };
        tokio::time::timeout(self.ack_timeout, publish_and_wait)
            .await
            .map_err(|_| {
                let last = self
                    .last_error
                    .lock()
                    .ok()
                    .and_then(|l| l.clone())
                    .map_or_else(String::new, |e| format!(" (last connection error: {e})"));
                Self::mqtt_error(format!(
                    "the broker did not take and acknowledge {} messages within {:?}{last}",
                    to_publish.len(),
                    self.ack_timeout
                ))
            })??;
        self.store.apply_marked(batch, marks, watermark).await
    }

    async fn watermark(&self) -> Result<Option<SystemTime>, SinkError> {
        self.store.watermark().await
    }

    async fn items_without_current(&self) -> Result<Vec<String>, SinkError> {
        self.store.items_without_current().await
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
