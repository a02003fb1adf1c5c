//! RabbitMQ restarted in the middle of dispatching a 5,000-card batch: no
//! job is lost and duplicates on the wire are harmless.
//!
//! Stopping the broker disturbs every other test on this machine, so this
//! test is ignored in the main run and `scripts/test` runs it alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use cardfleet_schemas::Outcome;
use serde_json::json;
use support::*;

const CARDS: usize = 5000;

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(app.store.postgres_pool().expect("PostgreSQL store"))
        .await
        .unwrap()
}

#[tokio::test]
#[ignore = "restarts the shared broker; scripts/test runs it alone"]
async fn a_broker_restart_mid_dispatch_loses_no_job_and_duplicates_are_harmless() {
    let app = spawn_app_with(
        &cardfleet::app::Component::ALL,
        &[("dispatcher.batch_size", "100".into())],
    )
    .await;
    app.import_cards("B", CARDS).await;
    let worker = FakeWorker::connect(&app.vhost.url()).await;
    let serials: Vec<String> = (0..CARDS).map(|i| format!("B-CHIP-{i:06}")).collect();
    workers::enroll_rack(&app.store, "rack-x").await;
    worker.insert_cards("rack-x", &serials).await;
    eventually(Duration::from_secs(60), "all cards located", || async {
        count(&app, "SELECT count(*) FROM slot_locations").await == CARDS as i64
    })
    .await;
    drop(worker);
    app.enable().await;
    let r = app
        .post(
            "/v1/initializations",
            json!({ "filter": { "type": "temporary", "state": "produced", "limit": CARDS } }),
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(r.body["accepted"].as_array().unwrap().len(), CARDS);

    eventually(Duration::from_secs(60), "dispatching under way", || async {
        count(&app, "SELECT count(*) FROM jobs WHERE state = 'dispatched'").await > 0
    })
    .await;
    let dispatched_at_stop =
        count(&app, "SELECT count(*) FROM jobs WHERE state = 'dispatched'").await;
    rabbitmqctl(&["stop_app"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    println!("broker restarted with {dispatched_at_stop} of {CARDS} jobs dispatched");
    assert!(
        dispatched_at_stop < CARDS as i64,
        "the restart did not hit the middle of dispatching"
    );

    eventually(Duration::from_secs(120), "every job dispatched", || async {
        count(&app, "SELECT count(*) FROM jobs WHERE state = 'dispatched'").await == CARDS as i64
    })
    .await;
    assert_eq!(count(&app, "SELECT count(*) FROM outbox").await, 0);

    // Every job is on the broker, possibly more than once; a worker that
    // answers each delivery, duplicates included, still moves each card once.
    let worker = FakeWorker::connect(&app.vhost.url()).await;
    let mut seen = HashSet::new();
    let mut deliveries = 0;
    loop {
        let jobs = worker
            .take_jobs("rack-x", 1000, Duration::from_secs(5))
            .await;
        if jobs.is_empty() {
            break;
        }
        deliveries += jobs.len();
        for job in &jobs {
            seen.insert(job.job_id);
            worker
                .publish_result(&result_for(job, Outcome::Succeeded))
                .await;
        }
    }
    println!("{deliveries} deliveries for {} distinct jobs", seen.len());
    assert_eq!(seen.len(), CARDS, "jobs were lost");
    eventually(
        Duration::from_secs(120),
        "every card unassigned",
        || async {
            count(
                &app,
                "SELECT count(*) FROM cards WHERE state = 'unassigned'",
            )
            .await
                == CARDS as i64
        },
    )
    .await;
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM audit WHERE action = 'job.finished'"
        )
        .await,
        CARDS as i64,
        "a duplicate moved a job twice"
    );
}

#[tokio::test]
#[ignore = "restarts the shared broker; scripts/test runs it alone"]
async fn workers_reconnect_after_a_broker_restart_and_every_card_completes() {
    use cardfleet_worker::rack::simulated::SimCard;
    use support::workers::*;

    // Reconnects and their causes, for whoever reads a failure.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        ))
        .with_test_writer()
        .try_init();
    let app = spawn_app().await;
    let n = 400u32;
    import_serials(&app, 1..=n).await;
    app.enable().await;
    let worker = TestWorker::start(
        &app,
        "rack-w",
        8,
        (1..=n).map(SimCard::new).collect(),
        &[("simulated.latency_ms", "2".into())],
    );
    let batch = app.submit_all(n as usize).await;
    eventually(Duration::from_secs(120), "encoding under way", || async {
        count(&app, "SELECT count(*) FROM jobs WHERE state = 'succeeded'").await >= 20
    })
    .await;
    rabbitmqctl(&["stop_app"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    let done = count(&app, "SELECT count(*) FROM jobs WHERE state = 'succeeded'").await;
    println!("broker restarted with {done} of {n} cards done");
    assert!(
        done < i64::from(n),
        "the restart came too late to test anything"
    );
    let status = wait_finished(&app, &batch, Duration::from_secs(300)).await;
    assert_eq!(status["counts"]["succeeded"], n, "{status}");
    worker.stop().await;
}
