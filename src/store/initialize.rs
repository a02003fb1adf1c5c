//! Initialize requests: per card, state and enablement checks, credential
//! generation and storage, the job and its outbox row, in one transaction.
//! Also cancellation, which undoes exactly that for jobs not yet encoding.

use std::collections::{BTreeMap, HashMap, HashSet};

use cardfleet_schemas::{Cancellation, CardProfile, ControlMessage, Meta};
use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use super::audit::JobTransition;
use super::{AuditRows, INITIALIZE_PROCESS, OUTBOX_CHANNEL, Result, Store, StoreError};
use crate::credentials::{self, CredentialCipher};
use crate::domain::{CardState, JobState};

/// Which cards a request names.
#[derive(Debug, Clone)]
pub enum Selection {
    Ids(Vec<Uuid>),
    Filter { card_type: String, limit: i64 },
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CardRejection {
    pub card_id: Uuid,
    /// `unknown_card`, `wrong_state` or `unknown_profile`.
    pub code: &'static str,
    pub message: String,
    /// The card's current state, for `wrong_state`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<CardState>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InitializeOutcome {
    pub batch_id: Uuid,
    pub accepted: Vec<Uuid>,
    pub rejected: Vec<CardRejection>,
    /// How many accepted jobs were queued at once (their chip had been seen
    /// in a slot); the others wait for their card. For metrics only.
    #[serde(skip)]
    pub queued: usize,
}

/// Context the AAD of a stored credential is bound to.
pub fn credential_context(job_id: Uuid, field: &str) -> Vec<u8> {
    let mut ctx = job_id.as_bytes().to_vec();
    ctx.extend_from_slice(field.as_bytes());
    ctx
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CancelOutcome {
    /// Jobs cancelled at once; their cards are back in `produced`.
    pub cancelled: Vec<Uuid>,
    /// Jobs already encoding; workers stop them at the next safe point.
    pub stopping: Vec<Uuid>,
    /// Jobs of the selection that had already finished.
    pub finished: usize,
}

impl Store {
    pub async fn initialize(
        &self,
        selection: Selection,
        profiles: &BTreeMap<String, CardProfile>,
        cipher: &CredentialCipher,
        actor: &str,
    ) -> Result<InitializeOutcome> {
        let mut tx = self.pool.begin().await?;
        // FOR SHARE: a concurrent disable waits for this request to finish.
        let enabled: Option<bool> =
            sqlx::query_scalar("SELECT enabled FROM process_settings WHERE name = $1 FOR SHARE")
                .bind(INITIALIZE_PROCESS)
                .fetch_optional(&mut *tx)
                .await?;
        if enabled != Some(true) {
            return Err(StoreError::ProcessDisabled(INITIALIZE_PROCESS.into()));
        }

        let (requested, rows) = match &selection {
            Selection::Ids(ids) => {
                let mut seen = HashSet::new();
                let unique: Vec<Uuid> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
                let rows = sqlx::query(
                    "SELECT id, state, profile, chip_serial FROM cards
                     WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                )
                .bind(&unique)
                .fetch_all(&mut *tx)
                .await?;
                (unique, rows)
            }
            Selection::Filter { card_type, limit } => {
                let rows = sqlx::query(
                    "SELECT id, state, profile, chip_serial FROM cards
                     WHERE card_type = $1 AND state = 'produced'
                     ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
                )
                .bind(card_type)
                .bind(*limit)
                .fetch_all(&mut *tx)
                .await?;
                let ids = rows
                    .iter()
                    .map(|r| r.try_get("id"))
                    .collect::<sqlx::Result<Vec<Uuid>>>()?;
                (ids, rows)
            }
        };

        let mut found: HashMap<Uuid, (String, String, String)> = HashMap::with_capacity(rows.len());
        for r in &rows {
            found.insert(
                r.try_get("id")?,
                (
                    r.try_get("state")?,
                    r.try_get("profile")?,
                    r.try_get("chip_serial")?,
                ),
            );
        }
        let serials: Vec<&str> = found.values().map(|(_, _, s)| s.as_str()).collect();
        let locations: HashMap<String, String> = sqlx::query_as(
            "SELECT chip_serial, rack_id FROM slot_locations WHERE chip_serial = ANY($1)",
        )
        .bind(&serials)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();

        let batch_id = Uuid::now_v7();
        let mut accepted = Vec::new();
        let mut rejected = Vec::new();
        let mut jobs = JobColumns::default();
        // thread_rng is not Send: its scope must not include an await.
        {
            let mut rng = rand::thread_rng();
            for card_id in &requested {
                let Some((state, profile_name, serial)) = found.get(card_id) else {
                    rejected.push(CardRejection {
                        card_id: *card_id,
                        code: "unknown_card",
                        message: "no card with this id is in stock".into(),
                        state: None,
                    });
                    continue;
                };
                let state = CardState::parse(state).unwrap_or(CardState::Failed);
                if !state.can_become(CardState::Initializing) {
                    rejected.push(CardRejection {
                        card_id: *card_id,
                        code: "wrong_state",
                        message: format!("card is {state}; only produced cards can be initialized"),
                        state: Some(state),
                    });
                    continue;
                }
                let Some(profile) = profiles.get(profile_name) else {
                    rejected.push(CardRejection {
                        card_id: *card_id,
                        code: "unknown_profile",
                        message: format!("the card's profile '{profile_name}' is not loaded"),
                        state: Some(state),
                    });
                    continue;
                };
                let job_id = Uuid::now_v7();
                let pin = credentials::generate_with(&profile.pin, &mut rng);
                let puk = credentials::generate_with(&profile.puk, &mut rng);
                let pin = cipher.seal(&pin, &credential_context(job_id, "pin"));
                let puk = cipher.seal(&puk, &credential_context(job_id, "puk"));
                let rack = locations.get(serial).cloned();
                jobs.push(job_id, *card_id, rack, pin, puk);
                accepted.push(*card_id);
            }
        }

        sqlx::query("INSERT INTO batches (id, requested, accepted) VALUES ($1, $2, $3)")
            .bind(batch_id)
            .bind(i32::try_from(requested.len()).unwrap_or(i32::MAX))
            .bind(i32::try_from(accepted.len()).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await?;
        if !accepted.is_empty() {
            jobs.insert(&mut tx, batch_id, cipher.key_id()).await?;
            let mut audit = AuditRows::default();
            for i in 0..jobs.job_id.len() {
                audit.push_job(
                    "initialize.requested",
                    JobTransition {
                        job_id: jobs.job_id[i],
                        card_id: jobs.card_id[i],
                        batch_id,
                        from: None,
                        to: jobs.state[i],
                        card_state: Some(CardState::Initializing.as_str()),
                    },
                    None,
                );
            }
            audit.insert(&mut tx, actor).await?;
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(OUTBOX_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let queued = jobs
            .state
            .iter()
            .filter(|s| **s == JobState::Queued.as_str())
            .count();
        Ok(InitializeOutcome {
            batch_id,
            accepted,
            rejected,
            queued,
        })
    }

    /// Cancels the live jobs of a batch, or of one card in it. Jobs not yet
    /// encoding are cancelled at once; all live jobs are broadcast to the
    /// workers through the control outbox.
    pub async fn cancel(
        &self,
        batch_id: Uuid,
        card_id: Option<Uuid>,
        actor: &str,
    ) -> Result<CancelOutcome> {
        let mut tx = self.pool.begin().await?;
        let batch_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM batches WHERE id = $1)")
                .bind(batch_id)
                .fetch_one(&mut *tx)
                .await?;
        if !batch_exists {
            return Err(StoreError::NotFound);
        }
        let rows = sqlx::query(
            "SELECT id, card_id, state FROM jobs
             WHERE batch_id = $1 AND ($2::uuid IS NULL OR card_id = $2)
             ORDER BY id FOR UPDATE",
        )
        .bind(batch_id)
        .bind(card_id)
        .fetch_all(&mut *tx)
        .await?;
        if card_id.is_some() && rows.is_empty() {
            return Err(StoreError::NotFound);
        }
        let mut outcome = CancelOutcome {
            cancelled: vec![],
            stopping: vec![],
            finished: 0,
        };
        let mut cancelled_cards = Vec::new();
        let mut audit = AuditRows::default();
        for r in &rows {
            let job_id: Uuid = r.try_get("id")?;
            let card: Uuid = r.try_get("card_id")?;
            let state: String = r.try_get("state")?;
            match JobState::parse(&state) {
                Some(JobState::Encoding) => outcome.stopping.push(job_id),
                Some(s) if s.can_become(JobState::Cancelled) => {
                    outcome.cancelled.push(job_id);
                    cancelled_cards.push(card);
                    audit.push_job(
                        "job.cancelled",
                        JobTransition {
                            job_id,
                            card_id: card,
                            batch_id,
                            from: Some(s.as_str()),
                            to: JobState::Cancelled.as_str(),
                            card_state: Some(CardState::Produced.as_str()),
                        },
                        None,
                    );
                }
                _ => outcome.finished += 1,
            }
        }
        if !outcome.cancelled.is_empty() {
            sqlx::query(
                "UPDATE jobs SET state = 'cancelled', reason = 'cancelled by operator', updated_at = now()
                 WHERE id = ANY($1)",
            )
            .bind(&outcome.cancelled)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE cards SET state = 'produced', state_reason = 'initialization cancelled', updated_at = now()
                 WHERE id = ANY($1) AND state = 'initializing'",
            )
            .bind(&cancelled_cards)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE credentials SET status = 'revoked', updated_at = now() WHERE job_id = ANY($1)",
            )
            .bind(&outcome.cancelled)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM outbox WHERE job_id = ANY($1)")
                .bind(&outcome.cancelled)
                .execute(&mut *tx)
                .await?;
        }
        let broadcast: Vec<Uuid> = outcome
            .cancelled
            .iter()
            .chain(&outcome.stopping)
            .copied()
            .collect();
        if !broadcast.is_empty() {
            let message = ControlMessage::Cancellation(Cancellation {
                meta: Meta::now(),
                job_ids: broadcast,
                batch_id: Some(batch_id),
                reason: "cancelled by operator".into(),
            });
            sqlx::query("INSERT INTO control_outbox (payload) VALUES ($1)")
                .bind(sqlx::types::Json(&message))
                .execute(&mut *tx)
                .await?;
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(OUTBOX_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        audit.insert(&mut tx, actor).await?;
        tx.commit().await?;
        Ok(outcome)
    }
}

/// New jobs of one request, as column arrays.
#[derive(Default)]
struct JobColumns {
    job_id: Vec<Uuid>,
    card_id: Vec<Uuid>,
    state: Vec<&'static str>,
    rack_id: Vec<Option<String>>,
    pin_nonce: Vec<Vec<u8>>,
    pin_ct: Vec<Vec<u8>>,
    puk_nonce: Vec<Vec<u8>>,
    puk_ct: Vec<Vec<u8>>,
}

impl JobColumns {
    fn push(
        &mut self,
        job_id: Uuid,
        card_id: Uuid,
        rack: Option<String>,
        pin: credentials::Sealed,
        puk: credentials::Sealed,
    ) {
        self.job_id.push(job_id);
        self.card_id.push(card_id);
        self.state.push(if rack.is_some() {
            JobState::Queued.as_str()
        } else {
            JobState::AwaitingCard.as_str()
        });
        self.rack_id.push(rack);
        self.pin_nonce.push(pin.nonce);
        self.pin_ct.push(pin.ciphertext);
        self.puk_nonce.push(puk.nonce);
        self.puk_ct.push(puk.ciphertext);
    }

    async fn insert(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        batch_id: Uuid,
        key_id: &str,
    ) -> Result<()> {
        let moved = sqlx::query(
            "UPDATE cards SET state = 'initializing', state_reason = NULL, updated_at = now()
             WHERE id = ANY($1) AND state = 'produced'",
        )
        .bind(&self.card_id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if moved != self.card_id.len() as u64 {
            // The rows are locked, so this means a bug; refuse rather than half-apply.
            return Err(StoreError::Database(sqlx::Error::Protocol(
                "card states changed under a held lock".into(),
            )));
        }
        sqlx::query(
            "INSERT INTO jobs (id, batch_id, card_id, state, rack_id)
             SELECT j.id, $1, j.card_id, j.state, j.rack_id
             FROM UNNEST($2::uuid[], $3::uuid[], $4::text[], $5::text[]) AS j(id, card_id, state, rack_id)",
        )
        .bind(batch_id)
        .bind(&self.job_id)
        .bind(&self.card_id)
        .bind(&self.state)
        .bind(&self.rack_id)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO credentials (job_id, card_id, key_id, pin_nonce, pin_ct, puk_nonce, puk_ct, status)
             SELECT c.job_id, c.card_id, $1, c.pin_nonce, c.pin_ct, c.puk_nonce, c.puk_ct, 'pending'
             FROM UNNEST($2::uuid[], $3::uuid[], $4::bytea[], $5::bytea[], $6::bytea[], $7::bytea[])
                  AS c(job_id, card_id, pin_nonce, pin_ct, puk_nonce, puk_ct)",
        )
        .bind(key_id)
        .bind(&self.job_id)
        .bind(&self.card_id)
        .bind(&self.pin_nonce)
        .bind(&self.pin_ct)
        .bind(&self.puk_nonce)
        .bind(&self.puk_ct)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO outbox (job_id, rack_id)
             SELECT o.job_id, o.rack_id FROM UNNEST($1::uuid[], $2::text[]) AS o(job_id, rack_id)
             WHERE o.rack_id IS NOT NULL",
        )
        .bind(&self.job_id)
        .bind(&self.rack_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}
