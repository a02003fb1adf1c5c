//! Applying results on SQLite: the write transaction holds the write lock,
//! and every table changes with one `UPDATE ... FROM json_each` per batch.

use std::collections::HashMap;

use cardfleet_schemas::ResultMessage;
use sqlx::Row;
use uuid::Uuid;

use super::{RowExt, SqliteStore, json_list, now};
use crate::domain::JobState;
use crate::store::Result;
use crate::store::ledger::{Applied, DeadLetter, JobRow, fold_results, result_job_ids};

impl SqliteStore {
    pub(in crate::store) async fn apply_results(
        &self,
        messages: &[ResultMessage],
        actor: &str,
    ) -> Result<Vec<Applied>> {
        let ids = result_job_ids(messages);
        let mut tx = self.write().await?;
        let rows = sqlx::query(
            "SELECT id, card_id, batch_id, state, cancel_requested_at IS NOT NULL AS cancel_requested FROM jobs
             WHERE id IN (SELECT value FROM json_each($1)) ORDER BY id",
        )
        .bind(json_list(&ids))
        .fetch_all(&mut *tx)
        .await?;
        let mut jobs: HashMap<Uuid, JobRow> = HashMap::with_capacity(rows.len());
        for r in rows {
            let state: String = r.try_get("state")?;
            jobs.insert(
                r.uuid("id")?,
                JobRow {
                    card_id: r.uuid("card_id")?,
                    batch_id: r.uuid("batch_id")?,
                    state: JobState::parse(&state).unwrap_or(JobState::Failed),
                    cancel_requested: r.try_get("cancel_requested")?,
                },
            );
        }
        let (outcomes, c, audit) = fold_results(messages, jobs);

        if !c.job_id.is_empty() {
            // Steps go in as JSON text, so `->>` hands them over unchanged.
            let changes: Vec<_> = (0..c.job_id.len())
                .map(|i| {
                    (
                        c.job_id[i],
                        c.job_state[i],
                        &c.reason[i],
                        c.steps[i].as_ref().map(serde_json::Value::to_string),
                        c.card_id[i],
                        c.card_state[i],
                        c.credential_status[i],
                    )
                })
                .collect();
            let changes = json_list(&changes);
            sqlx::query(concat!(
                "UPDATE jobs SET state = u.value->>1, reason = COALESCE(u.value->>2, jobs.reason),
                        steps = COALESCE(u.value->>3, jobs.steps), lease_expired_at = NULL,
                        updated_at = ",
                now!(),
                " FROM json_each($1) AS u WHERE jobs.id = u.value->>0"
            ))
            .bind(changes)
            .execute(&mut *tx)
            .await?;
            sqlx::query(concat!(
                "UPDATE cards SET state = u.value->>5,
                        state_reason = CASE WHEN u.value->>5 = 'unassigned' THEN NULL ELSE u.value->>2 END,
                        updated_at = ",
                now!(),
                " FROM json_each($1) AS u
                 WHERE cards.id = u.value->>4 AND u.value->>5 IS NOT NULL AND cards.state = 'initializing'"
            ))
            .bind(changes)
            .execute(&mut *tx)
            .await?;
            sqlx::query(concat!(
                "UPDATE credentials SET status = u.value->>6, updated_at = ",
                now!(),
                " FROM json_each($1) AS u
                 WHERE credentials.job_id = u.value->>0 AND u.value->>6 IS NOT NULL
                   AND credentials.status = 'pending'"
            ))
            .bind(changes)
            .execute(&mut *tx)
            .await?;
        }
        audit.insert_sqlite(&mut tx, actor).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    pub(in crate::store) async fn record_dead_letters(
        &self,
        letters: &[DeadLetter],
    ) -> Result<Vec<String>> {
        let mut inserted = Vec::new();
        let mut tx = self.write().await?;
        for l in letters {
            let done = sqlx::query(
                "INSERT INTO dead_letters (source, reason, message_id, payload, raw, content_key)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (content_key) DO NOTHING",
            )
            .bind(&l.source)
            .bind(&l.reason)
            .bind(&l.message_id)
            .bind(&l.payload)
            .bind(&l.raw)
            .bind(&l.content_key)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() > 0 {
                inserted.push(l.source.clone());
            }
        }
        tx.commit().await?;
        Ok(inserted)
    }
}
