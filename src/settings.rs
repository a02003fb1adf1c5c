//! Layered configuration: built-in defaults, then `cardfleet.toml` (or the
//! file given with `--config`), then `CARDFLEET__SECTION__KEY` variables.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub http: HttpSettings,
    pub metrics: MetricsSettings,
    pub credentials: CredentialSettings,
    #[serde(default)]
    pub profiles: ProfileSettings,
    pub dispatcher: DispatcherSettings,
    pub ledger: LedgerSettings,
    pub log: LogSettings,
    pub tokens: TokenSettings,
    /// The worker's sections: one configuration file or environment may
    /// serve both programs (and standalone mode runs both in one process).
    #[serde(default, skip_serializing)]
    pub worker: serde::de::IgnoredAny,
    #[serde(default, skip_serializing)]
    pub reader: serde::de::IgnoredAny,
    #[serde(default, skip_serializing)]
    pub simulated: serde::de::IgnoredAny,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// PostgreSQL URL, e.g. `postgres://postgres@127.0.0.1:5432/cardfleet`.
    pub url: String,
    pub max_connections: u32,
    /// Create the database if it does not exist and apply migrations at start.
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// RabbitMQ URL with vhost, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`,
    /// or several separated by commas (the nodes of a cluster), tried in
    /// order at every connect and reconnect.
    pub url: String,
    /// Deliveries of one job before RabbitMQ dead-letters it.
    pub delivery_limit: u32,
    pub reconnect_max_seconds: u64,
    /// TLS files for `amqps://` URLs (`amqp.tls.ca_file`, `cert_file`, `key_file`).
    #[serde(default)]
    pub tls: cardfleet_schemas::amqp::TlsFiles,
}

impl AmqpSettings {
    /// The broker endpoint: URL plus TLS files.
    pub fn endpoint(&self) -> cardfleet_schemas::amqp::Endpoint {
        cardfleet_schemas::amqp::Endpoint {
            url: self.url.clone(),
            tls: self.tls.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    /// Most cards one initialize request or import may name (413 above).
    pub max_batch_cards: usize,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Longest a request may take, body upload included, before it is
    /// answered 408 `request_timeout` (event streams once started excepted).
    pub request_timeout_seconds: u64,
    /// Longest a client may take to send its request headers.
    pub header_timeout_seconds: u64,
    /// Per-token request rate (`http.rate_limit.per_second`, `burst`).
    pub rate_limit: RateLimitSettings,
    /// HTTPS for the API (`http.tls.cert_file`, `key_file`, `client_ca_file`).
    #[serde(default)]
    pub tls: HttpTlsSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Requests per second each token may sustain; 0 turns limiting off.
    pub per_second: u32,
    /// Requests a token may make at once above the sustained rate.
    pub burst: u32,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTlsSettings {
    /// PEM certificate chain of the API; with `key_file`, the API speaks
    /// HTTPS only.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates: clients presenting a certificate must present
    /// one issued by these; clients without one are still served (they
    /// authenticate with their bearer token).
    pub client_ca_file: Option<PathBuf>,
}

impl HttpTlsSettings {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// Days until a new API token expires, unless its creator says
    /// otherwise; 0 means tokens never expire.
    pub default_ttl_days: u32,
}

impl TokenSettings {
    /// When a token created now with `ttl_days` (or the default) expires.
    pub fn expiry(&self, ttl_days: Option<u32>) -> Option<chrono::DateTime<chrono::Utc>> {
        let days = ttl_days.unwrap_or(self.default_ttl_days);
        (days > 0).then(|| chrono::Utc::now() + chrono::Duration::days(i64::from(days)))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Where `/metrics` is served besides the API port; empty to disable.
    pub listen: Option<SocketAddr>,
    /// How often the gauges read the database and the rack queues; 0 turns
    /// the refresh off (for all but one process of a scaled-out control plane).
    pub refresh_seconds: u64,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSettings {
    /// Id stored with every encrypted credential.
    pub key_id: String,
    /// 64 hex characters: AES-256 key for credentials at rest.
    pub encryption_key: String,
    /// At least 64 hex characters: master key for per-card management keys.
    pub master_key: String,
    /// Earlier encryption keys by key id (64 hex characters each): they no
    /// longer encrypt, but decrypt rows not yet re-encrypted by
    /// `cardfleet keys rotate`.
    #[serde(default)]
    pub previous_keys: std::collections::BTreeMap<String, String>,
}

impl CredentialSettings {
    /// The keyring: `encryption_key` under `key_id`, plus `previous_keys`.
    pub fn cipher(
        &self,
    ) -> Result<crate::credentials::CredentialCipher, crate::credentials::CredentialError> {
        let mut cipher =
            crate::credentials::CredentialCipher::from_hex(&self.key_id, &self.encryption_key)?;
        for (key_id, hex_key) in &self.previous_keys {
            cipher = cipher.with_previous(key_id, hex_key)?;
        }
        Ok(cipher)
    }
}

impl std::fmt::Debug for CredentialSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialSettings")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSettings {
    /// Directory of `*.toml` profiles; the built-in ones are always there.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DispatcherSettings {
    /// Outbox rows published per round, all in flight at once.
    pub batch_size: i64,
    /// Longest wait between outbox polls when no notification arrives.
    pub poll_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSettings {
    /// Results applied per database transaction at most.
    pub batch_size: usize,
    /// How long a partial batch waits for more messages.
    pub batch_wait_ms: u64,
    /// How long a rack may send no heartbeat before its dispatched and
    /// encoding jobs are marked as waiting for it (fleet mode); 0 turns
    /// leases off.
    pub rack_lease_seconds: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `tracing` filter, e.g. `info,cardfleet=debug`.
    pub filter: String,
    /// `text` or `json`.
    pub format: String,
}

/// Every key with its default; the README's configuration table lists these.
pub const DEFAULTS: &[(&str, &str)] = &[
    (
        "database.url",
        "postgres://postgres@127.0.0.1:5432/cardfleet",
    ),
    ("database.max_connections", "16"),
    ("database.migrate_on_start", "true"),
    ("amqp.url", "amqp://guest:guest@127.0.0.1:5672/%2f"),
    ("amqp.delivery_limit", "5"),
    ("amqp.reconnect_max_seconds", "10"),
    ("http.listen", "127.0.0.1:8080"),
    ("http.max_batch_cards", "100000"),
    ("http.max_body_bytes", "8388608"),
    ("http.request_timeout_seconds", "30"),
    ("http.header_timeout_seconds", "10"),
    ("http.rate_limit.per_second", "50"),
    ("http.rate_limit.burst", "500"),
    ("tokens.default_ttl_days", "90"),
    ("metrics.listen", "127.0.0.1:9464"),
    ("metrics.refresh_seconds", "5"),
    ("credentials.key_id", "k1"),
    ("dispatcher.batch_size", "2000"),
    ("dispatcher.poll_interval_ms", "500"),
    ("ledger.batch_size", "500"),
    ("ledger.batch_wait_ms", "5"),
    ("ledger.rack_lease_seconds", "60"),
    ("log.filter", "info"),
    ("log.format", "text"),
];

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct SettingsError(String);

impl Settings {
    /// Loads settings; `file` overrides the default `cardfleet.toml`, which
    /// is optional when not named explicitly.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        Self::load_with(file, &[])
    }

    /// As [`Settings::load`], with overrides applied last (tests, standalone).
    pub fn load_with(
        file: Option<&Path>,
        overrides: &[(&str, String)],
    ) -> Result<Self, SettingsError> {
        Self::load_layered(file, &[], overrides)
    }

    /// As [`Settings::load_with`], with `defaults` replacing the embedded
    /// ones (standalone mode: its data directory); the file and the
    /// environment still override them.
    pub fn load_layered(
        file: Option<&Path>,
        defaults: &[(&str, String)],
        overrides: &[(&str, String)],
    ) -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder();
        for (key, value) in DEFAULTS {
            builder = builder
                .set_default(*key, *value)
                .map_err(|e| SettingsError(e.to_string()))?;
        }
        for (key, value) in defaults {
            builder = builder
                .set_default(*key, value.as_str())
                .map_err(|e| SettingsError(e.to_string()))?;
        }
        builder = match file {
            Some(path) => builder.add_source(config::File::from(path).required(true)),
            None => builder.add_source(config::File::with_name("cardfleet.toml").required(false)),
        };
        builder = builder.add_source(
            config::Environment::with_prefix("CARDFLEET")
                .prefix_separator("__")
                .separator("__"),
        );
        for (key, value) in overrides {
            builder = builder
                .set_override(*key, value.as_str())
                .map_err(|e| SettingsError(e.to_string()))?;
        }
        let config = builder.build().map_err(|e| SettingsError(e.to_string()))?;
        let settings: Settings = config.try_deserialize().map_err(|e| {
            let text = e.to_string();
            if text.contains("missing field") {
                SettingsError(format!(
                    "{text} (set it in cardfleet.toml or as CARDFLEET__SECTION__KEY)"
                ))
            } else {
                SettingsError(text)
            }
        })?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), SettingsError> {
        let bad = |key: &str, why: &str| Err(SettingsError(format!("{key}: {why}")));
        if let Some(problem) = cardfleet_schemas::amqp::url_problem(&self.amqp.url) {
            return bad("amqp.url", problem);
        }
        if let Some(problem) = self.amqp.endpoint().tls.problem(&self.amqp.url) {
            return bad("amqp.tls", problem);
        }
        if self.http.max_batch_cards == 0 {
            return bad("http.max_batch_cards", "must be at least 1");
        }
        if self.http.request_timeout_seconds == 0 {
            return bad("http.request_timeout_seconds", "must be at least 1");
        }
        if self.http.header_timeout_seconds == 0 {
            return bad("http.header_timeout_seconds", "must be at least 1");
        }
        if self.http.rate_limit.per_second > 0 && self.http.rate_limit.burst == 0 {
            return bad("http.rate_limit.burst", "must be at least 1 when limiting");
        }
        let tls = &self.http.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return bad(
                "http.tls",
                "cert_file and key_file go together: give both or neither",
            );
        }
        if tls.client_ca_file.is_some() && !tls.enabled() {
            return bad("http.tls.client_ca_file", "needs cert_file and key_file");
        }
        for (key, file) in [
            ("http.tls.cert_file", &tls.cert_file),
            ("http.tls.key_file", &tls.key_file),
            ("http.tls.client_ca_file", &tls.client_ca_file),
        ] {
            if let Some(path) = file
                && !path.is_file()
            {
                return bad(key, &format!("no such file: {}", path.display()));
            }
        }
        if self.dispatcher.batch_size <= 0 {
            return bad("dispatcher.batch_size", "must be at least 1");
        }
        if self.ledger.batch_size == 0 {
            return bad("ledger.batch_size", "must be at least 1");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad("log.format", "must be 'text' or 'json'");
        }
        self.credentials
            .cipher()
            .map_err(|e| SettingsError(e.to_string()))?;
        crate::credentials::MasterKey::from_hex(&self.credentials.master_key)
            .map_err(|e| SettingsError(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<(&'static str, String)> {
        vec![
            ("credentials.encryption_key", "22".repeat(32)),
            ("credentials.master_key", "33".repeat(32)),
        ]
    }

    #[test]
    fn defaults_load_once_the_secrets_are_given() {
        let s = Settings::load_with(None, &keys()).unwrap();
        assert_eq!(s.http.listen.port(), 8080);
        assert_eq!(s.amqp.delivery_limit, 5);
    }

    #[test]
    fn a_missing_secret_is_named() {
        let err = Settings::load_with(None, &[]).unwrap_err().to_string();
        assert!(
            err.contains("encryption_key") || err.contains("master_key"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_key_is_named() {
        let dir = std::env::temp_dir().join(format!("cf-settings-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cardfleet.toml");
        std::fs::write(&file, "[http]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap();
        let err = Settings::load_with(Some(&file), &keys())
            .unwrap_err()
            .to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn the_workers_sections_may_share_the_file() {
        let dir = std::env::temp_dir().join(format!("cf-settings-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cardfleet.toml");
        std::fs::write(
            &file,
            "[worker]\nrack_id = \"r\"\n[reader]\ntype = \"pcsc\"\n",
        )
        .unwrap();
        let loaded = Settings::load_with(Some(&file), &keys());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(loaded.is_ok(), "{:?}", loaded.err());
    }

    #[test]
    fn http_tls_needs_both_files_and_they_must_exist() {
        let mut k = keys();
        k.push(("http.tls.cert_file", "/nonexistent/cp.pem".into()));
        let err = Settings::load_with(None, &k).unwrap_err().to_string();
        assert!(err.contains("cert_file and key_file go together"), "{err}");
        k.push(("http.tls.key_file", "/nonexistent/cp.key".into()));
        let err = Settings::load_with(None, &k).unwrap_err().to_string();
        assert!(err.contains("http.tls.cert_file: no such file"), "{err}");
        let mut k = keys();
        k.push(("http.tls.client_ca_file", "/nonexistent/ca.pem".into()));
        let err = Settings::load_with(None, &k).unwrap_err().to_string();
        assert!(err.contains("http.tls.client_ca_file"), "{err}");
    }

    #[test]
    fn limits_and_token_expiry_have_defaults() {
        let s = Settings::load_with(None, &keys()).unwrap();
        assert_eq!(s.http.request_timeout_seconds, 30);
        assert_eq!(s.http.rate_limit.per_second, 50);
        assert_eq!(s.http.rate_limit.burst, 500);
        assert_eq!(s.tokens.default_ttl_days, 90);
        assert!(!s.http.tls.enabled());
        let never = TokenSettings {
            default_ttl_days: 0,
        };
        assert_eq!(never.expiry(None), None);
        assert!(never.expiry(Some(1)).is_some());
    }

    #[test]
    fn a_short_encryption_key_is_refused() {
        let mut k = keys();
        k[0].1 = "abcd".into();
        let err = Settings::load_with(None, &k).unwrap_err().to_string();
        assert!(err.contains("credentials.encryption_key"), "{err}");
    }
}
