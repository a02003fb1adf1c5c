//! Sealed job secrets end to end, over the real PostgreSQL and RabbitMQ: a
//! job sealed to another rack's key is dead-lettered by the worker and its
//! card returns to produced unharmed; a rack without a key gets
//! `rack_not_enrolled`; and no job on the broker carries a secret in any form.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use base64::Engine;
use cardfleet::credentials::{CredentialCipher, MasterKey};
use cardfleet_schemas::{self as wire, sealing};
use cardfleet_worker::rack::simulated::SimCard;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use serde_json::json;
use support::workers::*;
use support::*;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

async fn card_id(app: &TestApp, serial: &str) -> Uuid {
    sqlx::query_scalar("SELECT id FROM cards WHERE chip_serial = $1")
        .bind(serial)
        .fetch_one(app.store.postgres_pool().unwrap())
        .await
        .unwrap()
}

/// A stored credential (`pin` or `puk`) of the card's latest job.
async fn stored(app: &TestApp, chip_serial: &str, field: &str) -> String {
    let sql = format!(
        "SELECT cr.job_id, cr.key_id, cr.{field}_nonce, cr.{field}_ct FROM credentials cr
         JOIN cards c ON c.id = cr.card_id WHERE c.chip_serial = $1
         ORDER BY cr.created_at DESC LIMIT 1"
    );
    let (job_id, key_id, nonce, ciphertext): (Uuid, String, Vec<u8>, Vec<u8>) =
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(chip_serial)
            .fetch_one(app.store.postgres_pool().unwrap())
            .await
            .unwrap();
    let cipher = CredentialCipher::from_hex("k1", ENCRYPTION_KEY).unwrap();
    let context = cardfleet::store::initialize::credential_context(job_id, field);
    cipher
        .open(
            &key_id,
            &cardfleet::credentials::Sealed { nonce, ciphertext },
            &context,
        )
        .unwrap()
        .expose()
        .to_owned()
}

/// Waits until the card's latest job has ended; returns the card detail.
async fn finished_detail(app: &TestApp, id: Uuid) -> serde_json::Value {
    let mut detail = serde_json::Value::Null;
    let start = std::time::Instant::now();
    while start.elapsed() < WAIT {
        detail = app.get(&format!("/v1/cards/{id}")).await.body;
        let state = detail["jobs"]
            .as_array()
            .and_then(|j| j.last())
            .map(|j| j["state"].clone());
        if matches!(
            state.as_ref().and_then(|s| s.as_str()),
            Some("failed" | "succeeded")
        ) {
            return detail;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the card's job did not end: {detail}");
}

#[tokio::test]
async fn a_job_sealed_to_another_racks_key_is_dead_lettered_and_its_card_returns_to_produced_unharmed()
 {
    let app = spawn_app().await;
    import_serials(&app, [7001u32].into_iter()).await;
    app.enable().await;
    let worker = TestWorker::start(&app, "rack-b", 1, vec![SimCard::new(7001)], &[]);
    // The card is located (so the worker has enrolled) before the key is swapped.
    eventually(WAIT, "the card located", || async {
        app.get("/v1/racks")
            .await
            .body
            .as_array()
            .is_some_and(|r| !r.is_empty())
    })
    .await;
    // The control plane now holds rack A's key for rack B: every job for
    // rack B is sealed to a key rack B does not have.
    let rack_a = test_rack_key("rack-a");
    app.store
        .enroll_rack(
            "rack-b",
            rack_a.public_key().as_bytes(),
            // Its own signing key, so its slot events are still believed.
            &cardfleet_schemas::rack_identity::verifying_key(&test_rack_key("rack-b")),
            "test",
        )
        .await
        .unwrap();
    let id = card_id(&app, "7001").await;
    let r = app
        .post("/v1/initializations", json!({ "card_ids": [id] }))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);

    let detail = finished_detail(&app, id).await;
    let job = &detail["jobs"][0];
    assert_eq!(job["state"], "failed", "{detail}");
    let reason = job["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("secrets_unopenable"), "{reason}");
    assert!(reason.contains("sealed to key"), "{reason}");
    assert_eq!(app.card_state(id).await, "produced");
    let letters = app.get("/v1/dead-letters").await.body;
    assert!(
        letters.as_array().unwrap().iter().any(|l| l["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("secrets_unopenable"))),
        "{letters}"
    );
    // The worker never started on the card: no step ran.
    assert!(job["steps"].as_array().is_none_or(Vec::is_empty), "{job}");

    // With rack B's own key enrolled again, the same card initializes.
    enroll_rack(&app.store, "rack-b").await;
    let r = app
        .post("/v1/initializations", json!({ "card_ids": [id] }))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    eventually(WAIT, "the card unassigned", || async {
        app.card_state(id).await == "unassigned"
    })
    .await;
    let pin = stored(&app, "7001", "pin").await;
    let mut tray = worker.stop().await.take();
    assert_eq!(tray.len(), 1);
    assert!(
        verify_pin(&mut tray[0], &pin),
        "the new PIN does not verify"
    );
}

#[tokio::test]
async fn a_job_for_a_rack_without_an_enrolled_key_fails_with_rack_not_enrolled_and_is_not_published()
 {
    let app = spawn_app().await;
    let ids = app.import_cards("N", 1).await;
    let worker = FakeWorker::connect(&app.vhost.url()).await;
    app.enable().await;
    // Only an enrolled rack is believed when it reports a chip; its key is
    // then lost (as for a rack whose enrolment was removed).
    enroll_rack(&app.store, "rack-n").await;
    worker
        .insert_cards("rack-n", &["N-CHIP-000000".into()])
        .await;
    eventually(WAIT, "the card located", || async {
        app.get("/v1/racks")
            .await
            .body
            .as_array()
            .is_some_and(|r| !r.is_empty())
    })
    .await;
    psql_on(
        &app.db_name,
        "DELETE FROM rack_keys WHERE rack_id = 'rack-n'",
    );
    let r = app
        .post("/v1/initializations", json!({ "card_ids": ids }))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);

    let detail = finished_detail(&app, ids[0]).await;
    let job = &detail["jobs"][0];
    assert_eq!(job["state"], "failed", "{detail}");
    assert!(
        job["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("rack_not_enrolled")),
        "{detail}"
    );
    assert_eq!(app.card_state(ids[0]).await, "produced");
    assert!(
        worker
            .take_jobs("rack-n", 1, Duration::from_millis(500))
            .await
            .is_empty(),
        "an unsealable job reached the broker"
    );
    let page = reqwest::get(format!(
        "http://127.0.0.1:{}/metrics",
        app.metrics_port.unwrap()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        page.contains("cardfleet_jobs_undispatchable_total{reason=\"rack_not_enrolled\"} 1"),
        "{page}"
    );
    eventually(WAIT, "the outbox emptied", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(app.store.postgres_pool().unwrap())
            .await
            .unwrap();
        n == 0
    })
    .await;
}

/// Every form a secret could take in a message: itself, its hex, its base64.
fn forms(secret: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    vec![
        secret.to_owned(),
        hex::encode(secret),
        b64.encode(secret),
        b64.encode(secret).trim_end_matches('=').to_owned(),
    ]
}

#[tokio::test]
async fn a_job_on_the_broker_carries_no_pin_puk_or_management_key_in_any_form() {
    let app = spawn_app().await;
    let ids = app.import_cards("W", 3).await;
    let worker = FakeWorker::connect(&app.vhost.url()).await;
    app.enable().await;
    enroll_rack(&app.store, "rack-w").await;
    // A queue of our own, bound like the rack's, sees what the broker carries.
    let capture = format!("capture-{}", Uuid::new_v4().simple());
    worker
        .channel
        .queue_declare(
            capture.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    worker
        .channel
        .queue_bind(
            capture.as_str().into(),
            wire::JOBS_EXCHANGE.into(),
            "rack-w".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let serials: Vec<String> = (0..3).map(|i| format!("W-CHIP-{i:06}")).collect();
    worker.insert_cards("rack-w", &serials).await;
    eventually(WAIT, "the cards located", || async {
        app.get("/v1/racks")
            .await
            .body
            .as_array()
            .is_some_and(|r| !r.is_empty())
    })
    .await;
    let r = app
        .post("/v1/initializations", json!({ "card_ids": ids }))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);

    let mut consumer = worker
        .channel
        .basic_consume(
            capture.as_str().into(),
            "capture".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut captured = Vec::new();
    while captured.len() < 3 {
        let next = tokio::time::timeout(WAIT, consumer.next()).await;
        let Ok(Some(Ok(delivery))) = next else {
            panic!("captured {} of 3 jobs", captured.len())
        };
        captured.push(delivery.data);
    }

    let master = MasterKey::from_hex(MASTER_KEY).unwrap();
    let key = test_rack_key("rack-w");
    for raw in &captured {
        let text = String::from_utf8(raw.clone()).unwrap();
        let job: wire::InitializeJob = serde_json::from_str(&text).unwrap();
        assert_eq!(job.secrets.scheme, wire::SecretScheme::Hpke);
        let mut secrets = vec![
            stored(&app, &job.chip_serial, "pin").await,
            stored(&app, &job.chip_serial, "puk").await,
        ];
        let mgmt =
            master.derive_management_key(&job.chip_serial, job.profile.management_key.algorithm);
        secrets.push(mgmt.expose().to_owned());
        // The sealed payload's decoded bytes carry nothing readable either.
        let b64 = base64::engine::general_purpose::STANDARD;
        let decoded = [
            b64.decode(&job.secrets.enc).unwrap(),
            b64.decode(&job.secrets.ciphertext).unwrap(),
        ];
        for secret in &secrets {
            for form in forms(secret) {
                assert!(!text.contains(&form), "a secret is on the broker: {text}");
                for d in &decoded {
                    assert!(
                        !d.windows(form.len()).any(|w| w == form.as_bytes()),
                        "a secret is inside the sealed payload"
                    );
                }
            }
        }
        // ... and the rack's key opens exactly these secrets.
        let opened = sealing::open(&key, "rack-w", job.job_id, &job.secrets).unwrap();
        assert_eq!(
            [&opened.pin, &opened.puk, &opened.management_key],
            [&secrets[0], &secrets[1], &secrets[2]]
        );
    }
}

/// An enrollment token for `rack`, as `cardfleet racks enroll-token` makes it.
async fn enrollment_token(app: &TestApp, rack: &str) -> String {
    use cardfleet::store::tokens::{NewToken, Role};
    let new = NewToken {
        name: format!(
            "enroll-{rack}-{}",
            &Uuid::new_v4().simple().to_string()[..8]
        ),
        roles: vec![Role::Worker],
        rack_id: Some(rack.to_owned()),
        single_use: true,
        expires_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
    };
    app.store
        .create_token(&new, "test")
        .await
        .unwrap()
        .expose()
        .to_owned()
}

#[tokio::test]
async fn a_worker_enrolls_its_key_once_with_its_token_and_a_reused_or_foreign_token_is_refused() {
    use cardfleet_worker::rack_key::{self, EnrollError};
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rack-e.key");
    let (key, new) = rack_key::load_or_create(&path).unwrap();
    assert!(new);

    // The test API speaks plain http on loopback: allowed only when asked.
    let refused = rack_key::enroll(
        &app.base,
        &Default::default(),
        "unused",
        "rack-e",
        &key,
        &path,
    )
    .await;
    assert!(matches!(refused, Err(EnrollError::Tls(_))), "{refused:?}");
    let plain_http = cardfleet_worker::api_tls::ApiTls {
        insecure: true,
        ..Default::default()
    };
    let token = enrollment_token(&app, "rack-e").await;
    let done = rack_key::enroll(&app.base, &plain_http, &token, "rack-e", &key, &path)
        .await
        .unwrap();
    assert_eq!(done.key_id, key.public_key().key_id());
    assert_eq!(
        app.store.rack_public_key("rack-e").await.unwrap(),
        Some(*key.public_key().as_bytes())
    );
    assert_eq!(
        rack_key::recorded_enrolment(&path, "rack-e", &key),
        Some(done)
    );

    // The same token again: used up.
    let again = rack_key::enroll(&app.base, &plain_http, &token, "rack-e", &key, &path).await;
    assert!(
        matches!(again, Err(EnrollError::Unauthorized(_))),
        "{again:?}"
    );
    // A token made for another rack.
    let other = enrollment_token(&app, "rack-o").await;
    let foreign = rack_key::enroll(&app.base, &plain_http, &other, "rack-e", &key, &path).await;
    assert!(
        matches!(foreign, Err(EnrollError::Forbidden(_))),
        "{foreign:?}"
    );
    let text = foreign.unwrap_err().to_string();
    assert!(
        !text.contains(&other),
        "the token leaked into an error: {text}"
    );
    // Neither refusal changed the enrolled key.
    assert_eq!(
        app.store.rack_public_key("rack-e").await.unwrap(),
        Some(*key.public_key().as_bytes())
    );
}
