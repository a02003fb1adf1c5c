//! The encoding engine: runs a PIV profile's steps against one card, each
//! step checking first whether it is already done, and reports every step.
//!
//! The engine is synchronous: it runs on the slot's own thread, because
//! PC/SC calls block. Backends hand it a [`CardTransport`].
//!
//! # Steps
//!
//! [`encode`] runs, in this order, reporting each as a [`StepReport`] named as below:
//!
//! | step | what |
//! | --- | --- |
//! | `check_request` | parse PIN, PUK and keys of the request; nothing is sent |
//! | `select` | SELECT the PIV application |
//! | `identify` | chip serial ([`read_chip_serial`]) must equal the job's; else `chip_serial_mismatch`, nothing written |
//! | `read_journal` | read the journal (below); another job's journal with credential work → `already_initialized`, untouched |
//! | `probe` | GET VERSION (extensions), GET METADATA (management key algorithm) |
//! | `check_pin` | empty VERIFY (free): PIN blocked → `pin_blocked`; PUK counter from GET METADATA |
//! | `authenticate` | per-card management key first (then that step is already done), else the transport key |
//! | `set_retries` | SET PIN RETRIES (`FA`), which resets PIN and PUK: never once PIN/PUK work began |
//! | `set_management_key` | SET MANAGEMENT KEY (`FF`), falling back along the profile's algorithms |
//! | `change_pin`, `change_puk` | CHANGE REFERENCE DATA `80`/`81`, transport → new |
//! | `generate_key_9a` … `generate_key_9e` | GENERATE ASYMMETRIC KEY PAIR per profile key |
//! | `write_chuid`, `write_ccc` | PUT DATA with a GUID and card identifier derived from the job id |
//! | `verify` | VERIFY the new PIN, read back CHUID and CCC, authenticate with the management key |
//!
//! Reading steps report `done`. Writing steps report `done`, `already_done` (a
//! redelivered job), `unsupported` (optional step the card cannot do, with the
//! reason), `not_requested` (`skip` in the profile) or `failed`. An unsupported
//! required step fails the job with `unsupported_step`, naming the step.
//!
//! # Idempotency and the journal
//!
//! Every writing step first checks whether it is already done, either on the card
//! itself (the per-card management key authenticates, the CHUID carries the job's
//! GUID, the CCC is the job's) or in the [`journal`]: a private data object
//! (`5FFF10`) holding the job id and which steps began and finished, written after
//! management key authentication and only when something changes, so a redelivery
//! after success writes nothing at all. Before a PIN or PUK change the journal
//! records the intent; after it, done.
//!
//! The engine never spends a PIN or PUK try on a guess. The only value it ever
//! compares without knowing it is right is in the crash window: the journal shows
//! the intent of a change but not its end, so the card was pulled between the two
//! and either value may be set. Then one check with the new value (VERIFY for the
//! PIN; CHANGE REFERENCE DATA new → new for the PUK, which has no VERIFY) tells
//! which. If it fails, the old value is set and the CHANGE REFERENCE DATA that
//! follows verifies it, which restores the counter to its limit: the try is given
//! back. The check is only made while at least two tries are left (else
//! `pin_state_unknown`), so finding out can never block the card; the PIN's
//! tries come from the empty VERIFY, the PUK's from GET METADATA, and a card
//! without GET METADATA is checked without knowing the PUK's tries.
//!
//! [`encode_cancellable`] has one cancellation point, after `authenticate`:
//! there the engine knows whether this job has written anything to the card.
//!
//! If the card refuses the new PIN's or PUK's format (a numeric-only card and a
//! PIN with letters: `pin_format_unsupported`), the engine puts the card back to
//! its transport credentials and deletes the journal, so a later job can use it.

mod by_ref;
mod capabilities;
mod credential_steps;
mod credentials;
mod error;
pub mod faults;
mod identity;
pub mod journal;
pub mod keeper;
mod mgmt;
mod object_steps;
pub mod objects;
pub mod public_keys;
mod runner;
mod session;
mod steps;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;

use cardfleet_schemas::{
    CardProfile, CardSecrets, Failure, GeneratedPublicKey, Outcome, StepReport,
};
use uuid::Uuid;

pub use error::{EngineError, FailureCode};
pub use faults::{FaultPlan, FaultyTransport, PowerCycle, Pull, PullAt};
pub use journal::{JOURNAL_TAG, Journal};
pub use keeper::{DirJournalKeeper, JournalKeeper, KeeperError, MemoryJournalKeeper};

/// Runs the profile's steps for one job on the card in the slot and reports every step.
/// Never panics on card input; a failure is in the report, with whether another attempt
/// on the same card may succeed.
pub fn encode(request: &EncodeRequest<'_>, card: &mut dyn CardTransport) -> EncodeReport {
    encode_cancellable(request, card, &|| false)
}

/// [`encode`] with one cancellation point: after `authenticate`, before the first write.
/// If `cancelled` answers true there and this job has written nothing to the card, in this
/// attempt or an earlier one, the outcome is `cancelled` (code `cancelled`). Once the job
/// has written, it runs to the end so that no card is left half initialized, and the
/// report says how it ended.
pub fn encode_cancellable(
    request: &EncodeRequest<'_>,
    card: &mut dyn CardTransport,
    cancelled: &dyn Fn() -> bool,
) -> EncodeReport {
    let span = tracing::debug_span!(
        "encode",
        job.id = %request.job_id,
        chip.serial = request.chip_serial
    );
    let _entered = span.enter();
    runner::Runner::encode(request, card, cancelled)
}

/// Selects the PIV application and reads the chip's identity: the IC serial number of the
/// GlobalPlatform CPLC (`9F7F`, bytes 12..16) as a decimal `u32`; else the vendor serial
/// (`F8`) in decimal; else the CHUID GUID in upper-case hex. Backends call it when a card
/// is inserted; it only reads.
pub fn read_chip_serial(card: &mut dyn CardTransport) -> Result<String, EngineError> {
    let mut session = session::Session::new(card);
    identity::select(&mut session)?;
    identity::chip_serial(&mut session)
}

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
    /// Where the journal goes when the card refuses vendor data objects; without one, such
    /// a card fails at its first write with `journal_unsupported`.
    pub journal_keeper: Option<&'a dyn JournalKeeper>,
}

/// The engine's verdict on one attempt.
#[derive(Debug, Clone)]
pub struct EncodeReport {
    pub outcome: Outcome,
    pub failure: Option<Failure>,
    /// Whether trying again (after the card is back, after a delay) may succeed.
    pub retryable: bool,
    pub steps: Vec<StepReport>,
    /// The public key of every key pair the card holds for the profile (see
    /// [`public_keys`]), also on a failed or resumed attempt.
    pub public_keys: Vec<GeneratedPublicKey>,
}
