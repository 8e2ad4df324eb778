//! The shop-floor sink as `[sink]` says: the SQL sink (SQLite or PostgreSQL), which keeps the
//! watermark, with MQTT publishing in front of it when `[sink.mqtt]` is set.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use shiftkey_shopfloor::{MqttQos, MqttSettings, MqttSink, MqttTls, Sink, SqlSink};

use crate::config::Config;

/// The sink to sync into, and the SQL sink under it (closed at exit).
pub(crate) async fn open(cfg: &Config) -> anyhow::Result<(Arc<dyn Sink>, Arc<SqlSink>)> {
    let sql = Arc::new(SqlSink::connect(&cfg.sink_url()?).await?);
    let Some(m) = cfg.sink.as_ref().and_then(|s| s.mqtt.as_ref()) else {
        return Ok((Arc::clone(&sql) as Arc<dyn Sink>, sql));
    };
    let (host, port, tls) = m.endpoint()?;
    let mut settings = MqttSettings::new(host, port, m.client_id.clone(), m.prefix.clone())
        .with_qos(if m.qos == 2 {
            MqttQos::ExactlyOnce
        } else {
            MqttQos::AtLeastOnce
        })
        .with_ack_timeout(Duration::from_secs(m.ack_timeout_secs));
    if tls {
        settings =
            settings.with_tls(match &m.ca_file {
                Some(path) => MqttTls::CaPem(std::fs::read(path).with_context(|| {
                    format!("`sink.mqtt.ca_file`: cannot read {}", path.display())
                })?),
                None => MqttTls::SystemRoots,
            });
    }
    if let (Some(user), Some(password)) = (&m.username, &m.password) {
        let password = password.resolve("sink.mqtt.password")?;
        settings = settings.with_credentials(user.clone(), password.expose());
    }
    let mqtt = MqttSink::connect(&settings, Arc::clone(&sql)).context("`sink.mqtt`")?;
    Ok((Arc::new(mqtt), sql))
}
