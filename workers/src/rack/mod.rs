//! A rack: slots behind one worker. Each slot is served by its own OS thread
//! (card calls block); the async runtime talks to it through channels, and
//! insertions and removals arrive as [`RackEvent`]s.

#[cfg(feature = "pcsc")]
pub mod pcsc;
pub mod simulated;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;

use cardfleet_schemas::{CardProfile, CardSecrets};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::engine::EncodeReport;

/// What a slot reports about its card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RackEvent {
    Inserted { slot: u16, chip_serial: String },
    Removed { slot: u16 },
    Faulted { slot: u16, reason: String },
}

/// One job for one slot's thread.
#[derive(Debug)]
pub struct SlotJob {
    pub job_id: Uuid,
    pub chip_serial: String,
    pub profile: CardProfile,
    pub secrets: CardSecrets,
    /// Set when the job is cancelled; the engine looks at it at its safe point.
    pub cancelled: Arc<AtomicBool>,
    /// The worker's journal for cards that keep none (`worker.journal_dir`).
    pub journal_keeper: Option<Arc<dyn crate::engine::JournalKeeper>>,
}

impl SlotJob {
    /// Runs the engine for this job on `card`, honouring cancellation.
    pub fn encode(&self, card: &mut dyn crate::engine::CardTransport) -> EncodeReport {
        let request = crate::engine::EncodeRequest {
            job_id: self.job_id,
            chip_serial: &self.chip_serial,
            profile: &self.profile,
            secrets: &self.secrets,
            journal_keeper: self.journal_keeper.as_deref(),
        };
        crate::metrics::counting_status_words(self.job_id, || {
            crate::engine::encode_cancellable(&request, card, &|| {
                self.cancelled.load(Ordering::Relaxed)
            })
        })
    }
}

#[derive(Debug)]
pub enum SlotCommand {
    /// Encode the card in the slot and reply with the engine's report.
    Encode {
        job: Box<SlotJob>,
        reply: oneshot::Sender<EncodeReport>,
    },
    /// The job for this slot's card is over; the card may leave the slot
    /// (a simulated operator takes it out and loads the next one).
    Done { chip_serial: String },
}

/// Handles to a running rack.
#[derive(Debug)]
pub struct Rack {
    pub slots: Vec<std_mpsc::Sender<SlotCommand>>,
    pub events: mpsc::UnboundedReceiver<RackEvent>,
}

/// The report for a job whose card is not in the slot (any more).
pub fn card_absent() -> EncodeReport {
    EncodeReport {
        outcome: cardfleet_schemas::Outcome::Failed,
        failure: Some(cardfleet_schemas::Failure {
            code: cardfleet_schemas::codes::Code::CardAbsent.as_str().into(),
            message: "the card is not in its slot".into(),
            card_unusable: false,
        }),
        retryable: true,
        steps: Vec::new(),
        public_keys: Vec::new(),
    }
}

/// A rack of the PC/SC readers whose names contain one of `name_patterns` (all readers
/// when empty); see [`pcsc`]. Fails when pcscd cannot be reached.
#[cfg(feature = "pcsc")]
pub fn pcsc_rack(name_patterns: &[String]) -> anyhow::Result<Rack> {
    pcsc::start(name_patterns)
}

/// Without the `pcsc` feature there is no PC/SC backend.
#[cfg(not(feature = "pcsc"))]
pub fn pcsc_rack(name_patterns: &[String]) -> anyhow::Result<Rack> {
    let _ = name_patterns;
    anyhow::bail!(
        "reader.type = \"pcsc\" needs a worker built with the `pcsc` cargo feature \
         (on by default; this build has it off): rebuild with `--features pcsc`"
    )
}
