//! cardfleet encoding worker.
