//! Running an in-doubt card's job again, on PostgreSQL.

use uuid::Uuid;

use super::PgStore;
use crate::store::in_doubt::{DoubtfulJob, rerun_audit};
use crate::store::{OUTBOX_CHANNEL, Result, StoreError};

impl PgStore {
    pub(in crate::store) async fn rerun_in_doubt(
        &self,
        card_id: Uuid,
        actor: &str,
    ) -> Result<Uuid> {
        let mut tx = self.pool().begin().await?;
        // The job whose credentials are escrowed for the card; the card row
        // is locked first, as initializing a card does.
        let row: Option<DoubtfulJob> = sqlx::query_as(
            "SELECT j.id, j.batch_id, j.rack_id
               FROM cards c
               JOIN credentials cr ON cr.card_id = c.id AND cr.status = 'pending'
               JOIN jobs j ON j.id = cr.job_id AND j.state = 'failed'
              WHERE c.id = $1 AND c.state = 'in_doubt'
              ORDER BY cr.created_at DESC LIMIT 1
              FOR UPDATE OF c, j",
        )
        .bind(card_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((job_id, batch_id, Some(rack_id))) = row else {
            return Err(StoreError::NotFound);
        };
        sqlx::query(
            "UPDATE jobs SET state = 'queued', reason = NULL, updated_at = now() WHERE id = $1",
        )
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE cards SET state = 'initializing', state_reason = NULL, updated_at = now()
             WHERE id = $1",
        )
        .bind(card_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO outbox (job_id, rack_id) VALUES ($1, $2)")
            .bind(job_id)
            .bind(&rack_id)
            .execute(&mut *tx)
            .await?;
        rerun_audit(card_id, job_id, batch_id)
            .insert_pg(&mut tx, actor)
            .await?;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(OUTBOX_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(job_id)
    }
}
