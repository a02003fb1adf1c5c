//! Card stock: import of produced cards, search and detail.

use std::collections::{BTreeMap, HashSet};

use cardfleet_schemas::CardProfile;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AuditRows, Result, Store, StoreError};
use crate::domain::{CardNumber, CardState, CardType, ChipSerial};

/// One row of a production file, as received.
#[derive(Debug, Clone, Default)]
pub struct ImportRow {
    pub card_number: String,
    pub chip_serial: String,
    pub card_type: String,
    pub profile: String,
}

/// Why a row of an import was not imported.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RowRejection {
    /// 1-based row number in the file (the CSV header is row 0).
    pub row: usize,
    /// `malformed`, `unknown_profile`, `wrong_card_type` or `duplicate`.
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImportOutcome {
    pub imported: usize,
    pub rejected: Vec<RowRejection>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CardSummary {
    pub card_id: Uuid,
    pub card_number: String,
    pub chip_serial: String,
    pub card_type: String,
    pub profile: String,
    pub state: CardState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobHistoryEntry {
    pub job_id: Uuid,
    pub batch_id: Uuid,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rack_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub steps: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CardDetail {
    #[serde(flatten)]
    pub card: CardSummary,
    pub jobs: Vec<JobHistoryEntry>,
}

#[derive(Debug, Clone, Default)]
pub struct CardFilter {
    pub card_type: Option<String>,
    pub state: Option<CardState>,
    pub limit: i64,
    pub offset: i64,
}

const CARD_COLUMNS: &str =
    "id, card_number, chip_serial, card_type, profile, state, state_reason, updated_at";

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
    })
}

impl Store {
    /// Imports produced cards. Rows that are malformed, name an unknown
    /// profile or duplicate an existing card are reported, the rest imported.
    pub async fn import_cards(
        &self,
        rows: Vec<(usize, ImportRow)>,
        profiles: &BTreeMap<String, CardProfile>,
        actor: &str,
    ) -> Result<ImportOutcome> {
        let mut rejected = Vec::new();
        let mut seen_numbers = HashSet::new();
        let mut seen_serials = HashSet::new();
        let (mut ids, mut numbers, mut serials, mut types, mut profile_names, mut row_of) =
            (vec![], vec![], vec![], vec![], vec![], BTreeMap::new());
        for (row, input) in rows {
            let parsed = CardNumber::parse(&input.card_number).and_then(|n| {
                Ok((
                    n,
                    ChipSerial::parse(&input.chip_serial)?,
                    CardType::parse(&input.card_type)?,
                ))
            });
            let (number, serial, card_type) = match parsed {
                Ok(p) => p,
                Err(e) => {
                    rejected.push(RowRejection {
                        row,
                        code: "malformed",
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let Some(profile) = profiles.get(input.profile.trim()) else {
                rejected.push(RowRejection {
                    row,
                    code: "unknown_profile",
                    message: format!("no profile named '{}'", input.profile.trim().escape_debug()),
                });
                continue;
            };
            if profile.card_type != card_type.as_str() {
                rejected.push(RowRejection {
                    row,
                    code: "wrong_card_type",
                    message: format!(
                        "profile '{}' is for card type '{}', not '{}'",
                        profile.name, profile.card_type, card_type
                    ),
                });
                continue;
            }
            if !seen_numbers.insert(number.clone()) || !seen_serials.insert(serial.clone()) {
                rejected.push(RowRejection {
                    row,
                    code: "duplicate",
                    message: "card number or chip serial appears twice in this file".into(),
                });
                continue;
            }
            row_of.insert(number.as_str().to_owned(), row);
            ids.push(Uuid::now_v7());
            numbers.push(number.as_str().to_owned());
            serials.push(serial.as_str().to_owned());
            types.push(card_type.as_str().to_owned());
            profile_names.push(profile.name.clone());
        }

        let mut tx = self.pool.begin().await?;
        let inserted: Vec<(Uuid, String)> = sqlx::query_as(
            "INSERT INTO cards (id, card_number, chip_serial, card_type, profile, state)
             SELECT *, 'produced' FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
             ON CONFLICT DO NOTHING
             RETURNING id, card_number",
        )
        .bind(&ids)
        .bind(&numbers)
        .bind(&serials)
        .bind(&types)
        .bind(&profile_names)
        .fetch_all(&mut *tx)
        .await?;
        let inserted_numbers: HashSet<&str> = inserted.iter().map(|(_, n)| n.as_str()).collect();
        for number in &numbers {
            if !inserted_numbers.contains(number.as_str()) {
                rejected.push(RowRejection {
                    row: row_of.get(number).copied().unwrap_or_default(),
                    code: "duplicate",
                    message: format!("card {number} or its chip serial is already in stock"),
                });
            }
        }
        let mut audit = AuditRows::default();
        for (id, _) in &inserted {
            audit.push_card("card.imported", *id, CardState::Produced.as_str());
        }
        audit.insert(&mut tx, actor).await?;
        tx.commit().await?;
        rejected.sort_by_key(|r| r.row);
        Ok(ImportOutcome {
            imported: inserted.len(),
            rejected,
        })
    }

    pub async fn list_cards(&self, filter: &CardFilter) -> Result<Vec<CardSummary>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CARD_COLUMNS} FROM cards
             WHERE ($1::text IS NULL OR card_type = $1) AND ($2::text IS NULL OR state = $2)
             ORDER BY id LIMIT $3 OFFSET $4"
        )))
        .bind(filter.card_type.as_deref())
        .bind(filter.state.map(CardState::as_str))
        .bind(filter.limit)
        .bind(filter.offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(card_from_row).collect()
    }

    pub async fn card_detail(&self, card_id: Uuid) -> Result<CardDetail> {
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
            })
        })
        .collect::<Result<Vec<_>>>()?;
        Ok(CardDetail { card, jobs })
    }
}
