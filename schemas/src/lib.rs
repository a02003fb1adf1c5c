//! The cardfleet wire contract.
