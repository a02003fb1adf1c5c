//! Fleet benchmarks over the real RabbitMQ and PostgreSQL on this machine.
//! They print figures and assert nothing about time.
//!
//! - `throughput [N]`: zero-latency simulated cards, an N-card batch
//!   (default 100,000) through control plane and workers, cards/s, printed
//!   beside a raw lapin request→result round trip measured in the same run.
//! - `utilization`: 1 s simulated cards, 256 slots over 8 workers: the share
//!   of slot time spent encoding.
//! - `rss`: resident memory of a worker process with 32 slots during a batch.
//!
//! Run: `cargo bench --bench fleet` (all) or `cargo bench --bench fleet -- throughput 20000`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use cardfleet_worker::rack::simulated::SimCard;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use support::workers::*;
use support::*;

/// Pipelined request→result round trips through RabbitMQ: a publisher with
/// confirms, an echo consumer, and a collector, like a job and its result.
async fn raw_lapin_round_trips(url: &str, n: usize) -> f64 {
    let conn = cardfleet::broker::connect(url, "bench-raw").await.unwrap();
    let ch = cardfleet::broker::confirm_channel(&conn).await.unwrap();
    let args = || {
        let mut a = FieldTable::default();
        a.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
        a
    };
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("bench.requests".into(), durable, args())
        .await
        .unwrap();
    ch.queue_declare("bench.results".into(), durable, args())
        .await
        .unwrap();
    let echo = conn.create_channel().await.unwrap();
    echo.basic_qos(256, BasicQosOptions::default())
        .await
        .unwrap();
    echo.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut requests = echo
        .basic_consume(
            "bench.requests".into(),
            "echo".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(Ok(d)) = requests.next().await {
            let _ = echo
                .basic_publish(
                    "".into(),
                    "bench.results".into(),
                    BasicPublishOptions::default(),
                    &d.data,
                    cardfleet::broker::properties("r", "result"),
                )
                .await;
            let _ = d.ack(BasicAckOptions::default()).await;
        }
    });
    let collector = conn.create_channel().await.unwrap();
    collector
        .basic_qos(1000, BasicQosOptions::default())
        .await
        .unwrap();
    let mut results = collector
        .basic_consume(
            "bench.results".into(),
            "collect".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let payload = vec![b'x'; 600];
    let start = Instant::now();
    let publisher = tokio::spawn(async move {
        let mut confirms = Vec::with_capacity(n);
        for _ in 0..n {
            confirms.push(
                ch.basic_publish(
                    "".into(),
                    "bench.requests".into(),
                    BasicPublishOptions::default(),
                    &payload,
                    cardfleet::broker::properties("q", "request"),
                )
                .await
                .unwrap(),
            );
        }
        futures_util::future::join_all(confirms).await;
    });
    let mut got = 0;
    while got < n {
        let d = results.next().await.unwrap().unwrap();
        d.ack(BasicAckOptions::default()).await.unwrap();
        got += 1;
    }
    publisher.await.unwrap();
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = conn.close(200, "done".into()).await;
    rate
}

async fn throughput(n: u32, smoke: bool) {
    let app = spawn_app_with(
        &cardfleet::app::Component::ALL,
        &[
            ("database.max_connections", "16".into()),
            ("ledger.batch_size", "1000".into()),
        ],
    )
    .await;
    let raw = raw_lapin_round_trips(&app.vhost.url(), if smoke { 500 } else { 20_000 }).await;
    import_serials(&app, 1..=n).await;
    app.enable().await;
    // Zero-latency cards leave a slot as fast as the pipeline can swap
    // them, so throughput grows with the slots in flight.
    let workers = 2u32;
    let slots: u16 = std::env::var("CARDFLEET_BENCH_SLOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 16 } else { 256 });
    let mut running = Vec::new();
    for w in 0..workers {
        let cards = (1..=n)
            .filter(|s| s % workers == w)
            .map(SimCard::new)
            .collect();
        running.push(TestWorker::start(
            &app,
            &format!("rack-{w}"),
            slots,
            cards,
            &[],
        ));
    }
    let start = Instant::now();
    let batch = app.submit_all(n as usize).await;
    let status = wait_finished(&app, &batch, Duration::from_secs(3600)).await;
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(status["counts"]["succeeded"], n, "{status}");
    println!(
        "fleet throughput: {n} cards, {workers} workers x {slots} zero-latency simulated slots: {:.1} s, {:.0} cards/s \
         (target >= 5000); raw lapin request->result round trips in the same run: {raw:.0}/s",
        elapsed,
        f64::from(n) / elapsed
    );
    print_stage_latencies(&app).await;
    for w in running {
        w.stop().await;
    }
}

/// Median time each job spent between its recorded transitions.
async fn print_stage_latencies(app: &TestApp) {
    let rows: Vec<(String, f64)> = sqlx::query_as(
        "WITH t AS (
           SELECT job_id, action, at,
                  lag(at) OVER (PARTITION BY job_id ORDER BY id) AS prev
           FROM audit WHERE job_id IS NOT NULL)
         SELECT action, (percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM at - prev)) * 1000)::float8
         FROM t WHERE prev IS NOT NULL GROUP BY action ORDER BY action",
    )
    .fetch_all(app.store.postgres_pool().expect("PostgreSQL store"))
    .await
    .unwrap();
    let stages: Vec<String> = rows
        .iter()
        .map(|(a, ms)| format!("{a} {ms:.1} ms"))
        .collect();
    println!(
        "  median time before each job transition: {}",
        stages.join(", ")
    );
}

async fn utilization(smoke: bool) {
    let app = spawn_app_with(
        &cardfleet::app::Component::ALL,
        &[("database.max_connections", "16".into())],
    )
    .await;
    let (workers, slots, per_slot) = if smoke {
        (2u32, 4u16, 2u32)
    } else {
        (8u32, 32u16, 4u32)
    };
    let n = workers * u32::from(slots) * per_slot;
    import_serials(&app, 1..=n).await;
    app.enable().await;
    // About 37 commands per card: 27 ms each makes a 1 s card.
    let latency = [(
        "simulated.latency_ms",
        if smoke { "1" } else { "27" }.to_string(),
    )];
    let mut running = Vec::new();
    for w in 0..workers {
        let cards = (1..=n)
            .filter(|s| s % workers == w)
            .map(SimCard::new)
            .collect();
        running.push(TestWorker::start(
            &app,
            &format!("rack-{w}"),
            slots,
            cards,
            &latency,
        ));
    }
    // Wait for every slot to hold a card, as an operator would have loaded them.
    eventually(Duration::from_secs(120), "all slots loaded", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM slot_locations")
            .fetch_one(app.store.postgres_pool().expect("PostgreSQL store"))
            .await
            .unwrap();
        n >= i64::from(workers) * i64::from(slots)
    })
    .await;
    let start = Instant::now();
    let batch = app.submit_all(n as usize).await;
    let status = wait_finished(&app, &batch, Duration::from_secs(3600)).await;
    let wall = start.elapsed().as_secs_f64();
    assert_eq!(status["counts"]["succeeded"], n, "{status}");
    let busy: f64 = sqlx::query_scalar(
        "SELECT sum(extract(epoch FROM (f.at - s.at)))::float8 FROM audit s JOIN audit f ON f.job_id = s.job_id
         WHERE s.action = 'job.started' AND f.action = 'job.finished'",
    )
    .fetch_one(app.store.postgres_pool().expect("PostgreSQL store"))
    .await
    .unwrap();
    let total_slots = f64::from(workers) * f64::from(slots);
    let ideal = f64::from(per_slot) * busy / f64::from(n);
    println!(
        "slot utilization: {n} cards of ~{:.2} s on {} slots over {workers} workers: wall {wall:.1} s, \
         ideal {ideal:.1} s, busy share {:.1}% (target >= 99%)",
        busy / f64::from(n),
        total_slots,
        100.0 * busy / (total_slots * wall)
    );
    for w in running {
        w.stop().await;
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn worker_rss(smoke: bool) {
    let app = spawn_app().await;
    let n = if smoke { 100u32 } else { 2000u32 };
    import_serials(&app, 1..=n).await;
    app.enable().await;
    let dir = std::env::temp_dir().join(format!("cf-rss-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("cards.csv");
    let mut text = String::from("card_number,chip_serial,card_type,profile\n");
    for s in 1..=n {
        text.push_str(&format!("TC-{s},{s},temporary,temporary-piv\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let key_file = enrolled_key_file(&app.store, "rack-rss", &dir).await;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("CARDFLEET__WORKER__KEY_FILE", &key_file)
        .env("CARDFLEET_BENCH_WORKER_CHILD", "1")
        .env("CARDFLEET__AMQP__URL", app.vhost.url())
        .env("CARDFLEET__WORKER__RACK_ID", "rack-rss")
        .env("CARDFLEET__READER__SLOTS", "32")
        .env("CARDFLEET__READER__LOAD_FROM", &csv)
        .env("CARDFLEET__METRICS__LISTEN", "127.0.0.1:0")
        .env("CARDFLEET__LOG__FILTER", "warn")
        .spawn()
        .unwrap();
    let batch = app.submit_all(n as usize).await;
    let status = wait_finished(&app, &batch, Duration::from_secs(3600)).await;
    let (rss, peak) = (rss_kib(child.id(), "VmRSS:"), rss_kib(child.id(), "VmHWM:"));
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
    println!(
        "worker memory at 32 slots after a {n}-card batch ({} succeeded): RSS {:.1} MiB, peak {:.1} MiB (target <= 64 MiB)",
        status["counts"]["succeeded"],
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
}

fn main() {
    if std::env::var_os("CARDFLEET_BENCH_WORKER_CHILD").is_some() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let settings = cardfleet_worker::settings::WorkerSettings::load(None, &[]).unwrap();
            cardfleet_worker::app::run(settings, tokio_util::sync::CancellationToken::new())
                .await
                .unwrap();
        });
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    // `smoke` runs every part at a small size, without targets in mind:
    // `scripts/test` runs it so the benchmark cannot rot.
    let smoke = args.first().is_some_and(|a| a == "smoke");
    let which = match args.first().map(String::as_str) {
        None | Some("smoke") => "all",
        Some(which) => which,
    };
    let default_n = if smoke { 300 } else { 100_000 };
    let n: u32 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default_n);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        if matches!(which, "all" | "throughput") {
            throughput(n, smoke).await;
        }
        if matches!(which, "all" | "utilization") {
            utilization(smoke).await;
        }
        if matches!(which, "all" | "rss") {
            worker_rss(smoke).await;
        }
    });
}
