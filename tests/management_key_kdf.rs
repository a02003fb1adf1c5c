//! The management-key KDF is versioned per card: cards that existed before
//! version 2 keep version 1 (their chips may hold its keys), cards imported
//! since get version 2, and every job carries the key of its card's version.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cardfleet::credentials::{ManagementKeyKdf, MasterKey};
use cardfleet_schemas::sealing;
use serde_json::json;
use sqlx::Connection;
use support::*;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// A copy of `dir` with only the migrations before 0006.
fn migrations_before_0006(dir: &str, into: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let target = into.join(dir);
    std::fs::create_dir_all(&target).unwrap();
    for entry in std::fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name.as_str() < "0006" {
            std::fs::copy(entry.path(), target.join(name)).unwrap();
        }
    }
    target
}

const INSERT_CARD: &str =
    "INSERT INTO cards (id, card_number, chip_serial, card_type, profile, state)
     VALUES ($1, $2, $3, 'temporary', 'temporary-piv', 'unassigned')";

#[tokio::test]
async fn on_postgresql_existing_cards_keep_version_1_and_new_cards_get_version_2() {
    let db = format!("cardfleet_test_kdf_{}", Uuid::new_v4().simple());
    psql(&format!("CREATE DATABASE {db}"));
    let url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    let dir = tempfile::tempdir().unwrap();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let old = sqlx::migrate::Migrator::new(migrations_before_0006("migrations", dir.path()))
        .await
        .unwrap();
    old.run(&mut conn).await.unwrap();
    sqlx::query(INSERT_CARD)
        .bind(Uuid::new_v4())
        .bind("OLD-1")
        .bind("OLD-CHIP-1")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::migrate!("./migrations").run(&mut conn).await.unwrap();
    sqlx::query(INSERT_CARD)
        .bind(Uuid::new_v4())
        .bind("NEW-1")
        .bind("NEW-CHIP-1")
        .execute(&mut conn)
        .await
        .unwrap();
    let versions: Vec<(String, i16)> =
        sqlx::query_as("SELECT card_number, management_key_kdf FROM cards ORDER BY card_number")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(versions, [("NEW-1".into(), 2), ("OLD-1".into(), 1)]);
    let bad = sqlx::query("UPDATE cards SET management_key_kdf = 3")
        .execute(&mut conn)
        .await;
    assert!(bad.is_err(), "an unknown KDF version was stored");
    conn.close().await.unwrap();
    psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
}

#[tokio::test]
async fn on_sqlite_existing_cards_keep_version_1_and_new_cards_get_version_2() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("kdf.sqlite").display()
    );
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let old = sqlx::migrate::Migrator::new(migrations_before_0006("migrations_sqlite", dir.path()))
        .await
        .unwrap();
    old.run(&mut conn).await.unwrap();
    sqlx::query(INSERT_CARD)
        .bind(Uuid::new_v4().to_string())
        .bind("OLD-1")
        .bind("OLD-CHIP-1")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::migrate!("./migrations_sqlite")
        .run(&mut conn)
        .await
        .unwrap();
    sqlx::query(INSERT_CARD)
        .bind(Uuid::new_v4().to_string())
        .bind("NEW-1")
        .bind("NEW-CHIP-1")
        .execute(&mut conn)
        .await
        .unwrap();
    let versions: Vec<(String, i64)> =
        sqlx::query_as("SELECT card_number, management_key_kdf FROM cards ORDER BY card_number")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(versions, [("NEW-1".into(), 2), ("OLD-1".into(), 1)]);
    let bad = sqlx::query("UPDATE cards SET management_key_kdf = 3")
        .execute(&mut conn)
        .await;
    assert!(bad.is_err(), "an unknown KDF version was stored");
}

#[tokio::test]
async fn each_job_carries_the_management_key_of_its_cards_kdf_version() {
    let app = spawn_app().await;
    let ids = app.import_cards("KDF", 2).await;
    // The listing shows each card's version; make card 0 a version-1 card,
    // as a card imported before version 2 existed.
    let listed = app.get("/v1/cards?limit=10").await;
    assert!(
        listed
            .body
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["management_key_kdf"] == 2),
        "{}",
        listed.body
    );
    psql_on(
        &app.db_name,
        &format!(
            "UPDATE cards SET management_key_kdf = 1 WHERE id = '{}'",
            ids[0]
        ),
    );
    let detail = app.get(&format!("/v1/cards/{}", ids[0])).await;
    assert_eq!(detail.body["management_key_kdf"], 1, "{}", detail.body);

    let worker = FakeWorker::connect(&app.vhost.url()).await;
    app.enable().await;
    workers::enroll_rack(&app.store, "rack-k").await;
    worker
        .insert_cards(
            "rack-k",
            &["KDF-CHIP-000000".into(), "KDF-CHIP-000001".into()],
        )
        .await;
    eventually(WAIT, "both chips located", || async {
        app.get("/v1/racks").await.body[0]["slots"]
            .as_array()
            .is_some_and(|s| s.len() == 2)
    })
    .await;
    let r = app
        .post("/v1/initializations", json!({ "card_ids": ids }))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let jobs = worker.take_jobs("rack-k", 2, WAIT).await;
    assert_eq!(
        jobs.len(),
        2,
        "{}",
        app.get(&format!("/v1/cards/{}", ids[0])).await.body
    );
    let master = MasterKey::from_hex(MASTER_KEY).unwrap();
    let key = workers::test_rack_key("rack-k");
    for job in jobs {
        let secrets = sealing::open(&key, "rack-k", job.job_id, &job.secrets).unwrap();
        let kdf = if job.card_id == ids[0] {
            ManagementKeyKdf::V1
        } else {
            ManagementKeyKdf::V2
        };
        let algorithm = secrets.management_key_algorithm;
        let expected = master.derive_management_key_with(kdf, &job.chip_serial, algorithm);
        assert_eq!(secrets.management_key, expected.expose(), "{kdf:?}");
        let other = if kdf == ManagementKeyKdf::V1 {
            ManagementKeyKdf::V2
        } else {
            ManagementKeyKdf::V1
        };
        let wrong = master.derive_management_key_with(other, &job.chip_serial, algorithm);
        assert_ne!(secrets.management_key, wrong.expose());
    }
}
