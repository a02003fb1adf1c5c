//! Applying what workers report: results move jobs, cards and credentials in
//! one transaction per batch of messages; duplicates and stale results change
//! nothing. Dead letters are recorded for inspection.

use std::collections::HashMap;

use cardfleet_schemas::ResultMessage;
use uuid::Uuid;

use super::{AuditRows, Result, Store, on_backend};
use crate::domain::results;

/// A dead letter to record; built by [`DeadLetter::new`].
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub source: String,
    pub reason: String,
    pub message_id: Option<String>,
    /// Readable, redacted and bounded view of the message.
    pub payload: String,
    /// The message byte-exact (a job's secrets removed).
    pub raw: Vec<u8>,
    /// Recording is idempotent on this key.
    pub content_key: String,
}

pub use crate::domain::failures::{DEAD_LETTERED, may_hold_new_credentials};
pub use crate::domain::results::{Applied, FINISHED_BEFORE_CANCEL};
pub(super) use crate::domain::results::{Changes, JobRow};

impl Store {
    /// Applies result messages in order, all in one transaction.
    pub async fn apply_results(
        &self,
        messages: &[ResultMessage],
        actor: &str,
    ) -> Result<Vec<Applied>> {
        on_backend!(self, s => s.apply_results(messages, actor).await)
    }

    /// Records dead letters once each (by content key) and returns the
    /// sources of those not recorded before.
    pub async fn record_dead_letters(&self, letters: &[DeadLetter]) -> Result<Vec<String>> {
        if letters.is_empty() {
            return Ok(Vec::new());
        }
        on_backend!(self, s => s.record_dead_letters(letters).await)
    }
}

/// The jobs the results name, sorted and without repeats: the order rows are
/// locked in, so appliers and dispatchers never deadlock.
pub(super) fn result_job_ids(messages: &[ResultMessage]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = messages.iter().map(ResultMessage::job_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Folds result messages over the jobs they name ([`results::fold`]) and
/// collects the audit row of every move.
pub(super) fn fold_results(
    messages: &[ResultMessage],
    jobs: HashMap<Uuid, JobRow>,
) -> (Vec<Applied>, Changes, AuditRows) {
    let (outcomes, changes, moves) = results::fold(messages, jobs);
    let mut audit = AuditRows::default();
    for m in moves {
        audit.push_job(m.action, m.transition, Some(m.detail));
    }
    (outcomes, changes, audit)
}

super::dialect::for_each_dialect! {
    impl Db {
        pub(in crate::store) async fn apply_results(
            &self,
            messages: &[ResultMessage],
            actor: &str,
        ) -> Result<Vec<Applied>> {
            let ids = result_job_ids(messages);
            let mut tx = self.write().await?;
            let rows = sqlx::query(concat!(
                "SELECT id, card_id, batch_id, state, cancel_requested_at IS NOT NULL AS cancel_requested
                 FROM jobs WHERE id ",
                d::in_list!("$1"),
                " ORDER BY id",
                d::for_update!()
            ))
            .bind(d::ids(&ids))
            .fetch_all(&mut *tx)
            .await?;
            let mut jobs: HashMap<Uuid, JobRow> = HashMap::with_capacity(rows.len());
            for r in rows {
                let state: String = r.try_get("state")?;
                jobs.insert(
                    r.uuid("id")?,
                    JobRow {
                        card_id: r.uuid("card_id")?,
                        batch_id: r.uuid("batch_id")?,
                        state: crate::domain::JobState::parse(&state)
                            .unwrap_or(crate::domain::JobState::Failed),
                        cancel_requested: r.try_get("cancel_requested")?,
                    },
                );
            }
            let (outcomes, c, audit) = fold_results(messages, jobs);
            if !c.job_id.is_empty() {
                d::save_result_changes(&mut tx, &c).await?;
            }
            d::insert_audit(&mut tx, audit, actor).await?;
            tx.commit().await?;
            Ok(outcomes)
        }

        pub(in crate::store) async fn record_dead_letters(
            &self,
            letters: &[DeadLetter],
        ) -> Result<Vec<String>> {
            let mut tx = self.write().await?;
            let inserted = d::insert_dead_letters(&mut tx, letters).await?;
            tx.commit().await?;
            Ok(inserted)
        }
    }
}
