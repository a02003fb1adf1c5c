//! Initialize and cancel on SQLite: the write transaction holds the write
//! lock from its first statement, so the cards read are the cards changed;
//! jobs, credentials and outbox rows go in with one `json_each` each.

use std::collections::{BTreeMap, HashMap};

use cardfleet_schemas::CardProfile;
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::{RowExt, SqliteStore, json_list, now};
use crate::credentials::CredentialCipher;
use crate::store::initialize::{
    CancelOutcome, FoundCard, InitializeOutcome, JobColumns, Selection, plan_cancel,
    plan_initialize, unique_ids,
};
use crate::store::{INITIALIZE_PROCESS, Result, StoreError};

impl SqliteStore {
    pub(in crate::store) async fn initialize(
        &self,
        selection: Selection,
        profiles: &BTreeMap<String, CardProfile>,
        cipher: &CredentialCipher,
        actor: &str,
    ) -> Result<InitializeOutcome> {
        let mut tx = self.write().await?;
        let enabled: Option<bool> =
            sqlx::query_scalar("SELECT enabled FROM process_settings WHERE name = $1")
                .bind(INITIALIZE_PROCESS)
                .fetch_optional(&mut *tx)
                .await?;
        if enabled != Some(true) {
            return Err(StoreError::ProcessDisabled(INITIALIZE_PROCESS.into()));
        }

        let (requested, rows) = match &selection {
            Selection::Ids(ids) => {
                let unique = unique_ids(ids);
                let rows = sqlx::query(
                    "SELECT id, state, profile, chip_serial FROM cards
                     WHERE id IN (SELECT value FROM json_each($1)) ORDER BY id",
                )
                .bind(json_list(&unique))
                .fetch_all(&mut *tx)
                .await?;
                (unique, rows)
            }
            Selection::Filter { card_type, limit } => {
                let rows = sqlx::query(
                    "SELECT id, state, profile, chip_serial FROM cards
                     WHERE card_type = $1 AND state = 'produced'
                     ORDER BY id LIMIT $2",
                )
                .bind(card_type)
                .bind(*limit)
                .fetch_all(&mut *tx)
                .await?;
                let ids = rows
                    .iter()
                    .map(|r| r.uuid("id"))
                    .collect::<sqlx::Result<Vec<Uuid>>>()?;
                (ids, rows)
            }
        };

        let mut found: HashMap<Uuid, FoundCard> = HashMap::with_capacity(rows.len());
        for r in &rows {
            found.insert(
                r.uuid("id")?,
                FoundCard {
                    state: r.try_get("state")?,
                    profile: r.try_get("profile")?,
                    chip_serial: r.try_get("chip_serial")?,
                },
            );
        }
        let serials: Vec<&str> = found.values().map(|c| c.chip_serial.as_str()).collect();
        let locations: HashMap<String, String> = sqlx::query_as(
            "SELECT chip_serial, rack_id FROM slot_locations
             WHERE chip_serial IN (SELECT value FROM json_each($1))",
        )
        .bind(json_list(&serials))
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();

        let plan = plan_initialize(&requested, &found, &locations, profiles, cipher);
        sqlx::query("INSERT INTO batches (id, requested, accepted) VALUES ($1, $2, $3)")
            .bind(plan.batch_id.hyphenated())
            .bind(plan.requested)
            .bind(plan.accepted_count())
            .execute(&mut *tx)
            .await?;
        let accepted = !plan.accepted.is_empty();
        if accepted {
            insert_jobs(&mut tx, &plan.jobs, plan.batch_id, cipher.key_id()).await?;
            plan.audit().insert_sqlite(&mut tx, actor).await?;
        }
        tx.commit().await?;
        if accepted {
            self.wake_dispatchers();
        }
        Ok(plan.outcome())
    }

    pub(in crate::store) async fn cancel(
        &self,
        batch_id: Uuid,
        card_id: Option<Uuid>,
        actor: &str,
    ) -> Result<CancelOutcome> {
        let mut tx = self.write().await?;
        let batch_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM batches WHERE id = $1)")
                .bind(batch_id.hyphenated())
                .fetch_one(&mut *tx)
                .await?;
        if !batch_exists {
            return Err(StoreError::NotFound);
        }
        let rows: Vec<(Hyphenated, Hyphenated, String)> = sqlx::query_as(
            "SELECT id, card_id, state FROM jobs
             WHERE batch_id = $1 AND ($2 IS NULL OR card_id = $2)
             ORDER BY id",
        )
        .bind(batch_id.hyphenated())
        .bind(card_id.map(Uuid::hyphenated))
        .fetch_all(&mut *tx)
        .await?;
        if card_id.is_some() && rows.is_empty() {
            return Err(StoreError::NotFound);
        }
        let rows = rows
            .into_iter()
            .map(|(job, card, state)| (job.into_uuid(), card.into_uuid(), state))
            .collect();
        let plan = plan_cancel(batch_id, rows);
        let cancelled = json_list(&plan.outcome.cancelled);
        if !plan.outcome.cancelled.is_empty() {
            sqlx::query(concat!(
                "UPDATE jobs SET state = 'cancelled', reason = 'cancelled by operator', updated_at = ",
                now!(),
                " WHERE id IN (SELECT value FROM json_each($1))"
            ))
            .bind(cancelled)
            .execute(&mut *tx)
            .await?;
            sqlx::query(concat!(
                "UPDATE cards SET state = 'produced', state_reason = 'initialization cancelled', updated_at = ",
                now!(),
                " WHERE id IN (SELECT value FROM json_each($1)) AND state = 'initializing'"
            ))
            .bind(json_list(&plan.cards))
            .execute(&mut *tx)
            .await?;
            sqlx::query(concat!(
                "UPDATE credentials SET status = 'revoked', updated_at = ",
                now!(),
                " WHERE job_id IN (SELECT value FROM json_each($1))"
            ))
            .bind(cancelled)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM outbox WHERE job_id IN (SELECT value FROM json_each($1))")
                .bind(cancelled)
                .execute(&mut *tx)
                .await?;
        }
        if !plan.outcome.stopping.is_empty() {
            sqlx::query(concat!(
                "UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, ",
                now!(),
                "), updated_at = ",
                now!(),
                " WHERE id IN (SELECT value FROM json_each($1))"
            ))
            .bind(json_list(&plan.outcome.stopping))
            .execute(&mut *tx)
            .await?;
        }
        if let Some(message) = &plan.message {
            sqlx::query("INSERT INTO control_outbox (payload) VALUES ($1)")
                .bind(sqlx::types::Json(message))
                .execute(&mut *tx)
                .await?;
        }
        plan.audit.insert_sqlite(&mut tx, actor).await?;
        tx.commit().await?;
        if plan.message.is_some() {
            self.wake_dispatchers();
        }
        Ok(plan.outcome)
    }
}

async fn insert_jobs(
    tx: &mut Transaction<'_, Sqlite>,
    jobs: &JobColumns,
    batch_id: Uuid,
    key_id: &str,
) -> Result<()> {
    let moved = sqlx::query(concat!(
        "UPDATE cards SET state = 'initializing', state_reason = NULL, updated_at = ",
        now!(),
        " WHERE id IN (SELECT value FROM json_each($1)) AND state = 'produced'"
    ))
    .bind(json_list(&jobs.card_id))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if moved != jobs.card_id.len() as u64 {
        // The write lock is held, so this means a bug; refuse rather than half-apply.
        return Err(StoreError::Database(sqlx::Error::Protocol(
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
    let rows = json_list(&rows);
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
