//! The fleet end to end: control plane + workers with simulated racks over
//! the real PostgreSQL and RabbitMQ.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use cardfleet_worker::rack::simulated::SimCard;
use serde_json::json;
use support::workers::*;
use support::*;

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
            .fetch_one(app.store.postgres_pool().expect("PostgreSQL store"))
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
