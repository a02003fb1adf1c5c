//! cardfleet control plane: HTTP API, store, credentials, dispatcher and
//! ledger, over PostgreSQL and RabbitMQ. It never depends on the worker
//! crate: standalone mode and the demo, which join both in one process, live
//! in `cardfleet-standalone` (standalone/).

pub mod api;
pub mod app;
pub mod broker;
pub mod cli;
pub mod client;
pub mod console;
pub mod credentials;
pub mod data_dir;
pub mod domain;
pub mod keys;
pub mod metrics;
pub mod ops;
pub mod rack_identity;
pub mod services;
pub mod settings;
pub mod store;
