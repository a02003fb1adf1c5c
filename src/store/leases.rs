//! Rack leases (fleet mode): a rack that sent no heartbeat for the lease
//! time may have stopped mid-card, so the control plane cannot know what
//! its cards hold. Its `dispatched` and `encoding` jobs are marked
//! (`jobs.lease_expired_at`) for an operator, keep their state, and their
//! cards keep the escrowed credentials. Nothing is revoked or retried from
//! here: when the rack comes back the broker redelivers the job, the engine
//! resumes by the card's journal, and the result the ledger applies wins
//! and clears the mark.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{AuditRows, Result, Store, on_backend};

/// Audit action of a job whose rack's lease ran out.
pub const LEASE_EXPIRED: &str = "job.lease_expired";

/// A job just marked: (job, card, batch, job state, rack).
pub(super) type ExpiredJob = (Uuid, Uuid, Uuid, String, String);

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseSweep {
    /// Jobs marked by this sweep.
    pub newly_expired: u64,
    /// Live jobs marked now, this sweep's and earlier ones' (the gauge).
    pub awaiting_rack: i64,
}

/// The audit rows of the jobs just marked: no transition (the job keeps
/// its state), so they stay out of a batch's transition stream.
pub(super) fn expired_audit(jobs: &[ExpiredJob], lease: Duration) -> AuditRows {
    let mut audit = AuditRows::default();
    for (job_id, card_id, batch_id, state, rack) in jobs {
        audit.push_access(
            LEASE_EXPIRED,
            (Some(*card_id), Some(*job_id), Some(*batch_id)),
            serde_json::json!({
                "rack_id": rack,
                "job_state": state,
                "lease_seconds": lease.as_secs(),
            }),
        );
    }
    audit
}

impl Store {
    /// Marks the `dispatched` and `encoding` jobs of every rack whose last
    /// heartbeat is older than `lease` (or that never sent one while the
    /// job waited that long), with an audit row each, and counts the live
    /// jobs marked. Jobs another transaction holds are left for the next
    /// sweep rather than waited for.
    pub async fn expire_leases(&self, lease: Duration, actor: &str) -> Result<LeaseSweep> {
        on_backend!(self, s => s.expire_leases(lease, actor).await)
    }

    /// When each of `job_ids` that is marked was marked.
    pub async fn lease_marks(&self, job_ids: &[Uuid]) -> Result<HashMap<Uuid, DateTime<Utc>>> {
        if job_ids.is_empty() {
            return Ok(HashMap::new());
        }
        on_backend!(self, s => s.lease_marks(job_ids).await)
    }

    /// Live jobs of a batch waiting for a rack whose lease ran out.
    pub async fn batch_awaiting_rack(&self, batch_id: Uuid) -> Result<i64> {
        on_backend!(self, s => s.batch_awaiting_rack(batch_id).await)
    }
}

super::dialect::for_each_dialect! {
    impl Db {
        pub(in crate::store) async fn expire_leases(
            &self,
            lease: Duration,
            actor: &str,
        ) -> Result<LeaseSweep> {
            let mut tx = self.write().await?;
            // The heartbeat is read by a subquery, not a join, so only the
            // job rows are locked (PostgreSQL refuses to lock the nullable
            // side of an outer join).
            let rows = sqlx::query(concat!(
                "UPDATE jobs SET lease_expired_at = ",
                d::now!(),
                " WHERE id IN (
                    SELECT j.id FROM jobs j
                    WHERE j.state IN ('dispatched', 'encoding') AND j.lease_expired_at IS NULL
                      AND ",
                d::age_seconds!(
                    "COALESCE((SELECT r.last_heartbeat FROM racks r WHERE r.rack_id = j.rack_id),
                              j.updated_at)"
                ),
                " > $1",
                d::for_update_skip_locked!(),
                ")
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
            d::insert_audit(&mut tx, expired_audit(&expired, lease), actor).await?;
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
            let rows = sqlx::query(concat!(
                "SELECT id, lease_expired_at FROM jobs WHERE id ",
                d::in_list!("$1"),
                " AND lease_expired_at IS NOT NULL"
            ))
            .bind(d::ids(job_ids))
            .fetch_all(self.reader())
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
            .bind(d::id(batch_id))
            .fetch_one(self.reader())
            .await?)
        }
    }
}
