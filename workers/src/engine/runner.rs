//! The step runner: runs the engine's steps in their fixed order against one card, times
//! each one, turns its outcome into a [`StepReport`], and keeps what the steps learn
//! (journal, capabilities, which management key the card holds) for the steps after it.

use std::time::Instant;

use cardfleet_schemas::{Failure, Outcome, Requirement, StepReport, StepStatus};
use zeroize::Zeroizing;

use super::capabilities::{Capabilities, Counter};
use super::credentials::{Reference, Secret};
use super::error::{EngineError, FailureCode};
use super::journal::{JOURNAL_TAG, Journal, Mark};
use super::mgmt::MgmtKey;
use super::objects;
use super::session::Session;
use super::{CardTransport, EncodeReport, EncodeRequest};
use crate::apdu::StatusWord;

/// What a step reports when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StepOutcome {
    Done(Option<String>),
    AlreadyDone(Option<String>),
    Unsupported(String),
    NotRequested,
}

impl StepOutcome {
    /// Whether the card now has what the step is about.
    pub(crate) fn in_effect(&self) -> bool {
        matches!(self, Self::Done(_) | Self::AlreadyDone(_))
    }
}

/// The request's credentials, parsed once: new and transport PIN, PUK and management key.
pub(crate) struct Prepared {
    pub pin: Secret,
    pub puk: Secret,
    pub transport_pin: Secret,
    pub transport_puk: Secret,
    pub new_key: MgmtKey,
    pub transport_key: MgmtKey,
}

impl Prepared {
    /// Checks the request before anything is sent; messages name the field, never a value.
    fn from_request(request: &EncodeRequest<'_>) -> Result<Self, EngineError> {
        let invalid = |what: &str| EngineError::refused(FailureCode::InvalidRequest, what);
        if request.chip_serial.is_empty() {
            return Err(invalid("the request names no chip serial"));
        }
        let secret = |value: &str, what: &str| {
            Secret::parse(value).ok_or_else(|| {
                invalid(&format!("{what} must be 6 to 8 printable ASCII characters"))
            })
        };
        let transport = &request.profile.transport;
        let key = |hex_value: &str,
                   algorithm: cardfleet_schemas::profile::ManagementKeyAlgorithm,
                   what: &str| {
            let bytes = Zeroizing::new(hex::decode(hex_value).unwrap_or_default());
            MgmtKey::new(algorithm, &bytes).ok_or_else(|| {
                invalid(&format!(
                    "{what} must be {} bytes of hex for {}",
                    algorithm.key_len(),
                    algorithm.as_str()
                ))
            })
        };
        Ok(Self {
            pin: secret(&request.secrets.pin, "the new PIN")?,
            puk: secret(&request.secrets.puk, "the new PUK")?,
            transport_pin: secret(&transport.pin, "the transport PIN")?,
            transport_puk: secret(&transport.puk, "the transport PUK")?,
            new_key: key(
                &request.secrets.management_key,
                request.secrets.management_key_algorithm,
                "the per-card management key",
            )?,
            transport_key: key(
                &transport.management_key,
                transport.management_key_algorithm,
                "the transport management key",
            )?,
        })
    }

    /// The transport and the new value of the PIN or the PUK.
    pub(crate) fn values(&self, reference: Reference) -> (&Secret, &Secret) {
        match reference {
            Reference::Pin => (&self.transport_pin, &self.pin),
            Reference::Puk => (&self.transport_puk, &self.puk),
        }
    }
}

/// One encoding attempt in progress.
pub(crate) struct Runner<'r, 'c> {
    pub session: Session<'c>,
    pub request: &'r EncodeRequest<'r>,
    cancelled: &'r dyn Fn() -> bool,
    pub prepared: Prepared,
    steps: Vec<StepReport>,
    /// This job's journal as it is on the card or the worker (`None`: none of ours).
    pub journal: Option<Journal>,
    /// Where the journal is written: the card, or the worker's keeper once the card
    /// refused the journal object.
    pub journal_on_worker: bool,
    /// The per-card key authenticated but no journal of this job was found (the card keeps
    /// none and another worker, or a lost disk, had it): PIN and PUK are in an unknown
    /// state and are checked like an interrupted change.
    pub unjournaled_resume: bool,
    pub caps: Capabilities,
    /// PIN tries left, when the card said.
    pub pin_remaining: Option<u8>,
    /// PUK retry counter, when the card has GET METADATA.
    pub puk_counter: Option<Counter>,
    /// The management key the card holds and we authenticated with.
    pub current_key: Option<MgmtKey>,
    /// Whether `current_key` is the per-card key of this job.
    pub new_key_on_card: bool,
    /// Whether the CHUID and CCC of this job are on the card.
    pub chuid_in_effect: bool,
    pub ccc_in_effect: bool,
    /// Public keys of the key pairs generated (or found) in this attempt.
    pub public_keys: Vec<cardfleet_schemas::GeneratedPublicKey>,
}

impl<'r, 'c> Runner<'r, 'c> {
    /// Runs every step and reports; see the module documentation of `engine` for the order.
    pub(crate) fn encode(
        request: &'r EncodeRequest<'r>,
        card: &'c mut dyn CardTransport,
        cancelled: &'r dyn Fn() -> bool,
    ) -> EncodeReport {
        let mut steps = Vec::new();
        let prepared = timed(&mut steps, "check_request", || {
            Prepared::from_request(request).map(|p| (p, StepOutcome::Done(None)))
        });
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(error) => return report(Err(error), steps, 0),
        };
        let mut runner = Runner {
            session: Session::new(card),
            request,
            cancelled,
            prepared,
            steps,
            journal: None,
            journal_on_worker: false,
            unjournaled_resume: false,
            caps: Capabilities::default(),
            pin_remaining: None,
            puk_counter: None,
            current_key: None,
            new_key_on_card: false,
            chuid_in_effect: false,
            ccc_in_effect: false,
            public_keys: Vec::new(),
        };
        let result = runner.run();
        let apdus = runner.session.apdus();
        let mut report = report(result, runner.steps, apdus);
        report.public_keys = runner.public_keys;
        report
    }

    fn run(&mut self) -> Result<(), EngineError> {
        let request = self.request;
        self.step("select", Self::select)?;
        self.step("identify", Self::identify)?;
        self.step("read_journal", Self::read_journal)?;
        self.step("probe", Self::probe)?;
        self.step("check_pin", Self::check_pin)?;
        self.step("authenticate", Self::authenticate)?;
        self.stop_if_cancelled()?;
        self.step("set_retries", Self::set_retries)?;
        self.step("set_management_key", Self::set_management_key)?;
        self.step("change_pin", |r| r.change(Reference::Pin))?;
        self.step("change_puk", |r| r.change(Reference::Puk))?;
        for spec in &request.profile.keys {
            let name = format!("generate_key_{:02x}", spec.slot.id());
            self.step(&name, |r| r.generate_key(&name, spec))?;
        }
        self.chuid_in_effect = self.step("write_chuid", Self::write_chuid)?.in_effect();
        self.ccc_in_effect = self.step("write_ccc", Self::write_ccc)?.in_effect();
        self.step("verify", Self::verify)?;
        Ok(())
    }

    /// The one cancellation point, before the first write. It takes effect only when this
    /// job has written nothing to the card in any attempt: no journal of its own and not
    /// its per-card management key (set just before a pull, unjournaled). Otherwise the job
    /// finishes so that the card is not left half initialized.
    fn stop_if_cancelled(&self) -> Result<(), EngineError> {
        if self.journal.is_none() && !self.new_key_on_card && (self.cancelled)() {
            return Err(EngineError::refused(
                FailureCode::Cancelled,
                "cancelled before anything was written to the card",
            ));
        }
        Ok(())
    }

    /// Runs one step, timing it and recording its report (the failed one included).
    fn step(
        &mut self,
        name: &str,
        body: impl FnOnce(&mut Self) -> Result<StepOutcome, EngineError>,
    ) -> Result<StepOutcome, EngineError> {
        let mut steps = std::mem::take(&mut self.steps);
        let result = timed(&mut steps, name, || {
            body(self).map(|outcome| (outcome.clone(), outcome))
        });
        self.steps = steps;
        result
    }

    /// Whether this job's journal marks the step done.
    pub(crate) fn journal_done(&self, mark: Mark) -> bool {
        self.journal.as_ref().is_some_and(|j| j.is_done(mark))
    }

    /// Whether this job's journal has the step begun but not confirmed.
    pub(crate) fn journal_intent(&self, mark: Mark) -> bool {
        self.journal.as_ref().is_some_and(|j| j.has_intent(mark))
    }

    /// Applies a change to the journal and writes it to the card, unless nothing changed.
    /// The first write claims the card for this job.
    pub(crate) fn record(&mut self, change: impl FnOnce(&mut Journal)) -> Result<(), EngineError> {
        let mut next = self
            .journal
            .clone()
            .unwrap_or_else(|| Journal::new(self.request.job_id));
        change(&mut next);
        if self.journal.as_ref() == Some(&next) {
            return Ok(());
        }
        if self.journal_on_worker {
            self.keep(&next)?;
            self.journal = Some(next);
            return Ok(());
        }
        const NAME: &str = "PUT DATA journal";
        match objects::put_data(&mut self.session, NAME, JOURNAL_TAG, &next.encode())? {
            StatusWord::Success => {
                self.journal = Some(next);
                Ok(())
            }
            sw if objects::is_capability_refusal(sw) || sw == StatusWord::NotFound => {
                if self.request.journal_keeper.is_none() {
                    return Err(EngineError::refused(
                        FailureCode::JournalUnsupported,
                        format!(
                            "the card refuses the journal object {JOURNAL_TAG} ({sw}) and the \
                             worker keeps no journal (worker.journal_dir)"
                        ),
                    ));
                }
                tracing::debug!(%sw, "card refuses the journal object; journaling on the worker");
                self.keep(&next)?;
                self.journal_on_worker = true;
                self.journal = Some(next);
                Ok(())
            }
            sw => Err(EngineError::status(NAME, sw)),
        }
    }

    /// Writes the journal to the worker's keeper.
    fn keep(&self, journal: &Journal) -> Result<(), EngineError> {
        let keeper = self.request.journal_keeper.ok_or_else(|| {
            EngineError::refused(
                FailureCode::JournalUnsupported,
                "the worker keeps no journal",
            )
        })?;
        keeper
            .store(self.request.chip_serial, &journal.encode())
            .map_err(|e| EngineError::refused(FailureCode::JournalStoreFailed, e.to_string()))
    }

    /// Deletes the journal from the card (an empty `53` removes a PIV object).
    pub(crate) fn delete_journal(&mut self) -> Result<(), EngineError> {
        if self.journal_on_worker {
            if let Some(keeper) = self.request.journal_keeper {
                keeper.remove(self.request.chip_serial).map_err(|e| {
                    EngineError::refused(FailureCode::JournalStoreFailed, e.to_string())
                })?;
            }
            self.journal = None;
            return Ok(());
        }
        const NAME: &str = "PUT DATA journal (delete)";
        match objects::put_data(&mut self.session, NAME, JOURNAL_TAG, &[0x53, 0x00])? {
            StatusWord::Success | StatusWord::NotFound => {
                self.journal = None;
                Ok(())
            }
            sw => Err(EngineError::status(NAME, sw)),
        }
    }
}

/// What an unsupported step becomes under its requirement: reported and skipped when
/// optional, a job failure naming the step when required.
pub(crate) fn unsupported(
    step: &str,
    requirement: Requirement,
    detail: impl Into<String>,
) -> Result<StepOutcome, EngineError> {
    let detail = detail.into();
    match requirement {
        Requirement::Optional => Ok(StepOutcome::Unsupported(detail)),
        Requirement::Skip => Ok(StepOutcome::NotRequested),
        Requirement::Required => Err(EngineError::refused(
            FailureCode::UnsupportedStep,
            format!("required step {step} is not supported by the card: {detail}"),
        )),
    }
}

fn timed<T>(
    steps: &mut Vec<StepReport>,
    name: &str,
    body: impl FnOnce() -> Result<(T, StepOutcome), EngineError>,
) -> Result<T, EngineError> {
    let started = Instant::now();
    let result = body();
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (status, detail) = match &result {
        Ok((_, StepOutcome::Done(detail))) => (StepStatus::Done, detail.clone()),
        Ok((_, StepOutcome::AlreadyDone(detail))) => (StepStatus::AlreadyDone, detail.clone()),
        Ok((_, StepOutcome::Unsupported(detail))) => {
            (StepStatus::Unsupported, Some(detail.clone()))
        }
        Ok((_, StepOutcome::NotRequested)) => (StepStatus::NotRequested, None),
        Err(error) => (StepStatus::Failed, Some(error.to_string())),
    };
    tracing::debug!(
        step = name,
        ?status,
        duration_ms,
        detail = detail.as_deref(),
        "encoding step"
    );
    steps.push(StepReport {
        step: name.to_owned(),
        status,
        duration_ms,
        detail,
    });
    result.map(|(value, _)| value)
}

fn report(result: Result<(), EngineError>, steps: Vec<StepReport>, apdus: usize) -> EncodeReport {
    match result {
        Ok(()) => {
            tracing::debug!(apdus, "card encoded");
            EncodeReport {
                outcome: Outcome::Succeeded,
                failure: None,
                retryable: false,
                steps,
                public_keys: Vec::new(),
            }
        }
        Err(error) => {
            let code = error.code();
            let outcome = if code == FailureCode::Cancelled {
                Outcome::Cancelled
            } else {
                Outcome::Failed
            };
            // Logged at debug: the runtime that handles the report logs the failure once.
            tracing::debug!(code = code.as_str(), %error, apdus, "encoding failed");
            EncodeReport {
                outcome,
                failure: Some(Failure {
                    code: code.as_str().to_owned(),
                    message: error.to_string(),
                    card_unusable: error.card_unusable(),
                }),
                retryable: error.retryable(),
                steps,
                public_keys: Vec::new(),
            }
        }
    }
}
