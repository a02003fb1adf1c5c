//! Take-time check facts on PostgreSQL.

use uuid::Uuid;

use super::PgStore;
use crate::store::Result;
use crate::store::job_gate::RESTARTED;

impl PgStore {
    /// (job, cancelled, started) per job of the rack.
    pub(in crate::store) async fn job_gate_facts(
        &self,
        rack_id: &str,
        job_ids: &[Uuid],
    ) -> Result<Vec<(Uuid, bool, bool)>> {
        Ok(sqlx::query_as(
            "SELECT j.id,
                    j.state = 'cancelled' OR j.cancel_requested_at IS NOT NULL,
                    j.state IN ('encoding', 'succeeded', 'failed')
                    OR EXISTS (SELECT 1 FROM audit a
                               WHERE a.card_id = j.card_id AND a.job_id = j.id
                                 AND a.action = ANY($3))
             FROM jobs j WHERE j.id = ANY($1) AND j.rack_id = $2",
        )
        .bind(job_ids)
        .bind(rack_id)
        .bind(&RESTARTED[..])
        .fetch_all(self.pool())
        .await?)
    }
}
