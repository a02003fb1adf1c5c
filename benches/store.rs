//! Benchmark: the store alone, on SQLite and PostgreSQL. Imports 100,000
//! cards, initializes 10,000 whose chips sit in slots, then claims and
//! finishes the outbox and applies a started notice and a result per job,
//! as dispatcher and ledger do. Prints figures; asserts nothing about time.
//! PostgreSQL needs the local server.
//!
//! Run: `cargo bench --bench store` (add `-- sqlite` or `-- postgres`, and
//! the card counts, e.g. `-- sqlite 100000 10000`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use cardfleet::credentials::CredentialCipher;
use cardfleet::store::cards::ImportRow;
use cardfleet::store::initialize::Selection;
use cardfleet::store::{INITIALIZE_PROCESS, Store};
use cardfleet_schemas::{
    EncodeResult, EventMessage, JobStarted, Meta, Outcome, ResultMessage, SlotEvent, SlotEventKind,
};
use uuid::Uuid;

const ACTOR: &str = "bench";
/// Results per ledger transaction, as the ledger batches them.
const RESULT_BATCH: usize = 500;

fn per_second(n: usize, d: Duration) -> String {
    format!("{:>9.0}/s", n as f64 / d.as_secs_f64())
}

async fn run(store: &Store, cards: usize, initialize: usize) {
    let profiles = cardfleet_schemas::profile::load_profiles(None).unwrap();
    let cipher = CredentialCipher::random("bench");
    store.migrate().await.unwrap();
    store
        .set_process_enabled(INITIALIZE_PROCESS, true, ACTOR)
        .await
        .unwrap();

    let rows: Vec<(usize, ImportRow)> = (0..cards)
        .map(|i| {
            let row = ImportRow {
                card_number: format!("TC-{i:07}"),
                chip_serial: format!("CHIP-{i:07}"),
                card_type: "temporary".into(),
                profile: "temporary-piv".into(),
            };
            (i + 1, row)
        })
        .collect();
    let start = Instant::now();
    let imported = store.import_cards(rows, &profiles, ACTOR).await.unwrap();
    let took = start.elapsed();
    assert_eq!(imported.imported, cards);
    println!(
        "  import {cards:>7} cards      {took:>10.2?} {}",
        per_second(cards, took)
    );

    let events: Vec<EventMessage> = (0..initialize)
        .map(|i| {
            EventMessage::SlotEvent(SlotEvent {
                meta: Meta::now(),
                rack_id: format!("rack-{}", i % 8),
                worker_id: "bench".into(),
                slot: (i / 8) as u16,
                kind: SlotEventKind::Inserted,
                chip_serial: Some(format!("CHIP-{i:07}")),
                reason: None,
            })
        })
        .collect();
    let start = Instant::now();
    for chunk in events.chunks(RESULT_BATCH) {
        store.apply_events(chunk, ACTOR).await.unwrap();
    }
    let took = start.elapsed();
    println!(
        "  locate {initialize:>7} chips      {took:>10.2?} {}",
        per_second(initialize, took)
    );

    let start = Instant::now();
    let outcome = store
        .initialize(
            Selection::Filter {
                card_type: "temporary".into(),
                limit: initialize as i64,
            },
            &profiles,
            &cipher,
            ACTOR,
        )
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(outcome.accepted.len(), initialize);
    assert_eq!(outcome.queued, initialize);
    println!(
        "  initialize {initialize:>5} cards  {took:>10.2?} {}",
        per_second(initialize, took)
    );

    let start = Instant::now();
    let mut jobs = Vec::with_capacity(initialize);
    loop {
        let claim = store.claim_outbox(1000).await.unwrap();
        if claim.is_empty() {
            break;
        }
        jobs.extend(claim.jobs.iter().map(|j| (j.job_id, j.batch_id, j.card_id)));
        let all: Vec<usize> = (0..claim.jobs.len()).collect();
        claim.finish(&all, ACTOR).await.unwrap();
    }
    let took = start.elapsed();
    assert_eq!(jobs.len(), initialize);
    println!(
        "  dispatch {initialize:>7} jobs     {took:>10.2?} {}",
        per_second(initialize, took)
    );

    let messages: Vec<ResultMessage> = jobs
        .iter()
        .flat_map(|&(job_id, batch_id, card_id)| {
            [
                ResultMessage::JobStarted(JobStarted {
                    meta: Meta::now(),
                    job_id,
                    rack_id: "rack-0".into(),
                    slot: 0,
                    worker_id: "bench".into(),
                }),
                ResultMessage::EncodeResult(EncodeResult {
                    meta: Meta::now(),
                    job_id,
                    batch_id,
                    card_id,
                    rack_id: "rack-0".into(),
                    slot: Some(0),
                    worker_id: "bench".into(),
                    outcome: Outcome::Succeeded,
                    failure: None,
                    steps: vec![],
                    attempts: 1,
                    started_at: chrono::Utc::now(),
                    finished_at: chrono::Utc::now(),
                    public_keys: Vec::new(),
                }),
            ]
        })
        .collect();
    let start = Instant::now();
    for chunk in messages.chunks(RESULT_BATCH) {
        store.apply_results(chunk, ACTOR).await.unwrap();
    }
    let took = start.elapsed();
    println!(
        "  apply {:>7} results      {took:>10.2?} {}",
        messages.len(),
        per_second(messages.len(), took)
    );
    let status = store.batch_status(outcome.batch_id, 1, 0).await.unwrap();
    assert!(status.finished);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let backends: Vec<&str> = match args.first().map(String::as_str) {
        Some(b @ ("sqlite" | "postgres")) => vec![b],
        _ => vec!["sqlite", "postgres"],
    };
    let numbers: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let cards = numbers.first().copied().unwrap_or(100_000);
    let initialize = numbers.get(1).copied().unwrap_or(10_000).min(cards);
    for backend in backends {
        println!("{backend}:");
        match backend {
            "sqlite" => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("bench.sqlite").display());
                let store = Store::connect(&url, 4, true).await.unwrap();
                run(&store, cards, initialize).await;
            }
            _ => {
                let name = format!("cardfleet_bench_{}", Uuid::new_v4().simple());
                let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
                let store = Store::connect(&url, 4, true).await.unwrap();
                run(&store, cards, initialize).await;
                drop(store);
                let _ = std::process::Command::new("psql")
                    .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"])
                    .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .output();
            }
        }
    }
}
