//! The real PC/SC stack end to end: a worker with the `pcsc` backend encodes two virtual PIV
//! cards attached to vpcd inside pcscd, for a control plane on real PostgreSQL and RabbitMQ.
//! Then, with the worker stopped, yubico-piv-tool, openssl and a plain PC/SC client check
//! on each chip that the factory credentials are gone and the recorded ones are in place.
//!
//! The harness is in `pcsc_vpcd/`. The test names contain `vpcd`, so nextest runs them alone with the other vpcd tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "pcsc_vpcd/chip.rs"]
mod chip;
#[path = "pcsc_vpcd/stack.rs"]
mod stack;
mod support;

use std::path::Path;
use std::time::Duration;

use cardfleet::credentials::{CredentialCipher, MasterKey};
use cardfleet_schemas::profile::ManagementKeyAlgorithm;
use cardfleet_schemas::{CardProfile, CardSecrets};
use cardfleet_worker::rack::{RackEvent, SlotCommand, SlotJob};
use cardfleet_worker::settings::WorkerSettings;
use chip::check_card;
use serde_json::json;
use stack::{AttachedCard, ONE_AT_A_TIME, SLOTS, WAIT, prepare};
use support::*;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A worker in this process whose rack is every vpcd reader, through pcscd.
struct PcscWorker {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl PcscWorker {
    async fn start(app: &TestApp, dir: &Path) -> Self {
        let key_file = workers::enrolled_key_file(&app.store, "rack-pcsc", dir).await;
        let file = dir.join("cardfleet-worker.toml");
        std::fs::write(
            &file,
            "[reader]\ntype = \"pcsc\"\nname_patterns = [\"Virtual PCD\"]\n",
        )
        .unwrap();
        let overrides = [
            ("worker.rack_id", "rack-pcsc".to_owned()),
            ("amqp.url", app.vhost.url()),
            ("amqp.reconnect_max_seconds", "1".into()),
            ("worker.heartbeat_interval_seconds", "1".into()),
            ("worker.retry_backoff_ms", "20".into()),
            ("worker.card_wait_seconds", "30".into()),
            ("metrics.listen", "127.0.0.1:0".into()),
            ("worker.key_file", key_file.display().to_string()),
        ];
        let settings = WorkerSettings::load(Some(&file), &overrides).unwrap();
        assert_eq!(settings.reader.name_patterns, ["Virtual PCD"]);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(cardfleet_worker::app::run(settings, shutdown.clone()));
        Self { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let finished = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        let result = finished
            .expect("the worker stops")
            .expect("the worker task ends");
        result.expect("the worker ran without error");
    }
}

/// A credential stored for a card's latest job, decrypted as the dispatcher does.
async fn stored(app: &TestApp, chip_serial: &str, field: &str) -> String {
    let sql = format!(
        "SELECT cr.job_id, cr.key_id, cr.{field}_nonce, cr.{field}_ct FROM credentials cr
         JOIN cards c ON c.id = cr.card_id WHERE c.chip_serial = $1 ORDER BY cr.created_at DESC LIMIT 1"
    );
    let (job_id, key_id, nonce, ct): (Uuid, String, Vec<u8>, Vec<u8>) =
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(chip_serial)
            .fetch_one(app.store.postgres_pool().expect("PostgreSQL store"))
            .await
            .unwrap();
    let cipher = CredentialCipher::from_hex("k1", ENCRYPTION_KEY).unwrap();
    let sealed = cardfleet::credentials::Sealed {
        nonce,
        ciphertext: ct,
    };
    let context = cardfleet::store::initialize::credential_context(job_id, field);
    cipher
        .open(&key_id, &sealed, &context)
        .unwrap()
        .expose()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vpcd_cards_encoded_by_a_pcsc_worker_hold_the_recorded_credentials_and_keys() {
    let _turn = ONE_AT_A_TIME.lock().await;
    tokio::task::spawn_blocking(prepare).await.unwrap();
    let dir = std::env::temp_dir().join(format!("cardfleet-pcsc-vpcd-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // yubico-piv-tool 2.2 prints serials as signed 32-bit numbers: stay below 2^31.
    let first = (rand::random::<u32>() & 0x3FFF_FFFF) | 1;
    let serials = [first, first + 1];
    let cards_dir = dir.clone();
    let cards = tokio::task::spawn_blocking(move || {
        [0, 1].map(|i| {
            let (addr, reader) = SLOTS[i];
            AttachedCard::attach(
                addr,
                reader,
                serials[i],
                &cards_dir.join(format!("card-{i}")),
            )
        })
    })
    .await
    .unwrap();

    let app = spawn_app().await;
    let import: Vec<_> = serials
        .iter()
        .map(|s| json!({ "card_number": format!("TC-{s}"), "chip_serial": s.to_string(), "card_type": "temporary", "profile": "temporary-piv" }))
        .collect();
    let r = app
        .post("/v1/cards/import", json!({ "cards": import }))
        .await;
    assert_eq!(r.body["imported"], 2, "{}", r.body);
    app.enable().await;
    let worker = PcscWorker::start(&app, &dir).await;

    let listed = app
        .get("/v1/cards?type=temporary&state=produced&limit=10")
        .await
        .body;
    let card_ids: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["card_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(card_ids.len(), 2, "{listed}");
    let r = app
        .post("/v1/initializations", json!({ "card_ids": card_ids }))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        r.body["accepted"].as_array().unwrap().len(),
        2,
        "{}",
        r.body
    );

    for id in &card_ids {
        eventually(
            Duration::from_secs(120),
            "both cards unassigned with their steps recorded",
            || async {
                let card = app.get(&format!("/v1/cards/{id}")).await.body;
                card["state"] == "unassigned"
                    && card["jobs"][0]["steps"]
                        .as_array()
                        .is_some_and(|s| !s.is_empty())
            },
        )
        .await;
        let card = app.get(&format!("/v1/cards/{id}")).await.body;
        let steps: Vec<String> = card["jobs"][0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{}={}",
                    s["step"].as_str().unwrap(),
                    s["status"].as_str().unwrap_or("?")
                )
            })
            .collect();
        println!(
            "card {} (chip {}): {} steps: {}",
            id,
            card["chip_serial"],
            steps.len(),
            steps.join(" ")
        );
        assert!(
            steps.iter().any(|s| s == "generate_key_9a=done"),
            "{steps:?}"
        );
    }
    worker.stop().await;

    for card in &cards {
        let serial = card.serial.to_string();
        let pin = stored(&app, &serial, "pin").await;
        let puk = stored(&app, &serial, "puk").await;
        let key = MasterKey::from_hex(MASTER_KEY)
            .unwrap()
            .derive_management_key(&serial, ManagementKeyAlgorithm::Aes192)
            .expose()
            .to_owned();
        let (reader, dir) = (card.reader, dir.clone());
        tokio::task::spawn_blocking(move || {
            check_card(reader, &pin, &puk, &hex::decode(key).unwrap(), &dir)
        })
        .await
        .unwrap();
    }

    tokio::task::spawn_blocking(move || cards.map(AttachedCard::pull))
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vpcd_cards_going_in_and_out_become_pcsc_rack_events_with_stable_slots() {
    let _turn = ONE_AT_A_TIME.lock().await;
    tokio::task::spawn_blocking(prepare).await.unwrap();
    let dir = std::env::temp_dir().join(format!(
        "cardfleet-pcsc-rack-vpcd-{}",
        Uuid::new_v4().simple()
    ));
    let mut rack = cardfleet_worker::rack::pcsc_rack(&["Virtual PCD".to_owned()]).unwrap();
    assert_eq!(rack.slots.len(), 16, "pcscd serves at most 16 readers");

    let first = (rand::random::<u32>() & 0x3FFF_FFFF) | 1;
    let attach = |i: usize, serial: u32| {
        let dir = dir.join(format!("card-{serial}"));
        tokio::task::spawn_blocking(move || {
            AttachedCard::attach(SLOTS[i].0, SLOTS[i].1, serial, &dir)
        })
    };
    let card = attach(0, first).await.unwrap();
    let inserted = next_event(&mut rack).await;
    println!("{} in: {inserted:?}", SLOTS[0].1);
    let RackEvent::Inserted { slot, chip_serial } = inserted else {
        panic!("{inserted:?}")
    };
    assert_eq!(chip_serial, first.to_string());

    // A job for a chip that is not in the slot is not tried.
    let (reply, report) = tokio::sync::oneshot::channel();
    let job = SlotJob {
        job_id: Uuid::new_v4(),
        chip_serial: "not-this-chip".into(),
        profile: CardProfile::builtin().unwrap().remove(0),
        secrets: CardSecrets {
            pin: "271828".into(),
            puk: "31415926".into(),
            management_key: hex::encode([7u8; 24]),
            management_key_algorithm: ManagementKeyAlgorithm::Aes192,
        },
        cancelled: Default::default(),
        journal_keeper: None,
    };
    rack.slots[usize::from(slot)]
        .send(SlotCommand::Encode {
            job: Box::new(job),
            reply,
        })
        .unwrap();
    let report = report.await.unwrap();
    assert_eq!(report.failure.unwrap().code, "card_absent");

    tokio::task::spawn_blocking(move || card.pull())
        .await
        .unwrap();
    let removed = next_event(&mut rack).await;
    println!("{} out: {removed:?}", SLOTS[0].1);
    assert_eq!(removed, RackEvent::Removed { slot });

    let other = attach(1, first + 1).await.unwrap();
    let inserted = next_event(&mut rack).await;
    println!("{} in: {inserted:?}", SLOTS[1].1);
    let RackEvent::Inserted {
        slot: other_slot,
        chip_serial,
    } = inserted
    else {
        panic!("{inserted:?}")
    };
    assert_eq!(chip_serial, (first + 1).to_string());
    assert_ne!(other_slot, slot, "another reader, another slot");

    let again = attach(0, first + 2).await.unwrap();
    let inserted = next_event(&mut rack).await;
    println!("{} in: {inserted:?}", SLOTS[0].1);
    assert_eq!(
        inserted,
        RackEvent::Inserted {
            slot,
            chip_serial: (first + 2).to_string()
        },
        "same reader, same slot"
    );

    tokio::task::spawn_blocking(move || {
        other.pull();
        again.pull();
    })
    .await
    .unwrap();
    let mut gone = [next_event(&mut rack).await, next_event(&mut rack).await];
    gone.sort_by_key(|e| format!("{e:?}"));
    let mut expected = [
        RackEvent::Removed { slot },
        RackEvent::Removed { slot: other_slot },
    ];
    expected.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(gone, expected);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn next_event(rack: &mut cardfleet_worker::rack::Rack) -> RackEvent {
    let event = tokio::time::timeout(WAIT, rack.events.recv()).await;
    event.expect("a rack event in time").expect("the rack runs")
}
