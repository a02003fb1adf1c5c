//! The outbox side of dispatching: claim rows with everything a job message
//! needs, then, after RabbitMQ confirmed them, delete them and mark the jobs
//! dispatched in the same transaction.

use cardfleet_schemas::ControlMessage;
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::audit::JobTransition;
use super::{AuditRows, Result, Store};
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
    pub key_id: String,
    pub pin: Sealed,
    pub puk: Sealed,
}

/// Rows claimed by one dispatcher round; the locks hold until `finish` or drop.
#[derive(Debug)]
pub struct Claim {
    tx: Transaction<'static, Postgres>,
    pub jobs: Vec<OutboxJob>,
    /// Outbox rows whose job is no longer queued (e.g. cancelled): deleted on finish.
    stale: Vec<i64>,
}

/// Claimed control messages (cancellations, slot releases) waiting to be broadcast.
#[derive(Debug)]
pub struct ControlClaim {
    tx: Transaction<'static, Postgres>,
    pub messages: Vec<(i64, ControlMessage)>,
    undecodable: Vec<i64>,
}

impl Store {
    /// Claims up to `limit` outbox rows, skipping rows another dispatcher holds.
    pub async fn claim_outbox(&self, limit: i64) -> Result<Claim> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT o.id AS outbox_id, o.rack_id, j.id AS job_id, j.batch_id, j.state,
                    c.id AS card_id, c.card_number, c.chip_serial, c.profile,
                    cr.key_id, cr.pin_nonce, cr.pin_ct, cr.puk_nonce, cr.puk_ct
             FROM outbox o
             JOIN jobs j ON j.id = o.job_id
             JOIN cards c ON c.id = j.card_id
             JOIN credentials cr ON cr.job_id = j.id
             ORDER BY o.id LIMIT $1
             FOR UPDATE OF o SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut jobs = Vec::with_capacity(rows.len());
        let mut stale = Vec::new();
        for r in rows {
            let outbox_id: i64 = r.try_get("outbox_id")?;
            let state: String = r.try_get("state")?;
            if state != JobState::Queued.as_str() {
                stale.push(outbox_id);
                continue;
            }
            jobs.push(OutboxJob {
                outbox_id,
                rack_id: r.try_get("rack_id")?,
                job_id: r.try_get("job_id")?,
                batch_id: r.try_get("batch_id")?,
                card_id: r.try_get("card_id")?,
                card_number: r.try_get("card_number")?,
                chip_serial: r.try_get("chip_serial")?,
                profile: r.try_get("profile")?,
                key_id: r.try_get("key_id")?,
                pin: Sealed {
                    nonce: r.try_get("pin_nonce")?,
                    ciphertext: r.try_get("pin_ct")?,
                },
                puk: Sealed {
                    nonce: r.try_get("puk_nonce")?,
                    ciphertext: r.try_get("puk_ct")?,
                },
            });
        }
        Ok(Claim { tx, jobs, stale })
    }

    pub async fn claim_control_outbox(&self, limit: i64) -> Result<ControlClaim> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(i64, serde_json::Value)> = sqlx::query_as(
            "SELECT id, payload FROM control_outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut messages = Vec::new();
        let mut undecodable = Vec::new();
        for (id, payload) in rows {
            match serde_json::from_value(payload) {
                Ok(m) => messages.push((id, m)),
                Err(_) => undecodable.push(id),
            }
        }
        Ok(ControlClaim {
            tx,
            messages,
            undecodable,
        })
    }
}

impl Claim {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.stale.is_empty()
    }

    /// Records that the jobs at `published` (indexes into `jobs`) are on the
    /// broker; the rest stay in the outbox for the next round.
    pub async fn finish(mut self, published: &[usize], actor: &str) -> Result<usize> {
        let mut outbox_ids = self.stale.clone();
        let mut job_ids = Vec::with_capacity(published.len());
        for &i in published {
            let Some(job) = self.jobs.get(i) else {
                continue;
            };
            outbox_ids.push(job.outbox_id);
            job_ids.push(job.job_id);
        }
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&outbox_ids)
            .execute(&mut *self.tx)
            .await?;
        // A job a fast worker already reported on keeps its newer state.
        // Rows are locked in id order, as the ledger locks them, so the two
        // never deadlock over jobs a fast worker already reported on.
        let moved: Vec<Uuid> = sqlx::query_scalar(
            "WITH locked AS (
                SELECT id FROM jobs WHERE id = ANY($1) AND state = 'queued' ORDER BY id FOR UPDATE
             )
             UPDATE jobs SET state = 'dispatched', updated_at = now()
             FROM locked WHERE jobs.id = locked.id RETURNING jobs.id",
        )
        .bind(&job_ids)
        .fetch_all(&mut *self.tx)
        .await?;
        let moved: std::collections::HashSet<Uuid> = moved.into_iter().collect();
        let mut audit = AuditRows::default();
        for job in self.jobs.iter().filter(|j| moved.contains(&j.job_id)) {
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
        audit.insert(&mut self.tx, actor).await?;
        self.tx.commit().await?;
        Ok(job_ids.len())
    }
}

impl ControlClaim {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.undecodable.is_empty()
    }

    /// Deletes the broadcast rows (and any that could never be decoded).
    pub async fn finish(mut self) -> Result<()> {
        let mut ids = self.undecodable.clone();
        ids.extend(self.messages.iter().map(|(id, _)| *id));
        sqlx::query("DELETE FROM control_outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await?;
        Ok(())
    }
}
