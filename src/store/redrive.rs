//! Redrive of dead letters: an operator sends a message no consumer could
//! handle once more, e.g. after the fault that killed it is fixed. Each
//! letter is sent again at most once; the row keeps who did it and when.

use super::racks::DeadLetterView;
use super::{AuditRows, Result, Store, StoreError, on_backend};

impl Store {
    pub async fn dead_letter(&self, id: i64) -> Result<DeadLetterView> {
        on_backend!(self, s => s.dead_letter(id).await)
    }

    /// Marks the letter as sent again by `actor` and audits it as
    /// `dead_letter.redriven`. `NotFound` for an unknown letter, a conflict
    /// `already_redriven` when it was sent again before.
    pub async fn mark_redriven(&self, id: i64, source: &str, actor: &str) -> Result<()> {
        let mut audit = AuditRows::default();
        audit.push_access(
            "dead_letter.redriven",
            (None, None, None),
            serde_json::json!({ "dead_letter": id, "source": source }),
        );
        on_backend!(self, s => s.mark_redriven(id, audit, actor).await)
    }
}

pub fn already_redriven() -> super::StoreError {
    super::StoreError::Conflict {
        code: "already_redriven",
        message: "this dead letter was sent again already".into(),
    }
}

super::dialect::for_each_dialect! {
    impl Db {
        pub(in crate::store) async fn dead_letter(&self, id: i64) -> Result<DeadLetterView> {
            let r = sqlx::query(
                "SELECT id, received_at, source, reason, message_id, payload, redriven_at, redriven_by
                 FROM dead_letters WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(self.reader())
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
                d::now!(),
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
            d::insert_audit(&mut tx, audit, actor).await?;
            tx.commit().await?;
            Ok(())
        }
    }
}
