//! Cards in doubt: a job failed after it may have written its new
//! credentials to the chip, so the card is `in_doubt` and the credentials
//! stay escrowed (`pending`). An operator either runs the job again (this
//! module: the same job, with the same credentials, goes back to `queued`;
//! the engine finds its journal on the chip and completes it) or resets the
//! chip with the escrowed PUK (see [`Store::read_puk`]).

use uuid::Uuid;

use super::audit::JobTransition;
use super::{AuditRows, Result, Store, StoreError, on_backend};
use crate::domain::{CardState, JobState};

/// Audit action of a job an operator ran again.
pub const RERUN: &str = "job.rerun";

/// The job an in-doubt card's credentials belong to: (job, batch, rack).
pub(super) type DoubtfulJob = (Uuid, Uuid, Option<String>);

pub(super) fn rerun_audit(card_id: Uuid, job_id: Uuid, batch_id: Uuid) -> AuditRows {
    let mut audit = AuditRows::default();
    audit.push_job(
        RERUN,
        JobTransition {
            job_id,
            card_id,
            batch_id,
            from: Some(JobState::Failed.as_str()),
            to: JobState::Queued.as_str(),
            card_state: Some(CardState::Initializing.as_str()),
        },
        Some(serde_json::json!({ "from_card_state": CardState::InDoubt.as_str() })),
    );
    audit
}

impl Store {
    /// Runs the job of an `in_doubt` card again with the same credentials:
    /// the job goes back to `queued` with a new outbox row and the card to
    /// `initializing`. Returns the job's id. `NotFound` when the card is not
    /// in doubt (or its job has no rack to go to).
    pub async fn rerun_in_doubt(&self, card_id: Uuid, actor: &str) -> Result<Uuid> {
        on_backend!(self, s => s.rerun_in_doubt(card_id, actor).await)
    }
}

super::dialect::for_each_dialect! {
    impl Db {
        pub(in crate::store) async fn rerun_in_doubt(
            &self,
            card_id: Uuid,
            actor: &str,
        ) -> Result<Uuid> {
            let mut tx = self.write().await?;
            // The job whose credentials are escrowed for the card; the card
            // row is locked first, as initializing a card does.
            let row = sqlx::query(concat!(
                "SELECT j.id, j.batch_id, j.rack_id
                   FROM cards c
                   JOIN credentials cr ON cr.card_id = c.id AND cr.status = 'pending'
                   JOIN jobs j ON j.id = cr.job_id AND j.state = 'failed'
                  WHERE c.id = $1 AND c.state = 'in_doubt'
                  ORDER BY cr.created_at DESC LIMIT 1",
                d::for_update_of!("c, j")
            ))
            .bind(d::id(card_id))
            .fetch_optional(&mut *tx)
            .await?;
            let row: Option<DoubtfulJob> = row
                .map(|r| Ok::<_, sqlx::Error>((r.uuid("id")?, r.uuid("batch_id")?, r.try_get("rack_id")?)))
                .transpose()?;
            let Some((job_id, batch_id, Some(rack_id))) = row else {
                return Err(StoreError::NotFound);
            };
            sqlx::query(concat!(
                "UPDATE jobs SET state = 'queued', reason = NULL, updated_at = ",
                d::now!(),
                " WHERE id = $1"
            ))
            .bind(d::id(job_id))
            .execute(&mut *tx)
            .await?;
            sqlx::query(concat!(
                "UPDATE cards SET state = 'initializing', state_reason = NULL, updated_at = ",
                d::now!(),
                " WHERE id = $1"
            ))
            .bind(d::id(card_id))
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO outbox (job_id, rack_id) VALUES ($1, $2)")
                .bind(d::id(job_id))
                .bind(&rack_id)
                .execute(&mut *tx)
                .await?;
            d::insert_audit(&mut tx, rerun_audit(card_id, job_id, batch_id), actor).await?;
            self.commit_waking(tx).await?;
            Ok(job_id)
        }
    }
}
