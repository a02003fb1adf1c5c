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
