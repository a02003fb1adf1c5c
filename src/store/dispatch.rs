//! The outbox side of dispatching: claim rows with everything a job message
//! needs, then, after the broker confirmed them, delete them and mark the
//! jobs dispatched in the same transaction.

use std::collections::HashSet;

use cardfleet_schemas::ControlMessage;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::audit::JobTransition;
use super::{AuditRows, Result, Store, on_backend, postgres, sqlite};
use crate::credentials::Sealed;
use crate::domain::JobState;

/// One claimed outbox row joined with its job, card and credentials.
#[derive(Debug)]
pub struct OutboxJob {
    pub outbox_id: i64,
    pub rack_id: String,
    pub job_id: Uuid,
    pub batch_id: Uuid,
    pub card_id: Uuid,
    pub card_number: String,
    pub chip_serial: String,
    pub profile: String,
    /// Version of the management-key KDF of the card (1 or 2).
    pub management_key_kdf: i16,
    pub key_id: String,
    pub pin: Sealed,
    pub puk: Sealed,
}

/// What keeps other dispatchers off claimed rows until `finish` or drop:
/// row locks of an open PostgreSQL transaction, or SQLite's claim lock.
#[derive(Debug)]
pub(super) enum ClaimHold {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(sqlite::ClaimLock),
}

/// Rows claimed by one dispatcher round; they stay claimed until `finish` or drop.
#[derive(Debug)]
pub struct Claim {
    pub(super) hold: ClaimHold,
    pub jobs: Vec<OutboxJob>,
    /// Outbox rows whose job is no longer queued (e.g. cancelled): deleted on finish.
    pub(super) stale: Vec<i64>,
}

/// Claimed control messages (cancellations, slot releases) waiting to be broadcast.
#[derive(Debug)]
pub struct ControlClaim {
    pub(super) hold: ClaimHold,
    pub messages: Vec<(i64, ControlMessage)>,
    pub(super) undecodable: Vec<i64>,
}

impl Store {
    /// Claims up to `limit` outbox rows, skipping rows another dispatcher holds.
    pub async fn claim_outbox(&self, limit: i64) -> Result<Claim> {
        on_backend!(self, s => s.claim_outbox(limit).await)
    }

    pub async fn claim_control_outbox(&self, limit: i64) -> Result<ControlClaim> {
        on_backend!(self, s => s.claim_control_outbox(limit).await)
    }
}

/// Sorts claimed rows into jobs to publish and stale rows to delete.
pub(super) fn sort_claimed(rows: Vec<(OutboxJob, String)>) -> (Vec<OutboxJob>, Vec<i64>) {
    let mut jobs = Vec::with_capacity(rows.len());
    let mut stale = Vec::new();
    for (job, state) in rows {
        if state == JobState::Queued.as_str() {
            jobs.push(job);
        } else {
            stale.push(job.outbox_id);
        }
    }
    (jobs, stale)
}

/// Decodes claimed control rows; rows that never decode are deleted unsent.
pub(super) fn decode_control(
    rows: Vec<(i64, serde_json::Result<ControlMessage>)>,
) -> (Vec<(i64, ControlMessage)>, Vec<i64>) {
    let mut messages = Vec::new();
    let mut undecodable = Vec::new();
    for (id, payload) in rows {
        match payload {
            Ok(m) => messages.push((id, m)),
            Err(_) => undecodable.push(id),
        }
    }
    (messages, undecodable)
}

/// The audit rows of the jobs that moved from queued to dispatched.
pub(super) fn dispatched_audit(jobs: &[OutboxJob], moved: &HashSet<Uuid>) -> AuditRows {
    let mut audit = AuditRows::default();
    for job in jobs.iter().filter(|j| moved.contains(&j.job_id)) {
        audit.push_job(
            "job.dispatched",
            JobTransition {
                job_id: job.job_id,
                card_id: job.card_id,
                batch_id: job.batch_id,
                from: Some(JobState::Queued.as_str()),
                to: JobState::Dispatched.as_str(),
                card_state: None,
            },
            Some(serde_json::json!({ "rack_id": job.rack_id })),
        );
    }
    audit
}

impl Claim {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.stale.is_empty()
    }

    /// Records that the jobs at `published` (indexes into `jobs`) are on the
    /// broker; the rest stay in the outbox for the next round.
    pub async fn finish(self, published: &[usize], actor: &str) -> Result<usize> {
        let mut outbox_ids = self.stale.clone();
        let mut job_ids = Vec::with_capacity(published.len());
        for &i in published {
            let Some(job) = self.jobs.get(i) else {
                continue;
            };
            outbox_ids.push(job.outbox_id);
            job_ids.push(job.job_id);
        }
        match self.hold {
            ClaimHold::Postgres(tx) => {
                postgres::finish_claim(tx, &outbox_ids, &job_ids, &self.jobs, actor).await?;
            }
            ClaimHold::Sqlite(lock) => {
                lock.finish_claim(&outbox_ids, &job_ids, &self.jobs, actor)
                    .await?;
            }
        }
        Ok(job_ids.len())
    }
}

impl ControlClaim {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.undecodable.is_empty()
    }

    /// Deletes the broadcast rows (and any that could never be decoded).
    pub async fn finish(self) -> Result<()> {
        let mut ids = self.undecodable.clone();
        ids.extend(self.messages.iter().map(|(id, _)| *id));
        match self.hold {
            ClaimHold::Postgres(tx) => postgres::finish_control_claim(tx, &ids).await,
            ClaimHold::Sqlite(lock) => lock.finish_control_claim(&ids).await,
        }
    }
}
