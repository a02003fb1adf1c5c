//! Applying results on PostgreSQL: the named jobs are locked in id order and
//! every table changes with one UNNEST statement per batch.

use std::collections::HashMap;

use cardfleet_schemas::ResultMessage;
use sqlx::Row;
use uuid::Uuid;

use super::PgStore;
use crate::domain::JobState;
use crate::store::Result;
use crate::store::ledger::{Applied, DeadLetter, JobRow, fold_results, result_job_ids};

impl PgStore {
    pub(in crate::store) async fn apply_results(
        &self,
        messages: &[ResultMessage],
        actor: &str,
    ) -> Result<Vec<Applied>> {
        let mut tx = self.pool.begin().await?;
        let ids = result_job_ids(messages);
        let rows = sqlx::query(
            "SELECT id, card_id, batch_id, state, cancel_requested_at IS NOT NULL AS cancel_requested FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut jobs: HashMap<Uuid, JobRow> = HashMap::with_capacity(rows.len());
        for r in rows {
            let state: String = r.try_get("state")?;
            jobs.insert(
                r.try_get("id")?,
                JobRow {
                    card_id: r.try_get("card_id")?,
                    batch_id: r.try_get("batch_id")?,
                    state: JobState::parse(&state).unwrap_or(JobState::Failed),
                    cancel_requested: r.try_get("cancel_requested")?,
                },
            );
        }
        let (outcomes, c, audit) = fold_results(messages, jobs);

        if !c.job_id.is_empty() {
            sqlx::query(
                "UPDATE jobs SET state = u.state, reason = COALESCE(u.reason, jobs.reason),
                        steps = COALESCE(u.steps, jobs.steps), updated_at = now(),
                        lease_expired_at = NULL
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[]) AS u(id, state, reason, steps)
                 WHERE jobs.id = u.id",
            )
            .bind(&c.job_id)
            .bind(&c.job_state)
            .bind(&c.reason)
            .bind(&c.steps)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE cards SET state = u.state,
                        state_reason = CASE WHEN u.state = 'unassigned' THEN NULL ELSE u.reason END,
                        updated_at = now()
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS u(id, state, reason)
                 WHERE cards.id = u.id AND u.state IS NOT NULL AND cards.state = 'initializing'",
            )
            .bind(&c.card_id)
            .bind(&c.card_state)
            .bind(&c.reason)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE credentials SET status = u.status, updated_at = now()
                 FROM UNNEST($1::uuid[], $2::text[]) AS u(job_id, status)
                 WHERE credentials.job_id = u.job_id AND u.status IS NOT NULL AND credentials.status = 'pending'",
            )
            .bind(&c.job_id)
            .bind(&c.credential_status)
            .execute(&mut *tx)
            .await?;
        }
        audit.insert_pg(&mut tx, actor).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    pub(in crate::store) async fn record_dead_letters(
        &self,
        letters: &[DeadLetter],
    ) -> Result<Vec<String>> {
        let source: Vec<&str> = letters.iter().map(|l| l.source.as_str()).collect();
        let reason: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
        let message_id: Vec<Option<&str>> =
            letters.iter().map(|l| l.message_id.as_deref()).collect();
        let payload: Vec<&str> = letters.iter().map(|l| l.payload.as_str()).collect();
        let raw: Vec<&[u8]> = letters.iter().map(|l| l.raw.as_slice()).collect();
        let key: Vec<&str> = letters.iter().map(|l| l.content_key.as_str()).collect();
        let inserted = sqlx::query_scalar(
            "INSERT INTO dead_letters (source, reason, message_id, payload, raw, content_key)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[])
             ON CONFLICT (content_key) DO NOTHING
             RETURNING source",
        )
        .bind(&source)
        .bind(&reason)
        .bind(&message_id)
        .bind(&payload)
        .bind(&raw)
        .bind(&key)
        .fetch_all(&self.pool)
        .await?;
        Ok(inserted)
    }
}
