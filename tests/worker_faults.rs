//! Workers under faults, over the real PostgreSQL and RabbitMQ: cards pulled
//! mid-step, mute chips and quarantine, a chip that is not the job's,
//! unsupported steps, and a worker killed mid-batch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use cardfleet_schemas::profile::BUILTIN_TEMPORARY_PIV;
use cardfleet_worker::piv::{CardOptions, VirtualPivCard};
use cardfleet_worker::rack::simulated::{SimCard, SimFaults};
use serde_json::json;
use support::workers::*;
use support::*;

const WAIT: Duration = Duration::from_secs(120);

async fn card(app: &TestApp, serial: u32) -> serde_json::Value {
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM cards WHERE chip_serial = $1")
        .bind(serial.to_string())
        .fetch_one(app.store.postgres_pool().expect("PostgreSQL store"))
        .await
        .unwrap();
    app.get(&format!("/v1/cards/{id}")).await.body
}

#[tokio::test]
async fn a_card_pulled_mid_step_is_finished_when_it_is_back_with_the_same_credentials() {
    let app = spawn_app().await;
    import_serials(&app, 1..=6).await;
    app.enable().await;
    let cards = (1..=6u32)
        .map(|s| {
            let mut c = SimCard::new(s);
            // Pulled at a different point of the run for each card.
            c.faults.pull_after_apdus = Some(4 + 5 * s as usize);
            c
        })
        .collect();
    let worker = TestWorker::start(&app, "rack-p", 6, cards, &[]);
    let batch = app.submit_all(6).await;
    let status = wait_finished(&app, &batch, WAIT).await;
    assert_eq!(status["counts"]["succeeded"], 6, "{status}");
    let detail = card(&app, 3).await;
    assert!(
        detail["jobs"][0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["status"] == "already_done"),
        "the second attempt should find the first attempt's work: {detail}"
    );
    let mut tray = worker.stop().await.take();
    assert_eq!(tray.len(), 6);
    for chip in tray.iter_mut() {
        let pin = stored_pin(&app, &serial_of(chip)).await;
        assert!(
            verify_pin(chip, &pin),
            "stored PIN does not verify on chip {}",
            serial_of(chip)
        );
    }
}

#[tokio::test]
async fn mute_chips_fail_with_a_reason_and_quarantine_the_slot_until_released() {
    let app = spawn_app().await;
    import_serials(&app, 1..=4).await;
    app.enable().await;
    let mute = |s: u32| {
        let mut c = SimCard::new(s);
        c.faults.mute = true;
        c
    };
    let worker = TestWorker::start(
        &app,
        "rack-m",
        1,
        vec![mute(1), mute(2), mute(3), SimCard::new(4)],
        &[("worker.quarantine_after", "3".into())],
    );
    let batch = app.submit_all(4).await;
    let status = wait_finished(&app, &batch, WAIT).await;
    assert_eq!(status["counts"]["failed"], 4, "{status}");
    for serial in 1..=3 {
        let c = card(&app, serial).await;
        assert!(
            c["state_reason"].as_str().unwrap().starts_with("card_mute"),
            "{c}"
        );
    }
    // The good card arrived in a quarantined slot: refused there, back in stock.
    let good = card(&app, 4).await;
    assert_eq!(good["state"], "produced");
    assert!(
        good["state_reason"]
            .as_str()
            .unwrap()
            .starts_with("slot_quarantined"),
        "{good}"
    );
    eventually(WAIT, "slot reported quarantined", || async {
        app.get("/v1/racks").await.body[0]["slots"][0]["state"] == "quarantined"
    })
    .await;

    // Released, the slot takes the good card again.
    let r = app
        .post("/v1/racks/rack-m/slots/0/release", json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    eventually(WAIT, "slot released", || async {
        app.get("/v1/racks").await.body[0]["slots"][0]["state"] == "present"
    })
    .await;
    let r = app
        .post(
            "/v1/initializations",
            json!({ "card_ids": [good["card_id"]] }),
        )
        .await;
    let batch = r.body["batch_id"].as_str().unwrap().to_owned();
    let status = wait_finished(&app, &batch, WAIT).await;
    assert_eq!(status["counts"]["succeeded"], 1, "{status}");
    worker.stop().await;
}

#[tokio::test]
async fn a_chip_that_is_not_the_jobs_is_never_written() {
    let app = spawn_app().await;
    import_serials(&app, 7..=7).await;
    app.enable().await;
    // The slot reports chip 7, but chip 8 is in it.
    let mut impostor = SimCard::new(8);
    impostor.faults.reported_serial = Some(7);
    let worker = TestWorker::start(&app, "rack-x", 1, vec![impostor], &[]);
    let batch = app.submit_all(1).await;
    let status = wait_finished(&app, &batch, WAIT).await;
    assert_eq!(status["counts"]["failed"], 1, "{status}");
    let c = card(&app, 7).await;
    assert_eq!(c["state"], "produced");
    assert!(
        c["state_reason"]
            .as_str()
            .unwrap()
            .starts_with("chip_serial_mismatch"),
        "{c}"
    );
    let mut tray = worker.stop().await.take();
    let fresh = VirtualPivCard::new(CardOptions::with_serial(8)).unwrap();
    assert_eq!(tray.len(), 1);
    assert!(
        *tray[0].state().to_json().unwrap() == *fresh.state().to_json().unwrap(),
        "the impostor chip was written to"
    );
    assert!(verify_pin(&mut tray[0], "123456"));
}

/// Profiles for cards without the management extensions.
fn profile_dir(name: &str, retries: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cf-profiles-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = BUILTIN_TEMPORARY_PIV
        .replace("name = \"temporary-piv\"", &format!("name = \"{name}\""))
        .replace(
            "fallback = [\"3des\"]",
            "fallback = [\"3des\"]\nrequirement = \"optional\"",
        )
        .replace(
            "pin = 5\npuk = 5\nrequirement = \"optional\"",
            &format!("pin = 5\npuk = 5\nrequirement = \"{retries}\""),
        );
    std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
    dir
}

async fn run_without_extensions(retries: &str) -> (TestApp, serde_json::Value) {
    let dir = profile_dir("plain-piv", retries);
    let app = spawn_app_with(
        &cardfleet::app::Component::ALL,
        &[("profiles.dir", dir.display().to_string())],
    )
    .await;
    let r = app
        .post("/v1/cards/import", json!({ "cards": [{ "card_number": "TC-9", "chip_serial": "9", "card_type": "temporary", "profile": "plain-piv" }] }))
        .await;
    assert_eq!(r.body["imported"], 1, "{}", r.body);
    app.enable().await;
    let mut plain = SimCard::new(9);
    plain.options.extensions = false;
    let worker = TestWorker::start(&app, "rack-n", 1, vec![plain], &[]);
    let batch = app.submit_all(1).await;
    wait_finished(&app, &batch, WAIT).await;
    worker.stop().await;
    let detail = card(&app, 9).await;
    (app, detail)
}

#[tokio::test]
async fn an_unsupported_optional_step_is_reported_and_the_card_still_ends_unassigned() {
    let (_app, detail) = run_without_extensions("optional").await;
    assert_eq!(detail["state"], "unassigned", "{detail}");
    let steps = detail["jobs"][0]["steps"].as_array().unwrap();
    let retries = steps.iter().find(|s| s["step"] == "set_retries").unwrap();
    assert_eq!(retries["status"], "unsupported", "{retries}");
}

#[tokio::test]
async fn an_unsupported_required_step_fails_the_card_with_the_reason() {
    let (_app, detail) = run_without_extensions("required").await;
    assert_eq!(detail["state"], "produced", "{detail}");
    assert_eq!(detail["jobs"][0]["state"], "failed");
    let reason = detail["state_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("unsupported_step") && reason.contains("set_retries"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_pin_blocked_before_initialization_fails_the_card_for_good() {
    let app = spawn_app().await;
    import_serials(&app, 11..=11).await;
    app.enable().await;
    let mut blocked = SimCard::new(11);
    blocked.faults = SimFaults {
        pin_blocked: true,
        ..SimFaults::default()
    };
    let worker = TestWorker::start(&app, "rack-b", 1, vec![blocked], &[]);
    let batch = app.submit_all(1).await;
    wait_finished(&app, &batch, WAIT).await;
    worker.stop().await;
    let c = card(&app, 11).await;
    assert_eq!(c["state"], "failed", "{c}");
    assert!(
        c["state_reason"]
            .as_str()
            .unwrap()
            .starts_with("pin_blocked"),
        "{c}"
    );
}

/// Issue 12, "failure after the credentials were written": the card used to
/// go back to `produced` with revoked credentials its chip held. Now it is
/// `in_doubt`, the credentials stay escrowed, the escrowed PIN verifies on
/// the chip, and running the job again completes the card with them.
#[tokio::test]
async fn a_failure_after_the_pin_was_written_leaves_the_card_in_doubt_and_a_rerun_completes_it() {
    let app = spawn_app().await;
    import_serials(&app, 21..=21).await;
    app.enable().await;
    // Key generation comes after the PIN and PUK changes; the chip answers
    // it with a status word the engine has no rule for.
    let dir = std::env::temp_dir().join(format!("cardfleet-in-doubt-{}", uuid::Uuid::new_v4()));
    let state = [("simulated.state_dir", dir.display().to_string())];
    let mut faulty = SimCard::new(21);
    faulty.faults.status_word = Some((0x47, 0x6F00));
    let worker = TestWorker::start(&app, "rack-d", 1, vec![faulty], &state);
    let batch = app.submit_all(1).await;
    let status = wait_finished(&app, &batch, WAIT).await;
    assert_eq!(status["counts"]["failed"], 1, "{status}");
    let detail = card(&app, 21).await;
    assert_eq!(detail["state"], "in_doubt", "{detail}");
    assert!(
        detail["state_reason"]
            .as_str()
            .unwrap()
            .starts_with("unexpected_status"),
        "{detail}"
    );
    let status: String = sqlx::query_scalar(
        "SELECT cr.status FROM credentials cr JOIN cards c ON c.id = cr.card_id
         WHERE c.chip_serial = '21'",
    )
    .fetch_one(app.store.postgres_pool().unwrap())
    .await
    .unwrap();
    assert_eq!(status, "pending", "escrowed, never revoked");
    let mut tray = worker.stop().await.take();
    let pin = stored_pin(&app, "21").await;
    assert!(
        verify_pin(&mut tray[0], &pin),
        "the escrowed PIN is on the chip"
    );

    // The chip is healthy again; the operator runs the same job once more.
    let mut back = SimCard::new(21);
    back.reload = true;
    let worker = TestWorker::start(&app, "rack-d", 1, vec![back], &state);
    let id = detail["card_id"].as_str().unwrap();
    let r = app.post(&format!("/v1/cards/{id}/rerun"), json!({})).await;
    assert_eq!(r.status, 202, "{}", r.body);
    eventually(WAIT, "the rerun job succeeds", || async {
        card(&app, 21).await["state"] == "unassigned"
    })
    .await;
    let done = card(&app, 21).await;
    let journal = done["jobs"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "read_journal")
        .cloned()
        .unwrap();
    assert!(
        journal["detail"]
            .as_str()
            .unwrap()
            .starts_with("resuming this job"),
        "the engine resumes its own work on the chip: {journal}"
    );
    let mut tray = worker.stop().await.take();
    assert_eq!(stored_pin(&app, "21").await, pin, "the same credentials");
    assert!(
        verify_pin(&mut tray[0], &pin),
        "the escrowed PIN is on the chip"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
