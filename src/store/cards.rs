//! Card stock: import of produced cards, search and detail.

use std::collections::{BTreeMap, HashSet};

use cardfleet_schemas::CardProfile;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AuditRows, Result, Store, StoreError, on_backend};
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
    /// Version of the KDF of the card's PIV management key (1 or 2); the
    /// card keeps it for life (`cardfleet keys management-key --kdf`).
    #[schema(minimum = 1, maximum = 2)]
    pub management_key_kdf: i16,
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
    /// Set while the job waits for its rack: the rack sent no heartbeat for
    /// `ledger.rack_lease_seconds` while the job was dispatched or encoding.
    /// The next result from the rack clears it (see `store::leases`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_expired_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CardDetail {
    #[serde(flatten)]
    pub card: CardSummary,
    pub jobs: Vec<JobHistoryEntry>,
    /// The public keys generated on the card by its last successful
    /// encoding, PEM per slot (`card_public_keys`).
    pub public_keys: Vec<super::public_keys::CardPublicKey>,
}

#[derive(Debug, Clone, Default)]
pub struct CardFilter {
    pub card_type: Option<String>,
    pub state: Option<CardState>,
    /// Exact card number.
    pub card_number: Option<String>,
    /// Exact chip serial.
    pub chip_serial: Option<String>,
    /// Cards that have a job in this batch.
    pub batch_id: Option<Uuid>,
    pub limit: i64,
    pub offset: i64,
}

/// Valid rows of an import, as column arrays, before the database decides
/// which of them duplicate cards already in stock.
#[derive(Debug, Default)]
pub(super) struct NewCards {
    pub ids: Vec<Uuid>,
    pub numbers: Vec<String>,
    pub serials: Vec<String>,
    pub types: Vec<String>,
    pub profiles: Vec<String>,
    row_of: BTreeMap<String, usize>,
}

/// Parses and checks the rows of an import; the rest is up to the database.
pub(super) fn validate_import(
    rows: Vec<(usize, ImportRow)>,
    profiles: &BTreeMap<String, CardProfile>,
) -> (NewCards, Vec<RowRejection>) {
    let mut rejected = Vec::new();
    let mut seen_numbers = HashSet::new();
    let mut seen_serials = HashSet::new();
    let mut cards = NewCards::default();
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
        cards.row_of.insert(number.as_str().to_owned(), row);
        cards.ids.push(Uuid::now_v7());
        cards.numbers.push(number.as_str().to_owned());
        cards.serials.push(serial.as_str().to_owned());
        cards.types.push(card_type.as_str().to_owned());
        cards.profiles.push(profile.name.clone());
    }
    (cards, rejected)
}

impl NewCards {
    /// Rejects the rows the database did not insert (`inserted` holds id and
    /// card number of those it did) and audits the imported cards.
    pub fn outcome(
        &self,
        inserted: &[(Uuid, String)],
        mut rejected: Vec<RowRejection>,
    ) -> (ImportOutcome, AuditRows) {
        let inserted_numbers: HashSet<&str> = inserted.iter().map(|(_, n)| n.as_str()).collect();
        for number in &self.numbers {
            if !inserted_numbers.contains(number.as_str()) {
                rejected.push(RowRejection {
                    row: self.row_of.get(number).copied().unwrap_or_default(),
                    code: "duplicate",
                    message: format!("card {number} or its chip serial is already in stock"),
                });
            }
        }
        let mut audit = AuditRows::default();
        for (id, _) in inserted {
            audit.push_card("card.imported", *id, CardState::Produced.as_str());
        }
        rejected.sort_by_key(|r| r.row);
        let outcome = ImportOutcome {
            imported: inserted.len(),
            rejected,
        };
        (outcome, audit)
    }
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
        let (cards, rejected) = validate_import(rows, profiles);
        on_backend!(self, s => s.import_cards(cards, rejected, actor).await)
    }

    pub async fn list_cards(&self, filter: &CardFilter) -> Result<Vec<CardSummary>> {
        on_backend!(self, s => s.list_cards(filter).await)
    }

    pub async fn card_detail(&self, card_id: Uuid) -> Result<CardDetail> {
        let mut detail = on_backend!(self, s => s.card_detail(card_id).await)?;
        detail.public_keys = self.card_public_keys(card_id).await?;
        let ids: Vec<Uuid> = detail.jobs.iter().map(|j| j.job_id).collect();
        let marks = self.lease_marks(&ids).await?;
        for job in &mut detail.jobs {
            job.lease_expired_at = marks.get(&job.job_id).copied();
        }
        Ok(detail)
    }
}

const CARD_COLUMNS: &str = "id, card_number, chip_serial, card_type, profile, state, state_reason, updated_at, management_key_kdf";

super::dialect::for_each_dialect! {
    fn card_from_row(row: &<d::Backend as sqlx::Database>::Row) -> Result<CardSummary> {
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

    impl Db {
        pub(in crate::store) async fn import_cards(
            &self,
            cards: NewCards,
            rejected: Vec<RowRejection>,
            actor: &str,
        ) -> Result<ImportOutcome> {
            let mut tx = self.write().await?;
            let inserted = d::insert_cards(&mut tx, &cards).await?;
            let (outcome, audit) = cards.outcome(&inserted, rejected);
            d::insert_audit(&mut tx, audit, actor).await?;
            tx.commit().await?;
            Ok(outcome)
        }

        pub(in crate::store) async fn list_cards(
            &self,
            filter: &CardFilter,
        ) -> Result<Vec<CardSummary>> {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {CARD_COLUMNS} FROM cards
                 WHERE ($1 IS NULL OR card_type = $1) AND ($2 IS NULL OR state = $2)
                   AND ($5 IS NULL OR card_number = $5) AND ($6 IS NULL OR chip_serial = $6)
                   AND ($7 IS NULL OR id IN (SELECT card_id FROM jobs WHERE batch_id = $7))
                 ORDER BY id LIMIT $3 OFFSET $4"
            )))
            .bind(filter.card_type.as_deref())
            .bind(filter.state.map(CardState::as_str))
            .bind(filter.limit)
            .bind(filter.offset)
            .bind(filter.card_number.as_deref())
            .bind(filter.chip_serial.as_deref())
            .bind(d::opt_id(filter.batch_id))
            .fetch_all(self.reader())
            .await?;
            rows.iter().map(card_from_row).collect()
        }

        pub(in crate::store) async fn card_detail(&self, card_id: Uuid) -> Result<CardDetail> {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {CARD_COLUMNS} FROM cards WHERE id = $1"
            )))
            .bind(d::id(card_id))
            .fetch_optional(self.reader())
            .await?
            .ok_or(StoreError::NotFound)?;
            let card = card_from_row(&row)?;
            let jobs = sqlx::query(
                "SELECT id, batch_id, state, rack_id, reason, steps, created_at, updated_at
                 FROM jobs WHERE card_id = $1 ORDER BY created_at, id",
            )
            .bind(d::id(card_id))
            .fetch_all(self.reader())
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
}
