//! Recovery after a restart of standalone mode, whose in-process bus does
//! not outlive the process: jobs the previous run had put on the bus
//! (dispatched, or being encoded) go back to `queued` with a new outbox
//! row, so the dispatcher publishes them again. Their stored credentials are
//! unchanged, so a card that was finished before the stop is found done by
//! the engine's journal and reports success with the same PIN and PUK.
//!
//! This is a recovery action, not a transition of the state machine: in
//! fleet mode RabbitMQ keeps unacknowledged jobs and this is never called.

use uuid::Uuid;

use super::audit::JobTransition;
use super::{AuditRows, Result, Store, on_backend};
use crate::domain::JobState;

/// Audit action of a re-dispatched job.
pub const REDISPATCHED: &str = "job.redispatched";

/// States of the jobs a restart puts back into the outbox.
pub const IN_FLIGHT: [JobState; 2] = [JobState::Dispatched, JobState::Encoding];

/// One job found in flight: (job, card, batch, state before).
pub(super) type InFlight = (Uuid, Uuid, Uuid, String);

/// The audit rows of re-dispatched jobs.
pub(super) fn redispatch_audit(jobs: &[InFlight]) -> AuditRows {
    let mut audit = AuditRows::default();
    for (job_id, card_id, batch_id, state) in jobs {
        let from = IN_FLIGHT
            .iter()
            .find(|s| s.as_str() == state)
            .map(|s| s.as_str());
        audit.push_job(
            REDISPATCHED,
            JobTransition {
                job_id: *job_id,
                card_id: *card_id,
                batch_id: *batch_id,
                from,
                to: JobState::Queued.as_str(),
                card_state: None,
            },
            Some(serde_json::json!({ "reason": "the bus did not survive a restart" })),
        );
    }
    audit
}

impl Store {
    /// Puts every dispatched or encoding job back into the outbox; returns
    /// how many. Only for standalone mode's start (see the module docs).
    pub async fn redispatch_in_flight(&self, actor: &str) -> Result<usize> {
        on_backend!(self, s => s.redispatch_in_flight(actor).await)
    }
}

super::dialect::for_each_dialect! {
    impl Db {
        pub(in crate::store) async fn redispatch_in_flight(&self, actor: &str) -> Result<usize> {
            let mut tx = self.write().await?;
            let rows = sqlx::query(concat!(
                "SELECT id, card_id, batch_id, state, rack_id FROM jobs
                 WHERE state IN ('dispatched', 'encoding') AND rack_id IS NOT NULL
                 ORDER BY id",
                d::for_update!()
            ))
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                return Ok(0);
            }
            let mut jobs: Vec<InFlight> = Vec::with_capacity(rows.len());
            let mut requeue: Vec<(Uuid, String)> = Vec::with_capacity(rows.len());
            for r in &rows {
                let job_id = r.uuid("id")?;
                jobs.push((job_id, r.uuid("card_id")?, r.uuid("batch_id")?, r.try_get("state")?));
                requeue.push((job_id, r.try_get("rack_id")?));
            }
            d::requeue_jobs(&mut tx, &requeue).await?;
            d::insert_audit(&mut tx, redispatch_audit(&jobs), actor).await?;
            self.commit_waking(tx).await?;
            Ok(jobs.len())
        }
    }
}
