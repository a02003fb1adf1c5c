//! cardfleet control plane.
