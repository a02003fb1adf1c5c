//! What a card remembers: persistent state that survives power cycles (and is saved to disk)
//! and the session state that a reset clears.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::keys::SlotKey;
use super::objects;
use super::options::{CardOptions, MgmtKeyAlgorithm, OptionsError};
use super::secrets::{ManagementKey, ReferenceData};
use crate::tlv::Tag;

/// Factory PIN.
pub const FACTORY_PIN: &str = "123456";
/// Factory PUK.
pub const FACTORY_PUK: &str = "12345678";
/// Factory retry limit of PIN and PUK.
pub const FACTORY_RETRIES: u8 = 3;

/// A retry counter with its reset value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryCounter {
    /// Value the counter resets to after a successful verification.
    pub limit: u8,
    /// Tries left; zero means blocked.
    pub remaining: u8,
}

impl RetryCounter {
    /// A full counter.
    pub fn new(limit: u8) -> Self {
        Self {
            limit,
            remaining: limit,
        }
    }

    /// Whether no tries are left.
    pub fn is_blocked(&self) -> bool {
        self.remaining == 0
    }

    /// Uses up one try and returns the tries left.
    pub fn fail(&mut self) -> u8 {
        self.remaining = self.remaining.saturating_sub(1);
        self.remaining
    }

    /// Restores all tries.
    pub fn reset(&mut self) {
        self.remaining = self.limit;
    }
}

/// Bytes of a stored data object, kept as its full encoding (`53 …`, `7E …` or `7F61 …`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StoredObject(#[serde(with = "hex::serde")] pub Vec<u8>);

/// Everything the card keeps across power cycles; serializes to the card's state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistentState {
    pub(super) options: CardOptions,
    pub(super) pin: ReferenceData,
    pub(super) puk: ReferenceData,
    pub(super) pin_retries: RetryCounter,
    pub(super) puk_retries: RetryCounter,
    pub(super) mgmt_key: ManagementKey,
    pub(super) keys: BTreeMap<u8, SlotKey>,
    pub(super) objects: BTreeMap<Tag, StoredObject>,
}

impl PersistentState {
    /// A card as it leaves the factory: PIN `123456`, PUK `12345678`, three tries each, the
    /// factory management key, no keys, a CHUID and a discovery object.
    pub fn factory(options: CardOptions) -> Result<Self, OptionsError> {
        options.validate()?;
        let mgmt_key = ManagementKey::factory(options.initial_mgmt_key_algorithm);
        let objects = objects::factory_objects(options.chip_serial);
        Ok(Self {
            options,
            pin: factory_pin(),
            puk: factory_puk(),
            pin_retries: RetryCounter::new(FACTORY_RETRIES),
            puk_retries: RetryCounter::new(FACTORY_RETRIES),
            mgmt_key,
            keys: BTreeMap::new(),
            objects,
        })
    }

    /// The options this card was made with.
    pub fn options(&self) -> &CardOptions {
        &self.options
    }

    /// PIN retry counter.
    pub fn pin_retries(&self) -> RetryCounter {
        self.pin_retries
    }

    /// PUK retry counter.
    pub fn puk_retries(&self) -> RetryCounter {
        self.puk_retries
    }

    /// Algorithm of the current management key.
    pub fn mgmt_key_algorithm(&self) -> MgmtKeyAlgorithm {
        self.mgmt_key.algorithm()
    }

    /// The key in a slot, if one was generated.
    pub fn key(&self, slot: u8) -> Option<&SlotKey> {
        self.keys.get(&slot)
    }

    /// The stored encoding of a data object, if present.
    pub fn object(&self, tag: Tag) -> Option<&[u8]> {
        self.objects.get(&tag).map(|o| o.0.as_slice())
    }

    /// Serializes to JSON; the buffer is wiped when dropped because it holds secrets.
    pub fn to_json(&self) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
        serde_json::to_vec_pretty(self).map(Zeroizing::new)
    }

    /// Parses JSON written by [`PersistentState::to_json`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

pub(super) fn factory_pin() -> ReferenceData {
    ReferenceData::from_padded(*b"123456\xFF\xFF")
}

pub(super) fn factory_puk() -> ReferenceData {
    ReferenceData::from_padded(*b"12345678")
}

/// A pending step of management key authentication.
pub(super) enum PendingMgmtAuth {
    /// The card sent an encrypted witness and waits for it decrypted.
    Witness(Zeroizing<Vec<u8>>),
    /// The card sent a challenge and waits for it encrypted.
    Challenge(Zeroizing<Vec<u8>>),
}

/// Data of a command chain waiting for its last command.
pub(super) struct Chain {
    pub header: [u8; 4],
    pub data: Zeroizing<Vec<u8>>,
}

/// Response bytes waiting to be fetched with GET RESPONSE.
pub(super) struct PendingResponse {
    pub data: Zeroizing<Vec<u8>>,
    pub offset: usize,
}

/// Security status and protocol state that a reset or power cycle clears.
#[derive(Default)]
pub(super) struct Session {
    pub selected: bool,
    pub pin_verified: bool,
    /// A PIN verification not yet used by a PIN-always key.
    pub pin_fresh: bool,
    pub mgmt_authenticated: bool,
    pub pending_mgmt: Option<PendingMgmtAuth>,
    pub chain: Option<Chain>,
    pub response: Option<PendingResponse>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn factory_state_round_trips_through_json() {
        let state = PersistentState::factory(CardOptions::with_serial(7)).unwrap();
        let json = state.to_json().unwrap();
        let back = PersistentState::from_json(&json).unwrap();
        assert_eq!(back.options(), state.options());
        assert!(back.pin.matches(&factory_pin()));
        assert!(back.puk.matches(&factory_puk()));
        assert_eq!(back.pin_retries(), RetryCounter::new(3));
        assert_eq!(back.objects, state.objects);
    }

    #[test]
    fn retry_counters_block_at_zero_and_reset_to_their_limit() {
        let mut counter = RetryCounter::new(2);
        assert_eq!(counter.fail(), 1);
        assert_eq!(counter.fail(), 0);
        assert!(counter.is_blocked());
        assert_eq!(counter.fail(), 0);
        counter.reset();
        assert_eq!(counter, RetryCounter::new(2));
    }
}
