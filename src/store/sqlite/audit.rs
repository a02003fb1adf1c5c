//! Inserting a transaction's audit rows into SQLite with one `json_each`.

use sqlx::{Sqlite, Transaction};

use super::json_list;
use crate::store::AuditRows;

impl AuditRows {
    pub(in crate::store) async fn insert_sqlite(
        self,
        tx: &mut Transaction<'_, Sqlite>,
        actor: &str,
    ) -> sqlx::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        // Details go in as JSON text, so `->>` hands them over unchanged.
        let rows: Vec<_> = (0..self.len())
            .map(|i| {
                (
                    self.action[i],
                    self.card_id[i],
                    self.job_id[i],
                    self.batch_id[i],
                    self.from_state[i],
                    self.to_state[i],
                    self.card_state[i],
                    self.detail[i].as_ref().map(serde_json::Value::to_string),
                )
            })
            .collect();
        sqlx::query(
            "INSERT INTO audit (actor, action, card_id, job_id, batch_id, from_state, to_state, card_state, detail)
             SELECT $1, value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, value->>7
             FROM json_each($2) ORDER BY key",
        )
        .bind(actor)
        .bind(json_list(&rows))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}
