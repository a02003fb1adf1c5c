//! Card stock on PostgreSQL: one UNNEST insert per import, search and detail.

use sqlx::Row;
use uuid::Uuid;

use super::PgStore;
use crate::domain::CardState;
use crate::store::cards::{
    CardDetail, CardFilter, CardSummary, ImportOutcome, JobHistoryEntry, NewCards, RowRejection,
};
use crate::store::{Result, StoreError};

const CARD_COLUMNS: &str = "id, card_number, chip_serial, card_type, profile, state, state_reason, updated_at, management_key_kdf";

fn card_from_row(row: &sqlx::postgres::PgRow) -> Result<CardSummary> {
    let state: String = row.try_get("state")?;
    Ok(CardSummary {
        card_id: row.try_get("id")?,
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

impl PgStore {
    pub(in crate::store) async fn import_cards(
        &self,
        cards: NewCards,
        rejected: Vec<RowRejection>,
        actor: &str,
    ) -> Result<ImportOutcome> {
        let mut tx = self.pool.begin().await?;
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
        .fetch_all(&mut *tx)
        .await?;
        let (outcome, audit) = cards.outcome(&inserted, rejected);
        audit.insert_pg(&mut tx, actor).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    pub(in crate::store) async fn list_cards(
        &self,
        filter: &CardFilter,
    ) -> Result<Vec<CardSummary>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CARD_COLUMNS} FROM cards
             WHERE ($1::text IS NULL OR card_type = $1) AND ($2::text IS NULL OR state = $2)
               AND ($5::text IS NULL OR card_number = $5) AND ($6::text IS NULL OR chip_serial = $6)
               AND ($7::uuid IS NULL OR id IN (SELECT card_id FROM jobs WHERE batch_id = $7))
             ORDER BY id LIMIT $3 OFFSET $4"
        )))
        .bind(filter.card_type.as_deref())
        .bind(filter.state.map(CardState::as_str))
        .bind(filter.limit)
        .bind(filter.offset)
        .bind(filter.card_number.as_deref())
        .bind(filter.chip_serial.as_deref())
        .bind(filter.batch_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(card_from_row).collect()
    }

    pub(in crate::store) async fn card_detail(&self, card_id: Uuid) -> Result<CardDetail> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CARD_COLUMNS} FROM cards WHERE id = $1"
        )))
        .bind(card_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        let card = card_from_row(&row)?;
        let jobs = sqlx::query(
            "SELECT id, batch_id, state, rack_id, reason, steps, created_at, updated_at
             FROM jobs WHERE card_id = $1 ORDER BY created_at, id",
        )
        .bind(card_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(JobHistoryEntry {
                job_id: r.try_get("id")?,
                batch_id: r.try_get("batch_id")?,
                state: r.try_get("state")?,
                rack_id: r.try_get("rack_id")?,
                reason: r.try_get("reason")?,
                steps: r.try_get("steps")?,
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
