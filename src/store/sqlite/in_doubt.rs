//! Running an in-doubt card's job again, on SQLite.

use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::{SqliteStore, now};
use crate::store::in_doubt::rerun_audit;
use crate::store::{Result, StoreError};

impl SqliteStore {
    pub(in crate::store) async fn rerun_in_doubt(
        &self,
        card_id: Uuid,
        actor: &str,
    ) -> Result<Uuid> {
        let mut tx = self.write().await?;
        let card = card_id.hyphenated();
        let row: Option<(Hyphenated, Hyphenated, Option<String>)> = sqlx::query_as(
            "SELECT j.id, j.batch_id, j.rack_id
               FROM cards c
               JOIN credentials cr ON cr.card_id = c.id AND cr.status = 'pending'
               JOIN jobs j ON j.id = cr.job_id AND j.state = 'failed'
              WHERE c.id = $1 AND c.state = 'in_doubt'
              ORDER BY cr.created_at DESC LIMIT 1",
        )
        .bind(card)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((job_id, batch_id, Some(rack_id))) = row else {
            return Err(StoreError::NotFound);
        };
        sqlx::query(concat!(
            "UPDATE jobs SET state = 'queued', reason = NULL, updated_at = ",
            now!(),
            " WHERE id = $1"
        ))
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(concat!(
            "UPDATE cards SET state = 'initializing', state_reason = NULL, updated_at = ",
            now!(),
            " WHERE id = $1"
        ))
        .bind(card)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO outbox (job_id, rack_id) VALUES ($1, $2)")
            .bind(job_id)
            .bind(&rack_id)
            .execute(&mut *tx)
            .await?;
        let (job_id, batch_id) = (job_id.into_uuid(), batch_id.into_uuid());
        rerun_audit(card_id, job_id, batch_id)
            .insert_sqlite(&mut tx, actor)
            .await?;
        tx.commit().await?;
        self.wake_dispatchers();
        Ok(job_id)
    }
}
