//! Inserting a transaction's audit rows into PostgreSQL with one UNNEST.

use sqlx::{Postgres, Transaction};

use crate::store::AuditRows;

impl AuditRows {
    pub(in crate::store) async fn insert_pg(
        self,
        tx: &mut Transaction<'_, Postgres>,
        actor: &str,
    ) -> sqlx::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO audit (actor, action, card_id, job_id, batch_id, from_state, to_state, card_state, detail)
             SELECT $1, * FROM UNNEST($2::text[], $3::uuid[], $4::uuid[], $5::uuid[], $6::text[], $7::text[], $8::text[], $9::jsonb[])",
        )
        .bind(actor)
        .bind(&self.action)
        .bind(&self.card_id)
        .bind(&self.job_id)
        .bind(&self.batch_id)
        .bind(&self.from_state)
        .bind(&self.to_state)
        .bind(&self.card_state)
        .bind(&self.detail)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

impl super::PgStore {
    pub(in crate::store) async fn list_audit(
        &self,
        filter: &crate::store::audit::AuditFilter,
    ) -> crate::store::Result<Vec<crate::store::audit::AuditEntry>> {
        use sqlx::Row;
        let rows = sqlx::query(
            "SELECT id, at, actor, action, card_id, job_id, batch_id, from_state, to_state, card_state, detail
             FROM audit
             WHERE id > $1 AND ($2::uuid IS NULL OR batch_id = $2) AND ($3::uuid IS NULL OR card_id = $3)
               AND ($4::text IS NULL OR action = $4)
             ORDER BY id LIMIT $5",
        )
        .bind(filter.after)
        .bind(filter.batch_id)
        .bind(filter.card_id)
        .bind(&filter.action)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(crate::store::audit::AuditEntry {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    card_id: r.try_get("card_id")?,
                    job_id: r.try_get("job_id")?,
                    batch_id: r.try_get("batch_id")?,
                    from_state: r.try_get("from_state")?,
                    to_state: r.try_get("to_state")?,
                    card_state: r.try_get("card_state")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }
}
