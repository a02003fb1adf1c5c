//! The steps that change credentials: retry counters, the per-card management key, PIN and
//! PUK, each journaled so that a redelivered job knows what is set without guessing; and
//! the rollback to transport credentials when the card refuses the new PIN or PUK format.

use cardfleet_schemas::profile::{ManagementKeyAlgorithm, Requirement};

use super::credentials::{self, Check, Reference};
use super::error::{EngineError, FailureCode};
use super::journal::Mark;
use super::mgmt::{self, ALL_ALGORITHMS, SetKeyOutcome};
use super::runner::{Runner, StepOutcome, unsupported};
use super::session::command_no_le;
use crate::apdu::StatusWord;
use crate::piv_ids::ins;

const SET_RETRIES: &str = "set_retries";
const SET_MANAGEMENT_KEY: &str = "set_management_key";

impl Runner<'_, '_> {
    /// SET PIN RETRIES (`FA`). On YubiKey-compatible cards it also resets PIN and PUK to
    /// their factory values, which the profile names as transport values; so it runs before
    /// the PIN and PUK change and never once the journal shows that work began.
    pub(crate) fn set_retries(&mut self) -> Result<StepOutcome, EngineError> {
        let Some(policy) = self.request.profile.retries.clone() else {
            return Ok(StepOutcome::NotRequested);
        };
        if policy.requirement == Requirement::Skip {
            return Ok(StepOutcome::NotRequested);
        }
        let wanted = format!("PIN {} tries, PUK {} tries", policy.pin, policy.puk);
        if self.journal_done(Mark::Retries) {
            return Ok(StepOutcome::AlreadyDone(Some(wanted)));
        }
        let extension_missing = "the card has no SET PIN RETRIES extension";
        if !self.caps.extensions {
            return unsupported(SET_RETRIES, policy.requirement, extension_missing);
        }
        if self.unjournaled_resume
            || self
                .journal
                .as_ref()
                .is_some_and(|j| j.pin_or_puk_touched())
        {
            return unsupported(
                SET_RETRIES,
                policy.requirement,
                "PIN or PUK changes already began and setting retry counters would reset them",
            );
        }
        // The card wants the PIN verified; no PIN work began, so it is the transport PIN.
        let transport_pin = self.prepared.transport_pin.clone();
        match credentials::verify_pin(&mut self.session, &transport_pin)? {
            Check::Accepted => {}
            Check::Wrong { retries } => {
                return Err(EngineError::refused(
                    FailureCode::TransportPinRejected,
                    format!("the card rejects the transport PIN ({retries})"),
                ));
            }
            Check::Blocked => {
                return Err(EngineError::refused(
                    FailureCode::PinBlocked,
                    "the PIN is blocked",
                ));
            }
            Check::FormatRefused => {
                return Err(EngineError::refused(
                    FailureCode::TransportPinRejected,
                    "the card refuses the transport PIN's format",
                ));
            }
        }
        const NAME: &str = "SET PIN RETRIES";
        let apdu = command_no_le(NAME, ins::SET_PIN_RETRIES, policy.pin, policy.puk, &[])?;
        match self.session.transmit(NAME, apdu)?.sw() {
            StatusWord::Success => {}
            StatusWord::InsNotSupported | StatusWord::FunctionNotSupported => {
                return unsupported(SET_RETRIES, policy.requirement, extension_missing);
            }
            sw => return Err(EngineError::status(NAME, sw)),
        }
        self.pin_remaining = Some(policy.pin);
        if let Some(counter) = self.puk_counter.as_mut() {
            counter.limit = policy.puk;
            counter.remaining = policy.puk;
        }
        self.record(|j| j.finish(Mark::Retries))?;
        Ok(StepOutcome::Done(Some(wanted)))
    }

    /// SET MANAGEMENT KEY (`FF`) with the job's algorithm, falling back along the profile's
    /// list when the card refuses one. Already done when the per-card key authenticated.
    pub(crate) fn set_management_key(&mut self) -> Result<StepOutcome, EngineError> {
        let request = self.request;
        let policy = &request.profile.management_key;
        if policy.requirement == Requirement::Skip {
            return Ok(StepOutcome::NotRequested);
        }
        if self.new_key_on_card {
            let algorithm = self.current_key.as_ref().map(|k| k.algorithm());
            if !self.journal_done(Mark::ManagementKey) {
                self.record(|j| {
                    j.finish(Mark::ManagementKey);
                    if let Some(algorithm) = algorithm {
                        j.set_mgmt_algorithm(algorithm);
                    }
                })?;
            }
            return Ok(StepOutcome::AlreadyDone(
                algorithm.map(|a| a.as_str().to_owned()),
            ));
        }
        let extension_missing = "the card has no SET MANAGEMENT KEY extension";
        if !self.caps.extensions {
            return unsupported(SET_MANAGEMENT_KEY, policy.requirement, extension_missing);
        }
        let order: Vec<ManagementKeyAlgorithm> =
            std::iter::once(request.secrets.management_key_algorithm)
                .chain(std::iter::once(policy.algorithm))
                .chain(policy.fallback.iter().copied())
                .collect();
        let mut refused = Vec::new();
        let new_key = self.prepared.new_key.clone();
        for key in new_key.candidates(&order) {
            let algorithm = key.algorithm();
            match mgmt::set_key(&mut self.session, &key)? {
                SetKeyOutcome::Set => {
                    self.current_key = Some(key);
                    self.new_key_on_card = true;
                    self.record(|j| {
                        j.finish(Mark::ManagementKey);
                        j.set_mgmt_algorithm(algorithm);
                    })?;
                    let detail = if refused.is_empty() {
                        algorithm.as_str().to_owned()
                    } else {
                        format!(
                            "{} (the card refused {})",
                            algorithm.as_str(),
                            refused.join(", ")
                        )
                    };
                    return Ok(StepOutcome::Done(Some(detail)));
                }
                SetKeyOutcome::Refused(_) => refused.push(algorithm.as_str()),
                SetKeyOutcome::NoExtension => {
                    return unsupported(SET_MANAGEMENT_KEY, policy.requirement, extension_missing);
                }
            }
        }
        let tried = if refused.is_empty() {
            "no algorithm of the key's length".to_owned()
        } else {
            refused.join(", ")
        };
        unsupported(
            SET_MANAGEMENT_KEY,
            policy.requirement,
            format!("the card takes none of the management key algorithms tried: {tried}"),
        )
    }

    /// CHANGE REFERENCE DATA from the transport to the new value, with the journal's
    /// intent written before and done after. In the crash window (intent, no done) one
    /// check with the new value tells which value is set; see the `engine` module docs.
    pub(crate) fn change(&mut self, reference: Reference) -> Result<StepOutcome, EngineError> {
        let mark = mark_of(reference);
        if self.journal_done(mark) {
            return Ok(StepOutcome::AlreadyDone(None));
        }
        let mut detail = None;
        if self.journal_intent(mark) || self.unjournaled_resume {
            if self.confirm_new(reference)? {
                self.record(|j| j.finish(mark))?;
                return Ok(StepOutcome::AlreadyDone(Some(
                    "an interrupted change had reached the card; one check confirmed it".to_owned(),
                )));
            }
            detail = Some(
                "an interrupted change had not reached the card; the check that found out cost \
                 one try, which the change restored"
                    .to_owned(),
            );
        } else {
            self.record(|j| j.begin(mark))?;
        }
        let (old, new) = self.prepared.values(reference);
        let (old, new) = (old.clone(), new.clone());
        match credentials::change(&mut self.session, reference, &old, &new)? {
            Check::Accepted => {
                if reference == Reference::Pin {
                    self.pin_remaining = None;
                }
                self.record(|j| j.finish(mark))?;
                Ok(StepOutcome::Done(detail))
            }
            Check::Wrong { retries } => {
                self.record(|j| j.abandon(mark))?;
                Err(EngineError::refused(
                    match reference {
                        Reference::Pin => FailureCode::TransportPinRejected,
                        Reference::Puk => FailureCode::TransportPukRejected,
                    },
                    format!(
                        "the card rejects the transport {} ({retries})",
                        reference.label()
                    ),
                ))
            }
            Check::Blocked => Err(blocked(reference)),
            Check::FormatRefused => Err(self.format_refused(reference)),
        }
    }

    /// The crash window: is the new value set? Spends one VERIFY (PIN) or one CHANGE
    /// REFERENCE DATA new → new (PUK, which has no VERIFY) only while at least two tries
    /// are left, so that finding out can never block the reference.
    fn confirm_new(&mut self, reference: Reference) -> Result<bool, EngineError> {
        let remaining = match reference {
            Reference::Pin => self.pin_remaining,
            Reference::Puk => self.puk_counter.map(|c| c.remaining),
        };
        if let Some(remaining) = remaining.filter(|r| *r <= 1) {
            let label = reference.label();
            return Err(EngineError::refused(
                FailureCode::PinStateUnknown,
                format!(
                    "a {label} change was interrupted and {remaining} try is left: not risking \
                     a block to find out which {label} is set"
                ),
            ));
        }
        let new = self.prepared.values(reference).1.clone();
        let check = match reference {
            Reference::Pin => credentials::verify_pin(&mut self.session, &new)?,
            Reference::Puk => credentials::change(&mut self.session, reference, &new, &new)?,
        };
        match check {
            Check::Accepted => Ok(true),
            Check::Wrong { retries } => {
                match reference {
                    Reference::Pin => self.pin_remaining = retries.0.or(self.pin_remaining),
                    Reference::Puk => {
                        if let (Some(counter), Some(retries)) =
                            (self.puk_counter.as_mut(), retries.0)
                        {
                            counter.remaining = retries;
                        }
                    }
                }
                Ok(false)
            }
            Check::Blocked => Err(blocked(reference)),
            Check::FormatRefused => Err(self.format_refused(reference)),
        }
    }

    /// The card refuses the new value's format (`6A80`, no try used). The card goes back to
    /// its transport credentials and loses the journal, so a later job with other values
    /// can initialize it.
    fn format_refused(&mut self, reference: Reference) -> EngineError {
        let label = reference.label();
        let (code, numeric) = match reference {
            Reference::Pin => (
                FailureCode::PinFormatUnsupported,
                self.prepared.pin.is_numeric(),
            ),
            Reference::Puk => (
                FailureCode::PukFormatUnsupported,
                self.prepared.puk.is_numeric(),
            ),
        };
        let hint = if numeric {
            ""
        } else {
            " (it is not numeric and the card may take digits only)"
        };
        let restored = match self.rollback() {
            Ok(()) => "the card was returned to its transport credentials".to_owned(),
            Err(error) => {
                format!("returning the card to its transport credentials failed: {error}")
            }
        };
        EngineError::refused(
            code,
            format!("the card refuses the new {label}'s format{hint}; {restored}"),
        )
    }

    /// Best effort: PIN back to the transport value, management key back to the transport
    /// key, journal deleted.
    fn rollback(&mut self) -> Result<(), EngineError> {
        if self.journal_done(Mark::Pin) {
            let (transport, new) = self.prepared.values(Reference::Pin);
            let (transport, new) = (transport.clone(), new.clone());
            match credentials::change(&mut self.session, Reference::Pin, &new, &transport)? {
                Check::Accepted => {}
                other => {
                    return Err(EngineError::malformed(
                        "CHANGE REFERENCE DATA PIN",
                        format!("restoring the transport PIN: {other:?}"),
                    ));
                }
            }
        }
        if self.new_key_on_card {
            let transport = self.prepared.transport_key.clone();
            let order: Vec<_> = std::iter::once(transport.algorithm())
                .chain(ALL_ALGORITHMS)
                .collect();
            let mut restored = false;
            for key in transport.candidates(&order) {
                if mgmt::set_key(&mut self.session, &key)? == SetKeyOutcome::Set {
                    self.current_key = Some(key);
                    self.new_key_on_card = false;
                    restored = true;
                    break;
                }
            }
            if !restored {
                return Err(EngineError::malformed(
                    "SET MANAGEMENT KEY",
                    "the card refuses the transport key",
                ));
            }
        }
        self.delete_journal()
    }
}

fn mark_of(reference: Reference) -> Mark {
    match reference {
        Reference::Pin => Mark::Pin,
        Reference::Puk => Mark::Puk,
    }
}

fn blocked(reference: Reference) -> EngineError {
    match reference {
        Reference::Pin => EngineError::refused(FailureCode::PinBlocked, "the PIN is blocked"),
        Reference::Puk => EngineError::refused(FailureCode::PukBlocked, "the PUK is blocked"),
    }
}
