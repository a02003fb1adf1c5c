//! Rack identity on the broker: the ledger believes a slot event or a
//! result only when the rack it speaks for signed it with the key it
//! enrolled. A rack that reports another rack's slots, or a result for
//! another rack's job, is dead-lettered with a reason and changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use base64::Engine;
use cardfleet_schemas::rack_identity::{self, RackSigner};
use cardfleet_schemas::{self as wire, EventMessage, Meta, Outcome, SlotEvent, SlotEventKind};
use reqwest::Method;
use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn slot_inserted(rack: &str, serial: &str) -> Vec<u8> {
    serde_json::to_vec(&EventMessage::SlotEvent(SlotEvent {
        meta: Meta::now(),
        rack_id: rack.into(),
        worker_id: format!("{rack}-worker"),
        slot: 0,
        kind: SlotEventKind::Inserted,
        chip_serial: Some(serial.into()),
        reason: None,
    }))
    .unwrap()
}

/// Properties whose signature headers come from `signer`.
fn props_of(signer: &RackSigner, payload: &[u8]) -> lapin::BasicProperties {
    let mut headers = lapin::types::FieldTable::default();
    for (name, value) in signer.headers(payload) {
        headers.insert(
            name.into(),
            lapin::types::AMQPValue::LongString(value.as_str().into()),
        );
    }
    cardfleet::broker::properties(&uuid::Uuid::new_v4().to_string(), "slot_event")
        .with_headers(headers)
}

async fn publish(
    worker: &FakeWorker,
    exchange: &str,
    key: &str,
    payload: &[u8],
    props: lapin::BasicProperties,
) {
    let ok = cardfleet::broker::publish_confirmed(&worker.channel, exchange, key, payload, props)
        .await
        .unwrap();
    assert!(ok, "broker did not confirm");
}

async fn dead_reasons(app: &TestApp) -> Vec<String> {
    app.get("/v1/dead-letters")
        .await
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_rack_reporting_another_racks_chip_is_dead_lettered_and_gets_no_job() {
    let app = spawn_app().await;
    let ids = app.import_cards("RI", 1).await;
    let worker = FakeWorker::connect(&app.vhost.url()).await;
    app.enable().await;
    workers::enroll_rack(&app.store, "rack-a").await;
    workers::enroll_rack(&app.store, "rack-b").await;
    let r = app
        .post("/v1/initializations", json!({ "card_ids": ids }))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let chip = "RI-CHIP-000000";

    // rack-b, signing as itself, claims the chip is in a slot of rack-a.
    let body = slot_inserted("rack-a", chip);
    let as_b = RackSigner::new("rack-b", &workers::test_rack_key("rack-b"));
    publish(
        &worker,
        wire::EVENTS_EXCHANGE,
        "slot.inserted",
        &body,
        props_of(&as_b, &body),
    )
    .await;
    // rack-b names rack-a in the headers but can only sign with its own key.
    let body = slot_inserted("rack-a", chip);
    let forged = RackSigner::new("rack-a", &workers::test_rack_key("rack-b"));
    publish(
        &worker,
        wire::EVENTS_EXCHANGE,
        "slot.inserted",
        &body,
        props_of(&forged, &body),
    )
    .await;
    // No signature at all, reporting for itself.
    let body = slot_inserted("rack-b", chip);
    let plain = cardfleet::broker::properties(&uuid::Uuid::new_v4().to_string(), "slot_event");
    publish(
        &worker,
        wire::EVENTS_EXCHANGE,
        "slot.inserted",
        &body,
        plain,
    )
    .await;
    // A rack that never enrolled, signing its own event.
    let body = slot_inserted("rack-x", chip);
    let stranger = RackSigner::new("rack-x", &workers::test_rack_key("rack-x"));
    publish(
        &worker,
        wire::EVENTS_EXCHANGE,
        "slot.inserted",
        &body,
        props_of(&stranger, &body),
    )
    .await;

    eventually(WAIT, "four dead letters", || async {
        dead_reasons(&app).await.len() == 4
    })
    .await;
    let mut reasons = dead_reasons(&app).await;
    reasons.sort();
    assert_eq!(
        reasons,
        [
            rack_identity::RACK_MISMATCH,
            rack_identity::UNAUTHENTICATED_RACK,
            rack_identity::UNAUTHENTICATED_RACK,
            rack_identity::UNAUTHENTICATED_RACK,
        ]
    );
    // None of them located the chip: no slot, no job on any rack's queue.
    assert_eq!(app.get("/v1/racks").await.body, json!([]));
    let detail = app.get(&format!("/v1/cards/{}", ids[0])).await;
    assert_eq!(detail.body["jobs"][0]["state"], "awaiting_card");
    for rack in ["rack-a", "rack-b", "rack-x"] {
        assert!(
            worker
                .take_jobs(rack, 1, Duration::from_millis(300))
                .await
                .is_empty()
        );
    }

    // The rack that holds the chip, signing as itself, gets the job.
    worker.insert_cards("rack-a", &[chip.into()]).await;
    let jobs = worker.take_jobs("rack-a", 1, WAIT).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].card_id, ids[0]);
    assert!(
        worker
            .take_jobs("rack-b", 1, Duration::from_millis(300))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_result_for_another_racks_job_changes_nothing() {
    let app = spawn_app().await;
    let ids = app.import_cards("RR", 1).await;
    let worker = FakeWorker::connect(&app.vhost.url()).await;
    app.enable().await;
    workers::enroll_rack(&app.store, "rack-a").await;
    workers::enroll_rack(&app.store, "rack-b").await;
    worker
        .insert_cards("rack-a", &["RR-CHIP-000000".into()])
        .await;
    eventually(WAIT, "the chip located", || async {
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
    let job = worker.take_jobs("rack-a", 1, WAIT).await.remove(0);

    // rack-b reports the job as done, in rack-a's name, with its own signature.
    let body = serde_json::to_vec(&result_for(&job, Outcome::Succeeded)).unwrap();
    let as_b = RackSigner::new("rack-b", &workers::test_rack_key("rack-b"));
    publish(
        &worker,
        wire::RESULTS_EXCHANGE,
        wire::RESULTS_QUEUE,
        &body,
        props_of(&as_b, &body),
    )
    .await;
    eventually(WAIT, "the forged result dead-lettered", || async {
        dead_reasons(&app).await == [rack_identity::RACK_MISMATCH]
    })
    .await;
    assert_eq!(app.card_state(ids[0]).await, "initializing");

    // The same result signed by rack-a is applied.
    worker
        .publish_result(&result_for(&job, Outcome::Succeeded))
        .await;
    eventually(WAIT, "the card unassigned", || async {
        app.card_state(ids[0]).await == "unassigned"
    })
    .await;
}

#[tokio::test]
async fn enrolment_requires_a_valid_signing_key_and_keeps_the_token_until_then() {
    let app = spawn_app_with(&[cardfleet::app::Component::Api], &[]).await;
    let token = app
        .store
        .create_token(
            &cardfleet::store::tokens::NewToken {
                name: "enroll-e".into(),
                roles: vec![cardfleet::store::tokens::Role::Worker],
                rack_id: Some("rack-e".into()),
                single_use: true,
                expires_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            },
            "test",
        )
        .await
        .unwrap()
        .expose()
        .to_owned();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let secret = cardfleet_schemas::sealing::RackSecretKey::generate();
    let public = b64(secret.public_key().as_bytes());
    let signing = rack_identity::verifying_key(&secret);
    let enrol = |body: serde_json::Value| {
        let app = &app;
        let token = token.clone();
        async move {
            app.call_as(
                Some(&token),
                Method::POST,
                "/v1/racks/rack-e/enrollment",
                Some(body),
            )
            .await
        }
    };

    let r = enrol(json!({ "public_key": public })).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("invalid_request")),
        "{}",
        r.body
    );
    for bad in [b64(&[0u8; 32]), b64(&[1u8; 16]), "not base64!".into()] {
        let r = enrol(json!({ "public_key": public, "signing_key": bad })).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (422, Some("invalid_signing_key")),
            "{}",
            r.body
        );
    }
    assert_eq!(app.store.rack_signing_key("rack-e").await.unwrap(), None);

    let r = enrol(json!({ "public_key": public, "signing_key": b64(&signing) })).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        app.store.rack_signing_key("rack-e").await.unwrap(),
        Some(signing)
    );
}
