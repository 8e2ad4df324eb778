//! Checking a loaded configuration: every problem in one run, each naming its key as the user
//! wrote it. Each section is checked on its own (its first problem reported), so three missing
//! secrets, a bad schedule and a proxy without a listener are all told at once.

use anyhow::{Context as _, bail};

use super::{
    ClientAuthKind, Config, MqttConfig, ProxySection, SecretRef, StoreBackend, TcMode, TokenConfig,
    TokenKind, check_db_url,
};

/// The problems found in a configuration: at least one.
#[derive(Debug)]
pub(crate) struct Problems(pub(crate) Vec<String>);

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [one] => f.write_str(one),
            all => {
                write!(f, "{} problems:", all.len())?;
                for p in all {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

/// What reading the file (and the `SHIFTKEY_…` overrides) found wrong, each naming its key as
/// the user wrote it, with a suggestion for a misspelt one.
pub(super) fn reading_problems(e: figment::Error) -> Problems {
    Problems(e.into_iter().map(|e| reading_problem(&e)).collect())
}

fn reading_problem(e: &figment::Error) -> String {
    use figment::error::Kind;
    let at = e.path.join(".");
    let from_env = e
        .metadata
        .as_ref()
        .is_some_and(|m| m.name.to_lowercase().contains("environment"));
    let source = if from_env {
        " (set by a SHIFTKEY_… environment variable)"
    } else {
        ""
    };
    let key = |field: &str| {
        if at.is_empty() || e.path.last().is_some_and(|l| l == field) {
            if at.is_empty() {
                field.to_owned()
            } else {
                at.clone()
            }
        } else {
            format!("{at}.{field}")
        }
    };
    match &e.kind {
        Kind::UnknownField(field, expected) => format!(
            "`{}` is not a setting{source}{}",
            key(field),
            did_you_mean(field, expected)
        ),
        Kind::UnknownVariant(value, expected) => format!(
            "`{at}`: `{value}` is not one of {}{source}{}",
            expected
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", "),
            did_you_mean(value, expected)
        ),
        Kind::MissingField(field) => format!("`{}` is missing{source}", key(field)),
        kind if at.is_empty() => format!("{kind}{source}"),
        kind => format!("`{at}`: {kind}{source}"),
    }
}

/// "; did you mean `x`?" when one of `known` is close to `given`.
pub(super) fn did_you_mean(given: &str, known: &[&str]) -> String {
    let given_lower = given.to_lowercase();
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(&given_lower, k), *k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| format!("; did you mean `{k}`?"))
        .unwrap_or_default()
}

impl Config {
    /// Every problem of the configuration, each section checked whatever the others found.
    pub(super) fn validate(&self) -> Result<(), Problems> {
        let mut problems = Vec::new();
        let mut check = |r: anyhow::Result<()>| {
            if let Err(e) = r {
                problems.push(crate::causes(&e));
            }
        };
        check(self.check_purpose());
        for (key, secret) in self.secret_refs() {
            if let SecretRef::Inline(_) = secret {
                check(secret.resolve(&key).map(drop));
            }
        }
        check(self.check_sink());
        check(self.check_store());
        check(self.check_lease());
        check(self.check_teamcenter());
        for (name, p) in &self.proxy {
            check(self.check_proxy(name, p));
        }
        check(self.check_schedule());
        check(self.check_store_key());
        check(self.check_chains_have_a_store());
        for (name, t) in &self.tokens {
            check(self.check_token(name, t));
        }
        check(self.check_broker());
        for (client, c) in &self.broker.clients {
            check(self.check_broker_client(client, &c.tokens));
        }
        check(self.check_ops());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Problems(problems))
        }
    }

    /// Something to do: a Teamcenter section or a token.
    fn check_purpose(&self) -> anyhow::Result<()> {
        if self.teamcenter.is_none() && self.tokens.is_empty() {
            bail!(
                "nothing to do: the config has neither a `[teamcenter]` section nor any `[tokens.NAME]` (see `shiftkey config example`)"
            );
        }
        Ok(())
    }

    /// `[sink]`: its database URL and its MQTT broker.
    fn check_sink(&self) -> anyhow::Result<()> {
        if let Some(sink) = &self.sink {
            check_db_url("sink", sink.url.as_ref(), sink.url_env.as_ref())?;
            if let Some(m) = &sink.mqtt {
                self.check_mqtt(m)?;
            }
        }
        Ok(())
    }

    /// `[store]`: the backend and what goes with it.
    fn check_store(&self) -> anyhow::Result<()> {
        if let Some(store) = &self.store {
            match store.backend {
                StoreBackend::File => {
                    if store.dir.is_none() {
                        bail!("`store.dir` is required with `store.backend = \"file\"`");
                    }
                    if store.url.is_some() || store.url_env.is_some() {
                        bail!(
                            "`store.url` and `store.url_env` are for `store.backend = \"postgres\"`"
                        );
                    }
                }
                StoreBackend::Postgres => {
                    if store.dir.is_some() {
                        bail!("`store.dir` is for `store.backend = \"file\"`");
                    }
                    check_db_url("store", store.url.as_ref(), store.url_env.as_ref())?;
                }
            }
        }
        Ok(())
    }

    /// `[lease]`: its database and what it elects.
    fn check_lease(&self) -> anyhow::Result<()> {
        if let Some(lease) = &self.lease {
            check_db_url("lease", lease.url.as_ref(), lease.url_env.as_ref())?;
            if lease.check_secs == 0 {
                bail!("`lease.check_secs` must be greater than zero");
            }
            if self.teamcenter.is_none() {
                bail!("`[lease]` elects the process that syncs: it needs a `[teamcenter]` section");
            }
        }
        Ok(())
    }

    /// `[teamcenter]`: the mode and its credentials, the URL, the site.
    fn check_teamcenter(&self) -> anyhow::Result<()> {
        if let Some(tc) = &self.teamcenter {
            match tc.mode {
                TcMode::Session => {
                    if tc.user.is_empty() || tc.password.is_none() {
                        bail!(
                            "`teamcenter.user` and `teamcenter.password` are required in session mode (the default; `teamcenter.mode = \"gateway\"` uses a `[tokens.NAME]` instead)"
                        );
                    }
                    if tc.token.is_some() {
                        bail!("`teamcenter.token` is for `teamcenter.mode = \"gateway\"`");
                    }
                }
                TcMode::Gateway => {
                    let Some(name) = &tc.token else {
                        bail!(
                            "`teamcenter.mode = \"gateway\"` needs `teamcenter.token`, the name of a `[tokens.NAME]` section"
                        );
                    };
                    if !self.tokens.contains_key(name) {
                        bail!(
                            "`teamcenter.token`: there is no `[tokens.{name}]` section to take gateway tokens from"
                        );
                    }
                    if !tc.user.is_empty() || tc.password.is_some() {
                        bail!(
                            "`teamcenter.user` and `teamcenter.password` are for session mode; in gateway mode the credentials are those of `[tokens.{name}]`"
                        );
                    }
                }
            }
            let url = url::Url::parse(&tc.url)
                .with_context(|| format!("`teamcenter.url`: `{}` is not a URL", tc.url))?;
            crate::net::check_secure(self, "teamcenter.url", &url)?;
            crate::site::configs(tc, self.overlap())?;
            if tc.read_timeout_secs == 0 || tc.max_answer_mib == 0 {
                bail!(
                    "`teamcenter.read_timeout_secs` and `teamcenter.max_answer_mib` must be greater than zero"
                );
            }
        }
        Ok(())
    }

    /// `[schedule]`.
    fn check_schedule(&self) -> anyhow::Result<()> {
        if self.schedule.interval_minutes == 0 || self.schedule.batch == 0 {
            bail!("`schedule.interval_minutes` and `schedule.batch` must be greater than zero");
        }
        if self.schedule.interval_minutes > 7 * 24 * 60 {
            bail!("`schedule.interval_minutes` is at most a week (10080)");
        }
        Ok(())
    }

    /// `[store]`: one key or one passphrase.
    fn check_store_key(&self) -> anyhow::Result<()> {
        if let Some(store) = &self.store
            && store.key.is_some() == store.passphrase.is_some()
        {
            bail!("set exactly one of `store.key` and `store.passphrase`");
        }
        Ok(())
    }

    /// A refresh-token chain needs a store.
    fn check_chains_have_a_store(&self) -> anyhow::Result<()> {
        // A grant that can always be obtained again (client credentials, a configured password)
        // runs without a store: its tokens live in memory and a restart logs in again. A
        // refresh-token chain a person started exists nowhere else.
        if self.store.is_none()
            && let Some((name, _)) = self
                .tokens
                .iter()
                .find(|(_, t)| t.kind == TokenKind::RefreshToken)
        {
            bail!(
                "`tokens.{name}` (kind = \"refresh_token\") needs a `[store]` section: its refresh-token chain is kept only there"
            );
        }
        Ok(())
    }

    /// `[tokens.NAME]`.
    fn check_token(&self, name: &str, t: &TokenConfig) -> anyhow::Result<()> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("`tokens.{name}`: a token name is letters, digits, `-` and `_`");
        }
        let key = |field: &str| format!("tokens.{name}.{field}");
        let token_url = url::Url::parse(&t.token_url)
            .with_context(|| format!("`{}`: `{}` is not a URL", key("token_url"), t.token_url))?;
        crate::net::check_secure(self, &key("token_url"), &token_url)?;
        if let Some(u) = &t.revoke_url {
            let revoke = url::Url::parse(u)
                .with_context(|| format!("`{}`: `{u}` is not a URL", key("revoke_url")))?;
            crate::net::check_secure(self, &key("revoke_url"), &revoke)?;
        }
        match t.client_auth {
            ClientAuthKind::Basic | ClientAuthKind::Post if t.client_secret.is_none() => {
                bail!(
                    "`{}` is missing (client_auth = basic or post needs it)",
                    key("client_secret")
                )
            }
            ClientAuthKind::PrivateKeyJwt if t.private_key.is_none() => bail!(
                "`{}` is missing (client_auth = private_key_jwt needs it)",
                key("private_key")
            ),
            _ => {}
        }
        if t.kind == TokenKind::RefreshToken {
            let issuer = t.issuer.as_ref().with_context(|| {
                format!(
                    "`{}` is missing (kind = \"refresh_token\" logs in through it)",
                    key("issuer")
                )
            })?;
            let url = url::Url::parse(issuer)
                .with_context(|| format!("`{}`: `{issuer}` is not a URL", key("issuer")))?;
            crate::net::check_secure(self, &key("issuer"), &url)?;
        } else if t.client_auth == ClientAuthKind::None {
            bail!(
                "`{}`: a public client (\"none\") fits only kind = \"refresh_token\"",
                key("client_auth")
            );
        }
        if t.kind == TokenKind::Password && (t.username.is_none() || t.password.is_none()) {
            bail!(
                "`{}` and `{}` are needed by kind = \"password\"",
                key("username"),
                key("password")
            );
        }
        if let Some(d) = &t.secret_expires {
            chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").with_context(|| {
                format!(
                    "`{}`: `{d}` is not a date like 2027-03-31",
                    key("secret_expires")
                )
            })?;
        }
        Ok(())
    }

    /// `[broker]`: its listeners.
    fn check_broker(&self) -> anyhow::Result<()> {
        if let Some(http) = &self.broker.http {
            let addr: std::net::SocketAddr = http.parse().with_context(|| {
                format!("`broker.http`: `{http}` is not an address like 127.0.0.1:8732")
            })?;
            if self.broker.clients.is_empty() {
                bail!("`broker.http` needs at least one `[broker.clients.NAME]` client");
            }
            if !addr.ip().is_loopback() {
                bail!(
                    "`broker.http`: `{http}` is not a loopback address: the client secrets would travel in clear; serve other hosts with `broker.https` (TLS)"
                );
            }
        }
        match (
            &self.broker.https,
            &self.broker.tls_cert,
            &self.broker.tls_key,
        ) {
            (Some(https), Some(_), Some(_)) => {
                https.parse::<std::net::SocketAddr>().with_context(|| {
                    format!("`broker.https`: `{https}` is not an address like 0.0.0.0:8733")
                })?;
                if self.broker.clients.is_empty() {
                    bail!("`broker.https` needs at least one `[broker.clients.NAME]` client");
                }
            }
            (Some(_), _, _) => bail!(
                "`broker.https` needs `broker.tls_cert` (the certificate chain, PEM) and `broker.tls_key` (its key, by reference: {{ file = \"/etc/shiftkey/broker.key\" }})"
            ),
            (None, Some(_), _) | (None, _, Some(_)) => bail!(
                "`broker.tls_cert` and `broker.tls_key` are for `broker.https`, which is not set"
            ),
            (None, None, None) => {}
        }
        Ok(())
    }

    /// `[broker.clients.NAME]`.
    fn check_broker_client(&self, client: &str, tokens: &[String]) -> anyhow::Result<()> {
        if tokens.is_empty() {
            bail!("`broker.clients.{client}.tokens` is empty: list the tokens this client may get");
        }
        if let Some(unknown) = tokens.iter().find(|t| !self.tokens.contains_key(*t)) {
            bail!(
                "`broker.clients.{client}.tokens` names `{unknown}`, which is not a `[tokens.NAME]`"
            );
        }
        Ok(())
    }

    /// `[ops]`.
    fn check_ops(&self) -> anyhow::Result<()> {
        if let Some(listen) = self.ops.listen.as_deref().filter(|l| !l.is_empty()) {
            let addr = listen.parse::<std::net::SocketAddr>().with_context(|| {
                format!("`ops.listen`: `{listen}` is not an address like 127.0.0.1:9464")
            })?;
            if !addr.ip().is_loopback() && !self.ops.allow_remote {
                bail!(
                    "`ops.listen`: `{listen}` is not a loopback address; the ops endpoints have no \
                     authentication — serve them on loopback behind a reverse proxy, or set \
                     `ops.allow_remote = true` if the network is yours alone"
                );
            }
        }
        let o = &self.ops;
        if !(0.0..=1.0).contains(&o.unauthorized_warning)
            || !(0.0..=1.0).contains(&o.unauthorized_critical)
            || o.unauthorized_warning > o.unauthorized_critical
        {
            bail!(
                "`ops.unauthorized_warning` and `ops.unauthorized_critical` are shares between 0 and 1, warning ≤ critical"
            );
        }
        Ok(())
    }

    /// One `[proxy.NAME]`: a loopback listener or a socket, one credential, a secure upstream.
    fn check_proxy(&self, name: &str, p: &ProxySection) -> anyhow::Result<()> {
        let key = |field: &str| format!("proxy.{name}.{field}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("`proxy.{name}`: a proxy name is letters, digits, `-` and `_`");
        }
        match (&p.listen, &p.socket) {
            (Some(listen), None) => {
                let addr: std::net::SocketAddr = listen.parse().with_context(|| {
                    format!(
                        "`{}`: `{listen}` is not an address and port (e.g. 127.0.0.1:8181)",
                        key("listen")
                    )
                })?;
                if !addr.ip().is_loopback() {
                    bail!(
                        "`{}`: {addr} is not a loopback address; the proxy hands out this \
                         host's credentials and listens on 127.0.0.1 or ::1 only",
                        key("listen")
                    );
                }
            }
            (None, Some(_)) => {}
            _ => bail!(
                "`proxy.{name}`: set exactly one of `listen` (a loopback address) and `socket`"
            ),
        }
        match (&p.token, p.teamcenter) {
            (Some(token), false) => {
                if !self.tokens.contains_key(token) {
                    bail!("`{}`: there is no `[tokens.{token}]` section", key("token"));
                }
                if !p.logins.is_empty() {
                    bail!(
                        "`{}`: local logins are for a Teamcenter proxy (`teamcenter = true`)",
                        key("logins")
                    );
                }
            }
            (None, true) => {
                let session = self
                    .teamcenter
                    .as_ref()
                    .is_some_and(|t| t.mode == TcMode::Session);
                if !session {
                    bail!(
                        "`{}`: needs a `[teamcenter]` section in session mode (for a gateway, \
                         set `token` to its `[tokens.NAME]` instead)",
                        key("teamcenter")
                    );
                }
                for user in p.logins.keys() {
                    if user.trim().is_empty() || user.len() > 128 {
                        bail!("`{}`: a login name is 1 to 128 characters", key("logins"));
                    }
                }
            }
            _ => bail!(
                "`proxy.{name}`: set exactly one of `token` (a `[tokens.NAME]`) and \
                 `teamcenter = true`"
            ),
        }
        crate::proxy::users(name, p)?;
        let raw = self.proxy_upstream(name, p)?;
        let upstream = url::Url::parse(&raw)
            .with_context(|| format!("`{}`: `{raw}` is not a URL", key("upstream")))?;
        crate::net::check_secure(self, &key("upstream"), &upstream)?;
        if upstream.query().is_some() || upstream.fragment().is_some() {
            bail!("`{}`: a base URL has no query or fragment", key("upstream"));
        }
        if p.timeout_secs == 0
            || p.max_connections == 0
            || p.body_idle_secs == 0
            || p.body_timeout_secs == 0
        {
            bail!(
                "`{}`, `{}`, `{}` and `{}` must be greater than zero",
                key("timeout_secs"),
                key("max_connections"),
                key("body_idle_secs"),
                key("body_timeout_secs")
            );
        }
        if p.workers.is_some() && p.socket.is_some() {
            bail!(
                "`{}` applies to a `listen` address; a `socket` is served with the rest of the process",
                key("workers")
            );
        }
        if p.workers.is_some_and(|w| w == 0 || w > 256) {
            bail!(
                "`{}` is between 1 and 256 (threads; leave it out for one per core)",
                key("workers")
            );
        }
        if p.replay_budget_mib > 4096 {
            bail!("`{}` is at most 4096 (MiB)", key("replay_budget_mib"));
        }
        if p.max_connections > 65_536 || p.replay_limit_kib > 65_536 {
            bail!(
                "`{}` and `{}` are at most 65536 (connections; KiB, 64 MiB held per request)",
                key("max_connections"),
                key("replay_limit_kib")
            );
        }
        Ok(())
    }

    fn check_mqtt(&self, m: &MqttConfig) -> anyhow::Result<()> {
        let (host, _, tls) = m.endpoint()?;
        if !matches!(m.qos, 1 | 2) {
            bail!(
                "`sink.mqtt.qos` = {}: use 1 or 2 (the watermark moves only once the broker has \
                 acknowledged a batch, and QoS 0 is never acknowledged)",
                m.qos
            );
        }
        if m.password.is_some() != m.username.is_some() {
            bail!("`sink.mqtt.username` and `sink.mqtt.password` go together");
        }
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if m.password.is_some() && !tls && !loopback && !self.allow_insecure_http {
            bail!(
                "`sink.mqtt.url`: {} would send the broker password in clear text; use mqtts:// \
                 (or, in a lab only, set `allow_insecure_http = true` at the top of the config)",
                m.url
            );
        }
        if m.ca_file.is_some() && !tls {
            bail!("`sink.mqtt.ca_file` needs an mqtts:// URL");
        }
        if m.ack_timeout_secs == 0 || m.ack_timeout_secs > 3600 {
            bail!(
                "`sink.mqtt.ack_timeout_secs` = {}: use 1 to 3600",
                m.ack_timeout_secs
            );
        }
        if m.client_id.is_empty() || m.prefix.is_empty() {
            bail!("`sink.mqtt.client_id` and `sink.mqtt.prefix` may not be empty");
        }
        Ok(())
    }
}
