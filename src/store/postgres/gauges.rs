//! The gauges' reads on PostgreSQL.

use sqlx::Row;

use super::PgStore;
use crate::store::Result;
use crate::store::gauges::{FleetSnapshot, MAX_RACKS};

impl PgStore {
    /// Every query stays off the bulk of `jobs`: the live states are counted
    /// through the partial index `jobs_one_live_per_card`, which holds only
    /// live jobs, and the outbox is read at its head.
    pub(in crate::store) async fn fleet_snapshot(&self) -> Result<FleetSnapshot> {
        let live_jobs: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, count(*) FROM jobs
             WHERE state IN ('queued', 'awaiting_card', 'dispatched', 'encoding')
             GROUP BY state",
        )
        .fetch_all(&self.pool)
        .await?;
        let outbox_lag_seconds: Option<f64> = sqlx::query_scalar(
            "SELECT GREATEST(EXTRACT(EPOCH FROM now() - created_at), 0)::float8
             FROM outbox ORDER BY id LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        // GREATEST skips NULLs, so a rack that never sent a heartbeat needs
        // the CASE to report no age rather than 0 s.
        let racks = sqlx::query(
            "SELECT rack_id,
                    CASE WHEN last_heartbeat IS NOT NULL
                         THEN GREATEST(EXTRACT(EPOCH FROM now() - last_heartbeat), 0)::float8
                    END AS age
             FROM racks ORDER BY rack_id LIMIT $1",
        )
        .bind(MAX_RACKS)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| Ok((r.try_get("rack_id")?, r.try_get("age")?)))
        .collect::<Result<Vec<_>>>()?;
        let dead_letters: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
            .fetch_one(&self.pool)
            .await?;
        Ok(FleetSnapshot {
            live_jobs,
            outbox_lag_seconds: outbox_lag_seconds.unwrap_or(0.0),
            racks,
            dead_letters,
        })
    }
}
