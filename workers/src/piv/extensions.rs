//! The YubiKey-compatible management extensions: SET MANAGEMENT KEY (`FF`), SET PIN RETRIES
//! (`FA`), RESET (`FB`) and GET METADATA (`F7`). GET VERSION and GET SERIAL are answered in
//! the dispatcher.

use super::card::{CardResult, VirtualPivCard};
use super::ids::{alg, key_ref};
use super::keys::is_key_slot;
use super::options::MgmtKeyAlgorithm;
use super::secrets::ManagementKey;
use super::state::{PersistentState, RetryCounter, factory_pin, factory_puk};
use crate::apdu::StatusWord;
use crate::tlv::{Tag, TlvBuilder};

/// GET METADATA origin byte for keys generated on the card.
const ORIGIN_GENERATED: u8 = 0x01;
/// GET METADATA touch policy byte for "never".
const TOUCH_NEVER: u8 = 0x01;

impl VirtualPivCard {
    /// SET MANAGEMENT KEY: data is algorithm, `9B`, key length, key. Needs management key
    /// authentication; the algorithm must be one the card allows.
    pub(super) fn set_management_key(&mut self, data: &[u8]) -> CardResult {
        if !self.session.mgmt_authenticated {
            return Err(StatusWord::SecurityStatusNotSatisfied);
        }
        let [algorithm, reference, len, key @ ..] = data else {
            return Err(StatusWord::IncorrectDataField);
        };
        let algorithm = MgmtKeyAlgorithm::from_id(*algorithm)
            .filter(|a| self.state.options.allows(*a))
            .ok_or(StatusWord::IncorrectDataField)?;
        if *reference != key_ref::MANAGEMENT || usize::from(*len) != key.len() {
            return Err(StatusWord::IncorrectDataField);
        }
        let key = ManagementKey::new(algorithm, key)?;
        self.state_mut().mgmt_key = key;
        Ok(Vec::new())
    }

    /// SET PIN RETRIES: needs management key authentication and a verified PIN; sets both
    /// limits and, as YubiKeys do, resets PIN and PUK to their factory values.
    pub(super) fn set_pin_retries(&mut self, pin: u8, puk: u8) -> CardResult {
        if !self.session.mgmt_authenticated || !self.session.pin_verified {
            return Err(StatusWord::SecurityStatusNotSatisfied);
        }
        let state = self.state_mut();
        state.pin_retries = RetryCounter::new(pin);
        state.puk_retries = RetryCounter::new(puk);
        state.pin = factory_pin();
        state.puk = factory_puk();
        self.clear_pin_status();
        Ok(Vec::new())
    }

    /// RESET: back to factory state, allowed only once both PIN and PUK are blocked.
    pub(super) fn factory_reset(&mut self) -> CardResult {
        if !self.state.pin_retries.is_blocked() || !self.state.puk_retries.is_blocked() {
            return Err(StatusWord::ConditionsOfUseNotSatisfied);
        }
        let options = self.state.options.clone();
        let fresh =
            PersistentState::factory(options).map_err(|_| StatusWord::NoPreciseDiagnosis)?;
        *self.state_mut() = fresh;
        self.clear_pin_status();
        self.session.mgmt_authenticated = false;
        Ok(Vec::new())
    }

    /// GET METADATA for the PIN, the PUK, the management key or a key slot.
    pub(super) fn metadata(&self, reference: u8) -> CardResult {
        let mut out = TlvBuilder::new();
        match reference {
            key_ref::PIN | key_ref::PUK => {
                let (counter, is_default) = if reference == key_ref::PIN {
                    (
                        self.state.pin_retries,
                        self.state.pin.matches(&factory_pin()),
                    )
                } else {
                    (
                        self.state.puk_retries,
                        self.state.puk.matches(&factory_puk()),
                    )
                };
                out.push(Tag::new(0x01), &[alg::PIN])
                    .push(Tag::new(0x05), &[u8::from(is_default)])
                    .push(Tag::new(0x06), &[counter.limit, counter.remaining]);
            }
            key_ref::MANAGEMENT => {
                let key = &self.state.mgmt_key;
                out.push(Tag::new(0x01), &[key.algorithm().id()])
                    .push(Tag::new(0x02), &[0x00, TOUCH_NEVER])
                    .push(Tag::new(0x05), &[u8::from(key.is_factory_default())]);
            }
            slot if is_key_slot(slot) => {
                let key = self
                    .state
                    .keys
                    .get(&slot)
                    .ok_or(StatusWord::ReferenceDataNotFound)?;
                let touch = if key.touch_policy() == 0 {
                    TOUCH_NEVER
                } else {
                    key.touch_policy()
                };
                out.push(Tag::new(0x01), &[key.algorithm().id()])
                    .push(Tag::new(0x02), &[key.pin_policy().to_byte(), touch])
                    .push(Tag::new(0x03), &[ORIGIN_GENERATED])
                    .push(Tag::new(0x04), &key.public_key_objects());
            }
            _ => return Err(StatusWord::ReferenceDataNotFound),
        }
        Ok(out.finish())
    }
}
