//! A rack's worker away while its jobs wait: a batch cancelled meanwhile is
//! never encoded when the worker returns (the worker checks each job with
//! the control plane when it takes it), and a rack silent past its lease has
//! its jobs marked for an operator until the worker returns, resumes them by
//! the cards' journals and its results clear the marks. In-process workers
//! with simulated chips kept on disk, so a restarted worker finds them as
//! they were; real PostgreSQL and RabbitMQ.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cardfleet::app::Component;
use cardfleet_worker::piv::{StateStore, VirtualPivCard};
use cardfleet_worker::rack::simulated::SimCard;
use serde_json::json;
use support::workers::*;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// A fresh directory for the chips' state.
fn chip_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cf-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The chip with `serial` as the simulated rack left it on disk.
fn chip_on_disk(state_dir: &Path, serial: u32) -> VirtualPivCard {
    let store = StateStore::open(state_dir.join(serial.to_string())).unwrap();
    VirtualPivCard::from_state(store.load().unwrap().unwrap())
}

fn pg(app: &TestApp) -> &sqlx::PgPool {
    app.store.postgres_pool().expect("PostgreSQL store")
}

async fn located_on(app: &TestApp, rack: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM slot_locations WHERE rack_id = $1")
        .bind(rack)
        .fetch_one(pg(app))
        .await
        .unwrap()
}

async fn metrics_page(app: &TestApp) -> String {
    reqwest::get(format!(
        "http://127.0.0.1:{}/metrics",
        app.metrics_port.unwrap()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap()
}

/// The value of an unlabelled series on a metrics page.
fn series(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn a_batch_cancelled_while_its_rack_is_down_is_not_encoded_when_the_worker_returns() {
    const RACK: &str = "rack-away";
    let app = spawn_app().await;
    let serials = 701..=703u32;
    import_serials(&app, serials.clone()).await;
    app.enable().await;
    let dir = chip_dir("cancel-away");
    let state_dir = dir.to_str().unwrap().to_owned();
    let extra = [("simulated.state_dir", state_dir)];
    let cards = || serials.clone().map(SimCard::new).collect::<Vec<_>>();

    // The rack reports its cards, then its worker goes away.
    let worker = TestWorker::start(&app, RACK, 4, cards(), &extra);
    eventually(WAIT, "the rack's cards located", || async {
        located_on(&app, RACK).await == 3
    })
    .await;
    worker.stop().await;

    // The jobs reach the rack's queue, and the batch is cancelled while no
    // worker listens to the control exchange: the broadcast reaches nobody.
    let batch = app.submit_all(3).await;
    eventually(WAIT, "every job on the rack's queue", || async {
        app.get(&format!("/v1/initializations/{batch}")).await.body["counts"]["dispatched"] == 3
    })
    .await;
    let r = app
        .post(&format!("/v1/initializations/{batch}/cancel"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["stopping"].as_array().unwrap().len(),
        3,
        "{}",
        r.body
    );

    // The worker returns with the same chips and takes the jobs.
    let worker = TestWorker::start(&app, RACK, 4, cards(), &extra);
    let status = wait_finished(&app, &batch, WAIT).await;
    let worker_metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", worker.metrics_port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    worker.stop().await;
    assert_eq!(status["counts"]["cancelled"], 3, "{status}");
    assert_eq!(status["counts"]["succeeded"], 0, "{status}");
    assert!(
        worker_metrics.contains(
            "cardfleet_worker_take_checks_total{answer=\"cancelled\",rack=\"rack-away\"} 3"
        ),
        "{worker_metrics}"
    );
    let states: Vec<String> =
        sqlx::query_scalar("SELECT state FROM cards WHERE chip_serial = ANY($1)")
            .bind(serials.clone().map(|s| s.to_string()).collect::<Vec<_>>())
            .fetch_all(pg(&app))
            .await
            .unwrap();
    assert_eq!(states, ["produced"; 3]);

    // Nothing was written to the chips: the factory PIN still verifies
    // with every try left, no journal, the job's PIN was never set.
    for s in serials {
        let mut chip = chip_on_disk(&dir, s);
        assert!(
            chip.state()
                .object(cardfleet_worker::engine::JOURNAL_TAG)
                .is_none(),
            "chip {s} holds a journal"
        );
        let pin = chip.state().pin_retries();
        assert_eq!(pin.remaining, pin.limit, "PIN tries spent on chip {s}");
        assert!(
            verify_pin(&mut chip, "123456"),
            "factory PIN changed on chip {s}"
        );
        let stored = stored_pin(&app, &s.to_string()).await;
        assert!(
            !verify_pin(&mut chip, &stored),
            "the job's PIN is on chip {s}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_rack_silent_past_its_lease_has_its_jobs_marked_until_it_returns_and_finishes_them() {
    const RACK: &str = "rack-lease";
    const CARDS: u32 = 8;
    let app = spawn_app_with(
        &Component::ALL,
        &[("ledger.rack_lease_seconds", "3".to_owned())],
    )
    .await;
    let serials = 801..=(800 + CARDS);
    import_serials(&app, serials.clone()).await;
    app.enable().await;
    let dir = chip_dir("lease");
    let state_dir = dir.to_str().unwrap().to_owned();
    let cards = || serials.clone().map(SimCard::new).collect::<Vec<_>>();

    // Slow chips, and a worker that stops without finishing its cards: its
    // jobs stay unacked and go back to the rack's queue.
    let slow = [
        ("simulated.state_dir", state_dir.clone()),
        ("simulated.latency_ms", "15".to_owned()),
        ("worker.shutdown_grace_seconds", "0".to_owned()),
    ];
    let worker = TestWorker::start(&app, RACK, 4, cards(), &slow);
    let batch = app.submit_all(CARDS as usize).await;
    eventually(WAIT, "cards encoding", || async {
        let body = app.get(&format!("/v1/initializations/{batch}")).await.body;
        body["counts"]["encoding"].as_i64().unwrap_or(0) >= 2
    })
    .await;
    worker.stop().await;
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state IN ('dispatched', 'encoding')")
            .fetch_one(pg(&app))
            .await
            .unwrap();
    assert!(left > 0, "the worker finished everything before it stopped");
    println!("worker stopped with {left} of {CARDS} jobs dispatched or encoding");

    // No heartbeat for the lease time: every live job of the rack is marked.
    eventually(WAIT, "the rack's jobs marked", || async {
        app.get(&format!("/v1/initializations/{batch}")).await.body["awaiting_rack"].as_i64()
            == Some(left)
    })
    .await;
    let status = app
        .get(&format!("/v1/initializations/{batch}?limit=100"))
        .await
        .body;
    let marked: Vec<&serde_json::Value> = status["cards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["lease_expired_at"].is_string())
        .collect();
    assert_eq!(marked.len() as i64, left, "{status}");
    for card in &marked {
        let state = card["state"].as_str().unwrap();
        assert!(matches!(state, "dispatched" | "encoding"), "{card}");
        let id = card["card_id"].as_str().unwrap();
        let detail = app.get(&format!("/v1/cards/{id}")).await.body;
        assert_eq!(detail["state"], "initializing", "{detail}");
        assert!(
            detail["jobs"][0]["lease_expired_at"].is_string(),
            "{detail}"
        );
    }
    // Credentials stay escrowed, never revoked.
    let revoked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM credentials WHERE status = 'revoked'")
            .fetch_one(pg(&app))
            .await
            .unwrap();
    assert_eq!(revoked, 0);
    eventually(WAIT, "the metrics show the marked jobs", || async {
        let page = metrics_page(&app).await;
        series(&page, "cardfleet_jobs_awaiting_rack") == Some(left as f64)
            && series(&page, "cardfleet_jobs_lease_expired_total") == Some(left as f64)
    })
    .await;
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit WHERE action = 'job.lease_expired'")
            .fetch_one(pg(&app))
            .await
            .unwrap();
    assert_eq!(audited, left);

    // The worker returns on the same rack with the same chips: the jobs are
    // redelivered, resumed by the cards' journals, and the results clear
    // the marks.
    let worker = TestWorker::start(
        &app,
        RACK,
        4,
        cards(),
        &[("simulated.state_dir", state_dir)],
    );
    let status = wait_finished(&app, &batch, Duration::from_secs(300)).await;
    worker.stop().await;
    assert_eq!(status["counts"]["succeeded"], CARDS, "{status}");
    assert_eq!(status["awaiting_rack"], 0, "{status}");
    let still_marked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE lease_expired_at IS NOT NULL")
            .fetch_one(pg(&app))
            .await
            .unwrap();
    assert_eq!(still_marked, 0);
    eventually(WAIT, "the gauge back to zero", || async {
        series(&metrics_page(&app).await, "cardfleet_jobs_awaiting_rack") == Some(0.0)
    })
    .await;
    let unassigned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM cards WHERE state = 'unassigned' AND chip_serial = ANY($1)",
    )
    .bind(serials.clone().map(|s| s.to_string()).collect::<Vec<_>>())
    .fetch_one(pg(&app))
    .await
    .unwrap();
    assert_eq!(unassigned, i64::from(CARDS));
    for s in serials {
        let mut chip = chip_on_disk(&dir, s);
        let pin = stored_pin(&app, &s.to_string()).await;
        assert!(
            verify_pin(&mut chip, &pin),
            "the escrowed PIN does not verify on chip {s}"
        );
        assert!(
            !verify_pin(&mut chip, "123456"),
            "factory PIN still works on chip {s}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
