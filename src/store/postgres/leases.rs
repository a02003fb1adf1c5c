//! Rack leases on PostgreSQL.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::PgStore;
use crate::store::Result;
use crate::store::leases::{ExpiredJob, LeaseSweep, expired_audit};

impl PgStore {
    pub(in crate::store) async fn expire_leases(
        &self,
        lease: Duration,
        actor: &str,
    ) -> Result<LeaseSweep> {
        let mut tx = self.pool().begin().await?;
        let expired: Vec<ExpiredJob> = sqlx::query_as(
            "WITH silent AS (
                SELECT j.id FROM jobs j
                LEFT JOIN racks r ON r.rack_id = j.rack_id
                WHERE j.state IN ('dispatched', 'encoding') AND j.lease_expired_at IS NULL
                  AND COALESCE(r.last_heartbeat, j.updated_at) < now() - make_interval(secs => $1)
                FOR UPDATE OF j SKIP LOCKED
             )
             UPDATE jobs SET lease_expired_at = now()
             FROM silent WHERE jobs.id = silent.id
             RETURNING jobs.id, jobs.card_id, jobs.batch_id, jobs.state, COALESCE(jobs.rack_id, '')",
        )
        .bind(lease.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?;
        expired_audit(&expired, lease)
            .insert_pg(&mut tx, actor)
            .await?;
        let awaiting_rack: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs
             WHERE lease_expired_at IS NOT NULL AND state IN ('dispatched', 'encoding')",
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(LeaseSweep {
            newly_expired: expired.len() as u64,
            awaiting_rack,
        })
    }

    pub(in crate::store) async fn lease_marks(
        &self,
        job_ids: &[Uuid],
    ) -> Result<HashMap<Uuid, DateTime<Utc>>> {
        let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
            "SELECT id, lease_expired_at FROM jobs
             WHERE id = ANY($1) AND lease_expired_at IS NOT NULL",
        )
        .bind(job_ids)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().collect())
    }

    pub(in crate::store) async fn batch_awaiting_rack(&self, batch_id: Uuid) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM jobs
             WHERE batch_id = $1 AND lease_expired_at IS NOT NULL
               AND state IN ('dispatched', 'encoding')",
        )
        .bind(batch_id)
        .fetch_one(self.pool())
        .await?)
    }
}
