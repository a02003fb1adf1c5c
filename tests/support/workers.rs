//! Workers for end-to-end tests: in-process workers with simulated racks,
//! and helpers to import their cards and check what was written on them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use cardfleet::credentials::CredentialCipher;
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
        let config = cardfleet_worker::app::runtime_config(&settings);
        let metrics = cardfleet_worker::metrics::WorkerMetrics::new();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let metrics_port = listener.local_addr().unwrap().port();
        tokio::spawn(cardfleet_worker::app::serve_metrics(
            tokio::net::TcpListener::from_std(listener).unwrap(),
            metrics.clone(),
            shutdown.clone(),
        ));
        let task = tokio::spawn(cardfleet_worker::runtime::run(
            config,
            rack,
            metrics,
            shutdown.clone(),
        ));
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
