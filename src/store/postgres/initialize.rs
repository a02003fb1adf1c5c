//! Initialize and cancel on PostgreSQL: the requested cards are locked in id
//! order, the enablement row is held `FOR SHARE` so a concurrent disable
//! waits, and jobs, credentials and outbox rows go in with UNNEST.

use std::collections::{BTreeMap, HashMap};

use cardfleet_schemas::CardProfile;
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::PgStore;
use crate::credentials::CredentialCipher;
use crate::store::initialize::{
    CancelOutcome, FoundCard, InitializeOutcome, JobColumns, Selection, plan_cancel,
    plan_initialize, unique_ids,
};
use crate::store::{INITIALIZE_PROCESS, OUTBOX_CHANNEL, Result, StoreError};

impl PgStore {
    pub(in crate::store) async fn initialize(
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
                let unique = unique_ids(ids);
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

        let mut found: HashMap<Uuid, FoundCard> = HashMap::with_capacity(rows.len());
        for r in &rows {
            found.insert(
                r.try_get("id")?,
                FoundCard {
                    state: r.try_get("state")?,
                    profile: r.try_get("profile")?,
                    chip_serial: r.try_get("chip_serial")?,
                },
            );
        }
        let serials: Vec<&str> = found.values().map(|c| c.chip_serial.as_str()).collect();
        let locations: HashMap<String, String> = sqlx::query_as(
            "SELECT chip_serial, rack_id FROM slot_locations WHERE chip_serial = ANY($1)",
        )
        .bind(&serials)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();

        let plan = plan_initialize(&requested, &found, &locations, profiles, cipher);
        sqlx::query("INSERT INTO batches (id, requested, accepted) VALUES ($1, $2, $3)")
            .bind(plan.batch_id)
            .bind(plan.requested)
            .bind(plan.accepted_count())
            .execute(&mut *tx)
            .await?;
        if !plan.accepted.is_empty() {
            insert_jobs(&mut tx, &plan.jobs, plan.batch_id, cipher.key_id()).await?;
            plan.audit().insert_pg(&mut tx, actor).await?;
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(OUTBOX_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(plan.outcome())
    }

    pub(in crate::store) async fn cancel(
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
        // One lock order for every transaction that touches both: outbox
        // rows first, then jobs, as the dispatcher's claim takes them. A
        // claim being published holds its outbox rows; this waits for it
        // and then sees its jobs dispatched.
        sqlx::query(
            "SELECT o.id FROM outbox o JOIN jobs j ON j.id = o.job_id
             WHERE j.batch_id = $1 AND ($2::uuid IS NULL OR j.card_id = $2)
             ORDER BY o.id FOR UPDATE OF o",
        )
        .bind(batch_id)
        .bind(card_id)
        .execute(&mut *tx)
        .await?;
        let rows: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
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
        let plan = plan_cancel(batch_id, rows);
        let cancelled = &plan.outcome.cancelled;
        if !cancelled.is_empty() {
            sqlx::query(
                "UPDATE jobs SET state = 'cancelled', reason = 'cancelled by operator', updated_at = now()
                 WHERE id = ANY($1)",
            )
            .bind(cancelled)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE cards SET state = 'produced', state_reason = 'initialization cancelled', updated_at = now()
                 WHERE id = ANY($1) AND state = 'initializing'",
            )
            .bind(&plan.cards)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE credentials SET status = 'revoked', updated_at = now() WHERE job_id = ANY($1)",
            )
            .bind(cancelled)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM outbox WHERE job_id = ANY($1)")
                .bind(cancelled)
                .execute(&mut *tx)
                .await?;
        }
        if !plan.outcome.stopping.is_empty() {
            sqlx::query(
                "UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, now()), updated_at = now()
                 WHERE id = ANY($1)",
            )
            .bind(&plan.outcome.stopping)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(message) = &plan.message {
            sqlx::query("INSERT INTO control_outbox (payload) VALUES ($1)")
                .bind(sqlx::types::Json(message))
                .execute(&mut *tx)
                .await?;
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(OUTBOX_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        plan.audit.insert_pg(&mut tx, actor).await?;
        tx.commit().await?;
        Ok(plan.outcome)
    }
}

async fn insert_jobs(
    tx: &mut Transaction<'_, Postgres>,
    jobs: &JobColumns,
    batch_id: Uuid,
    key_id: &str,
) -> Result<()> {
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
