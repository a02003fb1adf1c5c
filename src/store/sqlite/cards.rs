//! Card stock on SQLite: one `json_each` insert per import, search and detail.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::{RowExt, SqliteStore, json_list};
use crate::domain::CardState;
use crate::store::cards::{
    CardDetail, CardFilter, CardSummary, ImportOutcome, JobHistoryEntry, NewCards, RowRejection,
};
use crate::store::{Result, StoreError};

macro_rules! card_columns {
    () => {
        "id, card_number, chip_serial, card_type, profile, state, state_reason, updated_at, management_key_kdf"
    };
}

fn card_from_row(row: &SqliteRow) -> Result<CardSummary> {
    let state: String = row.try_get("state")?;
    Ok(CardSummary {
        card_id: row.uuid("id")?,
        card_number: row.try_get("card_number")?,
        chip_serial: row.try_get("chip_serial")?,
        card_type: row.try_get("card_type")?,
        profile: row.try_get("profile")?,
        state: CardState::parse(&state).unwrap_or(CardState::Failed),
        state_reason: row.try_get("state_reason")?,
        updated_at: row.try_get("updated_at")?,
        management_key_kdf: row.try_get("management_key_kdf")?,
    })
}

impl SqliteStore {
    pub(in crate::store) async fn import_cards(
        &self,
        cards: NewCards,
        rejected: Vec<RowRejection>,
        actor: &str,
    ) -> Result<ImportOutcome> {
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
        let mut tx = self.write().await?;
        // `WHERE true` tells SQLite's parser the ON CONFLICT belongs to the INSERT.
        let inserted: Vec<(Hyphenated, String)> = sqlx::query_as(
            "INSERT INTO cards (id, card_number, chip_serial, card_type, profile, state)
             SELECT value->>0, value->>1, value->>2, value->>3, value->>4, 'produced'
             FROM json_each($1) WHERE true ORDER BY key
             ON CONFLICT DO NOTHING
             RETURNING id, card_number",
        )
        .bind(json_list(&rows))
        .fetch_all(&mut *tx)
        .await?;
        let inserted: Vec<(Uuid, String)> = inserted
            .into_iter()
            .map(|(id, number)| (id.into_uuid(), number))
            .collect();
        let (outcome, audit) = cards.outcome(&inserted, rejected);
        audit.insert_sqlite(&mut tx, actor).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    pub(in crate::store) async fn list_cards(
        &self,
        filter: &CardFilter,
    ) -> Result<Vec<CardSummary>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            card_columns!(),
            " FROM cards
             WHERE ($1 IS NULL OR card_type = $1) AND ($2 IS NULL OR state = $2)
               AND ($5 IS NULL OR card_number = $5) AND ($6 IS NULL OR chip_serial = $6)
               AND ($7 IS NULL OR id IN (SELECT card_id FROM jobs WHERE batch_id = $7))
             ORDER BY id LIMIT $3 OFFSET $4"
        ))
        .bind(filter.card_type.as_deref())
        .bind(filter.state.map(CardState::as_str))
        .bind(filter.limit)
        .bind(filter.offset)
        .bind(filter.card_number.as_deref())
        .bind(filter.chip_serial.as_deref())
        .bind(filter.batch_id.map(|b| b.hyphenated().to_string()))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(card_from_row).collect()
    }

    pub(in crate::store) async fn card_detail(&self, card_id: Uuid) -> Result<CardDetail> {
        let row = sqlx::query(concat!(
            "SELECT ",
            card_columns!(),
            " FROM cards WHERE id = $1"
        ))
        .bind(card_id.hyphenated())
        .fetch_optional(&self.reader)
        .await?
        .ok_or(StoreError::NotFound)?;
        let card = card_from_row(&row)?;
        let jobs = sqlx::query(
            "SELECT id, batch_id, state, rack_id, reason, steps, created_at, updated_at
             FROM jobs WHERE card_id = $1 ORDER BY created_at, id",
        )
        .bind(card_id.hyphenated())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| {
            Ok(JobHistoryEntry {
                job_id: r.uuid("id")?,
                batch_id: r.uuid("batch_id")?,
                state: r.try_get("state")?,
                rack_id: r.try_get("rack_id")?,
                reason: r.try_get("reason")?,
                steps: r.json("steps")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
                lease_expired_at: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        Ok(CardDetail {
            card,
            jobs,
            public_keys: Vec::new(),
        })
    }
}
