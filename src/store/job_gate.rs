//! The answer to a worker's take-time check (see `crate::services::job_gate`): which
//! of the jobs it took were cancelled, and which a worker already started.

use uuid::Uuid;

use super::{Result, Store, on_backend};
use crate::store::in_doubt::RERUN;
use crate::store::recovery::REDISPATCHED;

/// Audit actions after which a job may have been on a card before, even
/// though its state says it was not started (it was run again, or put back
/// on the bus after a restart).
pub(super) const RESTARTED: [&str; 2] = [RERUN, REDISPATCHED];

/// What the store says about the jobs a worker took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GateFacts {
    /// Cancelled, or their cancellation requested.
    pub cancelled: Vec<Uuid>,
    /// Reported started by a worker before (now or in an earlier run).
    pub started: Vec<Uuid>,
}

impl Store {
    /// Facts about `job_ids` of `rack_id`; jobs of other racks and unknown
    /// ids are left out, so a rack learns nothing about another's jobs.
    pub async fn job_gate_facts(&self, rack_id: &str, job_ids: &[Uuid]) -> Result<GateFacts> {
        if job_ids.is_empty() {
            return Ok(GateFacts::default());
        }
        let rows = on_backend!(self, s => s.job_gate_facts(rack_id, job_ids).await)?;
        let mut facts = GateFacts::default();
        for (id, cancelled, started) in rows {
            if cancelled {
                facts.cancelled.push(id);
            }
            if started {
                facts.started.push(id);
            }
        }
        Ok(facts)
    }
}

super::dialect::for_each_dialect! {
    impl Db {
        /// (job, cancelled, started) per job of the rack.
        pub(in crate::store) async fn job_gate_facts(
            &self,
            rack_id: &str,
            job_ids: &[Uuid],
        ) -> Result<Vec<(Uuid, bool, bool)>> {
            let rows = sqlx::query(concat!(
                "SELECT j.id,
                        (j.state = 'cancelled' OR j.cancel_requested_at IS NOT NULL) AS cancelled,
                        (j.state IN ('encoding', 'succeeded', 'failed')
                         OR EXISTS (SELECT 1 FROM audit a
                                    WHERE a.card_id = j.card_id AND a.job_id = j.id
                                      AND a.action ",
                d::in_list!("$3"),
                ")) AS started
                 FROM jobs j WHERE j.id ",
                d::in_list!("$1"),
                " AND j.rack_id = $2"
            ))
            .bind(d::ids(job_ids))
            .bind(rack_id)
            .bind(d::texts(&RESTARTED[..]))
            .fetch_all(self.reader())
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
}
