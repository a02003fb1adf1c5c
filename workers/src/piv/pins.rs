//! PIN and PUK: VERIFY, CHANGE REFERENCE DATA and RESET RETRY COUNTER with the retry counter
//! and blocking rules of SP 800-73-4.

use super::card::{CardResult, VirtualPivCard};
use super::command::VerifyAction;
use super::ids::key_ref;
use super::secrets::{REFERENCE_DATA_LEN, ReferenceData};
use crate::apdu::StatusWord;

/// Which reference data a command addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reference {
    Pin,
    Puk,
}

impl VirtualPivCard {
    /// VERIFY for the PIV application PIN (`80`).
    pub(super) fn verify(&mut self, reference: u8, action: VerifyAction<'_>) -> CardResult {
        if reference != key_ref::PIN {
            return Err(StatusWord::ReferenceDataNotFound);
        }
        match action {
            VerifyAction::Reset => {
                self.clear_pin_status();
                Ok(Vec::new())
            }
            VerifyAction::Status => {
                if self.state.pin_retries.is_blocked() {
                    Err(StatusWord::AuthenticationMethodBlocked)
                } else if self.session.pin_verified {
                    Ok(Vec::new())
                } else {
                    Err(StatusWord::VerificationFailed {
                        retries: self.state.pin_retries.remaining,
                    })
                }
            }
            VerifyAction::Check(data) => {
                let candidate = self.parse_reference(data)?;
                self.check(Reference::Pin, &candidate)?;
                self.session.pin_verified = true;
                self.session.pin_fresh = true;
                Ok(Vec::new())
            }
        }
    }

    /// CHANGE REFERENCE DATA for the PIN (`80`) or the PUK (`81`): old value then new value,
    /// eight bytes each.
    pub(super) fn change_reference_data(&mut self, reference: u8, data: &[u8]) -> CardResult {
        let reference = match reference {
            key_ref::PIN => Reference::Pin,
            key_ref::PUK => Reference::Puk,
            _ => return Err(StatusWord::ReferenceDataNotFound),
        };
        let (old, new) = self.parse_pair(data)?;
        match self.check(reference, &old) {
            Err(StatusWord::VerificationFailed { .. })
                if reference == Reference::Puk && !self.state.options.puk_reports_tries =>
            {
                return Err(StatusWord::Other(0x6300));
            }
            checked => checked?,
        }
        let state = self.state_mut();
        match reference {
            Reference::Pin => state.pin = new,
            Reference::Puk => state.puk = new,
        }
        if reference == Reference::Pin {
            self.session.pin_verified = true;
            self.session.pin_fresh = true;
        }
        Ok(Vec::new())
    }

    /// RESET RETRY COUNTER: the PUK then a new PIN; unblocks the PIN.
    pub(super) fn reset_retry_counter(&mut self, data: &[u8]) -> CardResult {
        let (puk, new_pin) = self.parse_pair(data)?;
        self.check(Reference::Puk, &puk)?;
        let state = self.state_mut();
        state.pin = new_pin;
        state.pin_retries.reset();
        Ok(Vec::new())
    }

    /// Compares reference data, counting a failure against the retry counter. A blocked
    /// reference is not compared at all.
    fn check(&mut self, reference: Reference, candidate: &ReferenceData) -> Result<(), StatusWord> {
        let blocked = match reference {
            Reference::Pin => self.state.pin_retries.is_blocked(),
            Reference::Puk => self.state.puk_retries.is_blocked(),
        };
        if blocked {
            return Err(StatusWord::AuthenticationMethodBlocked);
        }
        let matches = match reference {
            Reference::Pin => self.state.pin.matches(candidate),
            Reference::Puk => self.state.puk.matches(candidate),
        };
        let counter = match reference {
            Reference::Pin => self.state.pin_retries,
            Reference::Puk => self.state.puk_retries,
        };
        // Only touch persistent state when a counter really changes, so that routine
        // verifications cost no state save.
        if matches && counter.remaining == counter.limit {
            return Ok(());
        }
        let state = self.state_mut();
        let counter = match reference {
            Reference::Pin => &mut state.pin_retries,
            Reference::Puk => &mut state.puk_retries,
        };
        if matches {
            counter.reset();
            return Ok(());
        }
        let retries = counter.fail();
        if reference == Reference::Pin {
            self.clear_pin_status();
        }
        Err(StatusWord::VerificationFailed { retries })
    }

    fn parse_reference(&self, data: &[u8]) -> Result<ReferenceData, StatusWord> {
        ReferenceData::parse(data, self.state.options.numeric_pins_only)
    }

    /// Two reference data values of eight bytes each; both are checked for format before any
    /// comparison, so malformed input never uses up a try.
    fn parse_pair(&self, data: &[u8]) -> Result<(ReferenceData, ReferenceData), StatusWord> {
        if data.len() != 2 * REFERENCE_DATA_LEN {
            return Err(StatusWord::IncorrectDataField);
        }
        let (first, second) = data.split_at(REFERENCE_DATA_LEN);
        Ok((self.parse_reference(first)?, self.parse_reference(second)?))
    }

    pub(super) fn clear_pin_status(&mut self) {
        self.session.pin_verified = false;
        self.session.pin_fresh = false;
    }
}
