//! Workers for end-to-end tests: in-process workers with simulated racks,
//! and helpers to import their cards and check what was written on them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cardfleet::credentials::CredentialCipher;
use cardfleet::store::Store;
use cardfleet_schemas::sealing::RackSecretKey;
use cardfleet_worker::piv::VirtualPivCard;
use cardfleet_worker::rack::simulated::{CardFeed, OutputTray, SimCard};
use cardfleet_worker::settings::WorkerSettings;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{ENCRYPTION_KEY, TestApp};

/// A worker running in this process with a simulated rack.
pub struct TestWorker {
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    pub tray: OutputTray,
    /// Cards still waiting to be loaded; tests may add more.
    pub feed: CardFeed,
    /// Where this worker serves `/metrics` (127.0.0.1).
    pub metrics_port: u16,
}

impl TestWorker {
    pub fn start(
        app: &TestApp,
        rack: &str,
        slots: u16,
        cards: Vec<SimCard>,
        extra: &[(&str, String)],
    ) -> Self {
        let mut overrides = vec![
            ("worker.rack_id", rack.to_owned()),
            ("reader.slots", slots.to_string()),
            ("amqp.url", app.vhost.url()),
            ("amqp.reconnect_max_seconds", "1".into()),
            ("worker.heartbeat_interval_seconds", "1".into()),
            ("worker.retry_backoff_ms", "20".into()),
            ("worker.card_wait_seconds", "30".into()),
        ];
        overrides.extend(extra.iter().cloned());
        let settings = WorkerSettings::load(None, &overrides).unwrap();
        let feed = CardFeed::new(cards);
        let tray = OutputTray::default();
        let rack = cardfleet_worker::app::simulated_rack(&settings, feed.clone(), tray.clone());
        let shutdown = CancellationToken::new();
        let key = Arc::new(test_rack_key(&settings.worker.rack_id));
        let config = cardfleet_worker::app::runtime_config(&settings, key);
        let metrics = cardfleet_worker::metrics::WorkerMetrics::new();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let metrics_port = listener.local_addr().unwrap().port();
        tokio::spawn(cardfleet_worker::app::serve_metrics(
            tokio::net::TcpListener::from_std(listener).unwrap(),
            metrics.clone(),
            shutdown.clone(),
        ));
        // Enrolled before the worker reports its slots, so no job for its
        // cards is dispatched before the dispatcher can seal it.
        let store = app.store.clone();
        let rack_id = settings.worker.rack_id.clone();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            enroll_rack(&store, &rack_id).await;
            cardfleet_worker::runtime::run(config, rack, metrics, stop).await;
        });
        Self {
            shutdown,
            task,
            tray,
            feed,
            metrics_port,
        }
    }

    pub async fn stop(self) -> OutputTray {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        self.tray
    }
}

/// The key of an in-process test rack: fixed per rack id, so a worker
/// restarted on the same rack opens the jobs sealed before its restart.
pub fn test_rack_key(rack: &str) -> RackSecretKey {
    use sha2::Digest;
    let seed = sha2::Sha256::digest(format!("cardfleet-test-rack-key/{rack}"));
    RackSecretKey::from_bytes(&seed).unwrap()
}

/// Enrolls `rack` with its [`test_rack_key`] directly in the store, as the
/// enrollment endpoint would; returns the key.
pub async fn enroll_rack(store: &Store, rack: &str) -> RackSecretKey {
    let key = test_rack_key(rack);
    store
        .enroll_rack(
            rack,
            key.public_key().as_bytes(),
            &cardfleet_schemas::rack_identity::verifying_key(&key),
            "test",
        )
        .await
        .unwrap();
    key
}

/// A freshly generated key file for a worker process of `rack` in `dir`
/// (`worker.key_file`), enrolled in the store; a file already there (a
/// restarted worker) is kept and enrolled again.
pub async fn enrolled_key_file(store: &Store, rack: &str, dir: &Path) -> PathBuf {
    let path = dir.join(format!("{rack}.key"));
    let (key, _) = cardfleet_worker::rack_key::load_or_create(&path).unwrap();
    store
        .enroll_rack(
            rack,
            key.public_key().as_bytes(),
            &cardfleet_schemas::rack_identity::verifying_key(&key),
            "test",
        )
        .await
        .unwrap();
    path
}

/// Imports cards whose chip serials are the virtual cards' decimal serials.
pub async fn import_serials(app: &TestApp, serials: impl Iterator<Item = u32>) -> usize {
    let cards: Vec<_> = serials
        .map(|s| json!({ "card_number": format!("TC-{s}"), "chip_serial": s.to_string(), "card_type": "temporary", "profile": "temporary-piv" }))
        .collect();
    let n = cards.len();
    for chunk in cards.chunks(10_000) {
        let r = app
            .post("/v1/cards/import", json!({ "cards": chunk }))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    n
}

pub async fn wait_finished(app: &TestApp, batch: &str, timeout: Duration) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        last = app
            .get(&format!("/v1/initializations/{batch}?limit=1"))
            .await
            .body;
        if last["finished"] == true {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("batch did not finish: {last}");
}

/// The PIN stored for a card's latest job, decrypted as the dispatcher does.
pub async fn stored_pin(app: &TestApp, chip_serial: &str) -> String {
    let (job_id, key_id, nonce, ct): (Uuid, String, Vec<u8>, Vec<u8>) = sqlx::query_as(
        "SELECT cr.job_id, cr.key_id, cr.pin_nonce, cr.pin_ct FROM credentials cr
         JOIN cards c ON c.id = cr.card_id WHERE c.chip_serial = $1 ORDER BY cr.created_at DESC LIMIT 1",
    )
    .bind(chip_serial)
    .fetch_one(app.store.postgres_pool().expect("PostgreSQL store"))
    .await
    .unwrap();
    let cipher = CredentialCipher::from_hex("k1", ENCRYPTION_KEY).unwrap();
    let sealed = cardfleet::credentials::Sealed {
        nonce,
        ciphertext: ct,
    };
    let context = cardfleet::store::initialize::credential_context(job_id, "pin");
    cipher
        .open(&key_id, &sealed, &context)
        .unwrap()
        .expose()
        .to_owned()
}

pub fn verify_pin(card: &mut VirtualPivCard, pin: &str) -> bool {
    card.reset();
    let select = [0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08];
    card.process(&select);
    let mut data = pin.as_bytes().to_vec();
    data.resize(8, 0xFF);
    let mut verify = vec![0x00, 0x20, 0x00, 0x80, 0x08];
    verify.extend_from_slice(&data);
    card.process(&verify).ends_with(&[0x90, 0x00])
}

pub fn serial_of(card: &VirtualPivCard) -> String {
    card.options().chip_serial.to_string()
}
