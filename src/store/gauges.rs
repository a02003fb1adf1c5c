//! The few cheap reads behind the control plane's gauges: live jobs per
//! state, outbox lag, each rack's last heartbeat and the stored dead letters.

use super::{Result, Store, on_backend};

/// Most racks the gauges report, so a flood of rack ids cannot blow up the
/// `rack` label; a real fleet has a few dozen.
pub const MAX_RACKS: i64 = 1000;

/// What the gauges show, read in one go.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetSnapshot {
    /// Jobs per live state; states without jobs are absent.
    pub live_jobs: Vec<(String, i64)>,
    /// Age of the oldest outbox row in seconds, 0 when the outbox is empty.
    pub outbox_lag_seconds: f64,
    /// Every known rack with the seconds since its last heartbeat, if any.
    pub racks: Vec<(String, Option<f64>)>,
    pub dead_letters: i64,
}

impl Store {
    /// Reads the snapshot with a few cheap queries that stay off the bulk of
    /// `jobs` (live jobs are counted through an index holding only them).
    pub async fn fleet_snapshot(&self) -> Result<FleetSnapshot> {
        on_backend!(self, s => s.fleet_snapshot().await)
    }
}

super::dialect::for_each_dialect! {
    impl Db {
        /// Every query stays off the bulk of `jobs`: the live states are
        /// counted through the partial index `jobs_one_live_per_card`, which
        /// holds only live jobs, and the outbox is read at its head.
        pub(in crate::store) async fn fleet_snapshot(&self) -> Result<FleetSnapshot> {
            let live_jobs: Vec<(String, i64)> = sqlx::query_as(
                "SELECT state, count(*) FROM jobs
                 WHERE state IN ('queued', 'awaiting_card', 'dispatched', 'encoding')
                 GROUP BY state",
            )
            .fetch_all(self.reader())
            .await?;
            let outbox_lag_seconds: Option<f64> = sqlx::query_scalar(concat!(
                "SELECT ",
                d::age_seconds!("created_at"),
                " FROM outbox ORDER BY id LIMIT 1"
            ))
            .fetch_optional(self.reader())
            .await?;
            let racks = sqlx::query(concat!(
                "SELECT rack_id, ",
                d::age_seconds!("last_heartbeat"),
                " AS age FROM racks ORDER BY rack_id LIMIT $1"
            ))
            .bind(MAX_RACKS)
            .fetch_all(self.reader())
            .await?
            .into_iter()
            .map(|r| Ok((r.try_get("rack_id")?, r.try_get("age")?)))
            .collect::<Result<Vec<_>>>()?;
            let dead_letters: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
                .fetch_one(self.reader())
                .await?;
            Ok(FleetSnapshot {
                live_jobs,
                outbox_lag_seconds: outbox_lag_seconds.unwrap_or(0.0),
                racks,
                dead_letters,
            })
        }
    }
}
