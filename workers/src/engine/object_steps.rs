//! The steps that personalize the card once its credentials are set: key pairs, CHUID and
//! CCC, and the final verification of everything that was written.

use cardfleet_schemas::profile::{KeyAlgorithm, KeySpec, Requirement};

use super::credentials::{self, Check};
use super::error::{EngineError, FailureCode};
use super::journal::Mark;
use super::mgmt::{self, AuthOutcome};
use super::objects;
use super::runner::{Runner, StepOutcome, unsupported};
use super::session::command;
use crate::apdu::StatusWord;
use crate::piv_ids::{ins, tag};
use crate::tlv::{self, Tag};

fn algorithm_name(algorithm: KeyAlgorithm) -> &'static str {
    match algorithm {
        KeyAlgorithm::P256 => "p256",
        KeyAlgorithm::P384 => "p384",
        KeyAlgorithm::Rsa2048 => "rsa2048",
    }
}

impl Runner<'_, '_> {
    /// GENERATE ASYMMETRIC KEY PAIR. Journaled as done afterwards; a key generated just
    /// before the card was pulled is generated again, which is harmless before the card is
    /// issued.
    pub(crate) fn generate_key(
        &mut self,
        step: &str,
        spec: &KeySpec,
    ) -> Result<StepOutcome, EngineError> {
        if spec.requirement == Requirement::Skip {
            return Ok(StepOutcome::NotRequested);
        }
        let name = algorithm_name(spec.algorithm);
        let mark = Mark::Key(spec.slot);
        if self.journal_done(mark) {
            // The card generated the key in an earlier attempt; GET METADATA shows it again
            // where the card has it.
            let shown = self.public_key_from_metadata(spec)?;
            let detail = if shown {
                name.to_owned()
            } else {
                format!("{name}; the card cannot show the public key again")
            };
            return Ok(StepOutcome::AlreadyDone(Some(detail)));
        }
        const NAME: &str = "GENERATE ASYMMETRIC KEY PAIR";
        let template = tlv::build(
            tag::KEY_CRT,
            &tlv::build(Tag::new(0x80), &[spec.algorithm.piv_id()]),
        );
        let apdu = command(
            NAME,
            ins::GENERATE_ASYMMETRIC_KEY_PAIR,
            0x00,
            spec.slot.id(),
            &template,
        )?;
        let response = self.session.transmit(NAME, apdu)?;
        match response.sw() {
            StatusWord::Success => {
                let objects = tlv::parse_single(response.data(), tag::PUBLIC_KEY)
                    .map_err(|e| EngineError::malformed(NAME, e))?;
                let spki = super::public_keys::spki_der(spec.algorithm, objects)
                    .map_err(|e| EngineError::malformed(NAME, e))?;
                self.public_keys
                    .push(super::public_keys::report(spec.slot, spec.algorithm, &spki));
            }
            sw if objects::is_capability_refusal(sw) => {
                return unsupported(
                    step,
                    spec.requirement,
                    format!(
                        "the card does not generate {name} keys in slot {:02x}: {sw}",
                        spec.slot.id()
                    ),
                );
            }
            sw => return Err(EngineError::status(NAME, sw)),
        }
        self.record(|j| j.finish(mark))?;
        Ok(StepOutcome::Done(Some(name.to_owned())))
    }

    /// GET METADATA of a key slot (`04`: the public key objects) into the report; whether
    /// the card showed it.
    fn public_key_from_metadata(&mut self, spec: &KeySpec) -> Result<bool, EngineError> {
        if !self.caps.metadata {
            return Ok(false);
        }
        let Some(metadata) = super::capabilities::metadata(&mut self.session, spec.slot.id())?
        else {
            return Ok(false);
        };
        let Ok(Some(objects)) = tlv::find(&metadata, Tag::new(0x04)) else {
            return Ok(false);
        };
        match super::public_keys::spki_der(spec.algorithm, objects) {
            Ok(spki) => {
                self.public_keys
                    .push(super::public_keys::report(spec.slot, spec.algorithm, &spki));
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// PUT DATA CHUID with the GUID derived from the job id; already done when the card's
    /// CHUID carries that GUID.
    pub(crate) fn write_chuid(&mut self) -> Result<StepOutcome, EngineError> {
        let requirement = self.request.profile.chuid;
        if requirement == Requirement::Skip {
            return Ok(StepOutcome::NotRequested);
        }
        let guid = objects::chuid_guid(self.request.job_id);
        let detail = Some(format!("GUID {}", hex::encode_upper(guid)));
        let current = objects::get_data(&mut self.session, "GET DATA CHUID", tag::CHUID)?;
        if current.as_deref().and_then(objects::guid_of_chuid) == Some(guid) {
            return Ok(StepOutcome::AlreadyDone(detail));
        }
        let chuid = objects::chuid(self.request.job_id);
        match objects::put_data(&mut self.session, "PUT DATA CHUID", tag::CHUID, &chuid)? {
            StatusWord::Success => Ok(StepOutcome::Done(detail)),
            sw if objects::is_capability_refusal(sw) => unsupported(
                "write_chuid",
                requirement,
                format!("the card does not store a CHUID: {sw}"),
            ),
            sw => Err(EngineError::status("PUT DATA CHUID", sw)),
        }
    }

    /// PUT DATA CCC; already done when the card holds exactly this job's CCC.
    pub(crate) fn write_ccc(&mut self) -> Result<StepOutcome, EngineError> {
        let requirement = self.request.profile.ccc;
        if requirement == Requirement::Skip {
            return Ok(StepOutcome::NotRequested);
        }
        let ccc = objects::ccc(self.request.job_id);
        let current = objects::get_data(&mut self.session, "GET DATA CCC", tag::CCC)?;
        if current.as_deref() == Some(ccc.as_slice()) {
            return Ok(StepOutcome::AlreadyDone(None));
        }
        match objects::put_data(&mut self.session, "PUT DATA CCC", tag::CCC, &ccc)? {
            StatusWord::Success => Ok(StepOutcome::Done(None)),
            sw if objects::is_capability_refusal(sw) => unsupported(
                "write_ccc",
                requirement,
                format!("the card does not store a CCC: {sw}"),
            ),
            sw => Err(EngineError::status("PUT DATA CCC", sw)),
        }
    }

    /// VERIFY the new PIN, read back CHUID and CCC, and authenticate with the management key
    /// the card should now hold.
    pub(crate) fn verify(&mut self) -> Result<StepOutcome, EngineError> {
        let failed = |what: String| EngineError::refused(FailureCode::VerificationFailed, what);
        let pin = self.prepared.pin.clone();
        match credentials::verify_pin(&mut self.session, &pin)? {
            Check::Accepted => {}
            Check::Wrong { retries } => {
                return Err(failed(format!("the new PIN does not verify ({retries})")));
            }
            Check::Blocked => {
                return Err(EngineError::refused(
                    FailureCode::PinBlocked,
                    "the PIN is blocked",
                ));
            }
            Check::FormatRefused => {
                return Err(failed("the card refuses the new PIN's format".to_owned()));
            }
        }
        let mut checked = vec!["PIN"];
        if self.chuid_in_effect {
            let chuid = objects::get_data(&mut self.session, "GET DATA CHUID", tag::CHUID)?;
            let guid = objects::chuid_guid(self.request.job_id);
            if chuid.as_deref().and_then(objects::guid_of_chuid) != Some(guid) {
                return Err(failed(
                    "the CHUID read back does not carry this job's GUID".to_owned(),
                ));
            }
            checked.push("CHUID");
        }
        if self.ccc_in_effect {
            let ccc = objects::get_data(&mut self.session, "GET DATA CCC", tag::CCC)?;
            if ccc != Some(objects::ccc(self.request.job_id)) {
                return Err(failed(
                    "the CCC read back differs from what was written".to_owned(),
                ));
            }
            checked.push("CCC");
        }
        if let Some(key) = self.current_key.clone() {
            let which = if self.new_key_on_card {
                "per-card"
            } else {
                "transport"
            };
            if mgmt::authenticate(&mut self.session, &key)? != AuthOutcome::Authenticated {
                return Err(failed(format!(
                    "the {which} management key no longer authenticates"
                )));
            }
            checked.push(if self.new_key_on_card {
                "per-card management key"
            } else {
                "transport management key"
            });
        }
        Ok(StepOutcome::Done(Some(format!(
            "checked {}",
            checked.join(", ")
        ))))
    }
}
