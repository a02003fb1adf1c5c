//! Take-time check facts on SQLite.

use sqlx::Row;
use uuid::Uuid;

use super::{RowExt, SqliteStore, json_list};
use crate::store::Result;
use crate::store::job_gate::RESTARTED;

impl SqliteStore {
    /// (job, cancelled, started) per job of the rack.
    pub(in crate::store) async fn job_gate_facts(
        &self,
        rack_id: &str,
        job_ids: &[Uuid],
    ) -> Result<Vec<(Uuid, bool, bool)>> {
        let rows = sqlx::query(
            "SELECT j.id,
                    (j.state = 'cancelled' OR j.cancel_requested_at IS NOT NULL) AS cancelled,
                    (j.state IN ('encoding', 'succeeded', 'failed')
                     OR EXISTS (SELECT 1 FROM audit a
                                WHERE a.card_id = j.card_id AND a.job_id = j.id
                                  AND a.action IN (SELECT value FROM json_each($3)))) AS started
             FROM jobs j
             WHERE j.id IN (SELECT value FROM json_each($1)) AND j.rack_id = $2",
        )
        .bind(json_list(job_ids))
        .bind(rack_id)
        .bind(json_list(RESTARTED))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.uuid("id")?,
                    r.try_get("cancelled")?,
                    r.try_get("started")?,
                ))
            })
            .collect()
    }
}
