//! The cardfleet wire contract: every message that crosses RabbitMQ (or the
//! in-process bus), versioned, plus the card-profile type. JSON Schema files
//! generated from these types are committed under `schemas/json/`.

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "amqp")]
pub mod bus;
pub mod codes;
pub mod messages;
pub mod profile;
pub mod rack_identity;
pub mod redact;
pub mod schema_files;
pub mod sealing;

pub use messages::*;
pub use profile::{CardProfile, ProfileError, Requirement};

/// Version of every message type in this crate. A consumer refuses a message
/// whose major version it does not know instead of guessing at its meaning.
pub const SCHEMA_VERSION: u32 = 1;
