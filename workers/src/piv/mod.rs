//! A virtual PIV card (NIST SP 800-73-4) with the YubiKey-compatible management extensions,
//! used to exercise the encoding engine and the real PC/SC stack without hardware.

mod card;
mod command;
mod data_commands;
mod extensions;
mod keys;
mod mgmt;
mod objects;
mod options;
mod pins;
mod secrets;
mod slots;
mod state;
mod store;
mod transport;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;

/// The PIV identifiers, which live outside the emulator so the engine does
/// not depend on it.
pub use crate::piv_ids as ids;
pub use card::{ATR, MAX_CHAIN_LEN, VirtualPivCard};
pub use keys::{KEY_SLOTS, KeyAlgorithm, PinPolicy, SlotKey, is_key_slot};
pub use objects::{MAX_OBJECT_LEN, factory_chuid};
pub use options::{CardOptions, MgmtKeyAlgorithm, OptionsError, UnknownAlgorithm};
pub use secrets::{ManagementKey, REFERENCE_DATA_LEN, ReferenceData};
pub use state::{FACTORY_PIN, FACTORY_PUK, FACTORY_RETRIES, PersistentState, RetryCounter};
pub use store::{STATE_FILE, StateStore, StoreError};
