//! The store's one test suite, run against both backends: every test body is
//! an async fn taking a fresh [`Db`], and `store_tests!` generates
//! `postgres::<name>` (a fresh PostgreSQL database) and `sqlite::<name>` (a
//! fresh SQLite file in a temp dir) from it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use cardfleet::credentials::CredentialCipher;
use cardfleet::domain::CardState;
use cardfleet::store::audit::AuditFilter;
use cardfleet::store::cards::{CardFilter, ImportRow};
use cardfleet::store::dispatch::Claim;
use cardfleet::store::initialize::{Selection, credential_context};
use cardfleet::store::ledger::{Applied, DeadLetter};
use cardfleet::store::tokens::{NewToken, Role};
use cardfleet::store::{INITIALIZE_PROCESS, Store, StoreError};
use cardfleet_schemas::{
    CardProfile, ControlMessage, EncodeResult, EventMessage, Failure, JobStarted, Meta, Outcome,
    ResultMessage, SlotEvent, SlotEventKind, SlotState, SlotStatus, StepReport, StepStatus,
    WorkerHeartbeat,
};
use chrono::Utc;
use uuid::Uuid;

const ACTOR: &str = "store-suite";
const RACK: &str = "rack-1";

/// A fresh store plus a raw connection to the same database, for looking at
/// rows the store's API does not show (audit, credentials, outbox).
struct Db {
    store: Store,
    raw: Raw,
    profiles: BTreeMap<String, CardProfile>,
    cipher: CredentialCipher,
    _cleanup: Cleanup,
}

/// One audit row without its ids: actor, action, from, to, card state,
/// whether card, job and batch ids are set, and the detail.
type AuditRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    bool,
    bool,
    bool,
    Option<serde_json::Value>,
);

enum Raw {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool, std::path::PathBuf),
}

enum Cleanup {
    Postgres(String),
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Cleanup::Postgres(name) = self {
            support::psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

impl Db {
    async fn postgres() -> Db {
        let name = format!("cardfleet_store_{}", Uuid::new_v4().simple());
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        let store = Store::connect(&url, 4, true)
            .await
            .expect("PostgreSQL connects");
        store.migrate().await.expect("migrations apply");
        let raw = Raw::Postgres(store.postgres_pool().expect("a PostgreSQL store").clone());
        Db::new(store, raw, Cleanup::Postgres(name))
    }

    async fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cardfleet.sqlite");
        let store = Store::connect(&format!("sqlite://{}", path.display()), 4, true)
            .await
            .expect("SQLite opens");
        store.migrate().await.expect("migrations apply");
        assert!(store.postgres_pool().is_none());
        let raw = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .busy_timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
        Db::new(store, Raw::Sqlite(raw, path), Cleanup::Sqlite(dir))
    }

    fn new(store: Store, raw: Raw, cleanup: Cleanup) -> Db {
        Db {
            store,
            raw,
            profiles: cardfleet_schemas::profile::load_profiles(None).unwrap(),
            cipher: CredentialCipher::from_hex("test-key", support::ENCRYPTION_KEY).unwrap(),
            _cleanup: cleanup,
        }
    }

    /// A `count(*)` query with one text argument.
    async fn count(&self, sql: &'static str, arg: &str) -> i64 {
        match &self.raw {
            Raw::Postgres(p) => sqlx::query_scalar(sql).bind(arg).fetch_one(p).await,
            Raw::Sqlite(p, _) => sqlx::query_scalar(sql).bind(arg).fetch_one(p).await,
        }
        .unwrap()
    }

    async fn audit(&self, action: &str) -> i64 {
        self.count("SELECT count(*) FROM audit WHERE action = $1", action)
            .await
    }

    async fn rows(&self, table: &str) -> i64 {
        let sql = match table {
            "outbox" => "SELECT count(*) FROM outbox WHERE $1 <> ''",
            "control_outbox" => "SELECT count(*) FROM control_outbox WHERE $1 <> ''",
            "credentials" => "SELECT count(*) FROM credentials WHERE $1 <> ''",
            "jobs" => "SELECT count(*) FROM jobs WHERE $1 <> ''",
            "batches" => "SELECT count(*) FROM batches WHERE $1 <> ''",
            "slot_locations" => "SELECT count(*) FROM slot_locations WHERE $1 <> ''",
            _ => panic!("no count for {table}"),
        };
        self.count(sql, table).await
    }

    /// The audit trail in order, ids left out.
    async fn audit_trail(&self) -> Vec<AuditRow> {
        macro_rules! sql {
            ($detail:literal) => {
                concat!(
                    "SELECT actor, action, from_state, to_state, card_state, card_id IS NOT NULL,
                            job_id IS NOT NULL, batch_id IS NOT NULL, ",
                    $detail,
                    " FROM audit ORDER BY id"
                )
            };
        }
        match &self.raw {
            Raw::Postgres(p) => sqlx::query_as(sql!("detail")).fetch_all(p).await.unwrap(),
            Raw::Sqlite(p, _) => {
                // The same trail with the detail as stored text, parsed here.
                type Stored = (
                    String,
                    String,
                    Option<String>,
                    Option<String>,
                    Option<String>,
                    bool,
                    bool,
                    bool,
                    Option<String>,
                );
                let rows: Vec<Stored> = sqlx::query_as(sql!("detail")).fetch_all(p).await.unwrap();
                rows.into_iter()
                    .map(|(a, b, c, d, e, f, g, h, detail)| {
                        let detail = detail.map(|t| serde_json::from_str(&t).unwrap());
                        (a, b, c, d, e, f, g, h, detail)
                    })
                    .collect()
            }
        }
    }

    /// The raw bytes of every dead letter, oldest first.
    async fn dead_letter_raw(&self) -> Vec<Vec<u8>> {
        let sql = "SELECT raw FROM dead_letters ORDER BY id";
        match &self.raw {
            Raw::Postgres(p) => sqlx::query_scalar(sql).fetch_all(p).await.unwrap(),
            Raw::Sqlite(p, _) => sqlx::query_scalar(sql).fetch_all(p).await.unwrap(),
        }
    }

    /// Status of the credentials of `job_id`.
    async fn credential_status(&self, job_id: Uuid) -> String {
        let sql = "SELECT status FROM credentials WHERE job_id = $1";
        match &self.raw {
            Raw::Postgres(p) => sqlx::query_scalar(sql).bind(job_id).fetch_one(p).await,
            Raw::Sqlite(p, _) => {
                sqlx::query_scalar(sql)
                    .bind(job_id.hyphenated())
                    .fetch_one(p)
                    .await
            }
        }
        .unwrap()
    }

    async fn enable(&self) {
        self.store
            .set_process_enabled(INITIALIZE_PROCESS, true, ACTOR)
            .await
            .unwrap();
    }

    /// Imports `n` produced temporary cards `{prefix}-TC-i` / `{prefix}-CHIP-i`;
    /// returns their ids in that order.
    async fn import(&self, prefix: &str, n: usize) -> Vec<Uuid> {
        let rows = (0..n)
            .map(|i| {
                (
                    i + 1,
                    card_row(&format!("{prefix}-TC-{i:05}"), &serial(prefix, i)),
                )
            })
            .collect();
        let outcome = self
            .store
            .import_cards(rows, &self.profiles, ACTOR)
            .await
            .unwrap();
        assert_eq!(outcome.imported, n, "{:?}", outcome.rejected);
        let by_number: HashMap<String, Uuid> = self
            .cards(None)
            .await
            .into_iter()
            .map(|c| (c.card_number, c.card_id))
            .collect();
        (0..n)
            .map(|i| by_number[&format!("{prefix}-TC-{i:05}")])
            .collect()
    }

    async fn cards(&self, state: Option<CardState>) -> Vec<cardfleet::store::cards::CardSummary> {
        self.store
            .list_cards(&CardFilter {
                card_type: None,
                state,
                limit: 100_000,
                offset: 0,
                ..CardFilter::default()
            })
            .await
            .unwrap()
    }

    async fn initialize(&self, ids: &[Uuid]) -> cardfleet::store::initialize::InitializeOutcome {
        self.store
            .initialize(
                Selection::Ids(ids.to_vec()),
                &self.profiles,
                &self.cipher,
                ACTOR,
            )
            .await
            .unwrap()
    }

    async fn card_state(&self, card_id: Uuid) -> CardState {
        self.store.card_detail(card_id).await.unwrap().card.state
    }

    /// State of the card's latest job.
    async fn job_state(&self, card_id: Uuid) -> String {
        let detail = self.store.card_detail(card_id).await.unwrap();
        detail
            .jobs
            .last()
            .expect("the card has a job")
            .state
            .clone()
    }

    async fn job_id(&self, card_id: Uuid) -> Uuid {
        let detail = self.store.card_detail(card_id).await.unwrap();
        detail.jobs.last().expect("the card has a job").job_id
    }

    /// Puts the chips of `prefix` cards `indexes` into slots of [`RACK`].
    async fn insert_chips(&self, prefix: &str, indexes: &[usize]) -> usize {
        let events: Vec<EventMessage> = indexes
            .iter()
            .map(|&i| inserted(RACK, i as u16, &serial(prefix, i)))
            .collect();
        self.store.apply_events(&events, ACTOR).await.unwrap()
    }

    /// Claims until a claim holds `n` jobs. A dropped claim's rows come back
    /// once its connection has rolled back, which on PostgreSQL happens
    /// after the drop, not during it.
    async fn claim_eventually(&self, n: usize) -> Claim {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let claim = self.store.claim_outbox(100).await.unwrap();
            if claim.jobs.len() == n {
                return claim;
            }
            assert!(
                Instant::now() < deadline,
                "claims hold {} jobs, not {n}",
                claim.jobs.len()
            );
            drop(claim);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Claims everything in the outbox and records it all as published.
    async fn dispatch_all(&self) -> usize {
        let claim = self.store.claim_outbox(10_000).await.unwrap();
        let all: Vec<usize> = (0..claim.jobs.len()).collect();
        claim.finish(&all, ACTOR).await.unwrap()
    }
}

fn serial(prefix: &str, i: usize) -> String {
    format!("{prefix}-CHIP-{i:05}")
}

fn card_row(number: &str, serial: &str) -> ImportRow {
    ImportRow {
        card_number: number.into(),
        chip_serial: serial.into(),
        card_type: "temporary".into(),
        profile: "temporary-piv".into(),
    }
}

fn inserted(rack: &str, slot: u16, serial: &str) -> EventMessage {
    slot_event(rack, slot, SlotEventKind::Inserted, Some(serial))
}

fn slot_event(rack: &str, slot: u16, kind: SlotEventKind, serial: Option<&str>) -> EventMessage {
    EventMessage::SlotEvent(SlotEvent {
        meta: Meta::now(),
        rack_id: rack.into(),
        worker_id: "worker-1".into(),
        slot,
        kind,
        chip_serial: serial.map(str::to_owned),
        reason: None,
    })
}

fn heartbeat(rack: &str, in_flight: u32, slots: &[(u16, SlotState, Option<&str>)]) -> EventMessage {
    EventMessage::WorkerHeartbeat(WorkerHeartbeat {
        meta: Meta::now(),
        rack_id: rack.into(),
        worker_id: format!("worker-of-{rack}"),
        version: "1.2.3".into(),
        interval_seconds: 5,
        in_flight,
        slots: slots
            .iter()
            .map(|(slot, state, serial)| SlotStatus {
                slot: *slot,
                state: *state,
                chip_serial: serial.map(str::to_owned),
            })
            .collect(),
    })
}

fn started(job_id: Uuid) -> ResultMessage {
    ResultMessage::JobStarted(JobStarted {
        meta: Meta::now(),
        job_id,
        rack_id: RACK.into(),
        slot: 0,
        worker_id: "worker-1".into(),
    })
}

fn finished(
    job_id: Uuid,
    card_id: Uuid,
    outcome: Outcome,
    failure: Option<Failure>,
) -> ResultMessage {
    ResultMessage::EncodeResult(EncodeResult {
        meta: Meta::now(),
        job_id,
        batch_id: Uuid::nil(),
        card_id,
        rack_id: RACK.into(),
        slot: Some(0),
        worker_id: "worker-1".into(),
        outcome,
        failure,
        steps: vec![StepReport {
            step: "probe".into(),
            status: StepStatus::Done,
            duration_ms: 1.5,
            detail: Some("first \"quoted\" detail".into()),
        }],
        attempts: 1,
        started_at: Utc::now(),
        finished_at: Utc::now(),
        public_keys: Vec::new(),
    })
}

fn failure(code: &str, card_unusable: bool) -> Option<Failure> {
    Some(Failure {
        code: code.into(),
        message: format!("{code} happened"),
        card_unusable,
    })
}

// ---------------------------------------------------------------- import

async fn import_stores_valid_rows_and_reports_each_rejected_row(db: Db) {
    let mut wrong_type = card_row("TC-WRONG", "CHIP-WRONG");
    wrong_type.card_type = "permanent".into();
    let mut unknown_profile = card_row("TC-NOPROF", "CHIP-NOPROF");
    unknown_profile.profile = "no-such-profile".into();
    let rows = vec![
        (1, card_row("TC-1", "CHIP-1")),
        (2, card_row("", "CHIP-2")),
        (3, card_row("TC 3", "CHIP-3")),
        (4, unknown_profile),
        (5, wrong_type),
        (6, card_row("TC-1", "CHIP-6")),
        (7, card_row("TC-7", "CHIP-1")),
        (8, card_row(" TC-8 ", "CHIP-8")),
    ];
    let outcome = db
        .store
        .import_cards(rows, &db.profiles, ACTOR)
        .await
        .unwrap();
    assert_eq!(outcome.imported, 2);
    let codes: Vec<(usize, &str)> = outcome.rejected.iter().map(|r| (r.row, r.code)).collect();
    assert_eq!(
        codes,
        vec![
            (2, "malformed"),
            (3, "malformed"),
            (4, "unknown_profile"),
            (5, "wrong_card_type"),
            (6, "duplicate"),
            (7, "duplicate"),
        ]
    );
    let numbers: Vec<String> = db
        .cards(None)
        .await
        .into_iter()
        .map(|c| c.card_number)
        .collect();
    assert_eq!(numbers.len(), 2);
    assert!(numbers.contains(&"TC-1".to_owned()) && numbers.contains(&"TC-8".to_owned()));
    assert_eq!(db.audit("card.imported").await, 2);

    // A second file may not bring back a card number or a chip serial.
    let again = vec![
        (1, card_row("TC-1", "CHIP-NEW")),
        (2, card_row("TC-NEW", "CHIP-8")),
        (3, card_row("TC-9", "CHIP-9")),
    ];
    let outcome = db
        .store
        .import_cards(again, &db.profiles, ACTOR)
        .await
        .unwrap();
    assert_eq!(outcome.imported, 1);
    let codes: Vec<(usize, &str)> = outcome.rejected.iter().map(|r| (r.row, r.code)).collect();
    assert_eq!(codes, vec![(1, "duplicate"), (2, "duplicate")]);
    assert_eq!(db.cards(None).await.len(), 3);
    assert_eq!(db.audit("card.imported").await, 3);
}

async fn an_empty_import_changes_nothing(db: Db) {
    let outcome = db
        .store
        .import_cards(vec![], &db.profiles, ACTOR)
        .await
        .unwrap();
    assert_eq!(outcome.imported, 0);
    assert!(outcome.rejected.is_empty());
    assert_eq!(db.audit("card.imported").await, 0);
}

// ------------------------------------------------------- list and detail

async fn cards_list_by_type_and_state_in_id_order_with_paging(db: Db) {
    let ids = db.import("L", 5).await;
    db.enable().await;
    db.initialize(&ids[..2]).await;

    let all = db.cards(None).await;
    let listed: Vec<Uuid> = all.iter().map(|c| c.card_id).collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "cards come in id order");
    assert_eq!(all.len(), 5);
    assert_eq!(db.cards(Some(CardState::Initializing)).await.len(), 2);
    assert_eq!(db.cards(Some(CardState::Produced)).await.len(), 3);
    assert_eq!(db.cards(Some(CardState::Failed)).await.len(), 0);

    let page = |card_type: Option<&str>, limit, offset| CardFilter {
        card_type: card_type.map(str::to_owned),
        state: None,
        limit,
        offset,
        ..CardFilter::default()
    };
    let second = db
        .store
        .list_cards(&page(Some("temporary"), 2, 2))
        .await
        .unwrap();
    assert_eq!(
        second.iter().map(|c| c.card_id).collect::<Vec<_>>(),
        listed[2..4].to_vec()
    );
    assert!(
        db.store
            .list_cards(&page(Some("permanent"), 10, 0))
            .await
            .unwrap()
            .is_empty()
    );
    let card = &all[0];
    assert_eq!(card.card_type, "temporary");
    assert_eq!(card.profile, "temporary-piv");
    assert!(card.updated_at <= Utc::now());
}

async fn card_detail_shows_the_job_history_and_unknown_cards_are_not_found(db: Db) {
    let ids = db.import("D", 1).await;
    db.insert_chips("D", &[0]).await;
    let detail = db.store.card_detail(ids[0]).await.unwrap();
    assert_eq!(detail.card.card_number, "D-TC-00000");
    assert_eq!(detail.card.chip_serial, "D-CHIP-00000");
    assert_eq!(detail.card.state, CardState::Produced);
    assert!(detail.jobs.is_empty());

    db.enable().await;
    let outcome = db.initialize(&ids).await;
    db.dispatch_all().await;
    let job_id = db.job_id(ids[0]).await;
    db.store
        .apply_results(
            &[finished(
                job_id,
                ids[0],
                Outcome::Failed,
                failure("card_mute", false),
            )],
            ACTOR,
        )
        .await
        .unwrap();
    db.initialize(&ids).await;

    let detail = db.store.card_detail(ids[0]).await.unwrap();
    assert_eq!(detail.jobs.len(), 2);
    let first = &detail.jobs[0];
    assert_eq!(first.job_id, job_id);
    assert_eq!(first.batch_id, outcome.batch_id);
    assert_eq!(first.state, "failed");
    assert_eq!(
        first.reason.as_deref(),
        Some("card_mute: card_mute happened")
    );
    let steps = first.steps.as_ref().expect("steps are kept");
    assert_eq!(steps[0]["step"], "probe");
    assert_eq!(steps[0]["detail"], "first \"quoted\" detail");
    assert_eq!(detail.jobs[1].state, "queued");
    assert!(first.created_at <= detail.jobs[1].created_at);

    assert!(matches!(
        db.store.card_detail(Uuid::now_v7()).await,
        Err(StoreError::NotFound)
    ));
}

// ---------------------------------------------------------------- process

async fn the_process_starts_disabled_and_each_change_is_audited_once(db: Db) {
    assert!(!db.store.process_enabled(INITIALIZE_PROCESS).await.unwrap());
    db.enable().await;
    db.enable().await;
    assert!(db.store.process_enabled(INITIALIZE_PROCESS).await.unwrap());
    assert_eq!(db.audit("process.enabled").await, 1);
    db.store
        .set_process_enabled(INITIALIZE_PROCESS, false, ACTOR)
        .await
        .unwrap();
    assert!(!db.store.process_enabled(INITIALIZE_PROCESS).await.unwrap());
    assert_eq!(db.audit("process.disabled").await, 1);

    assert!(matches!(
        db.store.process_enabled("no-such-process").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        db.store
            .set_process_enabled("no-such-process", true, ACTOR)
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(db.audit("process.enabled").await, 1);
}

// ------------------------------------------------------------- initialize

async fn initialize_is_refused_while_the_process_is_disabled(db: Db) {
    let ids = db.import("X", 2).await;
    let refused = db
        .store
        .initialize(Selection::Ids(ids.clone()), &db.profiles, &db.cipher, ACTOR)
        .await;
    assert!(matches!(refused, Err(StoreError::ProcessDisabled(p)) if p == INITIALIZE_PROCESS));
    assert_eq!(db.rows("batches").await, 0);
    assert_eq!(db.rows("jobs").await, 0);
    assert_eq!(db.cards(Some(CardState::Produced)).await.len(), 2);
}

async fn initialize_creates_jobs_sealed_credentials_and_outbox_rows_for_located_cards(db: Db) {
    let ids = db.import("I", 3).await;
    // Card 0's chip sits in a slot already; cards 1 and 2 are not seen yet.
    assert_eq!(db.insert_chips("I", &[0]).await, 0);
    db.enable().await;
    let outcome = db.initialize(&ids).await;
    assert_eq!(outcome.accepted, ids);
    assert!(outcome.rejected.is_empty());
    assert_eq!(outcome.queued, 1);

    for id in &ids {
        assert_eq!(db.card_state(*id).await, CardState::Initializing);
    }
    assert_eq!(db.job_state(ids[0]).await, "queued");
    assert_eq!(db.job_state(ids[1]).await, "awaiting_card");
    assert_eq!(db.rows("jobs").await, 3);
    assert_eq!(db.rows("credentials").await, 3);
    assert_eq!(db.rows("outbox").await, 1);
    assert_eq!(db.audit("initialize.requested").await, 3);
    let job_id = db.job_id(ids[0]).await;
    assert_eq!(db.credential_status(job_id).await, "pending");

    let status = db
        .store
        .batch_status(outcome.batch_id, 10, 0)
        .await
        .unwrap();
    assert_eq!((status.requested, status.accepted), (3, 3));
    assert_eq!(status.counts["queued"], 1);
    assert_eq!(status.counts["awaiting_card"], 2);
    assert!(!status.finished);

    // The claimed job carries everything a job message needs, and its
    // credentials open only with the job's own context.
    let claim = db.store.claim_outbox(10).await.unwrap();
    assert_eq!(claim.jobs.len(), 1);
    let job = &claim.jobs[0];
    assert_eq!(
        (job.job_id, job.card_id, job.batch_id),
        (job_id, ids[0], outcome.batch_id)
    );
    assert_eq!(job.rack_id, RACK);
    assert_eq!(job.card_number, "I-TC-00000");
    assert_eq!(job.chip_serial, "I-CHIP-00000");
    assert_eq!(job.profile, "temporary-piv");
    let pin = db
        .cipher
        .open(&job.key_id, &job.pin, &credential_context(job_id, "pin"))
        .unwrap();
    let puk = db
        .cipher
        .open(&job.key_id, &job.puk, &credential_context(job_id, "puk"))
        .unwrap();
    assert_eq!(pin.expose().len(), 6);
    assert!(pin.expose().bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(puk.expose().len(), 8);
    assert!(
        db.cipher
            .open(&job.key_id, &job.pin, &credential_context(job_id, "puk"))
            .is_err()
    );
    drop(claim);
}

async fn initialize_rejects_unknown_and_busy_cards_and_counts_repeats_once(db: Db) {
    let ids = db.import("R", 2).await;
    db.enable().await;
    db.initialize(&ids[..1]).await;
    let unknown = Uuid::now_v7();
    let outcome = db.initialize(&[ids[0], ids[1], ids[1], unknown]).await;
    assert_eq!(outcome.accepted, vec![ids[1]]);
    let rejected: Vec<(Uuid, &str, Option<CardState>)> = outcome
        .rejected
        .iter()
        .map(|r| (r.card_id, r.code, r.state))
        .collect();
    assert_eq!(
        rejected,
        vec![
            (ids[0], "wrong_state", Some(CardState::Initializing)),
            (unknown, "unknown_card", None),
        ]
    );
    let status = db
        .store
        .batch_status(outcome.batch_id, 10, 0)
        .await
        .unwrap();
    assert_eq!((status.requested, status.accepted), (3, 1));
    assert_eq!(db.rows("jobs").await, 2);

    // Nothing acceptable still records the (empty) batch and nothing else.
    let outcome = db.initialize(&ids).await;
    assert!(outcome.accepted.is_empty());
    assert_eq!(outcome.rejected.len(), 2);
    assert_eq!(db.rows("jobs").await, 2);
    assert_eq!(db.audit("initialize.requested").await, 2);
}

async fn initialize_by_filter_takes_produced_cards_of_the_type_up_to_the_limit(db: Db) {
    let ids = db.import("F", 5).await;
    db.enable().await;
    db.initialize(&ids[..1]).await;
    let select = |card_type: &str, limit| Selection::Filter {
        card_type: card_type.into(),
        limit,
    };
    let outcome = db
        .store
        .initialize(select("temporary", 3), &db.profiles, &db.cipher, ACTOR)
        .await
        .unwrap();
    assert_eq!(outcome.accepted, ids[1..4].to_vec());
    let outcome = db
        .store
        .initialize(select("temporary", 10), &db.profiles, &db.cipher, ACTOR)
        .await
        .unwrap();
    assert_eq!(outcome.accepted, ids[4..].to_vec());
    let outcome = db
        .store
        .initialize(select("permanent", 10), &db.profiles, &db.cipher, ACTOR)
        .await
        .unwrap();
    assert!(outcome.accepted.is_empty() && outcome.rejected.is_empty());
    assert!(db.cards(Some(CardState::Produced)).await.is_empty());
}

// --------------------------------------------------------------- dispatch

async fn finishing_a_claim_dispatches_the_published_jobs_and_keeps_the_rest(db: Db) {
    let ids = db.import("P", 3).await;
    db.insert_chips("P", &[0, 1, 2]).await;
    db.enable().await;
    db.initialize(&ids).await;
    assert_eq!(db.rows("outbox").await, 3);

    let claim = db.store.claim_outbox(10).await.unwrap();
    assert!(!claim.is_empty());
    let claimed: Vec<Uuid> = claim.jobs.iter().map(|j| j.card_id).collect();
    assert_eq!(claimed, ids, "claimed in outbox order");
    assert_eq!(claim.finish(&[0, 2, 99], ACTOR).await.unwrap(), 2);
    assert_eq!(db.job_state(ids[0]).await, "dispatched");
    assert_eq!(db.job_state(ids[1]).await, "queued");
    assert_eq!(db.job_state(ids[2]).await, "dispatched");
    assert_eq!(db.rows("outbox").await, 1);
    assert_eq!(db.audit("job.dispatched").await, 2);

    let claim = db.store.claim_outbox(10).await.unwrap();
    assert_eq!(claim.jobs.len(), 1);
    assert_eq!(claim.jobs[0].card_id, ids[1]);
    // Dropping a claim unfinished leaves its rows for a later round.
    drop(claim);
    let claim = db.claim_eventually(1).await;
    claim.finish(&[0], ACTOR).await.unwrap();
    let claim = db.store.claim_outbox(10).await.unwrap();
    assert!(claim.is_empty());
    claim.finish(&[], ACTOR).await.unwrap();
    assert_eq!(db.rows("outbox").await, 0);
}

async fn a_claim_respects_its_limit(db: Db) {
    let ids = db.import("LIM", 5).await;
    db.insert_chips("LIM", &[0, 1, 2, 3, 4]).await;
    db.enable().await;
    db.initialize(&ids).await;
    let claim = db.store.claim_outbox(2).await.unwrap();
    assert_eq!(claim.jobs.len(), 2);
    claim.finish(&[0, 1], ACTOR).await.unwrap();
    assert_eq!(db.rows("outbox").await, 3);
}

async fn a_job_a_worker_reported_on_keeps_its_newer_state_and_its_row_goes(db: Db) {
    let ids = db.import("S", 2).await;
    db.insert_chips("S", &[0, 1]).await;
    db.enable().await;
    db.initialize(&ids).await;
    let (job0, job1) = (db.job_id(ids[0]).await, db.job_id(ids[1]).await);

    // Job 1's worker reports before the dispatcher even claimed: its row is stale.
    db.store
        .apply_results(&[started(job1)], ACTOR)
        .await
        .unwrap();
    let claim = db.store.claim_outbox(10).await.unwrap();
    assert_eq!(claim.jobs.len(), 1);
    assert_eq!(claim.jobs[0].job_id, job0);
    // Job 0's worker reports between the publish and its confirmation.
    db.store
        .apply_results(&[started(job0)], ACTOR)
        .await
        .unwrap();
    claim.finish(&[0], ACTOR).await.unwrap();

    assert_eq!(db.job_state(ids[0]).await, "encoding");
    assert_eq!(db.job_state(ids[1]).await, "encoding");
    assert_eq!(db.rows("outbox").await, 0);
    assert_eq!(db.audit("job.dispatched").await, 0);
    assert_eq!(db.audit("job.started").await, 2);
}

async fn a_held_claim_is_not_handed_out_twice(db: Db) {
    let ids = db.import("H", 2).await;
    db.insert_chips("H", &[0, 1]).await;
    db.enable().await;
    db.initialize(&ids).await;
    let first = db.store.claim_outbox(1).await.unwrap();
    assert_eq!(first.jobs.len(), 1);
    let mine = first.jobs[0].outbox_id;
    // Another dispatcher skips the held row (PostgreSQL) or waits for the
    // claim to end (SQLite); it never gets the same row.
    let second = tokio::time::timeout(Duration::from_millis(300), db.store.claim_outbox(10)).await;
    if let Ok(second) = second {
        let second = second.unwrap();
        assert!(second.jobs.iter().all(|j| j.outbox_id != mine));
        assert_eq!(second.jobs.len(), 1);
        drop(second);
    }
    first.finish(&[0], ACTOR).await.unwrap();
    let rest = db.claim_eventually(1).await;
    assert_ne!(rest.jobs[0].outbox_id, mine);
}

async fn the_control_outbox_carries_cancellations_and_slot_releases(db: Db) {
    let claim = db.store.claim_control_outbox(10).await.unwrap();
    assert!(claim.is_empty());
    claim.finish().await.unwrap();

    let ids = db.import("C", 1).await;
    db.insert_chips("C", &[0]).await;
    db.enable().await;
    let batch = db.initialize(&ids).await.batch_id;
    let job_id = db.job_id(ids[0]).await;
    db.store.cancel(batch, None, ACTOR).await.unwrap();
    db.store.release_slot(RACK, 0, ACTOR).await.unwrap();
    assert_eq!(db.audit("slot.release_requested").await, 1);

    let claim = db.store.claim_control_outbox(10).await.unwrap();
    assert_eq!(claim.messages.len(), 2);
    match &claim.messages[0].1 {
        ControlMessage::Cancellation(c) => {
            assert_eq!(c.job_ids, vec![job_id]);
            assert_eq!(c.batch_id, Some(batch));
        }
        other => panic!("expected a cancellation first, got {other:?}"),
    }
    match &claim.messages[1].1 {
        ControlMessage::ReleaseSlot(r) => assert_eq!((r.rack_id.as_str(), r.slot), (RACK, 0)),
        other => panic!("expected a slot release, got {other:?}"),
    }
    claim.finish().await.unwrap();
    assert_eq!(db.rows("control_outbox").await, 0);
    assert!(db.store.claim_control_outbox(10).await.unwrap().is_empty());

    assert!(matches!(
        db.store.release_slot(RACK, 42, ACTOR).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        db.store.release_slot("rack-unknown", 0, ACTOR).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(db.rows("control_outbox").await, 0);
}

// ---------------------------------------------------------------- results

async fn a_result_delivered_three_times_moves_the_job_once(db: Db) {
    let ids = db.import("A", 1).await;
    db.insert_chips("A", &[0]).await;
    db.enable().await;
    db.initialize(&ids).await;
    db.dispatch_all().await;
    let job_id = db.job_id(ids[0]).await;

    let messages = [
        started(job_id),
        finished(job_id, ids[0], Outcome::Succeeded, None),
    ];
    let first = db.store.apply_results(&messages, ACTOR).await.unwrap();
    assert_eq!(first, vec![Applied::Changed, Applied::Changed]);
    for _ in 0..2 {
        let again = db.store.apply_results(&messages, ACTOR).await.unwrap();
        assert_eq!(again, vec![Applied::Unchanged, Applied::Unchanged]);
    }
    assert_eq!(db.job_state(ids[0]).await, "succeeded");
    assert_eq!(db.card_state(ids[0]).await, CardState::Unassigned);
    assert_eq!(db.credential_status(job_id).await, "active");
    assert_eq!(db.audit("job.started").await, 1);
    assert_eq!(db.audit("job.finished").await, 1);
    let detail = db.store.card_detail(ids[0]).await.unwrap();
    assert_eq!(detail.card.state_reason, None);

    // Within one batch too, a repeat changes nothing.
    let repeated = [
        finished(job_id, ids[0], Outcome::Failed, failure("late", false)),
        finished(job_id, ids[0], Outcome::Failed, failure("late", false)),
    ];
    let applied = db.store.apply_results(&repeated, ACTOR).await.unwrap();
    assert_eq!(applied, vec![Applied::Unchanged, Applied::Unchanged]);
    assert_eq!(db.card_state(ids[0]).await, CardState::Unassigned);
}

async fn public_keys_of_a_success_are_stored_per_slot_and_shown_as_pem(db: Db) {
    let ids = db.import("K", 2).await;
    db.insert_chips("K", &[0, 1]).await;
    db.enable().await;
    db.initialize(&ids).await;
    db.dispatch_all().await;
    let (ok_job, failed_job) = (db.job_id(ids[0]).await, db.job_id(ids[1]).await);
    let key = |slot: &str, der: &[u8]| cardfleet_schemas::GeneratedPublicKey {
        slot: slot.into(),
        algorithm: "p256".into(),
        spki_der_base64: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der),
    };
    let with_keys = |message: ResultMessage, keys: Vec<cardfleet_schemas::GeneratedPublicKey>| {
        let ResultMessage::EncodeResult(mut r) = message else {
            unreachable!()
        };
        r.public_keys = keys;
        ResultMessage::EncodeResult(r)
    };
    let long_der: Vec<u8> = (0..91u8).collect();
    let messages = [
        with_keys(
            finished(ok_job, ids[0], Outcome::Succeeded, None),
            vec![key("9c", &[0x30, 0x01, 0x02]), key("9a", &long_der)],
        ),
        with_keys(
            finished(failed_job, ids[1], Outcome::Failed, failure("boom", false)),
            vec![key("9a", &[0x30, 0x09])],
        ),
        with_keys(
            finished(Uuid::new_v4(), Uuid::new_v4(), Outcome::Succeeded, None),
            vec![key("9a", &[0x30, 0x07])],
        ),
    ];
    // Saved as the ledger does, before applying; a redelivery saves the same rows.
    for _ in 0..2 {
        db.store.save_public_keys(&messages).await.unwrap();
        db.store.apply_results(&messages, ACTOR).await.unwrap();
    }
    let detail = db.store.card_detail(ids[0]).await.unwrap();
    let slots: Vec<&str> = detail.public_keys.iter().map(|k| k.slot.as_str()).collect();
    assert_eq!(slots, ["9a", "9c"]);
    let pem = &detail.public_keys[0].public_key_pem;
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    assert!(pem.ends_with("-----END PUBLIC KEY-----\n"), "{pem}");
    assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).unwrap();
    assert_eq!(der, long_der);
    assert_eq!(detail.public_keys[0].job_id, ok_job);
    // A failed attempt's keys are not the card's: nothing stored.
    let failed = db.store.card_detail(ids[1]).await.unwrap();
    assert!(failed.public_keys.is_empty(), "{:?}", failed.public_keys);
    // The JSON of GET /v1/cards/{card_id} carries them.
    let json = serde_json::to_value(&detail).unwrap();
    assert_eq!(json["public_keys"][1]["slot"], "9c");
    assert_eq!(json["public_keys"][1]["algorithm"], "p256");
}

async fn a_result_may_overtake_its_started_notice_within_one_batch(db: Db) {
    let ids = db.import("O", 1).await;
    db.insert_chips("O", &[0]).await;
    db.enable().await;
    db.initialize(&ids).await;
    db.dispatch_all().await;
    let job_id = db.job_id(ids[0]).await;
    let applied = db
        .store
        .apply_results(
            &[
                finished(job_id, ids[0], Outcome::Succeeded, None),
                started(job_id),
            ],
            ACTOR,
        )
        .await
        .unwrap();
    assert_eq!(applied, vec![Applied::Changed, Applied::Unchanged]);
    assert_eq!(db.job_state(ids[0]).await, "succeeded");
}

async fn results_for_unknown_jobs_are_reported_and_change_nothing(db: Db) {
    let ids = db.import("U", 1).await;
    let unknown = Uuid::now_v7();
    let applied = db
        .store
        .apply_results(
            &[
                started(unknown),
                finished(unknown, ids[0], Outcome::Succeeded, None),
            ],
            ACTOR,
        )
        .await
        .unwrap();
    assert_eq!(applied, vec![Applied::UnknownJob, Applied::UnknownJob]);
    assert_eq!(db.card_state(ids[0]).await, CardState::Produced);
    assert_eq!(db.audit("job.finished").await, 0);
}

async fn a_failure_returns_the_card_to_produced_unless_the_card_is_unusable(db: Db) {
    let ids = db.import("FL", 2).await;
    db.insert_chips("FL", &[0, 1]).await;
    db.enable().await;
    db.initialize(&ids).await;
    db.dispatch_all().await;
    let (job0, job1) = (db.job_id(ids[0]).await, db.job_id(ids[1]).await);
    let applied = db
        .store
        .apply_results(
            &[
                finished(job0, ids[0], Outcome::Failed, failure("card_mute", false)),
                finished(job1, ids[1], Outcome::Failed, failure("chip_locked", true)),
            ],
            ACTOR,
        )
        .await
        .unwrap();
    assert_eq!(applied, vec![Applied::Changed, Applied::Changed]);

    let card0 = db.store.card_detail(ids[0]).await.unwrap();
    assert_eq!(card0.card.state, CardState::Produced);
    assert_eq!(
        card0.card.state_reason.as_deref(),
        Some("card_mute: card_mute happened")
    );
    assert_eq!(card0.jobs[0].state, "failed");
    assert_eq!(db.card_state(ids[1]).await, CardState::Failed);
    assert_eq!(db.credential_status(job0).await, "revoked");
    assert_eq!(db.credential_status(job1).await, "revoked");

    // The produced card may be tried again; the failed one may not.
    let outcome = db.initialize(&ids).await;
    assert_eq!(outcome.accepted, vec![ids[0]]);
    assert_eq!(outcome.rejected[0].code, "wrong_state");
    assert_eq!(
        db.job_state(ids[0]).await,
        "queued",
        "the chip is still in its slot"
    );
}

/// Issue 12, "failure after the credentials were written": the card used
/// to go back to `produced` with its credentials revoked while its chip
/// held them. It now waits `in_doubt` with them escrowed.
async fn a_failure_after_a_write_keeps_the_card_in_doubt_with_escrowed_credentials(db: Db) {
    let ids = db.import("ID", 2).await;
    db.insert_chips("ID", &[0, 1]).await;
    db.enable().await;
    db.initialize(&ids).await;
    db.dispatch_all().await;
    let (job0, job1) = (db.job_id(ids[0]).await, db.job_id(ids[1]).await);
    let before = opened_credentials(&db, &db.cipher).await;
    let written = |job, card, code: &str| {
        let mut m = finished(job, card, Outcome::Failed, failure(code, false));
        if let ResultMessage::EncodeResult(r) = &mut m {
            r.steps = vec![
                StepReport {
                    step: "change_pin".into(),
                    status: StepStatus::Done,
                    duration_ms: 1.0,
                    detail: None,
                },
                StepReport {
                    step: "verify".into(),
                    status: StepStatus::Failed,
                    duration_ms: 1.0,
                    detail: None,
                },
            ];
        }
        m
    };
    let mut dead = finished(
        job1,
        ids[1],
        Outcome::Failed,
        failure("dead_lettered", false),
    );
    if let ResultMessage::EncodeResult(r) = &mut dead {
        r.steps.clear();
    }
    db.store
        .apply_results(&[written(job0, ids[0], "verification_failed"), dead], ACTOR)
        .await
        .unwrap();
    for (id, job) in [(ids[0], job0), (ids[1], job1)] {
        assert_eq!(db.card_state(id).await, CardState::InDoubt);
        assert_eq!(db.job_state(id).await, "failed");
        assert_eq!(db.credential_status(job).await, "pending", "never revoked");
    }
    // Not taken as a fresh card; its escrowed PUK can reset the chip.
    let again = db.initialize(&ids[..1]).await;
    assert_eq!(again.rejected[0].code, "wrong_state");
    let puk = db
        .store
        .read_puk(ids[0], "reset an in-doubt card", &db.cipher, "officer")
        .await
        .unwrap();
    let stored = before.iter().find(|c| c.0 == job0).unwrap();
    assert_eq!(puk.job_id, job0);
    assert_eq!(puk.puk.expose(), stored.2);

    // Run again: the same job and credentials go out once more.
    assert_eq!(
        db.store.rerun_in_doubt(ids[0], "operator").await.unwrap(),
        job0
    );
    assert_eq!(db.card_state(ids[0]).await, CardState::Initializing);
    assert_eq!(db.job_state(ids[0]).await, "queued");
    assert_eq!(db.audit("job.rerun").await, 1);
    assert!(matches!(
        db.store.rerun_in_doubt(ids[0], "operator").await,
        Err(StoreError::NotFound)
    ));
    let claim = db.store.claim_outbox(10).await.unwrap();
    let out: Vec<Uuid> = claim.jobs.iter().map(|j| j.job_id).collect();
    assert_eq!(out, vec![job0]);
    claim.finish(&[0], ACTOR).await.unwrap();
    db.store
        .apply_results(&[finished(job0, ids[0], Outcome::Succeeded, None)], ACTOR)
        .await
        .unwrap();
    assert_eq!(db.card_state(ids[0]).await, CardState::Unassigned);
    assert_eq!(db.credential_status(job0).await, "active");
    assert_eq!(
        opened_credentials(&db, &db.cipher).await,
        before,
        "same PIN and PUK"
    );
}

// ----------------------------------------------------------------- events

async fn slot_events_and_heartbeats_locate_chips_and_queue_waiting_jobs(db: Db) {
    let ids = db.import("E", 3).await;
    db.enable().await;
    let batch = db.initialize(&ids).await.batch_id;
    assert_eq!(db.rows("outbox").await, 0);

    // A slot event locates card 0.
    assert_eq!(db.insert_chips("E", &[0]).await, 1);
    assert_eq!(db.job_state(ids[0]).await, "queued");
    assert_eq!(db.rows("outbox").await, 1);
    assert_eq!(db.audit("job.card_located").await, 1);

    // A heartbeat repeats where chips are, repairing a lost event for card 1;
    // card 2's chip sits in a slot of another rack but is only faulted.
    let located = db
        .store
        .apply_events(
            &[heartbeat(
                "rack-2",
                3,
                &[
                    (0, SlotState::Present, Some(&serial("E", 1))),
                    (1, SlotState::Faulted, Some(&serial("E", 2))),
                    (2, SlotState::Empty, None),
                ],
            )],
            ACTOR,
        )
        .await
        .unwrap();
    assert_eq!(located, 1);
    assert_eq!(db.job_state(ids[1]).await, "queued");
    assert_eq!(db.job_state(ids[2]).await, "awaiting_card");

    let claim = db.store.claim_outbox(10).await.unwrap();
    let racks: HashMap<Uuid, String> = claim
        .jobs
        .iter()
        .map(|j| (j.card_id, j.rack_id.clone()))
        .collect();
    assert_eq!(racks[&ids[0]], RACK);
    assert_eq!(racks[&ids[1]], "rack-2");
    drop(claim);

    // Events for chips without waiting jobs queue nothing more.
    assert_eq!(db.insert_chips("E", &[0]).await, 0);
    let status = db.store.batch_status(batch, 10, 0).await.unwrap();
    let by_card: HashMap<Uuid, Option<String>> = status
        .cards
        .iter()
        .map(|c| (c.card_id, c.rack_id.clone()))
        .collect();
    assert_eq!(by_card[&ids[1]].as_deref(), Some("rack-2"));
    assert_eq!(by_card[&ids[2]], None);
}

async fn a_removed_card_is_no_longer_located(db: Db) {
    let ids = db.import("RM", 2).await;
    db.insert_chips("RM", &[0, 1]).await;
    assert_eq!(db.rows("slot_locations").await, 2);
    db.store
        .apply_events(&[slot_event(RACK, 0, SlotEventKind::Removed, None)], ACTOR)
        .await
        .unwrap();
    assert_eq!(db.rows("slot_locations").await, 1);
    // An empty slot in a heartbeat removes card 1 as well.
    db.store
        .apply_events(&[heartbeat(RACK, 0, &[(1, SlotState::Empty, None)])], ACTOR)
        .await
        .unwrap();
    assert_eq!(db.rows("slot_locations").await, 0);
    db.enable().await;
    let outcome = db.initialize(&ids).await;
    assert_eq!(outcome.queued, 0);
    assert_eq!(db.job_state(ids[0]).await, "awaiting_card");
}

async fn racks_list_their_heartbeat_and_the_last_word_on_each_slot(db: Db) {
    assert!(db.store.list_racks().await.unwrap().is_empty());
    let events = [
        inserted(RACK, 0, "ANY-CHIP"),
        slot_event(RACK, 1, SlotEventKind::Quarantined, Some("Q-CHIP")),
        slot_event(RACK, 0, SlotEventKind::Removed, None),
        heartbeat("rack-0", 4, &[(3, SlotState::Encoding, Some("B-CHIP"))]),
    ];
    db.store.apply_events(&events, ACTOR).await.unwrap();
    let racks = db.store.list_racks().await.unwrap();
    let names: Vec<&str> = racks.iter().map(|r| r.rack_id.as_str()).collect();
    assert_eq!(names, vec!["rack-0", RACK]);

    let heart = &racks[0];
    assert_eq!(heart.worker_id.as_deref(), Some("worker-of-rack-0"));
    assert_eq!(heart.in_flight, 4);
    assert!(heart.last_heartbeat.is_some());
    assert_eq!(heart.slots.len(), 1);
    assert_eq!(heart.slots[0].state, "encoding");
    assert_eq!(heart.slots[0].chip_serial.as_deref(), Some("B-CHIP"));

    let slotted = &racks[1];
    assert_eq!(
        slotted.worker_id, None,
        "slot events alone say nothing of the worker"
    );
    assert!(slotted.last_heartbeat.is_none());
    let slots: Vec<(i32, &str, Option<&str>)> = slotted
        .slots
        .iter()
        .map(|s| (s.slot, s.state.as_str(), s.chip_serial.as_deref()))
        .collect();
    assert_eq!(
        slots,
        vec![(0, "empty", None), (1, "quarantined", Some("Q-CHIP"))]
    );
}

// ----------------------------------------------------------------- cancel

async fn cancel_stops_waiting_and_queued_jobs_at_once_and_encoding_ones_via_workers(db: Db) {
    let ids = db.import("K", 4).await;
    db.insert_chips("K", &[1, 2, 3]).await;
    db.enable().await;
    let batch = db.initialize(&ids).await.batch_id;
    let jobs: Vec<Uuid> = futures_util::future::join_all(ids.iter().map(|id| db.job_id(*id))).await;
    // 0 awaits its card, 1 is queued, 2 encodes, 3 has succeeded.
    let claim = db.store.claim_outbox(10).await.unwrap();
    let publish: Vec<usize> = claim
        .jobs
        .iter()
        .enumerate()
        .filter(|(_, j)| j.card_id != ids[1])
        .map(|(i, _)| i)
        .collect();
    claim.finish(&publish, ACTOR).await.unwrap();
    db.store
        .apply_results(
            &[
                started(jobs[2]),
                started(jobs[3]),
                finished(jobs[3], ids[3], Outcome::Succeeded, None),
            ],
            ACTOR,
        )
        .await
        .unwrap();
    assert_eq!(db.rows("outbox").await, 1);

    let outcome = db.store.cancel(batch, None, ACTOR).await.unwrap();
    let mut cancelled = outcome.cancelled.clone();
    cancelled.sort();
    let mut expected = vec![jobs[0], jobs[1]];
    expected.sort();
    assert_eq!(cancelled, expected);
    assert_eq!(outcome.stopping, vec![jobs[2]]);
    assert_eq!(outcome.finished, 1);

    for i in [0, 1] {
        assert_eq!(db.job_state(ids[i]).await, "cancelled");
        let card = db.store.card_detail(ids[i]).await.unwrap().card;
        assert_eq!(card.state, CardState::Produced);
        assert_eq!(
            card.state_reason.as_deref(),
            Some("initialization cancelled")
        );
        assert_eq!(db.credential_status(jobs[i]).await, "revoked");
    }
    assert_eq!(db.job_state(ids[2]).await, "encoding");
    assert_eq!(db.card_state(ids[2]).await, CardState::Initializing);
    assert_eq!(db.credential_status(jobs[3]).await, "active");
    assert_eq!(db.rows("outbox").await, 0);
    assert_eq!(db.audit("job.cancelled").await, 2);
    let claim = db.store.claim_control_outbox(10).await.unwrap();
    match &claim.messages[..] {
        [(_, ControlMessage::Cancellation(c))] => {
            let mut told = c.job_ids.clone();
            told.sort();
            let mut live = vec![jobs[0], jobs[1], jobs[2]];
            live.sort();
            assert_eq!(told, live);
        }
        other => panic!("expected one cancellation, got {other:?}"),
    }
    claim.finish().await.unwrap();

    // Cancelling again finds nothing live but the encoding job.
    let again = db.store.cancel(batch, None, ACTOR).await.unwrap();
    assert!(again.cancelled.is_empty());
    assert_eq!(again.stopping, vec![jobs[2]]);
    assert_eq!(again.finished, 3);
}

/// Regression: a batch cancelled while its jobs sat on an offline rack's
/// queue went back to produced with revoked credentials, and the results
/// the worker sent when it came back were dropped: the chips held a PIN,
/// PUK and management key nobody had.
async fn a_cancel_of_dispatched_jobs_is_a_request_and_their_results_win(db: Db) {
    let ids = db.import("CR", 3).await;
    db.insert_chips("CR", &[0, 1, 2]).await;
    db.enable().await;
    let batch = db.initialize(&ids).await.batch_id;
    assert_eq!(db.dispatch_all().await, 3);
    let jobs: Vec<Uuid> = futures_util::future::join_all(ids.iter().map(|id| db.job_id(*id))).await;

    let outcome = db.store.cancel(batch, None, ACTOR).await.unwrap();
    assert!(outcome.cancelled.is_empty(), "{outcome:?}");
    let mut stopping = outcome.stopping.clone();
    stopping.sort();
    let mut expected = jobs.clone();
    expected.sort();
    assert_eq!(stopping, expected);
    for (card, job) in ids.iter().zip(&jobs) {
        assert_eq!(db.job_state(*card).await, "dispatched");
        assert_eq!(db.card_state(*card).await, CardState::Initializing);
        assert_eq!(db.credential_status(*job).await, "pending");
    }
    assert_eq!(db.audit("job.cancel_requested").await, 3);

    // The worker comes back: card 0 was encoded, card 1 never touched.
    db.store
        .apply_results(
            &[
                finished(jobs[0], ids[0], Outcome::Succeeded, None),
                finished(jobs[1], ids[1], Outcome::Cancelled, None),
            ],
            ACTOR,
        )
        .await
        .unwrap();
    assert_eq!(db.job_state(ids[0]).await, "succeeded");
    assert_eq!(db.card_state(ids[0]).await, CardState::Unassigned);
    assert_eq!(db.credential_status(jobs[0]).await, "active");
    assert_eq!(db.job_state(ids[1]).await, "cancelled");
    assert_eq!(db.card_state(ids[1]).await, CardState::Produced);
    assert_eq!(db.credential_status(jobs[1]).await, "revoked");
    assert_eq!(db.job_state(ids[2]).await, "dispatched");
    assert_eq!(db.credential_status(jobs[2]).await, "pending");

    let status = db.store.batch_status(batch, 10, 0).await.unwrap();
    let card0 = status.cards.iter().find(|c| c.card_id == ids[0]).unwrap();
    assert_eq!(card0.state.as_str(), "succeeded");
    assert_eq!(
        card0.reason.as_deref(),
        Some(cardfleet::store::ledger::FINISHED_BEFORE_CANCEL)
    );
    assert!(!status.finished);
}

async fn cancel_of_one_card_leaves_the_rest_of_the_batch(db: Db) {
    let ids = db.import("K1", 2).await;
    db.enable().await;
    let batch = db.initialize(&ids).await.batch_id;
    let outcome = db.store.cancel(batch, Some(ids[1]), ACTOR).await.unwrap();
    assert_eq!(outcome.cancelled, vec![db.job_id(ids[1]).await]);
    assert_eq!(db.job_state(ids[0]).await, "awaiting_card");
    assert_eq!(db.job_state(ids[1]).await, "cancelled");

    assert!(matches!(
        db.store.cancel(Uuid::now_v7(), None, ACTOR).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        db.store.cancel(batch, Some(Uuid::now_v7()), ACTOR).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(db.audit("job.cancelled").await, 1);
}

// ----------------------------------------------------- leases, take-time checks

/// Puts a rack's last heartbeat two hours back.
async fn silence(db: &Db, rack: &str) {
    let silenced = match &db.raw {
        Raw::Postgres(p) => sqlx::query(
            "UPDATE racks SET last_heartbeat = now() - interval '2 hours' WHERE rack_id = $1",
        )
        .bind(rack)
        .execute(p)
        .await
        .map(|r| r.rows_affected())
        .unwrap(),
        Raw::Sqlite(p, _) => sqlx::query(
            "UPDATE racks SET last_heartbeat = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 hours')
             WHERE rack_id = $1",
        )
        .bind(rack)
        .execute(p)
        .await
        .map(|r| r.rows_affected())
        .unwrap(),
    };
    assert_eq!(silenced, 1, "no rack {rack}");
}

async fn jobs_of_a_silent_rack_are_marked_with_escrow_kept_until_their_results_clear_the_mark(
    db: Db,
) {
    let lease = Duration::from_secs(3600);
    let ids = db.import("LS", 3).await;
    db.insert_chips("LS", &[0, 1, 2]).await;
    db.enable().await;
    let batch = db.initialize(&ids).await.batch_id;
    assert_eq!(db.dispatch_all().await, 3);
    let jobs: Vec<Uuid> = futures_util::future::join_all(ids.iter().map(|id| db.job_id(*id))).await;
    db.store
        .apply_results(&[started(jobs[0])], ACTOR)
        .await
        .unwrap();
    db.store
        .apply_events(&[heartbeat(RACK, 1, &[])], ACTOR)
        .await
        .unwrap();

    // A rack heard from within the lease: nothing is marked.
    let sweep = db.store.expire_leases(lease, ACTOR).await.unwrap();
    assert_eq!((sweep.newly_expired, sweep.awaiting_rack), (0, 0));

    let transitions = db
        .store
        .batch_transitions(batch, 0, 100)
        .await
        .unwrap()
        .len();

    // Silent for longer: its encoding and dispatched jobs are marked, once.
    silence(&db, RACK).await;
    let sweep = db.store.expire_leases(lease, ACTOR).await.unwrap();
    assert_eq!((sweep.newly_expired, sweep.awaiting_rack), (3, 3));
    let sweep = db.store.expire_leases(lease, ACTOR).await.unwrap();
    assert_eq!((sweep.newly_expired, sweep.awaiting_rack), (0, 3));
    assert_eq!(db.audit("job.lease_expired").await, 3);
    assert_eq!(db.job_state(ids[0]).await, "encoding");
    assert_eq!(db.job_state(ids[1]).await, "dispatched");
    for (card, job) in ids.iter().zip(&jobs) {
        assert_eq!(db.card_state(*card).await, CardState::Initializing);
        assert_eq!(db.credential_status(*job).await, "pending");
    }
    let status = db.store.batch_status(batch, 10, 0).await.unwrap();
    assert_eq!(status.awaiting_rack, 3);
    assert!(status.cards.iter().all(|c| c.lease_expired_at.is_some()));
    let detail = db.store.card_detail(ids[0]).await.unwrap();
    assert!(detail.jobs[0].lease_expired_at.is_some());
    // Not a transition: the batch's event stream does not show it.
    let after = db
        .store
        .batch_transitions(batch, 0, 100)
        .await
        .unwrap()
        .len();
    assert_eq!(after, transitions);

    // The rack is back: the result it reports wins and clears the mark.
    db.store
        .apply_results(
            &[finished(jobs[0], ids[0], Outcome::Succeeded, None)],
            ACTOR,
        )
        .await
        .unwrap();
    assert_eq!(db.card_state(ids[0]).await, CardState::Unassigned);
    assert_eq!(db.credential_status(jobs[0]).await, "active");
    let sweep = db.store.expire_leases(lease, ACTOR).await.unwrap();
    assert_eq!((sweep.newly_expired, sweep.awaiting_rack), (0, 2));
    let status = db.store.batch_status(batch, 10, 0).await.unwrap();
    assert_eq!(status.awaiting_rack, 2);
    let card0 = status.cards.iter().find(|c| c.card_id == ids[0]).unwrap();
    assert!(card0.lease_expired_at.is_none());
}

async fn the_take_time_check_names_cancelled_and_started_jobs_of_the_asking_rack_only(db: Db) {
    let ids = db.import("TC", 3).await;
    db.insert_chips("TC", &[0, 1, 2]).await;
    db.enable().await;
    let batch = db.initialize(&ids).await.batch_id;
    assert_eq!(db.dispatch_all().await, 3);
    let jobs: Vec<Uuid> = futures_util::future::join_all(ids.iter().map(|id| db.job_id(*id))).await;
    let facts = db.store.job_gate_facts(RACK, &jobs).await.unwrap();
    assert!(
        facts.cancelled.is_empty() && facts.started.is_empty(),
        "{facts:?}"
    );

    db.store
        .apply_results(&[started(jobs[0])], ACTOR)
        .await
        .unwrap();
    db.store.cancel(batch, None, ACTOR).await.unwrap();
    let mut facts = db.store.job_gate_facts(RACK, &jobs).await.unwrap();
    facts.cancelled.sort();
    let mut all = jobs.clone();
    all.sort();
    assert_eq!(facts.cancelled, all);
    assert_eq!(facts.started, vec![jobs[0]]);

    // Another rack learns nothing about this rack's jobs.
    let other = db.store.job_gate_facts("rack-2", &jobs).await.unwrap();
    assert!(
        other.cancelled.is_empty() && other.started.is_empty(),
        "{other:?}"
    );
    let unknown = db
        .store
        .job_gate_facts(RACK, &[Uuid::now_v7()])
        .await
        .unwrap();
    assert!(unknown.cancelled.is_empty());
}

// ----------------------------------------------------- dead letters, views

async fn dead_letters_are_recorded_and_listed_newest_first(db: Db) {
    db.store.record_dead_letters(&[]).await.unwrap();
    assert!(db.store.list_dead_letters(10, 0).await.unwrap().is_empty());
    let letter = |n: usize| {
        DeadLetter::new(
            "cardfleet.results",
            &format!("reason {n}"),
            n.is_multiple_of(2).then(|| format!("msg-{n}")).as_deref(),
            format!("{{\"n\": {n}, \"text\": \"it's 'quoted'\"}}").as_bytes(),
        )
    };
    let inserted = db
        .store
        .record_dead_letters(&[letter(0), letter(1)])
        .await
        .unwrap();
    assert_eq!(inserted.len(), 2);
    db.store.record_dead_letters(&[letter(2)]).await.unwrap();
    // Recorded again (a redelivery, a retried batch): nothing new.
    let again = db
        .store
        .record_dead_letters(&[letter(1), letter(2), letter(2)])
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");

    let listed = db.store.list_dead_letters(10, 0).await.unwrap();
    let reasons: Vec<&str> = listed.iter().map(|l| l.reason.as_str()).collect();
    assert_eq!(reasons, vec!["reason 2", "reason 1", "reason 0"]);
    assert_eq!(listed[0].message_id.as_deref(), Some("msg-2"));
    assert_eq!(listed[1].message_id, None);
    assert_eq!(listed[2].payload, letter(0).payload);
    assert_eq!(listed[0].source, "cardfleet.results");
    assert!(listed[0].id > listed[1].id);
    assert!(listed[0].received_at >= listed[2].received_at);
    let page = db.store.list_dead_letters(1, 1).await.unwrap();
    assert_eq!(page[0].reason, "reason 1");
    assert_eq!(db.store.fleet_snapshot().await.unwrap().dead_letters, 3);
}

async fn poison_dead_letters_are_stored_byte_exact(db: Db) {
    let poison: &[u8] = b"\x00\xff{\"type\":\x00}";
    let letter = DeadLetter::new("cardfleet.slot-events", "why\0", Some("id\0"), poison);
    let inserted = db.store.record_dead_letters(&[letter]).await.unwrap();
    assert_eq!(inserted, vec!["cardfleet.slot-events".to_owned()]);
    let listed = db.store.list_dead_letters(10, 0).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(!listed[0].payload.contains('\0'));
    assert_eq!(db.dead_letter_raw().await, vec![poison.to_vec()]);
}

async fn batch_status_counts_every_state_and_pages_its_cards(db: Db) {
    let ids = db.import("B", 3).await;
    db.insert_chips("B", &[0]).await;
    db.enable().await;
    let batch = db.initialize(&ids).await.batch_id;
    db.dispatch_all().await;
    let job0 = db.job_id(ids[0]).await;
    db.store
        .apply_results(&[finished(job0, ids[0], Outcome::Succeeded, None)], ACTOR)
        .await
        .unwrap();

    let status = db.store.batch_status(batch, 2, 0).await.unwrap();
    assert_eq!(status.batch_id, batch);
    assert_eq!(status.counts.len(), 7, "every state is listed");
    assert_eq!(status.counts["succeeded"], 1);
    assert_eq!(status.counts["awaiting_card"], 2);
    assert_eq!(status.counts["failed"], 0);
    assert!(!status.finished);
    assert!(status.created_at <= Utc::now());
    let mut sorted = ids.clone();
    sorted.sort();
    let page: Vec<Uuid> = status.cards.iter().map(|c| c.card_id).collect();
    assert_eq!(page, sorted[..2].to_vec());
    let rest = db.store.batch_status(batch, 2, 2).await.unwrap();
    assert_eq!(rest.cards.len(), 1);
    assert_eq!(rest.cards[0].card_id, sorted[2]);

    db.store.cancel(batch, None, ACTOR).await.unwrap();
    let status = db.store.batch_status(batch, 10, 0).await.unwrap();
    assert!(status.finished);
    assert_eq!(status.counts["cancelled"], 2);
    let card0 = status.cards.iter().find(|c| c.card_id == ids[0]).unwrap();
    assert_eq!((card0.job_id, card0.state.as_str()), (job0, "succeeded"));
    assert_eq!(
        status
            .cards
            .iter()
            .find(|c| c.card_id == ids[1])
            .unwrap()
            .reason
            .as_deref(),
        Some("cancelled by operator")
    );

    assert!(matches!(
        db.store.batch_status(Uuid::now_v7(), 10, 0).await,
        Err(StoreError::NotFound)
    ));
}

async fn batch_transitions_follow_a_batch_in_order_after_a_sequence(db: Db) {
    let ids = db.import("T", 1).await;
    db.insert_chips("T", &[0]).await;
    db.enable().await;
    let other = db.import("T2", 1).await;
    let batch = db.initialize(&ids).await.batch_id;
    db.initialize(&other).await;
    db.dispatch_all().await;
    let job = db.job_id(ids[0]).await;
    db.store
        .apply_results(
            &[
                started(job),
                finished(job, ids[0], Outcome::Succeeded, None),
            ],
            ACTOR,
        )
        .await
        .unwrap();

    let all = db.store.batch_transitions(batch, 0, 100).await.unwrap();
    let moves: Vec<(Option<&str>, &str, Option<&str>)> = all
        .iter()
        .map(|t| (t.from.as_deref(), t.to.as_str(), t.card_state.as_deref()))
        .collect();
    assert_eq!(
        moves,
        vec![
            (None, "queued", Some("initializing")),
            (Some("queued"), "dispatched", None),
            (Some("dispatched"), "encoding", None),
            (Some("encoding"), "succeeded", Some("unassigned")),
        ]
    );
    assert!(all.iter().all(|t| t.job_id == job && t.card_id == ids[0]));
    assert!(
        all.windows(2)
            .all(|w| w[0].seq < w[1].seq && w[0].at <= w[1].at)
    );

    let after = db
        .store
        .batch_transitions(batch, all[1].seq, 1)
        .await
        .unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].seq, all[2].seq);
    assert!(
        db.store
            .batch_transitions(batch, all[3].seq, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        db.store
            .batch_transitions(Uuid::now_v7(), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

// ----------------------------------------------------------------- gauges

async fn the_fleet_snapshot_counts_live_jobs_outbox_lag_and_racks(db: Db) {
    let empty = db.store.fleet_snapshot().await.unwrap();
    assert!(empty.live_jobs.is_empty());
    assert_eq!(empty.outbox_lag_seconds, 0.0);
    assert!(empty.racks.is_empty());
    assert_eq!(empty.dead_letters, 0);

    let ids = db.import("G", 3).await;
    db.insert_chips("G", &[0, 1]).await;
    db.store
        .apply_events(&[heartbeat("rack-hb", 0, &[])], ACTOR)
        .await
        .unwrap();
    db.enable().await;
    db.initialize(&ids).await;
    let claim = db.store.claim_outbox(1).await.unwrap();
    claim.finish(&[0], ACTOR).await.unwrap();

    let snapshot = db.store.fleet_snapshot().await.unwrap();
    let mut live = snapshot.live_jobs.clone();
    live.sort();
    assert_eq!(
        live,
        vec![
            ("awaiting_card".to_owned(), 1),
            ("dispatched".to_owned(), 1),
            ("queued".to_owned(), 1),
        ]
    );
    assert!(snapshot.outbox_lag_seconds >= 0.0 && snapshot.outbox_lag_seconds < 3600.0);
    let racks: Vec<(&str, bool)> = snapshot
        .racks
        .iter()
        .map(|(rack, age)| (rack.as_str(), age.is_some()))
        .collect();
    assert_eq!(racks, vec![(RACK, false), ("rack-hb", true)]);
    let age = snapshot.racks[1].1.unwrap();
    assert!((0.0..3600.0).contains(&age), "{age}");
}

// ------------------------------------------------- wake-ups, concurrency

async fn the_outbox_listener_wakes_when_jobs_are_queued(db: Db) {
    let mut listener = db.store.outbox_listener().await.unwrap();
    let ids = db.import("W", 1).await;
    db.insert_chips("W", &[0]).await;
    db.enable().await;
    db.initialize(&ids).await;
    tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("woken within 10 s")
        .unwrap();
}

async fn concurrent_writers_all_commit(db: Db) {
    db.enable().await;
    let ids = db.import("CW", 40).await;
    let mut tasks = Vec::new();
    for chunk in 0..4 {
        let store = db.store.clone();
        let profiles = db.profiles.clone();
        let cipher = db.cipher.clone();
        let chunk_ids = ids[chunk * 10..(chunk + 1) * 10].to_vec();
        tasks.push(tokio::spawn(async move {
            for id in chunk_ids {
                store
                    .initialize(Selection::Ids(vec![id]), &profiles, &cipher, ACTOR)
                    .await
                    .unwrap();
            }
        }));
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let slot = (chunk * 10 + i) as u16;
                let event = inserted(RACK, slot, &serial("CW", chunk * 10 + i));
                store.apply_events(&[event], ACTOR).await.unwrap();
            }
        }));
        let store = db.store.clone();
        let profiles = db.profiles.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                let row = card_row(&format!("CW{chunk}-EXTRA-{i}"), &format!("CW{chunk}-X-{i}"));
                let outcome = store
                    .import_cards(vec![(1, row)], &profiles, ACTOR)
                    .await
                    .unwrap();
                assert_eq!(outcome.imported, 1);
            }
        }));
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let claim = store.claim_outbox(100).await.unwrap();
                let all: Vec<usize> = (0..claim.jobs.len()).collect();
                claim.finish(&all, ACTOR).await.unwrap();
                store
                    .list_cards(&CardFilter {
                        limit: 10,
                        ..CardFilter::default()
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // On PostgreSQL a chip located while its job is being created can be
    // missed by both transactions; the next heartbeat, which repeats every
    // chip, repairs that, as it does for a lost slot event.
    let chips: Vec<String> = (0..40).map(|i| serial("CW", i)).collect();
    let slots: Vec<(u16, SlotState, Option<&str>)> = chips
        .iter()
        .enumerate()
        .map(|(i, chip)| (i as u16, SlotState::Present, Some(chip.as_str())))
        .collect();
    db.store
        .apply_events(&[heartbeat(RACK, 0, &slots)], ACTOR)
        .await
        .unwrap();
    assert_eq!(db.cards(None).await.len(), 60);
    assert_eq!(db.rows("jobs").await, 40);
    // Every chip was seen, so every job is queued or already dispatched.
    let snapshot = db.store.fleet_snapshot().await.unwrap();
    let live: i64 = snapshot
        .live_jobs
        .iter()
        .filter(|(state, _)| state == "queued" || state == "dispatched")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(live, 40);
}

async fn the_audit_trail_records_every_transition_with_its_detail(db: Db) {
    db.enable().await;
    let ids = db.import("AU", 2).await;
    db.insert_chips("AU", &[0]).await;
    let batch = db.initialize(&ids).await.batch_id;
    db.dispatch_all().await;
    let job0 = db.job_id(ids[0]).await;
    db.store
        .apply_results(
            &[
                started(job0),
                finished(job0, ids[0], Outcome::Succeeded, None),
            ],
            ACTOR,
        )
        .await
        .unwrap();
    db.insert_chips("AU", &[1]).await;
    db.store.cancel(batch, None, ACTOR).await.unwrap();
    db.store.release_slot(RACK, 1, ACTOR).await.unwrap();
    db.store
        .set_process_enabled(INITIALIZE_PROCESS, false, "admin")
        .await
        .unwrap();

    let s = |v: &str| Some(v.to_owned());
    let row = |action: &str, from, to, card, ids: (bool, bool, bool), detail| {
        (
            if action == "process.disabled" {
                "admin"
            } else {
                ACTOR
            }
            .to_owned(),
            action.to_owned(),
            from,
            to,
            card,
            ids.0,
            ids.1,
            ids.2,
            detail,
        )
    };
    let job = (true, true, true);
    let process = Some(serde_json::json!({ "process": INITIALIZE_PROCESS }));
    let expected: Vec<AuditRow> = vec![
        row(
            "process.enabled",
            None,
            None,
            None,
            (false, false, false),
            process.clone(),
        ),
        row(
            "card.imported",
            None,
            None,
            s("produced"),
            (true, false, false),
            None,
        ),
        row(
            "card.imported",
            None,
            None,
            s("produced"),
            (true, false, false),
            None,
        ),
        row(
            "initialize.requested",
            None,
            s("queued"),
            s("initializing"),
            job,
            None,
        ),
        row(
            "initialize.requested",
            None,
            s("awaiting_card"),
            s("initializing"),
            job,
            None,
        ),
        row(
            "job.dispatched",
            s("queued"),
            s("dispatched"),
            None,
            job,
            Some(serde_json::json!({ "rack_id": RACK })),
        ),
        row(
            "job.started",
            s("dispatched"),
            s("encoding"),
            None,
            job,
            Some(serde_json::json!({ "rack_id": RACK, "slot": 0, "worker_id": "worker-1" })),
        ),
        row(
            "job.finished",
            s("encoding"),
            s("succeeded"),
            s("unassigned"),
            job,
            Some(serde_json::json!({
                "rack_id": RACK, "slot": 0, "worker_id": "worker-1", "failure_code": null
            })),
        ),
        row(
            "job.card_located",
            s("awaiting_card"),
            s("queued"),
            None,
            job,
            Some(serde_json::json!({ "rack_id": RACK })),
        ),
        row(
            "job.cancelled",
            s("queued"),
            s("cancelled"),
            s("produced"),
            job,
            None,
        ),
        row(
            "slot.release_requested",
            None,
            None,
            None,
            (false, false, false),
            Some(serde_json::json!({ "rack_id": RACK, "slot": 1 })),
        ),
        row(
            "process.disabled",
            None,
            None,
            None,
            (false, false, false),
            process,
        ),
    ];
    assert_eq!(db.audit_trail().await, expected);
}

async fn a_lock_conflict_is_a_transient_error_and_a_constraint_violation_is_not(db: Db) {
    let conflict = match &db.raw {
        Raw::Postgres(p) => {
            let mut holder = p.begin().await.unwrap();
            sqlx::query("SELECT 1 FROM process_settings FOR UPDATE")
                .execute(&mut *holder)
                .await
                .unwrap();
            let mut waiter = p.begin().await.unwrap();
            sqlx::query("SET LOCAL lock_timeout = '20ms'")
                .execute(&mut *waiter)
                .await
                .unwrap();
            sqlx::query("SELECT 1 FROM process_settings FOR UPDATE")
                .execute(&mut *waiter)
                .await
                .unwrap_err()
        }
        Raw::Sqlite(p, path) => {
            use sqlx::Connection;
            let _holder = p.begin_with("BEGIN IMMEDIATE").await.unwrap();
            let mut impatient = sqlx::SqliteConnection::connect_with(
                &sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .busy_timeout(Duration::ZERO),
            )
            .await
            .unwrap();
            impatient.begin_with("BEGIN IMMEDIATE").await.unwrap_err()
        }
    };
    assert!(StoreError::from(conflict).is_transient());

    let sql = "INSERT INTO process_settings (name) VALUES ('initialize-temporary-card')";
    let duplicate = match &db.raw {
        Raw::Postgres(p) => sqlx::query(sql).execute(p).await.unwrap_err(),
        Raw::Sqlite(p, _) => sqlx::query(sql).execute(p).await.unwrap_err(),
    };
    assert!(!StoreError::from(duplicate).is_transient());
    assert!(!StoreError::NotFound.is_transient());
}

// ------------------------------------------------------------- rack keys

async fn an_enrolled_rack_has_its_key_and_re_enrolment_replaces_it_with_an_audit_row(db: Db) {
    assert_eq!(db.store.rack_public_key(RACK).await.unwrap(), None);
    let first = [7u8; 32];
    let second = [9u8; 32];
    db.store
        .enroll_rack(RACK, &first, &[8u8; 32], ACTOR)
        .await
        .unwrap();
    assert_eq!(db.store.rack_public_key(RACK).await.unwrap(), Some(first));
    assert_eq!(db.store.rack_public_key("rack-2").await.unwrap(), None);

    db.store
        .enroll_rack(RACK, &second, &[10u8; 32], "re-enroller")
        .await
        .unwrap();
    assert_eq!(db.store.rack_public_key(RACK).await.unwrap(), Some(second));
    assert_eq!(
        db.store.rack_signing_key(RACK).await.unwrap(),
        Some([10u8; 32])
    );
    assert_eq!(db.store.rack_signing_key("rack-2").await.unwrap(), None);
    assert_eq!(db.audit("rack.enrolled").await, 2);

    let trail: Vec<AuditRow> = db
        .audit_trail()
        .await
        .into_iter()
        .filter(|r| r.1 == "rack.enrolled")
        .collect();
    assert_eq!(trail[0].0, ACTOR);
    assert_eq!(trail[1].0, "re-enroller");
    let detail = trail[1].8.as_ref().unwrap();
    assert_eq!(detail["rack_id"], RACK);
    assert_eq!(
        detail["key_fingerprint"],
        cardfleet::store::rack_keys::fingerprint(&second)
    );
    assert_eq!(
        detail["replaced_key_fingerprint"],
        cardfleet::store::rack_keys::fingerprint(&first)
    );
    assert!(trail[0].8.as_ref().unwrap()["replaced_key_fingerprint"].is_null());
    // The audit trail names keys by fingerprint, never by the key itself.
    for row in &trail {
        let text = row.8.as_ref().unwrap().to_string();
        assert!(!text.contains(&hex::encode(first)) && !text.contains(&hex::encode(second)));
    }
}

async fn a_restart_redispatches_dispatched_and_encoding_jobs_with_their_credentials(db: Db) {
    let ids = db.import("RD", 4).await;
    db.insert_chips("RD", &[0, 1, 2, 3]).await;
    db.enable().await;
    db.initialize(&ids).await;
    db.dispatch_all().await;
    let jobs: Vec<Uuid> = {
        let mut v = Vec::new();
        for id in &ids {
            v.push(db.job_id(*id).await);
        }
        v
    };
    // One encoding, one finished, two still dispatched.
    db.store
        .apply_results(
            &[
                started(jobs[0]),
                started(jobs[1]),
                finished(jobs[1], ids[1], Outcome::Succeeded, None),
            ],
            ACTOR,
        )
        .await
        .unwrap();
    assert_eq!(db.job_state(ids[0]).await, "encoding");
    assert_eq!(db.rows("outbox").await, 0);

    assert_eq!(db.store.redispatch_in_flight(ACTOR).await.unwrap(), 3);
    assert_eq!(db.job_state(ids[0]).await, "queued");
    assert_eq!(
        db.job_state(ids[1]).await,
        "succeeded",
        "finished jobs stay"
    );
    assert_eq!(db.job_state(ids[2]).await, "queued");
    assert_eq!(db.rows("outbox").await, 3);
    assert_eq!(db.audit("job.redispatched").await, 3);
    // The same jobs and credentials go out again: no new job, no new PIN.
    let claim = db.store.claim_outbox(10).await.unwrap();
    let again: Vec<Uuid> = claim.jobs.iter().map(|j| j.job_id).collect();
    assert_eq!(again, vec![jobs[0], jobs[2], jobs[3]]);
    claim.finish(&[0, 1, 2], ACTOR).await.unwrap();
    assert_eq!(db.rows("jobs").await, 4);
    // Another restart before their results resends them again, unchanged.
    assert_eq!(db.store.redispatch_in_flight(ACTOR).await.unwrap(), 3);
    let claim = db.store.claim_outbox(10).await.unwrap();
    claim.finish(&[0, 1, 2], ACTOR).await.unwrap();
    // A finished job is never sent again.
    for (job, card) in [(jobs[0], ids[0]), (jobs[2], ids[2]), (jobs[3], ids[3])] {
        db.store
            .apply_results(&[finished(job, card, Outcome::Succeeded, None)], ACTOR)
            .await
            .unwrap();
    }
    assert_eq!(db.store.redispatch_in_flight(ACTOR).await.unwrap(), 0);
    assert_eq!(db.rows("outbox").await, 0);
}

// ------------------------------------------------------------- key rotation

/// Every stored credential: (job, key id, PIN, PUK), by job id.
async fn stored_credentials(
    db: &Db,
) -> Vec<(
    Uuid,
    String,
    cardfleet::credentials::Sealed,
    cardfleet::credentials::Sealed,
)> {
    use cardfleet::credentials::Sealed;
    let sql = "SELECT job_id, key_id, pin_nonce, pin_ct, puk_nonce, puk_ct FROM credentials
               ORDER BY job_id";
    type Row<T> = (T, String, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);
    let rows: Vec<Row<Uuid>> = match &db.raw {
        Raw::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await.unwrap(),
        Raw::Sqlite(p, _) => {
            let rows: Vec<Row<String>> = sqlx::query_as(sql).fetch_all(p).await.unwrap();
            rows.into_iter()
                .map(|(j, k, a, b, c, d)| (j.parse().unwrap(), k, a, b, c, d))
                .collect()
        }
    };
    rows.into_iter()
        .map(|(job, key, pn, pc, un, uc)| {
            let pin = Sealed {
                nonce: pn,
                ciphertext: pc,
            };
            let puk = Sealed {
                nonce: un,
                ciphertext: uc,
            };
            (job, key, pin, puk)
        })
        .collect()
}

/// The plaintext PIN and PUK of every credential, opened with `cipher`.
async fn opened_credentials(db: &Db, cipher: &CredentialCipher) -> Vec<(Uuid, String, String)> {
    stored_credentials(db)
        .await
        .into_iter()
        .map(|(job, key, pin, puk)| {
            let pin = cipher
                .open(&key, &pin, &credential_context(job, "pin"))
                .unwrap();
            let puk = cipher
                .open(&key, &puk, &credential_context(job, "puk"))
                .unwrap();
            (job, pin.expose().to_owned(), puk.expose().to_owned())
        })
        .collect()
}

async fn rotation_re_encrypts_every_credential_under_the_new_key_and_a_second_run_does_nothing(
    db: Db,
) {
    let ids = db.import("K", 5).await;
    db.insert_chips("K", &[0, 1]).await;
    db.enable().await;
    db.initialize(&ids).await;
    let before = opened_credentials(&db, &db.cipher).await;
    assert_eq!(before.len(), 5);

    const NEW_KEY: &str = "5555555555555555555555555555555555555555555555555555555555555555";
    let ring = CredentialCipher::from_hex("k2", NEW_KEY)
        .unwrap()
        .with_previous("test-key", support::ENCRYPTION_KEY)
        .unwrap();
    // The keyring reads the old rows before rotation, as the API,
    // dispatcher and ledger do while it runs.
    assert_eq!(opened_credentials(&db, &ring).await, before);
    assert_eq!(
        db.store.credential_key_counts().await.unwrap(),
        [("test-key".to_owned(), 5)]
    );

    let mut batches = Vec::new();
    loop {
        let n = db.store.rotate_credentials(&ring, 2, ACTOR).await.unwrap();
        if n == 0 {
            break;
        }
        batches.push(n);
    }
    assert_eq!(batches, [2, 2, 1]);
    assert_eq!(
        db.store.credential_key_counts().await.unwrap(),
        [("k2".to_owned(), 5)]
    );
    // Re-encrypted: the new key alone opens them, with the same PIN and PUK.
    let only_new = CredentialCipher::from_hex("k2", NEW_KEY).unwrap();
    assert_eq!(opened_credentials(&db, &only_new).await, before);
    assert!(
        stored_credentials(&db)
            .await
            .iter()
            .all(|(_, key, _, _)| key == "k2")
    );
    assert_eq!(db.audit("credentials.rotated").await, 3);

    // Idempotent: nothing is left under a previous key.
    assert_eq!(
        db.store.rotate_credentials(&ring, 2, ACTOR).await.unwrap(),
        0
    );
    assert_eq!(db.audit("credentials.rotated").await, 3);
    // A keyring without previous keys has nothing to do either.
    assert_eq!(
        db.store
            .rotate_credentials(&only_new, 2, ACTOR)
            .await
            .unwrap(),
        0
    );

    // The dispatcher's view: claimed jobs carry the new key id and open.
    let claim = db.store.claim_outbox(10).await.unwrap();
    assert!(!claim.jobs.is_empty());
    for job in &claim.jobs {
        assert_eq!(job.key_id, "k2");
        assert!(
            ring.open(
                &job.key_id,
                &job.pin,
                &credential_context(job.job_id, "pin")
            )
            .is_ok()
        );
    }
}

async fn the_audit_trail_cannot_be_updated_deleted_or_truncated(db: Db) {
    db.enable().await;
    let before = db.audit_trail().await;
    assert_eq!(before.len(), 1);
    let statements: &[&str] = match &db.raw {
        Raw::Postgres(_) => &[
            "UPDATE audit SET actor = 'mallory'",
            "DELETE FROM audit",
            "TRUNCATE audit",
        ],
        Raw::Sqlite(..) => &["UPDATE audit SET actor = 'mallory'", "DELETE FROM audit"],
    };
    for sql in statements {
        let refused = match &db.raw {
            Raw::Postgres(p) => sqlx::query(*sql).execute(p).await.err(),
            Raw::Sqlite(p, _) => sqlx::query(*sql).execute(p).await.err(),
        };
        let error = refused.unwrap_or_else(|| panic!("{sql} was allowed"));
        assert!(error.to_string().contains("append-only"), "{sql}: {error}");
    }
    assert_eq!(db.audit_trail().await, before);
    // Appending still works.
    db.store
        .set_process_enabled(INITIALIZE_PROCESS, false, ACTOR)
        .await
        .unwrap();
    assert_eq!(db.audit_trail().await.len(), 2);
}

async fn tokens_authenticate_until_revoked_and_enrollment_tokens_only_once(db: Db) {
    let new = |name: &str, roles: Vec<Role>| NewToken {
        name: name.into(),
        roles,
        rack_id: None,
        single_use: false,
        expires_at: None,
    };
    assert!(!db.store.has_tokens().await.unwrap());
    let secret = db
        .store
        .create_token(&new("alice", vec![Role::Officer, Role::Admin]), ACTOR)
        .await
        .unwrap();
    assert!(db.store.has_tokens().await.unwrap());
    let caller = db
        .store
        .authenticate(secret.expose())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(caller.name, "alice");
    assert_eq!(caller.roles, vec![Role::Admin, Role::Officer]);
    assert_eq!(db.store.authenticate("cf_guess").await.unwrap(), None);
    let duplicate = db
        .store
        .create_token(&new("alice", vec![Role::Auditor]), ACTOR)
        .await;
    assert!(matches!(
        duplicate,
        Err(StoreError::Conflict {
            code: "token_exists",
            ..
        })
    ));
    assert!(matches!(
        db.store.create_token(&new("no roles", vec![]), ACTOR).await,
        Err(StoreError::Invalid(_))
    ));
    // Only the hash is stored.
    assert_eq!(
        db.count(
            "SELECT count(*) FROM api_tokens WHERE token_hash = $1",
            &secret.hash()
        )
        .await,
        1
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM api_tokens WHERE token_hash = $1 OR name = $1",
            secret.expose()
        )
        .await,
        0
    );

    db.store.revoke_token("alice", "admin-bob").await.unwrap();
    db.store.revoke_token("alice", "admin-bob").await.unwrap();
    assert_eq!(db.store.authenticate(secret.expose()).await.unwrap(), None);
    assert!(matches!(
        db.store.revoke_token("nobody", ACTOR).await,
        Err(StoreError::NotFound)
    ));
    let listed = db.store.list_tokens().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].revoked_at.is_some());
    assert_eq!(db.audit("token.created").await, 1);
    assert_eq!(
        db.audit("token.revoked").await,
        1,
        "a second revoke is a no-op"
    );

    let enrollment = |name: &str, hours: i64| NewToken {
        name: name.into(),
        roles: vec![Role::Worker],
        rack_id: Some(RACK.into()),
        single_use: true,
        expires_at: Some(Utc::now() + chrono::Duration::hours(hours)),
    };
    let once = db
        .store
        .create_token(&enrollment("enroll-1", 1), ACTOR)
        .await
        .unwrap();
    let worker = db.store.authenticate(once.expose()).await.unwrap().unwrap();
    assert_eq!(worker.rack_id.as_deref(), Some(RACK));
    assert!(db.store.consume_token(&worker).await.unwrap());
    assert!(!db.store.consume_token(&worker).await.unwrap());
    assert_eq!(db.store.authenticate(once.expose()).await.unwrap(), None);
    let expired = db
        .store
        .create_token(&enrollment("enroll-old", -1), ACTOR)
        .await
        .unwrap();
    assert_eq!(db.store.authenticate(expired.expose()).await.unwrap(), None);
    assert_eq!(db.audit("token.used").await, 1);
}

async fn puk_reads_are_audited_and_pin_mailers_are_released_once_then_destroyed(db: Db) {
    let ids = db.import("E", 2).await;
    db.insert_chips("E", &[0, 1]).await;
    db.enable().await;
    let batch = db.initialize(&ids).await.batch_id;
    let unfinished = db
        .store
        .release_mailers(batch, "csv", &db.profiles, &db.cipher, "officer")
        .await;
    assert!(matches!(
        unfinished,
        Err(StoreError::Conflict {
            code: "batch_not_finished",
            ..
        })
    ));
    assert!(matches!(
        db.store
            .read_puk(ids[0], "why", &db.cipher, "officer")
            .await,
        Err(StoreError::NotFound)
    ));
    db.dispatch_all().await;
    for id in &ids {
        let job = db.job_id(*id).await;
        db.store
            .apply_results(&[finished(job, *id, Outcome::Succeeded, None)], ACTOR)
            .await
            .unwrap();
    }

    let puk = db
        .store
        .read_puk(ids[0], "locked out", &db.cipher, "officer")
        .await
        .unwrap();
    assert_eq!(puk.puk.expose().len(), 8);
    assert!(matches!(
        db.store.read_puk(ids[0], " ", &db.cipher, "officer").await,
        Err(StoreError::Invalid(_))
    ));
    let reads = db
        .store
        .list_audit(&AuditFilter {
            action: Some("credential.puk_read".into()),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].actor, "officer");
    assert_eq!(reads[0].card_id, Some(ids[0]));
    assert_eq!(reads[0].job_id, Some(puk.job_id));
    assert_eq!(
        reads[0].detail,
        Some(serde_json::json!({ "reason": "locked out" }))
    );

    let first = db
        .store
        .release_mailers(batch, "csv", &db.profiles, &db.cipher, "officer")
        .await
        .unwrap();
    assert_eq!(first.letters.len(), 2);
    assert_eq!(first.pins_destroyed_now, 2);
    let numbers: Vec<&str> = first
        .letters
        .iter()
        .map(|l| l.card_number.as_str())
        .collect();
    assert_eq!(numbers, ["E-TC-00000", "E-TC-00001"]);
    assert!(first.letters.iter().all(|l| l.pin.expose().len() == 6));
    assert_eq!(
        db.count(
            "SELECT count(*) FROM credentials WHERE pin_destroyed_at IS NOT NULL AND length(pin_ct) = 0 AND $1 <> ''",
            "x"
        )
        .await,
        2
    );
    let again = db
        .store
        .release_mailers(batch, "csv", &db.profiles, &db.cipher, "officer")
        .await;
    assert!(matches!(
        again,
        Err(StoreError::Conflict {
            code: "mailers_already_released",
            ..
        })
    ));
    let reopened = db.store.reopen_mailers(batch, "admin").await.unwrap();
    assert_eq!((reopened.pins_left, reopened.pins_destroyed), (0, 2));
    let after = db
        .store
        .release_mailers(batch, "html", &db.profiles, &db.cipher, "officer")
        .await;
    assert!(matches!(
        after,
        Err(StoreError::Conflict {
            code: "pins_destroyed",
            ..
        })
    ));
    // The PUK outlives the PINs.
    db.store
        .read_puk(ids[1], "second look", &db.cipher, "officer")
        .await
        .unwrap();
    let by_batch = db
        .store
        .list_audit(&AuditFilter {
            batch_id: Some(batch),
            action: Some("mailers.released".into()),
            limit: 10,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(by_batch.len(), 1);
    assert_eq!(by_batch[0].detail.as_ref().unwrap()["letters"], 2);
    assert_eq!(db.audit("mailers.reopened").await, 1);
    // Batch-wide rows are no job transitions.
    let transitions = db.store.batch_transitions(batch, 0, 1000).await.unwrap();
    assert!(transitions.iter().all(|t| !t.to.is_empty()));
    assert!(matches!(
        db.store.reopen_mailers(Uuid::new_v4(), "admin").await,
        Err(StoreError::NotFound)
    ));
}

macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Db::postgres().await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Db::sqlite().await).await;
                }
            )*
        }
    };
}

store_tests!(
    import_stores_valid_rows_and_reports_each_rejected_row,
    a_restart_redispatches_dispatched_and_encoding_jobs_with_their_credentials,
    an_empty_import_changes_nothing,
    cards_list_by_type_and_state_in_id_order_with_paging,
    card_detail_shows_the_job_history_and_unknown_cards_are_not_found,
    the_process_starts_disabled_and_each_change_is_audited_once,
    initialize_is_refused_while_the_process_is_disabled,
    initialize_creates_jobs_sealed_credentials_and_outbox_rows_for_located_cards,
    initialize_rejects_unknown_and_busy_cards_and_counts_repeats_once,
    initialize_by_filter_takes_produced_cards_of_the_type_up_to_the_limit,
    finishing_a_claim_dispatches_the_published_jobs_and_keeps_the_rest,
    a_claim_respects_its_limit,
    a_job_a_worker_reported_on_keeps_its_newer_state_and_its_row_goes,
    a_held_claim_is_not_handed_out_twice,
    the_control_outbox_carries_cancellations_and_slot_releases,
    a_result_delivered_three_times_moves_the_job_once,
    public_keys_of_a_success_are_stored_per_slot_and_shown_as_pem,
    a_result_may_overtake_its_started_notice_within_one_batch,
    results_for_unknown_jobs_are_reported_and_change_nothing,
    a_failure_returns_the_card_to_produced_unless_the_card_is_unusable,
    a_failure_after_a_write_keeps_the_card_in_doubt_with_escrowed_credentials,
    slot_events_and_heartbeats_locate_chips_and_queue_waiting_jobs,
    a_removed_card_is_no_longer_located,
    racks_list_their_heartbeat_and_the_last_word_on_each_slot,
    cancel_stops_waiting_and_queued_jobs_at_once_and_encoding_ones_via_workers,
    cancel_of_one_card_leaves_the_rest_of_the_batch,
    a_cancel_of_dispatched_jobs_is_a_request_and_their_results_win,
    jobs_of_a_silent_rack_are_marked_with_escrow_kept_until_their_results_clear_the_mark,
    the_take_time_check_names_cancelled_and_started_jobs_of_the_asking_rack_only,
    dead_letters_are_recorded_and_listed_newest_first,
    poison_dead_letters_are_stored_byte_exact,
    batch_status_counts_every_state_and_pages_its_cards,
    batch_transitions_follow_a_batch_in_order_after_a_sequence,
    the_fleet_snapshot_counts_live_jobs_outbox_lag_and_racks,
    the_outbox_listener_wakes_when_jobs_are_queued,
    concurrent_writers_all_commit,
    the_audit_trail_records_every_transition_with_its_detail,
    a_lock_conflict_is_a_transient_error_and_a_constraint_violation_is_not,
    an_enrolled_rack_has_its_key_and_re_enrolment_replaces_it_with_an_audit_row,
    the_audit_trail_cannot_be_updated_deleted_or_truncated,
    tokens_authenticate_until_revoked_and_enrollment_tokens_only_once,
    puk_reads_are_audited_and_pin_mailers_are_released_once_then_destroyed,
    rotation_re_encrypts_every_credential_under_the_new_key_and_a_second_run_does_nothing,
);

/// What only a SQLite store has: a file.
mod sqlite_file {
    use super::*;

    #[tokio::test]
    async fn the_file_is_created_only_when_asked_and_runs_in_wal_mode_with_readable_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fresh.sqlite");
        let url = format!("sqlite:{}", path.display());
        assert!(Store::connect(&url, 2, false).await.is_err());
        assert!(!path.exists());

        let store = Store::connect(&url, 2, true).await.unwrap();
        assert_eq!(store.backend(), "sqlite");
        store.migrate().await.unwrap();
        store.migrate().await.unwrap();
        store.ping().await.unwrap();
        assert!(path.exists());
        let db = Db::new(
            store,
            Raw::Sqlite(
                sqlx::SqlitePool::connect_with(
                    sqlx::sqlite::SqliteConnectOptions::new().filename(&path),
                )
                .await
                .unwrap(),
                path.clone(),
            ),
            Cleanup::Sqlite(dir),
        );
        let Raw::Sqlite(raw, _) = &db.raw else {
            unreachable!()
        };
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(raw)
            .await
            .unwrap();
        assert_eq!(mode, "wal");

        db.enable().await;
        let ids = db.import("FILE", 1).await;
        db.insert_chips("FILE", &[0]).await;
        db.initialize(&ids).await;
        let (id, imported_at): (String, String) =
            sqlx::query_as("SELECT id, imported_at FROM cards")
                .fetch_one(raw)
                .await
                .unwrap();
        assert_eq!(
            id,
            ids[0].hyphenated().to_string(),
            "UUIDs are readable text"
        );
        assert!(
            imported_at.ends_with('Z') && imported_at.contains('T'),
            "{imported_at}"
        );
        let types: (String, String, String) = sqlx::query_as(
            "SELECT typeof(j.batch_id), typeof(c.pin_nonce), typeof(a.detail)
             FROM jobs j JOIN credentials c ON c.job_id = j.id
             JOIN audit a ON a.action = 'process.enabled'",
        )
        .fetch_one(raw)
        .await
        .unwrap();
        assert_eq!(types, ("text".into(), "blob".into(), "text".into()));
    }

    #[tokio::test]
    async fn postgres_urls_and_unknown_schemes_pick_their_backend_or_are_refused() {
        let refused = Store::connect("mysql://user:secret@127.0.0.1/db", 1, false).await;
        match refused {
            Err(e @ StoreError::UnsupportedUrl(_)) => assert!(!e.to_string().contains("secret")),
            other => panic!("expected UnsupportedUrl, got {other:?}"),
        }
        let db = Db::postgres().await;
        assert_eq!(db.store.backend(), "postgres");
        assert!(db.store.postgres_pool().is_some());
    }
}

/// What only PostgreSQL has: row locks taken by concurrent transactions.
mod lock_order {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Regression: the dispatcher's claim locked outbox rows and then jobs,
    /// a cancel locked jobs and then outbox rows; run together they
    /// deadlocked and PostgreSQL aborted one of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dispatcher_claims_and_cancels_run_together_on_thousands_of_jobs_without_deadlock() {
        const BATCHES: usize = 20;
        const PER_BATCH: usize = 100;
        let db = Db::postgres().await;
        db.enable().await;
        let ids = db.import("LK", BATCHES * PER_BATCH).await;
        let all: Vec<usize> = (0..ids.len()).collect();
        db.insert_chips("LK", &all).await;
        let mut batches = Vec::new();
        for cards in ids.chunks(PER_BATCH) {
            batches.push((db.initialize(cards).await.batch_id, cards.to_vec()));
        }
        assert_eq!(db.rows("outbox").await, (BATCHES * PER_BATCH) as i64);

        let cancels_done = Arc::new(AtomicBool::new(false));
        let dispatcher = {
            let store = db.store.clone();
            let done = cancels_done.clone();
            tokio::spawn(async move {
                loop {
                    let claim = store.claim_outbox(20).await?;
                    if claim.jobs.is_empty() {
                        drop(claim);
                        if done.load(Ordering::Relaxed) {
                            return Ok::<_, StoreError>(());
                        }
                        tokio::task::yield_now().await;
                        continue;
                    }
                    // Publishing to the broker happens here, with the
                    // outbox rows held; it takes a few milliseconds.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let every: Vec<usize> = (0..claim.jobs.len()).collect();
                    claim.finish(&every, "dispatcher").await?;
                }
            })
        };
        let mut cancellers = Vec::new();
        for part in batches.chunks(BATCHES / 2) {
            let store = db.store.clone();
            let part = part.to_vec();
            cancellers.push(tokio::spawn(async move {
                for (batch, cards) in part {
                    for card in cards.iter().step_by(7) {
                        store.cancel(batch, Some(*card), ACTOR).await?;
                    }
                    store.cancel(batch, None, ACTOR).await?;
                }
                Ok::<_, StoreError>(())
            }));
        }
        for canceller in cancellers {
            canceller.await.unwrap().expect("a cancel failed");
        }
        cancels_done.store(true, Ordering::Relaxed);
        dispatcher.await.unwrap().expect("a claim failed");

        // Every job was cancelled at once or, dispatched first, asked to stop.
        assert_eq!(db.rows("outbox").await, 0);
        let undecided = db
            .count(
                "SELECT count(*) FROM jobs WHERE $1 <> '' AND state <> 'cancelled'
                   AND NOT (state = 'dispatched' AND cancel_requested_at IS NOT NULL)",
                "x",
            )
            .await;
        assert_eq!(undecided, 0);
        let cancelled = db
            .count(
                "SELECT count(*) FROM cards WHERE $1 <> '' AND state = 'produced'",
                "x",
            )
            .await;
        let asked = db
            .count(
                "SELECT count(*) FROM jobs WHERE $1 <> '' AND cancel_requested_at IS NOT NULL",
                "x",
            )
            .await;
        assert_eq!(cancelled + asked, (BATCHES * PER_BATCH) as i64);
    }
}
