//! GENERAL AUTHENTICATE: the dynamic authentication template and authentication of the card
//! administrator with the management key (`9B`), by challenge-response or mutually.

use rand::RngCore;
use rand::rngs::OsRng;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::card::{CardResult, VirtualPivCard};
use super::ids::{key_ref, tag};
use super::keys::is_key_slot;
use super::state::PendingMgmtAuth;
use crate::apdu::StatusWord;
use crate::tlv::{self, Tag};

/// The data objects of a dynamic authentication template (`7C`), each at most once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct DynamicAuth<'a> {
    /// `80`: witness.
    pub witness: Option<&'a [u8]>,
    /// `81`: challenge.
    pub challenge: Option<&'a [u8]>,
    /// `82`: response.
    pub response: Option<&'a [u8]>,
    /// `85`: exponentiation (ECDH peer point).
    pub exponentiation: Option<&'a [u8]>,
}

impl<'a> DynamicAuth<'a> {
    /// Parses `7C` with nothing after it; unknown or repeated inner tags are `6A80`.
    pub(super) fn parse(data: &'a [u8]) -> Result<Self, StatusWord> {
        let bad = |_| StatusWord::IncorrectDataField;
        let body = tlv::parse_single(data, tag::DYNAMIC_AUTH).map_err(bad)?;
        let mut parsed = Self::default();
        for item in tlv::iter(body) {
            let item = item.map_err(bad)?;
            let slot = match item.tag.raw() {
                0x80 => &mut parsed.witness,
                0x81 => &mut parsed.challenge,
                0x82 => &mut parsed.response,
                0x85 => &mut parsed.exponentiation,
                _ => return Err(StatusWord::IncorrectDataField),
            };
            if slot.replace(item.value).is_some() {
                return Err(StatusWord::IncorrectDataField);
            }
        }
        Ok(parsed)
    }
}

/// Builds `7C` around one data object.
pub(super) fn dynamic_auth_response(inner: u32, value: &[u8]) -> Vec<u8> {
    tlv::build(tag::DYNAMIC_AUTH, &tlv::build(Tag::new(inner), value))
}

impl VirtualPivCard {
    /// GENERAL AUTHENTICATE: with the management key, or with a slot's key pair.
    pub(super) fn general_authenticate(
        &mut self,
        algorithm: u8,
        reference: u8,
        template: &[u8],
    ) -> CardResult {
        if reference == key_ref::MANAGEMENT {
            let pending = self.session.pending_mgmt.take();
            self.mgmt_authenticate(algorithm, template, pending)
        } else if is_key_slot(reference) {
            self.key_authenticate(algorithm, reference, template)
        } else {
            Err(StatusWord::ReferenceDataNotFound)
        }
    }

    /// The management key flows of SP 800-73-4 Appendix A:
    ///
    /// * mutual: `80` empty → encrypted witness; `80` witness + `81` challenge → `82` response;
    /// * challenge-response: `81` empty → challenge; `82` encrypted challenge → authenticated;
    /// * card authentication: `81` challenge + `82` empty → encrypted challenge.
    fn mgmt_authenticate(
        &mut self,
        algorithm: u8,
        template: &[u8],
        pending: Option<PendingMgmtAuth>,
    ) -> CardResult {
        let key_algorithm = self.state.mgmt_key.algorithm();
        if algorithm != key_algorithm.id() {
            return Err(StatusWord::IncorrectP1P2);
        }
        let block = key_algorithm.block_len();
        let auth = DynamicAuth::parse(template)?;
        let empty = |v: Option<&[u8]>| v.is_some_and(<[u8]>::is_empty);
        let full = |v: Option<&[u8]>| v.is_some_and(|v| v.len() == block);
        match (
            auth.witness,
            auth.challenge,
            auth.response,
            auth.exponentiation,
        ) {
            (Some(_), None, None, None) if empty(auth.witness) => {
                let witness = random_block(block);
                let mut encrypted = witness.to_vec();
                self.state.mgmt_key.encrypt_block(&mut encrypted)?;
                self.session.pending_mgmt = Some(PendingMgmtAuth::Witness(witness));
                Ok(dynamic_auth_response(0x80, &encrypted))
            }
            (Some(witness), Some(challenge), response, None)
                if full(auth.witness)
                    && full(auth.challenge)
                    && (response.is_none() || empty(response)) =>
            {
                let Some(PendingMgmtAuth::Witness(expected)) = pending else {
                    return Err(StatusWord::ConditionsOfUseNotSatisfied);
                };
                if !bool::from(expected.ct_eq(witness)) {
                    self.session.mgmt_authenticated = false;
                    return Err(StatusWord::SecurityStatusNotSatisfied);
                }
                let mut encrypted = challenge.to_vec();
                self.state.mgmt_key.encrypt_block(&mut encrypted)?;
                self.session.mgmt_authenticated = true;
                Ok(dynamic_auth_response(0x82, &encrypted))
            }
            (None, Some(_), None, None) if empty(auth.challenge) => {
                let challenge = random_block(block);
                let response = dynamic_auth_response(0x81, &challenge);
                self.session.pending_mgmt = Some(PendingMgmtAuth::Challenge(challenge));
                Ok(response)
            }
            (None, None, Some(response), None) if full(auth.response) => {
                let Some(PendingMgmtAuth::Challenge(challenge)) = pending else {
                    return Err(StatusWord::ConditionsOfUseNotSatisfied);
                };
                let mut expected = Zeroizing::new(challenge.to_vec());
                self.state.mgmt_key.encrypt_block(&mut expected)?;
                if !bool::from(expected.ct_eq(response)) {
                    self.session.mgmt_authenticated = false;
                    return Err(StatusWord::SecurityStatusNotSatisfied);
                }
                self.session.mgmt_authenticated = true;
                Ok(Vec::new())
            }
            (None, Some(challenge), Some(_), None)
                if full(auth.challenge) && empty(auth.response) =>
            {
                let mut encrypted = challenge.to_vec();
                self.state.mgmt_key.encrypt_block(&mut encrypted)?;
                Ok(dynamic_auth_response(0x82, &encrypted))
            }
            _ => Err(StatusWord::IncorrectDataField),
        }
    }
}

fn random_block(len: usize) -> Zeroizing<Vec<u8>> {
    let mut block = Zeroizing::new(vec![0u8; len]);
    OsRng.fill_bytes(&mut block);
    block
}
