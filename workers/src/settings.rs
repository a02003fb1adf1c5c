//! Worker configuration, layered like the control plane's: defaults, then
//! `cardfleet-worker.toml` (or `--config`), then `CARDFLEET__SECTION__KEY`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub worker: WorkerSection,
    pub reader: ReaderSection,
    pub simulated: SimulatedSection,
    pub amqp: AmqpSection,
    pub metrics: MetricsSection,
    pub log: LogSection,
    /// The control plane's sections: one configuration file or environment
    /// may serve both programs.
    #[serde(default, skip_serializing)]
    pub database: serde::de::IgnoredAny,
    #[serde(default, skip_serializing)]
    pub http: serde::de::IgnoredAny,
    #[serde(default, skip_serializing)]
    pub credentials: serde::de::IgnoredAny,
    #[serde(default, skip_serializing)]
    pub profiles: serde::de::IgnoredAny,
    #[serde(default, skip_serializing)]
    pub dispatcher: serde::de::IgnoredAny,
    #[serde(default, skip_serializing)]
    pub ledger: serde::de::IgnoredAny,
    #[serde(default, skip_serializing)]
    pub tokens: serde::de::IgnoredAny,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    /// The rack this worker owns; its queue is `cardfleet.rack.<rack_id>`.
    pub rack_id: String,
    /// Name in heartbeats and results; defaults to `<rack_id>-<pid>`.
    pub id: Option<String>,
    /// Attempts at one card (after a removal, reset or other retryable error).
    pub max_attempts: u32,
    /// First wait between attempts; doubles each time.
    pub retry_backoff_ms: u64,
    /// Failed cards in a row after which a slot is quarantined.
    pub quarantine_after: u32,
    /// How long a job waits for its card to be (re)inserted before it is
    /// handed back to the broker.
    pub card_wait_seconds: u64,
    /// On SIGTERM, how long in-flight cards may take to finish.
    pub shutdown_grace_seconds: u64,
    pub heartbeat_interval_seconds: u64,
    /// Longest wait for the control plane's answer when a job is taken
    /// (was it cancelled while this worker was away?); without an answer
    /// the job proceeds and its result wins.
    pub take_check_timeout_ms: u64,
    /// The rack's X25519 private key, generated (mode 0600) on first start;
    /// job secrets are sealed to its public half. A key file the group or
    /// others may read is refused.
    pub key_file: PathBuf,
    /// The control plane's API (e.g. `http://cp:8080`), for enrolling the
    /// rack key at start when it is not enrolled yet.
    pub api_url: Option<String>,
    /// Directory of the worker's own encoding journals, one file per chip, for cards that
    /// refuse the journal data object `5FFF10` (many non-YubiKey PIV cards). Must survive
    /// restarts (not a tmpfs). Unset: such cards fail with `journal_unsupported` on a PC/SC
    /// rack; a simulated rack keeps them in memory.
    pub journal_dir: Option<PathBuf>,
    /// One-time enrollment token from `cardfleet racks enroll-token RACK_ID`;
    /// used with `api_url` at start, then no longer needed.
    pub enrollment_token: Option<EnrollmentToken>,
    /// PEM CA certificates to trust for an `https://` `api_url`, besides
    /// the system's (the bureau's own CA).
    #[serde(default)]
    pub api_ca_file: Option<PathBuf>,
    /// Allow enrolling over plain `http://` (a man in the middle could swap
    /// the rack key): only on a network you trust.
    #[serde(default)]
    pub api_insecure: bool,
}

impl WorkerSection {
    /// The TLS choices for reaching the API.
    pub fn api_tls(&self) -> crate::api_tls::ApiTls {
        crate::api_tls::ApiTls {
            ca_file: self.api_ca_file.clone(),
            insecure: self.api_insecure,
        }
    }
}

/// A one-time enrollment token: never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct EnrollmentToken(String);

impl EnrollmentToken {
    pub fn new(token: String) -> Self {
        Self(token)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Shown as `<redacted>` (`config check`), never as the token.
impl Serialize for EnrollmentToken {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(cardfleet_schemas::redact::REDACTED)
    }
}

impl std::fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnrollmentToken(<redacted>)")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderSection {
    /// `simulated` or `pcsc`.
    #[serde(rename = "type")]
    pub kind: ReaderKind,
    /// Number of simulated slots.
    pub slots: u16,
    /// PC/SC reader names to use (substring match); empty means all readers.
    pub name_patterns: Vec<String>,
    /// Production CSV whose cards are loaded into simulated slots as they free up.
    pub load_from: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ReaderKind {
    Simulated,
    Pcsc,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedSection {
    /// Latency of every command, in milliseconds.
    pub latency_ms: u64,
    /// Latency of GENERATE ASYMMETRIC KEY PAIR, in milliseconds.
    pub keygen_latency_ms: u64,
    /// Share of cards (0 to 1) that are pulled out once mid-encoding and put back.
    pub removal_rate: f64,
    /// Share of cards whose chip is mute.
    pub mute_rate: f64,
    /// How long a pulled card stays out, in milliseconds.
    pub reinsert_ms: u64,
    /// Directory keeping each simulated chip's state, so cards survive a
    /// worker restart; unset keeps them in memory only.
    pub state_dir: Option<PathBuf>,
    /// Whether simulated cards keep vendor data objects (the journal `5FFF10`); `false`
    /// makes strict cards that answer `6A80`, so the journal lives on the worker.
    pub vendor_objects: bool,
    /// Whether simulated cards have the YubiKey-compatible extensions.
    pub extensions: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSection {
    /// RabbitMQ URL with vhost, or several separated by commas (the nodes
    /// of a cluster), tried in order at every connect and reconnect.
    pub url: String,
    /// Must equal the control plane's: both declare the rack queue with it.
    pub delivery_limit: u32,
    pub reconnect_max_seconds: u64,
    /// TLS files for `amqps://` URLs (`amqp.tls.ca_file`, `cert_file`, `key_file`).
    #[serde(default)]
    pub tls: cardfleet_schemas::amqp::TlsFiles,
}

impl AmqpSection {
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
pub struct MetricsSection {
    pub listen: Option<SocketAddr>,
    /// The control plane's gauge refresh; not used by workers.
    #[serde(default, skip_serializing)]
    pub refresh_seconds: serde::de::IgnoredAny,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub filter: String,
    pub format: String,
}

/// Every key with its default.
pub const DEFAULTS: &[(&str, &str)] = &[
    ("worker.rack_id", "rack-1"),
    ("worker.max_attempts", "5"),
    ("worker.retry_backoff_ms", "100"),
    ("worker.quarantine_after", "3"),
    ("worker.card_wait_seconds", "600"),
    ("worker.shutdown_grace_seconds", "30"),
    ("worker.heartbeat_interval_seconds", "5"),
    ("worker.take_check_timeout_ms", "2000"),
    ("worker.key_file", "cardfleet-worker.key"),
    ("reader.type", "simulated"),
    ("reader.slots", "16"),
    ("simulated.latency_ms", "0"),
    ("simulated.keygen_latency_ms", "0"),
    ("simulated.removal_rate", "0"),
    ("simulated.mute_rate", "0"),
    ("simulated.reinsert_ms", "200"),
    ("simulated.vendor_objects", "true"),
    ("simulated.extensions", "true"),
    ("amqp.url", "amqp://guest:guest@127.0.0.1:5672/%2f"),
    ("amqp.delivery_limit", "5"),
    ("amqp.reconnect_max_seconds", "10"),
    ("metrics.listen", "127.0.0.1:9465"),
    ("log.filter", "info"),
    ("log.format", "text"),
];

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct SettingsError(String);

impl WorkerSettings {
    pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Self, SettingsError> {
        Self::load_layered(file, &[], overrides)
    }

    /// As [`WorkerSettings::load`], with `defaults` replacing embedded ones
    /// (standalone mode names its own rack); file and environment still win.
    pub fn load_layered(
        file: Option<&Path>,
        defaults: &[(&str, String)],
        overrides: &[(&str, String)],
    ) -> Result<Self, SettingsError> {
        let err = |e: config::ConfigError| SettingsError(e.to_string());
        let mut builder = config::Config::builder();
        for (key, value) in DEFAULTS {
            builder = builder.set_default(*key, *value).map_err(err)?;
        }
        for (key, value) in defaults {
            builder = builder.set_default(*key, value.as_str()).map_err(err)?;
        }
        builder = builder
            .set_default("reader.name_patterns", Vec::<String>::new())
            .map_err(err)?;
        builder = match file {
            Some(path) => builder.add_source(config::File::from(path).required(true)),
            None => {
                builder.add_source(config::File::with_name("cardfleet-worker.toml").required(false))
            }
        };
        builder = builder.add_source(
            config::Environment::with_prefix("CARDFLEET")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("reader.name_patterns")
                .try_parsing(true),
        );
        for (key, value) in overrides {
            builder = builder.set_override(*key, value.as_str()).map_err(err)?;
        }
        let settings: WorkerSettings = builder
            .build()
            .map_err(err)?
            .try_deserialize()
            .map_err(err)?;
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
        let rack_ok = !self.worker.rack_id.is_empty()
            && self.worker.rack_id.len() <= 64
            && self
                .worker
                .rack_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !rack_ok {
            return bad(
                "worker.rack_id",
                "must be 1 to 64 characters of a-z, A-Z, 0-9, '-', '_'",
            );
        }
        if self.reader.kind == ReaderKind::Simulated && self.reader.slots == 0 {
            return bad("reader.slots", "must be at least 1");
        }
        if self.worker.max_attempts == 0 {
            return bad("worker.max_attempts", "must be at least 1");
        }
        for (key, rate) in [
            ("simulated.removal_rate", self.simulated.removal_rate),
            ("simulated.mute_rate", self.simulated.mute_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return bad(key, "must be between 0 and 1");
            }
        }
        Ok(())
    }

    pub fn worker_id(&self) -> String {
        self.worker
            .id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", self.worker.rack_id, std::process::id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_describe_a_16_slot_simulated_rack() {
        let s = WorkerSettings::load(None, &[]).unwrap();
        assert_eq!(s.reader.kind, ReaderKind::Simulated);
        assert_eq!(s.reader.slots, 16);
    }

    #[test]
    fn a_bad_rack_id_is_named() {
        let err = WorkerSettings::load(None, &[("worker.rack_id", "rack 1".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("worker.rack_id"), "{err}");
    }

    #[test]
    fn the_control_planes_sections_may_share_the_environment() {
        let s = WorkerSettings::load(
            None,
            &[
                ("database.url", "postgres://x".into()),
                ("http.listen", "127.0.0.1:1".into()),
                ("metrics.refresh_seconds", "5".into()),
            ],
        );
        assert!(s.is_ok(), "{:?}", s.err());
        let err = WorkerSettings::load(None, &[("wroker.rack_id", "r".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("wroker"), "{err}");
    }

    #[test]
    fn the_enrollment_token_does_not_print() {
        let s = WorkerSettings::load(
            None,
            &[
                ("worker.enrollment_token", "tok-secret-123".into()),
                ("worker.api_url", "http://cp:8080".into()),
            ],
        )
        .unwrap();
        assert_eq!(
            s.worker
                .enrollment_token
                .as_ref()
                .map(EnrollmentToken::expose),
            Some("tok-secret-123")
        );
        assert!(!format!("{s:?}").contains("tok-secret-123"));
        assert_eq!(s.worker.key_file, PathBuf::from("cardfleet-worker.key"));
    }

    #[test]
    fn an_unknown_reader_type_is_refused() {
        let err = WorkerSettings::load(None, &[("reader.type", "usb".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("usb") || err.contains("type"), "{err}");
    }
}
