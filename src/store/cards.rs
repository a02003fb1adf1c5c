//! Card stock: import of produced cards, search and detail.

use std::collections::{BTreeMap, HashSet};

use cardfleet_schemas::CardProfile;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AuditRows, Result, Store, on_backend};
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
