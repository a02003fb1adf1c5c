//! Dead-letter redrive on SQLite.

use sqlx::Row;

use super::{SqliteStore, now};
use crate::store::racks::DeadLetterView;
use crate::store::redrive::already_redriven;
use crate::store::{AuditRows, Result, StoreError};

impl SqliteStore {
    pub(in crate::store) async fn dead_letter(&self, id: i64) -> Result<DeadLetterView> {
        let r = sqlx::query(
            "SELECT id, received_at, source, reason, message_id, payload, redriven_at, redriven_by
             FROM dead_letters WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.reader)
        .await?
        .ok_or(StoreError::NotFound)?;
        Ok(DeadLetterView {
            id: r.try_get("id")?,
            received_at: r.try_get("received_at")?,
            source: r.try_get("source")?,
            reason: r.try_get("reason")?,
            message_id: r.try_get("message_id")?,
            payload: r.try_get("payload")?,
            redriven_at: r.try_get("redriven_at")?,
            redriven_by: r.try_get("redriven_by")?,
        })
    }

    pub(in crate::store) async fn mark_redriven(
        &self,
        id: i64,
        audit: AuditRows,
        actor: &str,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let marked = sqlx::query(concat!(
            "UPDATE dead_letters SET redriven_at = ",
            now!(),
            ", redriven_by = $2 WHERE id = $1 AND redriven_at IS NULL"
        ))
        .bind(id)
        .bind(actor)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if marked == 0 {
            let known: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM dead_letters WHERE id = $1)")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            return Err(if known {
                already_redriven()
            } else {
                StoreError::NotFound
            });
        }
        audit.insert_sqlite(&mut tx, actor).await?;
        tx.commit().await?;
        Ok(())
    }
}
