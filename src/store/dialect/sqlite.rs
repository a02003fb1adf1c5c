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
pub(in crate::store) fn texts(values: &[String]) -> Json<&[String]> {
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
