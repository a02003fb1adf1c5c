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

impl super::SqliteStore {
    pub(in crate::store) async fn list_audit(
        &self,
        filter: &crate::store::audit::AuditFilter,
    ) -> crate::store::Result<Vec<crate::store::audit::AuditEntry>> {
        use super::RowExt;
        use sqlx::Row;
        let rows = sqlx::query(
            "SELECT id, at, actor, action, card_id, job_id, batch_id, from_state, to_state, card_state, detail
             FROM audit
             WHERE id > $1 AND ($2 IS NULL OR batch_id = $2) AND ($3 IS NULL OR card_id = $3)
               AND ($4 IS NULL OR action = $4)
             ORDER BY id LIMIT $5",
        )
        .bind(filter.after)
        .bind(filter.batch_id.map(|u| u.hyphenated()))
        .bind(filter.card_id.map(|u| u.hyphenated()))
        .bind(&filter.action)
        .bind(filter.limit)
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(crate::store::audit::AuditEntry {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    card_id: r.opt_uuid("card_id")?,
                    job_id: r.opt_uuid("job_id")?,
                    batch_id: r.opt_uuid("batch_id")?,
                    from_state: r.try_get("from_state")?,
                    to_state: r.try_get("to_state")?,
                    card_state: r.try_get("card_state")?,
                    detail: r.json("detail")?,
                })
            })
            .collect()
    }
}
