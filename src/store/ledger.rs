//! Applying what workers report: results move jobs, cards and credentials in
//! one transaction per batch of messages; duplicates and stale results change
//! nothing. Dead letters are recorded for inspection.

use std::collections::HashMap;

use cardfleet_schemas::{EncodeResult, Outcome, ResultMessage, StepStatus};
use uuid::Uuid;

use super::audit::JobTransition;
use super::{AuditRows, Result, Store, on_backend};
use crate::domain::{CardState, JobState};

/// What became of one result message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The job moved.
    Changed,
    /// Already applied or overtaken (redelivery, late "started"): nothing changed.
    Unchanged,
    /// No such job: the message belongs in the dead letters.
    UnknownJob,
}

/// A job a result names, as read (and, on PostgreSQL, locked) in the
/// applying transaction.
#[derive(Debug)]
pub(super) struct JobRow {
    pub card_id: Uuid,
    pub batch_id: Uuid,
    pub state: JobState,
    /// An operator asked to cancel the job after it left for a rack.
    pub cancel_requested: bool,
}

/// The net change per job of a run of results, as column arrays.
#[derive(Debug, Default)]
pub(super) struct Changes {
    pub job_id: Vec<Uuid>,
    pub job_state: Vec<&'static str>,
    pub reason: Vec<Option<String>>,
    pub steps: Vec<Option<serde_json::Value>>,
    pub card_id: Vec<Uuid>,
    pub card_state: Vec<Option<&'static str>>,
    pub credential_status: Vec<Option<&'static str>>,
}

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

/// The reason a job shows when its result arrived after an operator asked
/// to cancel it: the card is encoded and keeps its credentials.
pub const FINISHED_BEFORE_CANCEL: &str = "finished before the cancel reached it";

/// The engine's steps that only read the card, in its fixed order; every
/// other step may write to it.
const READING_STEPS: [&str; 7] = [
    "check_request",
    "select",
    "identify",
    "read_journal",
    "probe",
    "check_pin",
    "authenticate",
];

/// What `read_journal` reports when the card holds this job's own journal:
/// an earlier attempt of the job began to write.
const RESUMING: &str = "resuming this job";

/// Failure codes of a write step the card refused outright: the step
/// failed, but nothing of it reached the chip.
const REFUSED_UNWRITTEN: [&str; 6] = [
    "unsupported_step",
    "transport_pin_rejected",
    "transport_puk_rejected",
    "pin_format_unsupported",
    "puk_format_unsupported",
    "management_key_unknown",
];

/// Failure code of a job the broker gave up on at its delivery limit: a
/// worker may have written to the card before it stopped answering.
pub const DEAD_LETTERED: &str = "dead_lettered";

/// Whether a failed job's chip may hold its new credentials: a step that
/// writes was reached (done, or failed half-way), the card carries this
/// job's journal from an earlier attempt, or the broker gave up on the job
/// without a word from the card. Such a card is `in_doubt`, never revoked.
pub fn may_hold_new_credentials(r: &EncodeResult) -> bool {
    if r.outcome != Outcome::Failed {
        return false;
    }
    let code = r.failure.as_ref().map_or("", |f| f.code.as_str());
    if r.steps.is_empty() {
        return code == DEAD_LETTERED;
    }
    r.steps.iter().any(|s| {
        if s.step == "read_journal" {
            return s.detail.as_deref().is_some_and(|d| d.starts_with(RESUMING));
        }
        !READING_STEPS.contains(&s.step.as_str())
            && match s.status {
                StepStatus::Done | StepStatus::AlreadyDone => true,
                // Interrupted or answered unexpectedly: the write may have landed.
                StepStatus::Failed => !REFUSED_UNWRITTEN.contains(&code),
                StepStatus::Unsupported | StepStatus::NotRequested => false,
            }
    })
}

/// The card's next state and the credentials' status after a final outcome.
/// A chip that may hold the new credentials keeps them escrowed (`pending`).
fn card_after(outcome: Outcome, card_unusable: bool, may_hold: bool) -> (CardState, &'static str) {
    match outcome {
        Outcome::Succeeded => (CardState::Unassigned, "active"),
        Outcome::Failed if may_hold => (CardState::InDoubt, "pending"),
        Outcome::Failed if card_unusable => (CardState::Failed, "revoked"),
        Outcome::Failed | Outcome::Cancelled => (CardState::Produced, "revoked"),
    }
}

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

/// Folds result messages, in order, over the jobs they name: which apply
/// (the state machine allows the move), the net change per job and the
/// audit row of every move.
pub(super) fn fold_results(
    messages: &[ResultMessage],
    mut jobs: HashMap<Uuid, JobRow>,
) -> (Vec<Applied>, Changes, AuditRows) {
    let mut outcomes = Vec::with_capacity(messages.len());
    let mut changes: HashMap<Uuid, usize> = HashMap::new();
    let mut c = Changes::default();
    let mut audit = AuditRows::default();
    for message in messages {
        let job_id = message.job_id();
        let Some(job) = jobs.get_mut(&job_id) else {
            outcomes.push(Applied::UnknownJob);
            continue;
        };
        let (to, reason, steps, card, creds, detail) = match message {
            ResultMessage::JobStarted(m) => (
                JobState::Encoding,
                None,
                None,
                None,
                None,
                serde_json::json!({ "rack_id": m.rack_id, "slot": m.slot, "worker_id": m.worker_id }),
            ),
            ResultMessage::EncodeResult(r) => {
                let unusable = r.failure.as_ref().is_some_and(|f| f.card_unusable);
                let (card, creds) = card_after(r.outcome, unusable, may_hold_new_credentials(r));
                let to = match r.outcome {
                    Outcome::Succeeded => JobState::Succeeded,
                    Outcome::Failed => JobState::Failed,
                    Outcome::Cancelled => JobState::Cancelled,
                };
                let reason = match (&r.failure, r.outcome) {
                    (Some(f), _) => Some(format!("{}: {}", f.code, f.message)),
                    (None, Outcome::Succeeded) if job.cancel_requested => {
                        Some(FINISHED_BEFORE_CANCEL.to_owned())
                    }
                    (None, _) => None,
                };
                let steps = serde_json::to_value(&r.steps).ok();
                let mut detail = serde_json::json!({
                    "rack_id": r.rack_id, "slot": r.slot, "worker_id": r.worker_id,
                    "failure_code": r.failure.as_ref().map(|f| f.code.clone()),
                });
                if job.cancel_requested {
                    detail["cancel_requested"] = true.into();
                }
                (to, reason, steps, Some(card), Some(creds), detail)
            }
        };
        if !job.state.can_become(to) {
            outcomes.push(Applied::Unchanged);
            continue;
        }
        audit.push_job(
            if to == JobState::Encoding {
                "job.started"
            } else {
                "job.finished"
            },
            JobTransition {
                job_id,
                card_id: job.card_id,
                batch_id: job.batch_id,
                from: Some(job.state.as_str()),
                to: to.as_str(),
                card_state: card.map(CardState::as_str),
            },
            Some(detail),
        );
        job.state = to;
        let i = *changes.entry(job_id).or_insert_with(|| {
            c.job_id.push(job_id);
            c.job_state.push(to.as_str());
            c.reason.push(None);
            c.steps.push(None);
            c.card_id.push(job.card_id);
            c.card_state.push(None);
            c.credential_status.push(None);
            c.job_id.len() - 1
        });
        c.job_state[i] = to.as_str();
        if reason.is_some() {
            c.reason[i] = reason;
        }
        if steps.is_some() {
            c.steps[i] = steps;
        }
        if card.is_some() {
            c.card_state[i] = card.map(CardState::as_str);
            c.credential_status[i] = creds;
        }
        outcomes.push(Applied::Changed);
    }

    (outcomes, c, audit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_card_states() {
        assert_eq!(
            card_after(Outcome::Succeeded, false, false),
            (CardState::Unassigned, "active")
        );
        assert_eq!(
            card_after(Outcome::Failed, true, false),
            (CardState::Failed, "revoked")
        );
        assert_eq!(
            card_after(Outcome::Failed, false, false),
            (CardState::Produced, "revoked")
        );
        assert_eq!(
            card_after(Outcome::Cancelled, false, false),
            (CardState::Produced, "revoked")
        );
        assert_eq!(
            card_after(Outcome::Failed, false, true),
            (CardState::InDoubt, "pending")
        );
        assert_eq!(
            card_after(Outcome::Failed, true, true),
            (CardState::InDoubt, "pending")
        );
    }

    fn step(name: &str, status: StepStatus, detail: Option<&str>) -> cardfleet_schemas::StepReport {
        cardfleet_schemas::StepReport {
            step: name.into(),
            status,
            duration_ms: 1.0,
            detail: detail.map(str::to_owned),
        }
    }

    fn failed(code: &str, steps: Vec<cardfleet_schemas::StepReport>) -> EncodeResult {
        EncodeResult {
            meta: cardfleet_schemas::Meta::now(),
            job_id: Uuid::now_v7(),
            batch_id: Uuid::now_v7(),
            card_id: Uuid::now_v7(),
            rack_id: "rack-1".into(),
            slot: Some(1),
            worker_id: "w".into(),
            outcome: Outcome::Failed,
            failure: Some(cardfleet_schemas::Failure {
                code: code.into(),
                message: "m".into(),
                card_unusable: false,
            }),
            steps,
            attempts: 1,
            started_at: chrono::Utc::now(),
            finished_at: chrono::Utc::now(),
            public_keys: Vec::new(),
        }
    }

    #[test]
    fn a_failure_after_a_write_step_may_leave_new_credentials_on_the_chip() {
        use StepStatus::{Done, Failed};
        let reads = || {
            vec![
                step("select", Done, None),
                step("identify", Done, None),
                step("read_journal", Done, Some("no journal on the card")),
                step("probe", Done, None),
                step("check_pin", Done, None),
                step("authenticate", Done, None),
            ]
        };
        let mut verify = reads();
        verify.push(step("set_management_key", Done, None));
        verify.push(step("change_pin", Done, None));
        verify.push(step("verify", Failed, None));
        assert!(may_hold_new_credentials(&failed(
            "verification_failed",
            verify
        )));

        let mut half = reads();
        half.push(step("set_retries", Failed, None));
        assert!(may_hold_new_credentials(&failed("unexpected_status", half)));

        // The broker gave up: nobody knows what a worker wrote.
        assert!(may_hold_new_credentials(&failed(DEAD_LETTERED, vec![])));

        // An earlier attempt of this job wrote its journal.
        let resumed = vec![
            step("select", Done, None),
            step("identify", Done, None),
            step("read_journal", Done, Some("resuming this job: pin done")),
            step("probe", Failed, None),
        ];
        assert!(may_hold_new_credentials(&failed("card_removed", resumed)));
    }

    #[test]
    fn a_failure_before_any_write_leaves_the_chip_untouched() {
        use StepStatus::{Done, Failed};
        let mut before = vec![
            step("select", Done, None),
            step("identify", Done, None),
            step("read_journal", Done, Some("no journal on the card")),
        ];
        before.push(step("probe", Failed, None));
        assert!(!may_hold_new_credentials(&failed(
            "unexpected_status",
            before
        )));
        let mismatch = vec![step("select", Done, None), step("identify", Failed, None)];
        assert!(!may_hold_new_credentials(&failed(
            "chip_serial_mismatch",
            mismatch
        )));
        assert!(!may_hold_new_credentials(&failed(
            "secrets_unopenable",
            vec![]
        )));
        // The card refused the first write step outright.
        let refused = vec![
            step("authenticate", Done, None),
            step("set_retries", Failed, None),
        ];
        assert!(!may_hold_new_credentials(&failed(
            "unsupported_step",
            refused
        )));
        let mut ok = failed("x", vec![step("verify", Done, None)]);
        ok.outcome = Outcome::Succeeded;
        ok.failure = None;
        assert!(!may_hold_new_credentials(&ok));
    }
}
