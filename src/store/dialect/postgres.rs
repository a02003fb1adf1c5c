//! PostgreSQL's dialect: native `uuid`, `timestamptz` and `jsonb`, row locks
//! (`FOR UPDATE`, `SKIP LOCKED`) that keep concurrent control planes apart,
//! and bulk input bound as arrays for `UNNEST`.

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::store::AuditRows;
use crate::store::cards::NewCards;
use crate::store::initialize::JobColumns;
use crate::store::ledger::{Changes, DeadLetter};
use crate::store::rotation::Resealed;

/// The sqlx driver.
pub(in crate::store) type Backend = Postgres;

/// A write transaction.
pub(in crate::store) type Tx = Transaction<'static, Postgres>;

/// The current time in SQL.
macro_rules! now {
    () => {
        "now()"
    };
}
pub(crate) use now;

/// Locks the rows a SELECT reads until the transaction ends (SQLite's one
/// writer needs no lock).
macro_rules! for_update {
    () => {
        " FOR UPDATE"
    };
}
pub(crate) use for_update;

/// A UUID as bound.
pub(in crate::store) fn id(u: Uuid) -> Uuid {
    u
}

/// A nullable UUID as bound.
pub(in crate::store) fn opt_id(u: Option<Uuid>) -> Option<Uuid> {
    u
}

/// Inserts a transaction's audit rows.
pub(in crate::store) async fn insert_audit(
    tx: &mut Tx,
    rows: AuditRows,
    actor: &str,
) -> sqlx::Result<()> {
    rows.insert_pg(tx, actor).await
}

/// Seconds since a time column, never negative; NULL when it is NULL.
macro_rules! age_seconds {
    ($column:literal) => {
        concat!(
            "CASE WHEN ",
            $column,
            " IS NOT NULL THEN GREATEST(EXTRACT(EPOCH FROM now() - ",
            $column,
            "), 0)::float8 END"
        )
    };
}
pub(crate) use age_seconds;

/// `<column> <in_list!($N)>`: the column is one of a bound list.
macro_rules! in_list {
    ($param:literal) => {
        concat!("= ANY(", $param, ")")
    };
}
pub(crate) use in_list;

/// A list of text values as bound for [`in_list!`].
pub(in crate::store) fn texts<T>(values: &[T]) -> &[T] {
    values
}

/// Re-encrypted credentials written back with one UNNEST update, each row
/// only while it is still under its old key; returns the rows changed.
pub(in crate::store) async fn reseal_credentials(
    tx: &mut Tx,
    key_id: &str,
    resealed: &[Resealed],
) -> sqlx::Result<u64> {
    let ids: Vec<_> = resealed.iter().map(|r| r.job_id).collect();
    let old: Vec<&str> = resealed.iter().map(|r| r.old_key_id.as_str()).collect();
    let pin_nonce: Vec<&[u8]> = resealed.iter().map(|r| r.pin.nonce.as_slice()).collect();
    let pin_ct: Vec<&[u8]> = resealed
        .iter()
        .map(|r| r.pin.ciphertext.as_slice())
        .collect();
    let puk_nonce: Vec<&[u8]> = resealed.iter().map(|r| r.puk.nonce.as_slice()).collect();
    let puk_ct: Vec<&[u8]> = resealed
        .iter()
        .map(|r| r.puk.ciphertext.as_slice())
        .collect();
    let changed = sqlx::query(
        "UPDATE credentials c
             SET key_id = $1, pin_nonce = u.pin_nonce, pin_ct = u.pin_ct,
                 puk_nonce = u.puk_nonce, puk_ct = u.puk_ct, updated_at = now()
             FROM UNNEST($2::uuid[], $3::text[], $4::bytea[], $5::bytea[], $6::bytea[], $7::bytea[])
                  AS u(job_id, old_key_id, pin_nonce, pin_ct, puk_nonce, puk_ct)
             WHERE c.job_id = u.job_id AND c.key_id = u.old_key_id",
    )
    .bind(key_id)
    .bind(&ids)
    .bind(&old)
    .bind(&pin_nonce)
    .bind(&pin_ct)
    .bind(&puk_nonce)
    .bind(&puk_ct)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(changed)
}

/// Inserts new cards with one UNNEST statement, skipping those whose number
/// or serial is taken; returns (id, number) of the rows inserted.
pub(in crate::store) async fn insert_cards(
    tx: &mut Tx,
    cards: &NewCards,
) -> sqlx::Result<Vec<(Uuid, String)>> {
    let inserted: Vec<(Uuid, String)> = sqlx::query_as(
        "INSERT INTO cards (id, card_number, chip_serial, card_type, profile, state)
         SELECT *, 'produced' FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
         ON CONFLICT DO NOTHING
         RETURNING id, card_number",
    )
    .bind(&cards.ids)
    .bind(&cards.numbers)
    .bind(&cards.serials)
    .bind(&cards.types)
    .bind(&cards.profiles)
    .fetch_all(&mut **tx)
    .await?;
    Ok(inserted)
}

/// A time as bound.
pub(in crate::store) fn time(t: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    t
}

/// Locks the rows of one table of a join (`FOR UPDATE OF alias`).
macro_rules! for_update_of {
    ($alias:literal) => {
        concat!(" FOR UPDATE OF ", $alias)
    };
}
pub(crate) use for_update_of;

/// An empty byte string in SQL.
macro_rules! empty_bytes {
    () => {
        "''::bytea"
    };
}
pub(crate) use empty_bytes;

/// A list of UUIDs as bound for [`in_list!`].
pub(in crate::store) fn ids(values: &[Uuid]) -> &[Uuid] {
    values
}

/// Puts jobs (id, rack) back to `queued` with an outbox row each: one
/// array update and one UNNEST insert.
pub(in crate::store) async fn requeue_jobs(
    tx: &mut Tx,
    jobs: &[(Uuid, String)],
) -> sqlx::Result<()> {
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.0).collect();
    let racks: Vec<&str> = jobs.iter().map(|j| j.1.as_str()).collect();
    sqlx::query("UPDATE jobs SET state = 'queued', updated_at = now() WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO outbox (job_id, rack_id)
         SELECT * FROM UNNEST($1::uuid[], $2::text[])",
    )
    .bind(&ids)
    .bind(&racks)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Saves the net changes of applied results: jobs, then cards still
/// initializing, then pending credentials, one statement each.
pub(in crate::store) async fn save_result_changes(tx: &mut Tx, c: &Changes) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE jobs SET state = u.state, reason = COALESCE(u.reason, jobs.reason),
                steps = COALESCE(u.steps, jobs.steps), updated_at = now(),
                lease_expired_at = NULL
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[]) AS u(id, state, reason, steps)
         WHERE jobs.id = u.id",
    )
    .bind(&c.job_id)
    .bind(&c.job_state)
    .bind(&c.reason)
    .bind(&c.steps)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE cards SET state = u.state,
                state_reason = CASE WHEN u.state = 'unassigned' THEN NULL ELSE u.reason END,
                updated_at = now()
         FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS u(id, state, reason)
         WHERE cards.id = u.id AND u.state IS NOT NULL AND cards.state = 'initializing'",
    )
    .bind(&c.card_id)
    .bind(&c.card_state)
    .bind(&c.reason)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE credentials SET status = u.status, updated_at = now()
         FROM UNNEST($1::uuid[], $2::text[]) AS u(job_id, status)
         WHERE credentials.job_id = u.job_id AND u.status IS NOT NULL AND credentials.status = 'pending'",
    )
    .bind(&c.job_id)
    .bind(&c.credential_status)
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
    let source: Vec<&str> = letters.iter().map(|l| l.source.as_str()).collect();
    let reason: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    let message_id: Vec<Option<&str>> = letters.iter().map(|l| l.message_id.as_deref()).collect();
    let payload: Vec<&str> = letters.iter().map(|l| l.payload.as_str()).collect();
    let raw: Vec<&[u8]> = letters.iter().map(|l| l.raw.as_slice()).collect();
    let key: Vec<&str> = letters.iter().map(|l| l.content_key.as_str()).collect();
    let inserted = sqlx::query_scalar(
        "INSERT INTO dead_letters (source, reason, message_id, payload, raw, content_key)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[])
         ON CONFLICT (content_key) DO NOTHING
         RETURNING source",
    )
    .bind(&source)
    .bind(&reason)
    .bind(&message_id)
    .bind(&payload)
    .bind(&raw)
    .bind(&key)
    .fetch_all(&mut **tx)
    .await?;
    Ok(inserted)
}

pub(in crate::store) async fn insert_jobs(
    tx: &mut Tx,
    jobs: &JobColumns,
    batch_id: Uuid,
    key_id: &str,
) -> crate::store::Result<()> {
    let moved = sqlx::query(
        "UPDATE cards SET state = 'initializing', state_reason = NULL, updated_at = now()
         WHERE id = ANY($1) AND state = 'produced'",
    )
    .bind(&jobs.card_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if moved != jobs.card_id.len() as u64 {
        // The rows are locked, so this means a bug; refuse rather than half-apply.
        return Err(crate::store::StoreError::Database(sqlx::Error::Protocol(
            "card states changed under a held lock".into(),
        )));
    }
    sqlx::query(
        "INSERT INTO jobs (id, batch_id, card_id, state, rack_id)
         SELECT j.id, $1, j.card_id, j.state, j.rack_id
         FROM UNNEST($2::uuid[], $3::uuid[], $4::text[], $5::text[]) AS j(id, card_id, state, rack_id)",
    )
    .bind(batch_id)
    .bind(&jobs.job_id)
    .bind(&jobs.card_id)
    .bind(&jobs.state)
    .bind(&jobs.rack_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO credentials (job_id, card_id, key_id, pin_nonce, pin_ct, puk_nonce, puk_ct, status)
         SELECT c.job_id, c.card_id, $1, c.pin_nonce, c.pin_ct, c.puk_nonce, c.puk_ct, 'pending'
         FROM UNNEST($2::uuid[], $3::uuid[], $4::bytea[], $5::bytea[], $6::bytea[], $7::bytea[])
              AS c(job_id, card_id, pin_nonce, pin_ct, puk_nonce, puk_ct)",
    )
    .bind(key_id)
    .bind(&jobs.job_id)
    .bind(&jobs.card_id)
    .bind(&jobs.pin_nonce)
    .bind(&jobs.pin_ct)
    .bind(&jobs.puk_nonce)
    .bind(&jobs.puk_ct)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO outbox (job_id, rack_id)
         SELECT o.job_id, o.rack_id FROM UNNEST($1::uuid[], $2::text[]) AS o(job_id, rack_id)
         WHERE o.rack_id IS NOT NULL",
    )
    .bind(&jobs.job_id)
    .bind(&jobs.rack_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Row locks are taken (and needed): concurrent control planes share the
/// database.
pub(in crate::store) const ROW_LOCKS: bool = true;

/// Holds the rows read until the transaction ends, letting other readers
/// in (a concurrent disable waits for an initialize request).
macro_rules! for_share {
    () => {
        " FOR SHARE"
    };
}
pub(crate) use for_share;

/// Locks the rows read, passing over rows another transaction holds.
macro_rules! for_update_skip_locked {
    () => {
        " FOR UPDATE SKIP LOCKED"
    };
}
pub(crate) use for_update_skip_locked;
