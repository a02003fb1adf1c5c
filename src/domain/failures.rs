//! Failure classification: which failed result may have left new
//! credentials on the chip, where each outcome sends the card and what
//! becomes of its credentials; and the one constructor of a failed result
//! that the control plane (not a worker) decides.

use cardfleet_schemas::{EncodeResult, Failure, Meta, Outcome, ResultMessage, StepStatus};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::CardState;

/// Failure code of a job the broker gave up on at its delivery limit: a
/// worker may have written to the card before it stopped answering.
pub const DEAD_LETTERED: &str = cardfleet_schemas::codes::Code::DeadLettered.as_str();

/// Failure code of a job whose rack has no enrolled key to seal its
/// secrets to; the dispatcher fails it before it leaves.
pub const RACK_NOT_ENROLLED: &str = cardfleet_schemas::codes::Code::RackNotEnrolled.as_str();

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

/// What becomes of a job's stored credentials when it finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialStatus {
    /// On the chip: the card is issued with them.
    Active,
    /// Kept in escrow: the chip may hold them (an in-doubt card).
    Pending,
    /// Never on the chip, or the chip is lost: they are destroyed.
    Revoked,
}

impl CredentialStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialStatus::Active => "active",
            CredentialStatus::Pending => "pending",
            CredentialStatus::Revoked => "revoked",
        }
    }
}

/// Where a final outcome sends the card and what becomes of the
/// credentials. A chip that may hold the new credentials keeps them
/// escrowed and the card is `in_doubt`, whatever else the failure says.
pub fn card_after(
    outcome: Outcome,
    card_unusable: bool,
    may_hold: bool,
) -> (CardState, CredentialStatus) {
    match outcome {
        Outcome::Succeeded => (CardState::Unassigned, CredentialStatus::Active),
        Outcome::Failed if may_hold => (CardState::InDoubt, CredentialStatus::Pending),
        Outcome::Failed if card_unusable => (CardState::Failed, CredentialStatus::Revoked),
        Outcome::Failed | Outcome::Cancelled => (CardState::Produced, CredentialStatus::Revoked),
    }
}

/// [`card_after`] for a whole result.
pub fn classify(r: &EncodeResult) -> (CardState, CredentialStatus) {
    let unusable = r.failure.as_ref().is_some_and(|f| f.card_unusable);
    card_after(r.outcome, unusable, may_hold_new_credentials(r))
}

/// The job a control-plane failure is about.
#[derive(Debug, Clone)]
pub struct FailedJob {
    pub job_id: Uuid,
    pub batch_id: Uuid,
    pub card_id: Uuid,
    pub rack_id: String,
    /// When the job was sent, or now when it never left.
    pub started_at: DateTime<Utc>,
}

/// The failed result of a job that the control plane (not a worker) ends:
/// `by` names the component (`dispatcher`, `broker`). It reports no step and
/// no slot; the card is never marked unusable by it, so [`classify`] sends
/// the card back to `produced`, or `in_doubt` for [`DEAD_LETTERED`].
pub fn failed_result(job: FailedJob, by: &str, code: &str, message: String) -> ResultMessage {
    ResultMessage::EncodeResult(EncodeResult {
        meta: Meta::now(),
        job_id: job.job_id,
        batch_id: job.batch_id,
        card_id: job.card_id,
        rack_id: job.rack_id,
        slot: None,
        worker_id: by.to_owned(),
        outcome: Outcome::Failed,
        failure: Some(Failure {
            code: code.to_owned(),
            message,
            card_unusable: false,
        }),
        steps: vec![],
        attempts: 0,
        started_at: job.started_at,
        finished_at: Utc::now(),
        public_keys: Vec::new(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use cardfleet_schemas::StepReport;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn outcomes_map_to_card_states() {
        use CredentialStatus::*;
        assert_eq!(
            card_after(Outcome::Succeeded, false, false),
            (CardState::Unassigned, Active)
        );
        assert_eq!(
            card_after(Outcome::Failed, true, false),
            (CardState::Failed, Revoked)
        );
        assert_eq!(
            card_after(Outcome::Failed, false, false),
            (CardState::Produced, Revoked)
        );
        assert_eq!(
            card_after(Outcome::Cancelled, false, false),
            (CardState::Produced, Revoked)
        );
        assert_eq!(
            card_after(Outcome::Failed, false, true),
            (CardState::InDoubt, Pending)
        );
        assert_eq!(
            card_after(Outcome::Failed, true, true),
            (CardState::InDoubt, Pending)
        );
    }

    pub(crate) fn step(name: &str, status: StepStatus, detail: Option<&str>) -> StepReport {
        StepReport {
            step: name.into(),
            status,
            duration_ms: 1.0,
            detail: detail.map(str::to_owned),
        }
    }

    pub(crate) fn failed(code: &str, steps: Vec<StepReport>) -> EncodeResult {
        EncodeResult {
            meta: Meta::now(),
            job_id: Uuid::now_v7(),
            batch_id: Uuid::now_v7(),
            card_id: Uuid::now_v7(),
            rack_id: "rack-1".into(),
            slot: Some(1),
            worker_id: "w".into(),
            outcome: Outcome::Failed,
            failure: Some(Failure {
                code: code.into(),
                message: "m".into(),
                card_unusable: false,
            }),
            steps,
            attempts: 1,
            started_at: Utc::now(),
            finished_at: Utc::now(),
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

    #[test]
    fn control_plane_failures_send_the_card_home_unless_the_broker_gave_up() {
        let job = || FailedJob {
            job_id: Uuid::now_v7(),
            batch_id: Uuid::now_v7(),
            card_id: Uuid::now_v7(),
            rack_id: "rack-1".into(),
            started_at: Utc::now(),
        };
        let ResultMessage::EncodeResult(r) =
            failed_result(job(), "dispatcher", RACK_NOT_ENROLLED, "m".into())
        else {
            panic!("a failed result is an encode result");
        };
        assert_eq!(r.outcome, Outcome::Failed);
        assert_eq!(r.worker_id, "dispatcher");
        assert_eq!(
            classify(&r),
            (CardState::Produced, CredentialStatus::Revoked)
        );
        let ResultMessage::EncodeResult(r) =
            failed_result(job(), "broker", DEAD_LETTERED, "m".into())
        else {
            panic!("a failed result is an encode result");
        };
        assert_eq!(
            classify(&r),
            (CardState::InDoubt, CredentialStatus::Pending)
        );
    }

    const STEPS: [&str; 12] = [
        "check_request",
        "select",
        "identify",
        "read_journal",
        "probe",
        "check_pin",
        "authenticate",
        "set_management_key",
        "change_pin",
        "change_puk",
        "set_retries",
        "verify",
    ];

    fn arb_status() -> impl Strategy<Value = StepStatus> {
        prop_oneof![
            Just(StepStatus::Done),
            Just(StepStatus::AlreadyDone),
            Just(StepStatus::Failed),
            Just(StepStatus::Unsupported),
            Just(StepStatus::NotRequested),
        ]
    }

    fn arb_result() -> impl Strategy<Value = EncodeResult> {
        let steps = prop::collection::vec(
            (
                0..STEPS.len(),
                arb_status(),
                prop::option::of(prop_oneof![
                    Just("resuming this job: pin done"),
                    Just("no journal on the card"),
                ]),
            ),
            0..8,
        );
        let codes = prop_oneof![
            Just(DEAD_LETTERED),
            Just("unsupported_step"),
            Just("unexpected_status"),
            Just("card_removed"),
            Just("chip_serial_mismatch"),
        ];
        let outcomes = prop_oneof![
            Just(Outcome::Succeeded),
            Just(Outcome::Failed),
            Just(Outcome::Cancelled),
        ];
        (steps, codes, outcomes, any::<bool>()).prop_map(|(steps, code, outcome, unusable)| {
            let steps = steps
                .into_iter()
                .map(|(i, status, detail)| step(STEPS[i], status, detail))
                .collect();
            let mut r = failed(code, steps);
            r.outcome = outcome;
            if let Some(f) = r.failure.as_mut() {
                f.card_unusable = unusable;
            }
            r
        })
    }

    proptest! {
        /// Credentials a chip may hold are never destroyed, and those of a
        /// card that is not issued never stay active.
        #[test]
        fn credentials_that_may_be_on_the_chip_are_never_revoked(r in arb_result()) {
            let (card, creds) = classify(&r);
            if may_hold_new_credentials(&r) {
                prop_assert_eq!(card, CardState::InDoubt);
                prop_assert_eq!(creds, CredentialStatus::Pending);
            }
            prop_assert_eq!(creds == CredentialStatus::Active, card == CardState::Unassigned);
            prop_assert_eq!(creds == CredentialStatus::Pending, card == CardState::InDoubt);
            // Wherever the card goes, it is a move the lifecycle allows.
            prop_assert!(CardState::Initializing.can_become(card));
        }

        /// Only a failure can leave a card in doubt.
        #[test]
        fn only_failures_are_in_doubt(r in arb_result()) {
            if r.outcome != Outcome::Failed {
                prop_assert!(!may_hold_new_credentials(&r));
                prop_assert_ne!(classify(&r).0, CardState::InDoubt);
            }
        }

        /// Read-only steps alone never put a card in doubt, however they end.
        #[test]
        fn reading_alone_never_puts_a_card_in_doubt(
            statuses in prop::collection::vec((0..READING_STEPS.len(), arb_status()), 1..8)
        ) {
            let steps = statuses
                .into_iter()
                .map(|(i, s)| step(READING_STEPS[i], s, None))
                .collect();
            prop_assert!(!may_hold_new_credentials(&failed("unexpected_status", steps)));
        }
    }
}
