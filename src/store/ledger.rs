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
