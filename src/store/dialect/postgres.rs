//! PostgreSQL's dialect: native `uuid`, `timestamptz` and `jsonb`, row locks
//! (`FOR UPDATE`, `SKIP LOCKED`) that keep concurrent control planes apart,
//! and bulk input bound as arrays for `UNNEST`.

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::store::AuditRows;
use crate::store::cards::NewCards;
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
pub(in crate::store) fn texts(values: &[String]) -> &[String] {
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
