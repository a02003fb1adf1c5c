//! The encoding engine: runs a PIV profile's steps against one card, each
//! step checking first whether it is already done, and reports every step.
//!
//! The engine is synchronous: it runs on the slot's own thread, because
//! PC/SC calls block. Backends hand it a [`CardTransport`].

use cardfleet_schemas::{CardProfile, CardSecrets, Failure, Outcome, StepReport};
use uuid::Uuid;

/// One card in one slot, able to exchange APDUs.
pub trait CardTransport {
    /// Sends one command APDU and returns the full response (data + SW1 SW2).
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError>;
}

/// Why an APDU exchange did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The card left the slot: retry when it is back.
    #[error("card removed")]
    Removed,
    /// The card was reset by another party: reconnect and retry.
    #[error("card reset")]
    Reset,
    /// The chip does not answer.
    #[error("card does not answer")]
    Mute,
    #[error("reader error: {0}")]
    Reader(String),
}

/// What the engine is asked to do for one job.
#[derive(Debug)]
pub struct EncodeRequest<'a> {
    pub job_id: Uuid,
    /// The chip the job is for; nothing is written to any other chip.
    pub chip_serial: &'a str,
    pub profile: &'a CardProfile,
    pub secrets: &'a CardSecrets,
}

/// The engine's verdict on one attempt.
#[derive(Debug, Clone)]
pub struct EncodeReport {
    pub outcome: Outcome,
    pub failure: Option<Failure>,
    /// Whether trying again (after the card is back, after a delay) may succeed.
    pub retryable: bool,
    pub steps: Vec<StepReport>,
}
