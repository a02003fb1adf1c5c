//! Key slot commands: GENERATE ASYMMETRIC KEY PAIR and GENERAL AUTHENTICATE with a slot's key
//! (signing, RSA private operations, ECDH), with the slot's PIN policy enforced.

use super::card::{CardResult, VirtualPivCard};
use super::ids::tag;
use super::keys::{KeyAlgorithm, PinPolicy, SlotKey, is_key_slot};
use super::mgmt::{DynamicAuth, dynamic_auth_response};
use crate::apdu::StatusWord;
use crate::tlv;

/// The control reference template of GENERATE ASYMMETRIC KEY PAIR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyGenRequest {
    algorithm: KeyAlgorithm,
    pin_policy: PinPolicy,
    touch_policy: u8,
}

impl KeyGenRequest {
    /// `AC` with `80` algorithm and, optionally, the YubiKey-compatible `AA` PIN policy and
    /// `AB` touch policy.
    fn parse(template: &[u8], slot: u8) -> Result<Self, StatusWord> {
        let bad = |_| StatusWord::IncorrectDataField;
        let body = tlv::parse_single(template, tag::KEY_CRT).map_err(bad)?;
        let (mut algorithm, mut pin_policy, mut touch_policy) = (None, None, 0);
        for item in tlv::iter(body) {
            let item = item.map_err(bad)?;
            let [value] = item.value else {
                return Err(StatusWord::IncorrectDataField);
            };
            match item.tag.raw() {
                0x80 => algorithm = KeyAlgorithm::from_id(*value),
                0xAA => pin_policy = PinPolicy::from_byte(*value, slot),
                0xAB => touch_policy = *value,
                _ => return Err(StatusWord::IncorrectDataField),
            }
            if item.tag.raw() == 0xAA && pin_policy.is_none() {
                return Err(StatusWord::IncorrectDataField);
            }
        }
        Ok(Self {
            algorithm: algorithm.ok_or(StatusWord::IncorrectDataField)?,
            pin_policy: pin_policy.unwrap_or_else(|| PinPolicy::default_for(slot)),
            touch_policy,
        })
    }
}

impl VirtualPivCard {
    /// GENERATE ASYMMETRIC KEY PAIR: needs management key authentication; replaces any key in
    /// the slot and returns the `7F49` public key template.
    pub(super) fn generate_key_pair(&mut self, slot: u8, template: &[u8]) -> CardResult {
        if !is_key_slot(slot) {
            return Err(StatusWord::IncorrectP1P2);
        }
        if !self.session.mgmt_authenticated {
            return Err(StatusWord::SecurityStatusNotSatisfied);
        }
        let request = KeyGenRequest::parse(template, slot)?;
        let key = SlotKey::generate(request.algorithm, request.pin_policy, request.touch_policy)?;
        let public = key.public_key_template();
        self.state_mut().keys.insert(slot, key);
        Ok(public)
    }

    /// GENERAL AUTHENTICATE with a slot key: `82` empty and `81` input for signing or an RSA
    /// private operation, or `82` empty and `85` peer point for ECDH.
    pub(super) fn key_authenticate(
        &mut self,
        algorithm: u8,
        slot: u8,
        template: &[u8],
    ) -> CardResult {
        let Some(key) = self.state.keys.get(&slot) else {
            return Err(StatusWord::ReferenceDataNotFound);
        };
        if algorithm != key.algorithm().id() {
            return Err(StatusWord::IncorrectP1P2);
        }
        let auth = DynamicAuth::parse(template)?;
        if auth.witness.is_some() || auth.response.is_none_or(|r| !r.is_empty()) {
            return Err(StatusWord::IncorrectDataField);
        }
        let policy = key.pin_policy();
        let allowed = match policy {
            PinPolicy::Never => true,
            PinPolicy::Once => self.session.pin_verified,
            PinPolicy::Always => self.session.pin_verified && self.session.pin_fresh,
        };
        if !allowed {
            return Err(StatusWord::SecurityStatusNotSatisfied);
        }
        let output = match (auth.challenge, auth.exponentiation) {
            (Some(input), None) => key.private_operation(input)?,
            (None, Some(point)) => key.key_agreement(point)?,
            _ => return Err(StatusWord::IncorrectDataField),
        };
        if policy == PinPolicy::Always {
            self.session.pin_fresh = false;
        }
        Ok(dynamic_auth_response(0x82, &output))
    }
}
