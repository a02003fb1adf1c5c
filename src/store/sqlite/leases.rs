//! Rack leases on SQLite.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::{RowExt, SqliteStore, json_list, now};
use crate::store::Result;
use crate::store::leases::{ExpiredJob, LeaseSweep, expired_audit};

impl SqliteStore {
    pub(in crate::store) async fn expire_leases(
        &self,
        lease: Duration,
        actor: &str,
    ) -> Result<LeaseSweep> {
        let mut tx = self.write().await?;
        let rows = sqlx::query(concat!(
            "UPDATE jobs SET lease_expired_at = ",
            now!(),
            " WHERE id IN (
                SELECT j.id FROM jobs j
                LEFT JOIN racks r ON r.rack_id = j.rack_id
                WHERE j.state IN ('dispatched', 'encoding') AND j.lease_expired_at IS NULL
                  AND (julianday('now') - julianday(COALESCE(r.last_heartbeat, j.updated_at)))
                      * 86400.0 > $1
             )
             RETURNING id, card_id, batch_id, state, COALESCE(rack_id, '') AS rack_id"
        ))
        .bind(lease.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?;
        let expired = rows
            .iter()
            .map(|r| {
                Ok((
                    r.uuid("id")?,
                    r.uuid("card_id")?,
                    r.uuid("batch_id")?,
                    r.try_get("state")?,
                    r.try_get("rack_id")?,
                ))
            })
            .collect::<sqlx::Result<Vec<ExpiredJob>>>()?;
        expired_audit(&expired, lease)
            .insert_sqlite(&mut tx, actor)
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
        let rows = sqlx::query(
            "SELECT id, lease_expired_at FROM jobs
             WHERE id IN (SELECT value FROM json_each($1)) AND lease_expired_at IS NOT NULL",
        )
        .bind(json_list(job_ids))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| Ok((r.uuid("id")?, r.try_get("lease_expired_at")?)))
            .collect()
    }

    pub(in crate::store) async fn batch_awaiting_rack(&self, batch_id: Uuid) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM jobs
             WHERE batch_id = $1 AND lease_expired_at IS NOT NULL
               AND state IN ('dispatched', 'encoding')",
        )
        .bind(batch_id.hyphenated())
        .fetch_one(&self.reader)
        .await?)
    }
}
