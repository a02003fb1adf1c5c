//! End-to-end behaviour of the control plane against the real PostgreSQL
//! and RabbitMQ on this machine, with a stand-in worker on the wire.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use cardfleet_schemas::sealing;
use cardfleet_schemas::{self as wire, Outcome};
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use serde_json::json;
use support::*;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// Waits until the ledger has recorded a rack's slot event.
async fn wait_for_a_rack(app: &TestApp) {
    eventually(WAIT, "card located", || async {
        !app.get("/v1/racks")
            .await
            .body
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;
}

#[tokio::test]
async fn initialize_is_refused_while_disabled_then_jobs_reach_the_rack_that_reported_the_card() {
    let app = spawn_app().await;
    let ids = app.import_cards("A", 3).await;
    let worker = FakeWorker::connect(&app.vhost.url()).await;

    let before = app.table_counts().await;
    let r = app
        .post("/v1/initializations", json!({ "card_ids": ids }))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["code"], "process_disabled");
    assert_eq!(
        app.table_counts().await,
        before,
        "a refused request changed the database"
    );

    app.enable().await;
    // Card 0 was loaded into rack-a before submitting; card 1 into rack-b; card 2 later.
    workers::enroll_rack(&app.store, "rack-a").await;
    worker
        .insert_cards("rack-a", &["A-CHIP-000000".into()])
        .await;
    workers::enroll_rack(&app.store, "rack-b").await;
    worker
        .insert_cards("rack-b", &["A-CHIP-000001".into()])
        .await;
    eventually(WAIT, "slot events applied", || async {
        app.get("/v1/racks")
            .await
            .body
            .as_array()
            .map_or(0, Vec::len)
            == 2
    })
    .await;

    let r = app
        .post("/v1/initializations", json!({ "card_ids": ids }))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["accepted"].as_array().unwrap().len(), 3);
    for id in &ids {
        assert_eq!(app.card_state(*id).await, "initializing");
    }

    let a = worker.take_jobs("rack-a", 1, WAIT).await;
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].card_id, ids[0]);
    assert_eq!(a[0].chip_serial, "A-CHIP-000000");
    assert_eq!(a[0].profile.name, "temporary-piv");
    let b = worker.take_jobs("rack-b", 1, WAIT).await;
    assert_eq!(b[0].card_id, ids[1]);

    // The secrets are sealed to the rack's key and open for that job only;
    // they follow the profile's policy and the management key is the
    // documented KDF's.
    assert_eq!(a[0].secrets.scheme, wire::SecretScheme::Hpke);
    let rack_a = workers::test_rack_key("rack-a");
    let secrets = sealing::open(&rack_a, "rack-a", a[0].job_id, &a[0].secrets).unwrap();
    assert!(sealing::open(&rack_a, "rack-b", a[0].job_id, &a[0].secrets).is_err());
    assert_eq!(secrets.pin.len(), 6);
    assert!(secrets.pin.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(secrets.puk.len(), 8);
    let master = cardfleet::credentials::MasterKey::from_hex(MASTER_KEY).unwrap();
    let expected = master.derive_management_key("A-CHIP-000000", secrets.management_key_algorithm);
    assert_eq!(secrets.management_key, expected.expose());

    let detail = app.get(&format!("/v1/cards/{}", ids[2])).await;
    assert_eq!(detail.body["jobs"][0]["state"], "awaiting_card");
    worker
        .insert_cards("rack-a", &["A-CHIP-000002".into()])
        .await;
    let later = worker.take_jobs("rack-a", 1, WAIT).await;
    assert_eq!(
        later.len(),
        1,
        "the job waiting for its card was not dispatched"
    );
    assert_eq!(later[0].card_id, ids[2]);
}

#[tokio::test]
async fn a_result_delivered_three_times_moves_job_and_card_exactly_once() {
    let app = spawn_app().await;
    let ids = app.import_cards("R", 1).await;
    let worker = FakeWorker::connect(&app.vhost.url()).await;
    app.enable().await;
    workers::enroll_rack(&app.store, "rack-r").await;
    worker
        .insert_cards("rack-r", &["R-CHIP-000000".into()])
        .await;
    wait_for_a_rack(&app).await;
    let r = app
        .post("/v1/initializations", json!({ "card_ids": ids }))
        .await;
    assert_eq!(r.status, 202);
    let job = worker.take_jobs("rack-r", 1, WAIT).await.remove(0);

    let result = result_for(&job, Outcome::Succeeded);
    for _ in 0..3 {
        worker.publish_result(&result).await;
    }
    eventually(WAIT, "card unassigned", || async {
        app.card_state(ids[0]).await == "unassigned"
    })
    .await;
    // Let the two duplicates be consumed too, then count what they did.
    eventually(WAIT, "duplicates consumed", || async {
        let m = reqwest::get(format!(
            "http://127.0.0.1:{}/metrics",
            app.metrics_port.unwrap()
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        m.contains("cardfleet_results_applied_total{effect=\"unchanged\"} 2")
    })
    .await;
    let finished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit WHERE job_id = $1 AND action = 'job.finished'",
    )
    .bind(job.job_id)
    .fetch_one(app.store.postgres_pool().expect("PostgreSQL store"))
    .await
    .unwrap();
    assert_eq!(finished, 1);
    let status: String = sqlx::query_scalar("SELECT status FROM credentials WHERE job_id = $1")
        .bind(job.job_id)
        .fetch_one(app.store.postgres_pool().expect("PostgreSQL store"))
        .await
        .unwrap();
    assert_eq!(status, "active");
    let detail = app.get(&format!("/v1/cards/{}", ids[0])).await;
    assert_eq!(detail.body["jobs"][0]["state"], "succeeded");
    assert_eq!(detail.body["jobs"][0]["steps"][0]["step"], "change_pin");
}

#[tokio::test]
async fn cancel_before_encoding_returns_the_card_and_tells_the_workers() {
    let app = spawn_app().await;
    let ids = app.import_cards("C", 2).await;
    let worker = FakeWorker::connect(&app.vhost.url()).await;
    app.enable().await;

    // A worker's control queue, bound before the cancel.
    let control = worker.conn.create_channel().await.unwrap();
    let q = control
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    control
        .queue_bind(
            q.name().clone(),
            wire::CONTROL_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut cancellations = control
        .basic_consume(
            q.name().clone(),
            "test-control".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    workers::enroll_rack(&app.store, "rack-c").await;
    worker
        .insert_cards("rack-c", &["C-CHIP-000000".into()])
        .await;
    wait_for_a_rack(&app).await;
    let r = app
        .post("/v1/initializations", json!({ "card_ids": ids }))
        .await;
    let batch = r.body["batch_id"].as_str().unwrap().to_owned();
    // Card 0 is dispatched (its message is on the broker); card 1 awaits its card.
    eventually(WAIT, "job dispatched", || async {
        app.get(&format!("/v1/initializations/{batch}")).await.body["counts"]["dispatched"] == 1
    })
    .await;

    let r = app
        .post(&format!("/v1/initializations/{batch}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Card 1 never left: cancelled at once. Card 0's job is on a rack's
    // queue: only a request, the worker's answer decides.
    assert_eq!(r.body["cancelled"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["stopping"].as_array().unwrap().len(), 1);
    assert_eq!(app.card_state(ids[1]).await, "produced");
    assert_eq!(app.card_state(ids[0]).await, "initializing");

    let delivery = tokio::time::timeout(WAIT, cancellations.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let wire::ControlMessage::Cancellation(cancel) =
        serde_json::from_slice(&delivery.data).unwrap()
    else {
        panic!("expected a cancellation");
    };
    let job = worker.take_jobs("rack-c", 1, WAIT).await.remove(0);
    assert!(
        cancel.job_ids.contains(&job.job_id),
        "the message on the broker is not named cancelled"
    );

    // A worker that missed the broadcast and encoded the card: the result
    // is a fact about the chip and wins; the card keeps its credentials.
    worker
        .publish_result(&result_for(&job, Outcome::Succeeded))
        .await;
    eventually(WAIT, "the result applied", || async {
        let m = reqwest::get(format!(
            "http://127.0.0.1:{}/metrics",
            app.metrics_port.unwrap()
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        m.contains("cardfleet_results_applied_total{effect=\"changed\"} 1")
    })
    .await;
    assert_eq!(app.card_state(ids[0]).await, "unassigned");
    let status = app.get(&format!("/v1/initializations/{batch}")).await.body;
    assert_eq!(status["counts"]["succeeded"], 1, "{status}");
    assert_eq!(status["counts"]["cancelled"], 1, "{status}");

    // A quarantined slot is released through the same exchange.
    let r = app
        .post("/v1/racks/rack-c/slots/0/release", json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let delivery = tokio::time::timeout(WAIT, cancellations.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let message: wire::ControlMessage = serde_json::from_slice(&delivery.data).unwrap();
    assert!(
        matches!(message, wire::ControlMessage::ReleaseSlot(r) if r.rack_id == "rack-c" && r.slot == 0)
    );
    assert_eq!(
        app.post("/v1/racks/rack-c/slots/99/release", json!({}))
            .await
            .status,
        404
    );

    // Cancelled cards can be submitted again.
    let again = app
        .post("/v1/initializations", json!({ "card_ids": [ids[1]] }))
        .await;
    assert_eq!(again.status, 202);
    assert_eq!(again.body["accepted"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn garbage_and_results_for_unknown_jobs_are_dead_lettered_and_the_ledger_keeps_going() {
    let app = spawn_app().await;
    let ids = app.import_cards("G", 1).await;
    let worker = FakeWorker::connect(&app.vhost.url()).await;
    app.enable().await;
    worker
        .publish(
            wire::RESULTS_EXCHANGE,
            wire::RESULTS_QUEUE,
            b"\xff\xfe not json",
        )
        .await;
    worker
        .publish(
            wire::EVENTS_EXCHANGE,
            "slot.inserted",
            br#"{"type":"slot_event","rack_id":"x"}"#,
        )
        .await;
    let mut ghost = result_for(
        &wire::InitializeJob {
            meta: wire::Meta::now(),
            job_id: Uuid::new_v4(),
            batch_id: Uuid::new_v4(),
            card_id: Uuid::new_v4(),
            card_number: "X".into(),
            chip_serial: "X".into(),
            rack_id: "rack-g".into(),
            profile: cardfleet_schemas::CardProfile::builtin().unwrap().remove(0),
            secrets: wire::JobSecrets {
                scheme: wire::SecretScheme::Hpke,
                key_id: String::new(),
                enc: String::new(),
                ciphertext: String::new(),
            },
        },
        Outcome::Succeeded,
    );
    if let wire::ResultMessage::EncodeResult(r) = &mut ghost {
        r.worker_id = "ghost".into();
    }
    // Signed by an enrolled rack-g: unknown for its job, not its signature.
    workers::enroll_rack(&app.store, "rack-g").await;
    worker.publish_result(&ghost).await;

    eventually(WAIT, "three dead letters", || async {
        app.get("/v1/dead-letters")
            .await
            .body
            .as_array()
            .map_or(0, Vec::len)
            == 3
    })
    .await;
    let letters = app.get("/v1/dead-letters").await.body;
    let reasons: Vec<&str> = letters
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"unknown_job"), "{reasons:?}");
    assert!(
        reasons
            .iter()
            .filter(|r| r.starts_with("undecodable"))
            .count()
            == 2,
        "{reasons:?}"
    );

    // The consumers are still alive: a real flow completes.
    workers::enroll_rack(&app.store, "rack-g").await;
    worker
        .insert_cards("rack-g", &["G-CHIP-000000".into()])
        .await;
    wait_for_a_rack(&app).await;
    app.post("/v1/initializations", json!({ "card_ids": ids }))
        .await;
    let job = worker.take_jobs("rack-g", 1, WAIT).await.remove(0);
    worker
        .publish_result(&result_for(&job, Outcome::Succeeded))
        .await;
    eventually(WAIT, "card unassigned", || async {
        app.card_state(ids[0]).await == "unassigned"
    })
    .await;
}

#[tokio::test]
async fn failures_send_cards_back_to_stock_or_to_failed_with_the_reason_kept() {
    let app = spawn_app().await;
    let ids = app.import_cards("F", 2).await;
    let worker = FakeWorker::connect(&app.vhost.url()).await;
    app.enable().await;
    workers::enroll_rack(&app.store, "rack-f").await;
    worker
        .insert_cards("rack-f", &["F-CHIP-000000".into(), "F-CHIP-000001".into()])
        .await;
    eventually(WAIT, "cards located", || async {
        app.get("/v1/racks").await.body[0]["slots"]
            .as_array()
            .map_or(0, Vec::len)
            == 2
    })
    .await;
    app.post("/v1/initializations", json!({ "card_ids": ids }))
        .await;
    let jobs = worker.take_jobs("rack-f", 2, WAIT).await;
    for job in &jobs {
        let mut result = result_for(job, Outcome::Failed);
        if let wire::ResultMessage::EncodeResult(r) = &mut result {
            // The card failed before any write step: nothing new is on the chip.
            r.steps.clear();
            let unusable = job.card_id == ids[0];
            r.failure = Some(wire::Failure {
                code: if unusable {
                    "card_mute".into()
                } else {
                    "card_removed".into()
                },
                message: "test".into(),
                card_unusable: unusable,
            });
        }
        worker.publish_result(&result).await;
    }
    eventually(WAIT, "first card failed", || async {
        app.card_state(ids[0]).await == "failed"
    })
    .await;
    eventually(WAIT, "second card back in stock", || async {
        app.card_state(ids[1]).await == "produced"
    })
    .await;
    let detail = app.get(&format!("/v1/cards/{}", ids[1])).await;
    assert!(
        detail.body["state_reason"]
            .as_str()
            .unwrap()
            .starts_with("card_removed"),
        "{}",
        detail.body
    );
}

#[tokio::test]
async fn the_event_stream_reports_transitions_and_then_that_the_batch_finished() {
    let app = spawn_app().await;
    let ids = app.import_cards("S", 1).await;
    let worker = FakeWorker::connect(&app.vhost.url()).await;
    app.enable().await;
    workers::enroll_rack(&app.store, "rack-s").await;
    worker
        .insert_cards("rack-s", &["S-CHIP-000000".into()])
        .await;
    wait_for_a_rack(&app).await;
    let r = app
        .post("/v1/initializations", json!({ "card_ids": ids }))
        .await;
    let batch = r.body["batch_id"].as_str().unwrap().to_owned();
    let job = worker.take_jobs("rack-s", 1, WAIT).await.remove(0);
    worker
        .publish_result(&result_for(&job, Outcome::Succeeded))
        .await;

    let response = app
        .http
        .get(app.url(&format!("/v1/initializations/{batch}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = tokio::time::timeout(WAIT, response.text())
        .await
        .unwrap()
        .unwrap();
    assert!(text.contains("event: transition"), "{text}");
    assert!(text.contains("\"to\":\"dispatched\""), "{text}");
    assert!(text.contains("\"to\":\"succeeded\""), "{text}");
    assert!(text.contains("event: finished"), "{text}");
}

#[tokio::test]
async fn a_csv_production_file_imports_good_rows_and_reports_bad_ones() {
    let app = spawn_app_with(&[cardfleet::app::Component::Api], &[]).await;
    let mut csv = b"card_number,chip_serial,card_type,profile\n".to_vec();
    csv.extend_from_slice(b"TC-1,CHIP-1,temporary,temporary-piv\n");
    csv.extend_from_slice(b"TC-2,CHIP-\xff\xfe,temporary,temporary-piv\n");
    csv.extend_from_slice(b"TC-3,CHIP-3,temporary,no-such-profile\n");
    csv.extend_from_slice(b"TC-1,CHIP-9,temporary,temporary-piv\n");
    csv.extend_from_slice(b"TC-5,CHIP-5,temporary\n");
    csv.extend_from_slice(b"TC-6,CHIP-6,temporary,temporary-piv\n");
    let r = app
        .raw(
            reqwest::Method::POST,
            "/v1/cards/import",
            "text/csv",
            csv.clone(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["imported"], 2, "{}", r.body);
    let codes: Vec<(u64, &str)> = r.body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["row"].as_u64().unwrap(), x["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        codes,
        vec![
            (2, "malformed"),
            (3, "unknown_profile"),
            (4, "duplicate"),
            (5, "malformed")
        ]
    );
    // The same file again: everything is a duplicate now.
    let r = app
        .raw(reqwest::Method::POST, "/v1/cards/import", "text/csv", csv)
        .await;
    assert_eq!(r.body["imported"], 0);
    let listed = app.get("/v1/cards?type=temporary&state=produced").await;
    assert_eq!(listed.body.as_array().unwrap().len(), 2);
}

/// Regression: a NUL byte in a message once made the PostgreSQL insert of
/// its dead letter fail, the ledger reconnected forever and applied nothing
/// else; and dead letters were published before the commit, so every retry
/// added a copy.
#[tokio::test]
async fn a_nul_byte_poison_message_is_dead_lettered_once_and_later_heartbeats_still_apply() {
    let app = spawn_app().await;
    let worker = FakeWorker::connect(&app.vhost.url()).await;
    let poison: &[u8] = b"\x00{\"type\":\"encode_result\",\x00\xff\xfe}";
    // The same message twice, as a redelivery or a duplicate would bring it.
    for _ in 0..2 {
        let props = cardfleet::broker::properties("poison-1", "test");
        assert!(
            cardfleet::broker::publish_confirmed(
                &worker.channel,
                wire::RESULTS_EXCHANGE,
                wire::RESULTS_QUEUE,
                poison,
                props,
            )
            .await
            .unwrap()
        );
    }
    // A heartbeat that decodes but that PostgreSQL refuses (NUL in text):
    // only it becomes a dead letter, not the heartbeats batched with it.
    let heartbeat = |rack: &str, worker_id: &str| {
        serde_json::to_vec(&wire::EventMessage::WorkerHeartbeat(
            wire::WorkerHeartbeat {
                meta: wire::Meta::now(),
                rack_id: rack.into(),
                worker_id: worker_id.into(),
                version: "test".into(),
                interval_seconds: 5,
                in_flight: 0,
                slots: vec![],
            },
        ))
        .unwrap()
    };
    // Signed by enrolled racks, so only the NUL decides their fate.
    support::workers::enroll_rack(&app.store, "rack-nul").await;
    for i in 0..10 {
        support::workers::enroll_rack(&app.store, &format!("rack-hb-{i}")).await;
    }
    let refused_heartbeat = heartbeat("rack-nul", "w\u{0}");
    worker
        .publish(wire::EVENTS_EXCHANGE, "heartbeat", &refused_heartbeat)
        .await;
    for i in 0..10 {
        let rack = format!("rack-hb-{i}");
        worker
            .publish(wire::EVENTS_EXCHANGE, "heartbeat", &heartbeat(&rack, "w"))
            .await;
    }

    eventually(WAIT, "the 10 later heartbeats applied", || async {
        let racks = app.get("/v1/racks").await.body;
        racks
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["rack_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("rack-hb-"))
            })
            .count()
            == 10
    })
    .await;
    let pool = app.store.postgres_pool().unwrap();
    eventually(WAIT, "two dead letters", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
            .fetch_one(pool)
            .await
            .unwrap();
        n >= 2
    })
    .await;
    let rows: Vec<(String, String, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT source, reason, raw FROM dead_letters ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    let poisoned: Vec<_> = rows
        .iter()
        .filter(|(source, _, _)| source == wire::RESULTS_QUEUE)
        .collect();
    assert_eq!(poisoned.len(), 1, "dead-lettered once: {rows:?}");
    assert_eq!(poisoned[0].2.as_deref(), Some(poison), "byte-exact");
    assert!(poisoned[0].1.starts_with("undecodable"), "{rows:?}");
    let refused: Vec<_> = rows
        .iter()
        .filter(|(source, _, _)| source == wire::SLOT_EVENTS_QUEUE)
        .collect();
    assert_eq!(refused.len(), 1, "{rows:?}");
    assert!(
        refused[0].1.starts_with("unapplicable: sqlstate 22"),
        "{rows:?}"
    );
    assert_eq!(refused[0].2.as_deref(), Some(refused_heartbeat.as_slice()));
    assert!(
        !app.get("/v1/racks")
            .await
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["rack_id"] == "rack-nul")
    );
    // The listing shows a readable, storable view of the poison.
    let listed = app.get("/v1/dead-letters").await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.body.as_array().unwrap().len(), 2);
}

/// A worker never holds a message it cannot take: poison on its queue (more
/// than its prefetch window of one slot) is dead-lettered, and the next real
/// job is encoded.
#[tokio::test]
async fn a_worker_dead_letters_poison_on_its_queue_and_goes_on_encoding() {
    let app = spawn_app().await;
    workers::import_serials(&app, [7301u32].into_iter()).await;
    app.enable().await;
    let _worker = workers::TestWorker::start(
        &app,
        "rack-p",
        1,
        vec![cardfleet_worker::rack::simulated::SimCard::new(7301)],
        &[],
    );
    wait_for_a_rack(&app).await;
    let fake = FakeWorker::connect(&app.vhost.url()).await;
    for _ in 0..3 {
        fake.publish(wire::JOBS_EXCHANGE, "rack-p", b"\x00\xff not a job\x00")
            .await;
    }
    let id: Uuid = sqlx::query_scalar("SELECT id FROM cards WHERE chip_serial = '7301'")
        .fetch_one(app.store.postgres_pool().unwrap())
        .await
        .unwrap();
    let r = app
        .post("/v1/initializations", json!({ "card_ids": [id] }))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    eventually(Duration::from_secs(60), "the card encoded", || async {
        app.card_state(id).await == "unassigned"
    })
    .await;
    let pool = app.store.postgres_pool().unwrap();
    eventually(WAIT, "three dead letters from the rack", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM dead_letters WHERE source = 'cardfleet.rack.rack-p'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        n == 3
    })
    .await;
}

#[tokio::test]
async fn public_keys_of_a_successful_result_show_with_the_card_as_pem() {
    let app = spawn_app().await;
    let ids = app.import_cards("PK", 1).await;
    let worker = FakeWorker::connect(&app.vhost.url()).await;
    app.enable().await;
    workers::enroll_rack(&app.store, "rack-pk").await;
    worker
        .insert_cards("rack-pk", &["PK-CHIP-000000".into()])
        .await;
    wait_for_a_rack(&app).await;
    let r = app
        .post("/v1/initializations", json!({ "card_ids": ids }))
        .await;
    assert_eq!(r.status, 202);
    let job = worker.take_jobs("rack-pk", 1, WAIT).await.remove(0);

    let der: Vec<u8> = (0..91u8).collect();
    let mut result = result_for(&job, Outcome::Succeeded);
    if let wire::ResultMessage::EncodeResult(r) = &mut result {
        r.public_keys = vec![wire::GeneratedPublicKey {
            slot: "9a".into(),
            algorithm: "p256".into(),
            spki_der_base64: base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                &der,
            ),
        }];
    }
    worker.publish_result(&result).await;
    eventually(WAIT, "card unassigned", || async {
        app.card_state(ids[0]).await == "unassigned"
    })
    .await;
    let detail = app.get(&format!("/v1/cards/{}", ids[0])).await.body;
    let keys = detail["public_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{detail}");
    assert_eq!(keys[0]["slot"], "9a");
    assert_eq!(keys[0]["job_id"], job.job_id.to_string());
    let pem = keys[0]["public_key_pem"].as_str().unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    assert_eq!(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).unwrap(),
        der
    );
}
