//! Re-dispatch after a standalone restart, on SQLite.

use uuid::fmt::Hyphenated;

use super::{SqliteStore, json_list, now};
use crate::store::Result;
use crate::store::recovery::{InFlight, redispatch_audit};

impl SqliteStore {
    pub(in crate::store) async fn redispatch_in_flight(&self, actor: &str) -> Result<usize> {
        let mut tx = self.write().await?;
        let rows: Vec<(Hyphenated, Hyphenated, Hyphenated, String, String)> = sqlx::query_as(
            "SELECT id, card_id, batch_id, state, rack_id FROM jobs
             WHERE state IN ('dispatched', 'encoding') AND rack_id IS NOT NULL
             ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let pairs: Vec<(String, &str)> = rows
            .iter()
            .map(|r| (r.0.to_string(), r.4.as_str()))
            .collect();
        let pairs = json_list(&pairs);
        sqlx::query(concat!(
            "UPDATE jobs SET state = 'queued', updated_at = ",
            now!(),
            " WHERE id IN (SELECT value->>0 FROM json_each($1))"
        ))
        .bind(pairs)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO outbox (job_id, rack_id)
             SELECT value->>0, value->>1 FROM json_each($1) ORDER BY key",
        )
        .bind(pairs)
        .execute(&mut *tx)
        .await?;
        let jobs: Vec<InFlight> = rows
            .into_iter()
            .map(|(job, card, batch, state, _)| {
                (job.into_uuid(), card.into_uuid(), batch.into_uuid(), state)
            })
            .collect();
        redispatch_audit(&jobs)
            .insert_sqlite(&mut tx, actor)
            .await?;
        tx.commit().await?;
        self.wake_dispatchers();
        Ok(jobs.len())
    }
}
