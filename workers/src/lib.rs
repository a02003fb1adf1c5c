//! cardfleet encoding worker: card protocol types, the virtual PIV card and its vpcd bridge.

pub mod apdu;
pub mod engine;
pub mod piv;
pub mod tlv;
pub mod vpcd;
