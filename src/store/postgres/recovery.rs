//! Re-dispatch after a standalone restart, on PostgreSQL.

use uuid::Uuid;

use super::PgStore;
use crate::store::recovery::{InFlight, redispatch_audit};
use crate::store::{OUTBOX_CHANNEL, Result};

impl PgStore {
    pub(in crate::store) async fn redispatch_in_flight(&self, actor: &str) -> Result<usize> {
        let mut tx = self.pool().begin().await?;
        let rows: Vec<(Uuid, Uuid, Uuid, String, String)> = sqlx::query_as(
            "SELECT id, card_id, batch_id, state, rack_id FROM jobs
             WHERE state IN ('dispatched', 'encoding') AND rack_id IS NOT NULL
             ORDER BY id FOR UPDATE",
        )
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
        let racks: Vec<&str> = rows.iter().map(|r| r.4.as_str()).collect();
        sqlx::query("UPDATE jobs SET state = 'queued', updated_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO outbox (job_id, rack_id)
             SELECT * FROM UNNEST($1::uuid[], $2::text[])",
        )
        .bind(&ids)
        .bind(&racks)
        .execute(&mut *tx)
        .await?;
        let jobs: Vec<InFlight> = rows
            .into_iter()
            .map(|(job, card, batch, state, _)| (job, card, batch, state))
            .collect();
        redispatch_audit(&jobs).insert_pg(&mut tx, actor).await?;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(OUTBOX_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(jobs.len())
    }
}
