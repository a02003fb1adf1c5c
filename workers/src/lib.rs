//! cardfleet encoding worker: racks of slots (simulated or PC/SC), the PIV
//! encoding engine, the runtime that consumes a rack's queue, and the
//! virtual PIV card with its vpcd bridge.

pub mod apdu;
pub mod api_tls;
pub mod app;
pub mod engine;
pub mod metrics;
pub mod piv;
pub mod piv_ids;
pub mod rack;
pub mod rack_key;
pub mod runtime;
pub mod settings;
pub mod tlv;
pub mod vpcd;
