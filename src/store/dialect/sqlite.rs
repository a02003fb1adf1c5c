//! SQLite's dialect: UUIDs as hyphenated TEXT, times as ISO 8601 TEXT with
//! milliseconds (text order is time order), JSON as TEXT, no row locks (one
//! writer holds the write lock from `BEGIN IMMEDIATE`), and bulk input bound
//! as one JSON array for `json_each`.

use sqlx::types::Json;
use sqlx::{Sqlite, Transaction};
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use crate::store::AuditRows;
use crate::store::cards::NewCards;
use crate::store::initialize::JobColumns;
use crate::store::ledger::{Changes, DeadLetter};
use crate::store::rotation::Resealed;

/// The sqlx driver.
pub(in crate::store) type Backend = Sqlite;

/// A write transaction.
pub(in crate::store) type Tx = Transaction<'static, Sqlite>;

pub(crate) use crate::store::sqlite::now;

/// SQLite's one writer already holds the write lock: nothing to add.
macro_rules! for_update {
    () => {
        ""
    };
}
pub(crate) use for_update;

/// A UUID as bound: hyphenated TEXT.
pub(in crate::store) fn id(u: Uuid) -> Hyphenated {
    u.hyphenated()
}

/// A nullable UUID as bound.
pub(in crate::store) fn opt_id(u: Option<Uuid>) -> Option<Hyphenated> {
    u.map(Uuid::hyphenated)
}

/// Inserts a transaction's audit rows.
pub(in crate::store) async fn insert_audit(
    tx: &mut Tx,
    rows: AuditRows,
    actor: &str,
) -> sqlx::Result<()> {
    rows.insert_sqlite(tx, actor).await
}

/// Seconds since a time column, never negative; NULL when it is NULL
/// (SQLite's two-argument `max` is NULL when an argument is).
macro_rules! age_seconds {
    ($column:literal) => {
        concat!(
            "max((julianday('now') - julianday(",
            $column,
            ")) * 86400.0, 0.0)"
        )
    };
}
pub(crate) use age_seconds;

/// `<column> <in_list!($N)>`: the column is one of a bound list (a JSON
/// array, see [`texts`]).
macro_rules! in_list {
    ($param:literal) => {
        concat!("IN (SELECT value FROM json_each(", $param, "))")
    };
}
pub(crate) use in_list;

/// A list of text values as bound for [`in_list!`]: one JSON array.
pub(in crate::store) fn texts<T>(values: &[T]) -> Json<&[T]> {
    Json(values)
}

/// Re-encrypted credentials written back a row at a time (one writer holds
/// the lock, so this costs little), each only while it is still under its
/// old key; returns the rows changed.
pub(in crate::store) async fn reseal_credentials(
    tx: &mut Tx,
    key_id: &str,
    resealed: &[Resealed],
) -> sqlx::Result<u64> {
    let mut changed = 0u64;
    for r in resealed {
        changed += sqlx::query(concat!(
            "UPDATE credentials SET key_id = $1, pin_nonce = $2, pin_ct = $3,
                    puk_nonce = $4, puk_ct = $5, updated_at = ",
            now!(),
            " WHERE job_id = $6 AND key_id = $7"
        ))
        .bind(key_id)
        .bind(r.pin.nonce.as_slice())
        .bind(r.pin.ciphertext.as_slice())
        .bind(r.puk.nonce.as_slice())
        .bind(r.puk.ciphertext.as_slice())
        .bind(r.job_id.hyphenated())
        .bind(&r.old_key_id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    }
    Ok(changed)
}

/// Inserts new cards with one `json_each` statement, skipping those whose
/// number or serial is taken; returns (id, number) of the rows inserted.
pub(in crate::store) async fn insert_cards(
    tx: &mut Tx,
    cards: &NewCards,
) -> sqlx::Result<Vec<(Uuid, String)>> {
    let rows: Vec<_> = (0..cards.ids.len())
        .map(|i| {
            (
                cards.ids[i],
                &cards.numbers[i],
                &cards.serials[i],
                &cards.types[i],
                &cards.profiles[i],
            )
        })
        .collect();
    // `WHERE true` tells SQLite's parser the ON CONFLICT belongs to the INSERT.
    let inserted: Vec<(Hyphenated, String)> = sqlx::query_as(
        "INSERT INTO cards (id, card_number, chip_serial, card_type, profile, state)
         SELECT value->>0, value->>1, value->>2, value->>3, value->>4, 'produced'
         FROM json_each($1) WHERE true ORDER BY key
         ON CONFLICT DO NOTHING
         RETURNING id, card_number",
    )
    .bind(Json(&rows))
    .fetch_all(&mut **tx)
    .await?;
    let inserted: Vec<(Uuid, String)> = inserted
        .into_iter()
        .map(|(id, number)| (id.into_uuid(), number))
        .collect();
    Ok(inserted)
}

/// A time as the schema stores it (see the migrations): UTC ISO 8601 with
/// milliseconds, so text order is time order.
pub(in crate::store) fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// SQLite's one writer already holds the write lock: nothing to add.
macro_rules! for_update_of {
    ($alias:literal) => {
        ""
    };
}
pub(crate) use for_update_of;

/// An empty byte string in SQL.
macro_rules! empty_bytes {
    () => {
        "x''"
    };
}
pub(crate) use empty_bytes;

/// A list of UUIDs as bound for [`in_list!`]: one JSON array of
/// hyphenated text.
pub(in crate::store) fn ids(values: &[Uuid]) -> Json<Vec<Hyphenated>> {
    Json(values.iter().map(|u| u.hyphenated()).collect())
}

/// Puts jobs (id, rack) back to `queued` with an outbox row each: one
/// `json_each` update and one insert.
pub(in crate::store) async fn requeue_jobs(
    tx: &mut Tx,
    jobs: &[(Uuid, String)],
) -> sqlx::Result<()> {
    let pairs: Vec<(String, &str)> = jobs
        .iter()
        .map(|j| (j.0.hyphenated().to_string(), j.1.as_str()))
        .collect();
    let pairs = Json(&pairs);
    sqlx::query(concat!(
        "UPDATE jobs SET state = 'queued', updated_at = ",
        now!(),
        " WHERE id IN (SELECT value->>0 FROM json_each($1))"
    ))
    .bind(pairs)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO outbox (job_id, rack_id)
         SELECT value->>0, value->>1 FROM json_each($1) ORDER BY key",
    )
    .bind(pairs)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Saves the net changes of applied results: jobs, then cards still
/// initializing, then pending credentials, one statement each.
pub(in crate::store) async fn save_result_changes(tx: &mut Tx, c: &Changes) -> sqlx::Result<()> {
    // Steps go in as JSON text, so `->>` hands them over unchanged.
    let changes: Vec<_> = (0..c.job_id.len())
        .map(|i| {
            (
                c.job_id[i],
                c.job_state[i],
                &c.reason[i],
                c.steps[i].as_ref().map(serde_json::Value::to_string),
                c.card_id[i],
                c.card_state[i],
                c.credential_status[i],
            )
        })
        .collect();
    let changes = Json(&changes);
    sqlx::query(concat!(
        "UPDATE jobs SET state = u.value->>1, reason = COALESCE(u.value->>2, jobs.reason),
                steps = COALESCE(u.value->>3, jobs.steps), lease_expired_at = NULL,
                updated_at = ",
        now!(),
        " FROM json_each($1) AS u WHERE jobs.id = u.value->>0"
    ))
    .bind(changes)
    .execute(&mut **tx)
    .await?;
    sqlx::query(concat!(
        "UPDATE cards SET state = u.value->>5,
                state_reason = CASE WHEN u.value->>5 = 'unassigned' THEN NULL ELSE u.value->>2 END,
                updated_at = ",
        now!(),
        " FROM json_each($1) AS u
         WHERE cards.id = u.value->>4 AND u.value->>5 IS NOT NULL AND cards.state = 'initializing'"
    ))
    .bind(changes)
    .execute(&mut **tx)
    .await?;
    sqlx::query(concat!(
        "UPDATE credentials SET status = u.value->>6, updated_at = ",
        now!(),
        " FROM json_each($1) AS u
         WHERE credentials.job_id = u.value->>0 AND u.value->>6 IS NOT NULL
           AND credentials.status = 'pending'"
    ))
    .bind(changes)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records dead letters once each (by content key); returns the sources of
/// those not recorded before.
pub(in crate::store) async fn insert_dead_letters(
    tx: &mut Tx,
    letters: &[DeadLetter],
) -> sqlx::Result<Vec<String>> {
    let mut inserted = Vec::new();
    for l in letters {
        let done = sqlx::query(
            "INSERT INTO dead_letters (source, reason, message_id, payload, raw, content_key)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (content_key) DO NOTHING",
        )
        .bind(&l.source)
        .bind(&l.reason)
        .bind(&l.message_id)
        .bind(&l.payload)
        .bind(&l.raw)
        .bind(&l.content_key)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() > 0 {
            inserted.push(l.source.clone());
        }
    }
    Ok(inserted)
}

pub(in crate::store) async fn insert_jobs(
    tx: &mut Tx,
    jobs: &JobColumns,
    batch_id: Uuid,
    key_id: &str,
) -> crate::store::Result<()> {
    let moved = sqlx::query(concat!(
        "UPDATE cards SET state = 'initializing', state_reason = NULL, updated_at = ",
        now!(),
        " WHERE id IN (SELECT value FROM json_each($1)) AND state = 'produced'"
    ))
    .bind(Json(&jobs.card_id))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if moved != jobs.card_id.len() as u64 {
        // The write lock is held, so this means a bug; refuse rather than half-apply.
        return Err(crate::store::StoreError::Database(sqlx::Error::Protocol(
            "card states changed under a held lock".into(),
        )));
    }
    let rows: Vec<_> = (0..jobs.job_id.len())
        .map(|i| {
            (
                jobs.job_id[i],
                jobs.card_id[i],
                jobs.state[i],
                &jobs.rack_id[i],
                hex::encode(&jobs.pin_nonce[i]),
                hex::encode(&jobs.pin_ct[i]),
                hex::encode(&jobs.puk_nonce[i]),
                hex::encode(&jobs.puk_ct[i]),
            )
        })
        .collect();
    let rows = Json(&rows);
    sqlx::query(
        "INSERT INTO jobs (id, batch_id, card_id, state, rack_id)
         SELECT value->>0, $1, value->>1, value->>2, value->>3 FROM json_each($2) ORDER BY key",
    )
    .bind(batch_id.hyphenated())
    .bind(rows)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO credentials (job_id, card_id, key_id, pin_nonce, pin_ct, puk_nonce, puk_ct, status)
         SELECT value->>0, value->>1, $1, unhex(value->>4), unhex(value->>5), unhex(value->>6),
                unhex(value->>7), 'pending'
         FROM json_each($2) ORDER BY key",
    )
    .bind(key_id)
    .bind(rows)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO outbox (job_id, rack_id)
         SELECT value->>0, value->>3 FROM json_each($1) WHERE value->>3 IS NOT NULL ORDER BY key",
    )
    .bind(rows)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// No row locks: the one writer holds the write lock for the whole
/// transaction.
pub(in crate::store) const ROW_LOCKS: bool = false;

/// Nothing to add: the writer holds the write lock.
macro_rules! for_share {
    () => {
        ""
    };
}
pub(crate) use for_share;

/// Nothing to add: the writer holds the write lock.
macro_rules! for_update_skip_locked {
    () => {
        ""
    };
}
pub(crate) use for_update_skip_locked;
