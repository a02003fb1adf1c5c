//! The fleet end to end: control plane + workers with simulated racks over
//! the real PostgreSQL and RabbitMQ.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use cardfleet::credentials::CredentialCipher;
use cardfleet_worker::piv::VirtualPivCard;
use cardfleet_worker::rack::simulated::{CardFeed, OutputTray, SimCard};
use cardfleet_worker::settings::WorkerSettings;
use serde_json::json;
use support::*;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A worker running in this process with a simulated rack.
struct TestWorker {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    tray: OutputTray,
    /// Cards still waiting to be loaded; tests may add more.
    pub feed: CardFeed,
}

impl TestWorker {
    fn start(
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
        }
    }

    async fn stop(self) -> OutputTray {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        self.tray
    }
}

/// Imports cards whose chip serials are the virtual cards' decimal serials.
async fn import_serials(app: &TestApp, serials: impl Iterator<Item = u32>) -> usize {
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

async fn wait_finished(app: &TestApp, batch: &str, timeout: Duration) -> serde_json::Value {
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
async fn stored_pin(app: &TestApp, chip_serial: &str) -> String {
    let (job_id, key_id, nonce, ct): (Uuid, String, Vec<u8>, Vec<u8>) = sqlx::query_as(
        "SELECT cr.job_id, cr.key_id, cr.pin_nonce, cr.pin_ct FROM credentials cr
         JOIN cards c ON c.id = cr.card_id WHERE c.chip_serial = $1 ORDER BY cr.created_at DESC LIMIT 1",
    )
    .bind(chip_serial)
    .fetch_one(app.store.pool())
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

fn verify_pin(card: &mut VirtualPivCard, pin: &str) -> bool {
    card.reset();
    let select = [0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08];
    card.process(&select);
    let mut data = pin.as_bytes().to_vec();
    data.resize(8, 0xFF);
    let mut verify = vec![0x00, 0x20, 0x00, 0x80, 0x08];
    verify.extend_from_slice(&data);
    card.process(&verify).ends_with(&[0x90, 0x00])
}

fn serial_of(card: &VirtualPivCard) -> String {
    card.options().chip_serial.to_string()
}

#[tokio::test]
async fn two_workers_with_16_simulated_slots_each_encode_a_2000_card_batch() {
    let app = spawn_app().await;
    let n = import_serials(&app, 1..=2000).await;
    app.enable().await;
    let first = TestWorker::start(
        &app,
        "rack-1",
        16,
        (1..=1000).map(SimCard::new).collect(),
        &[],
    );
    let second = TestWorker::start(
        &app,
        "rack-2",
        16,
        (1001..=2000).map(SimCard::new).collect(),
        &[],
    );
    let r = app
        .post(
            "/v1/initializations",
            json!({ "filter": { "type": "temporary", "state": "produced", "limit": n } }),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["accepted"].as_array().unwrap().len(), n);
    let batch = r.body["batch_id"].as_str().unwrap().to_owned();
    let status = wait_finished(&app, &batch, Duration::from_secs(600)).await;
    assert_eq!(status["counts"]["succeeded"], 2000, "{status}");

    let unassigned: i64 =
        sqlx::query_scalar("SELECT count(*) FROM cards WHERE state = 'unassigned'")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(unassigned, 2000);
    let card = app.get("/v1/cards?state=unassigned&limit=1").await.body[0]["card_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let detail = app.get(&format!("/v1/cards/{card}")).await.body;
    let steps: Vec<&str> = detail["jobs"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert!(steps.len() >= 5, "{steps:?}");

    // Spot-check the chips: the stored PIN verifies, the factory PIN does not.
    let mut cards = first.stop().await.take();
    cards.extend(second.stop().await.take());
    assert_eq!(cards.len(), 2000);
    for card in cards.iter_mut().step_by(199) {
        let serial = serial_of(card);
        let pin = stored_pin(&app, &serial).await;
        assert!(
            verify_pin(card, &pin),
            "stored PIN does not verify on chip {serial}"
        );
        assert!(
            !verify_pin(card, "123456"),
            "factory PIN still works on chip {serial}"
        );
    }
}
