//! Benchmark: submit 10,000 and 100,000 cards; time to the 202 and until
//! every job is confirmed on the broker. Prints figures; asserts nothing
//! about time. Needs the local PostgreSQL and RabbitMQ.
//!
//! Run: `cargo bench --bench submit` (add `-- 10000` for one size).
//! `scripts/test` runs it in a smoke mode (`-- 200`) so it cannot rot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::workers::enroll_rack;
use support::*;

async fn dispatched(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'dispatched'")
        .fetch_one(app.store.postgres_pool().expect("PostgreSQL store"))
        .await
        .unwrap()
}

async fn run(n: usize) {
    let app = spawn_app_with(
        &[
            cardfleet::app::Component::Api,
            cardfleet::app::Component::Dispatcher,
        ],
        &[("database.max_connections", "16".into())],
    )
    .await;
    let prefix = format!("N{n}");
    let import_start = Instant::now();
    app.import_cards(&prefix, n).await;
    let import = import_start.elapsed();
    // Every card is already in a slot, so every job goes straight to the broker.
    let racks = ["rack-1", "rack-2", "rack-3", "rack-4"];
    let worker = FakeWorker::connect(&app.vhost.url()).await;
    for (r, rack) in racks.iter().enumerate() {
        let serials: Vec<String> = (0..n)
            .filter(|i| i % racks.len() == r)
            .map(|i| format!("{prefix}-CHIP-{i:06}"))
            .collect();
        sqlx::query(
            "INSERT INTO slot_locations (chip_serial, rack_id, slot) SELECT s, $2, 0 FROM UNNEST($1::text[]) s",
        )
        .bind(&serials)
        .bind(rack)
        .execute(app.store.postgres_pool().expect("PostgreSQL store"))
        .await
        .unwrap();
        cardfleet::broker::declare_rack_queue(&worker.channel, rack, 5)
            .await
            .unwrap();
        // Jobs are sealed to the rack's enrolled key: without one they end
        // `rack_not_enrolled` and never reach the broker.
        enroll_rack(&app.store, rack).await;
    }
    app.enable().await;

    let start = Instant::now();
    let r = app
        .post(
            "/v1/initializations",
            json!({ "filter": { "type": "temporary", "state": "produced", "limit": n } }),
        )
        .await;
    let accepted_at = start.elapsed();
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["accepted"].as_array().unwrap().len(), n);
    while dispatched(&app).await < n as i64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "dispatch did not finish"
        );
    }
    let on_broker = start.elapsed();
    let target = if n <= 10_000 { 1.0 } else { 10.0 };
    println!(
        "submit {n:>7} cards: 202 after {:>7.3} s, all jobs confirmed on the broker after {:>7.3} s \
         ({:>6.0} jobs/s; target <= {target} s) [import took {:.3} s]",
        accepted_at.as_secs_f64(),
        on_broker.as_secs_f64(),
        n as f64 / on_broker.as_secs_f64(),
        import.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000, 100_000]
    } else {
        sizes
    };
    for n in sizes {
        run(n).await;
    }
}
