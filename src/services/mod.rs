//! The control plane's background services, each a loop that reconnects on
//! its own: the dispatcher (outbox → bus), the ledger (results, slot events
//! and dead letters → store, with the dead-letter records of
//! `dead_letters`), the take-time job gate, rack leases and the gauge
//! refresher. `crate::app` starts them.

pub mod dead_letters;
pub mod dispatcher;
pub mod gauges;
pub mod job_gate;
pub mod leases;
pub mod ledger;
