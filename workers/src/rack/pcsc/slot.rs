//! A slot's threads: the slot thread that identifies arriving cards and encodes jobs on
//! its reader, and the forwarder that hands it the runtime's commands.

use std::ffi::CString;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ::pcsc::{Context, Error as PcscError, Scope, ShareMode};
use tokio::sync::mpsc;

use super::connection::{CardConnection, context_lost, failed, transport_error};
use super::{BUSY_WAIT, FIRST_BACKOFF, SlotInput};
use crate::engine::{self, EncodeReport, EngineError, TransportError};
use crate::rack::{RackEvent, SlotCommand, SlotJob};

/// Hands the runtime's commands to the slot thread; when the runtime lets go of the rack,
/// stops the slot and the monitor.
pub(super) fn forward(
    commands: std_mpsc::Receiver<SlotCommand>,
    slot: std_mpsc::Sender<SlotInput>,
    stop: Arc<AtomicBool>,
) {
    for command in commands.iter() {
        if slot.send(SlotInput::Command(command)).is_err() {
            return;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = slot.send(SlotInput::Stop);
}

/// One reader's slot: identifies arriving cards and encodes jobs.
pub(super) struct SlotWorker {
    slot: u16,
    context: Option<Context>,
    reader: Option<CString>,
    /// The chip identified in the reader.
    chip: Option<String>,
    /// A card was reported (inserted or faulted) and has not been reported removed.
    occupied: bool,
    events: mpsc::UnboundedSender<RackEvent>,
}

impl SlotWorker {
    pub(super) fn new(slot: u16, events: mpsc::UnboundedSender<RackEvent>) -> Self {
        Self {
            slot,
            context: None,
            reader: None,
            chip: None,
            occupied: false,
            events,
        }
    }

    pub(super) fn run(mut self, inputs: std_mpsc::Receiver<SlotInput>) {
        let span = tracing::info_span!("slot", slot = self.slot);
        let _entered = span.enter();
        while let Ok(input) = inputs.recv() {
            match input {
                SlotInput::Arrived(reader) => {
                    self.reader = Some(reader);
                    self.arrived();
                }
                SlotInput::Left => self.left(),
                SlotInput::Command(SlotCommand::Encode { job, reply }) => {
                    let _ = reply.send(self.encode(&job));
                }
                // The operator takes cards out of real readers.
                SlotInput::Command(SlotCommand::Done { .. }) => {}
                SlotInput::Stop => return,
            }
        }
    }

    fn emit(&self, event: RackEvent) {
        let _ = self.events.send(event);
    }

    fn arrived(&mut self) {
        self.chip = None;
        match self.identify() {
            Ok(serial) => {
                tracing::info!(chip.serial = %serial, "card inserted");
                self.chip = Some(serial.clone());
                self.occupied = true;
                self.emit(RackEvent::Inserted {
                    slot: self.slot,
                    chip_serial: serial,
                });
            }
            // Gone again already: the monitor reports the removal next.
            Err(EngineError::Transport(TransportError::Removed)) => {}
            Err(e) => {
                let reason = match e {
                    EngineError::Transport(TransportError::Mute) => {
                        "the card does not answer (mute)".to_owned()
                    }
                    EngineError::Transport(TransportError::Reader(why)) => {
                        format!("reader error: {why}")
                    }
                    other => format!("not a usable PIV card: {other}"),
                };
                tracing::warn!(%reason, "card faulted");
                self.occupied = true;
                self.emit(RackEvent::Faulted {
                    slot: self.slot,
                    reason,
                });
            }
        }
    }

    fn left(&mut self) {
        self.chip = None;
        if std::mem::replace(&mut self.occupied, false) {
            tracing::info!("card removed");
            self.emit(RackEvent::Removed { slot: self.slot });
        }
    }

    fn identify(&mut self) -> Result<String, EngineError> {
        let mut connection = self.connect(ShareMode::Shared)?;
        let mut transport = connection.transaction()?;
        let serial = engine::read_chip_serial(&mut transport);
        let _ = transport.end();
        serial
    }

    fn encode(&mut self, job: &SlotJob) -> EncodeReport {
        if self.chip.as_deref() != Some(job.chip_serial.as_str()) {
            return crate::rack::card_absent();
        }
        let mut connection = match self.connect(ShareMode::Exclusive) {
            Ok(c) => c,
            Err(TransportError::Removed) => return crate::rack::card_absent(),
            Err(e) => return failed(e),
        };
        let mut transport = match connection.transaction() {
            Ok(t) => t,
            Err(e) => return failed(e),
        };
        // Honours the job's cancellation at the engine's safe point.
        let report = job.encode(&mut transport);
        // The encoding session verified the PIN and authenticated the
        // management key: reset so the next application starts from nothing.
        if let Err(e) = transport.end_with_reset() {
            tracing::debug!(error = %e, "ending the card transaction failed");
        }
        report
    }

    /// Connects to the slot's card, waiting a while if another application holds it.
    fn connect(&mut self, share: ShareMode) -> Result<CardConnection, TransportError> {
        let reader = self.reader.clone().ok_or(TransportError::Removed)?;
        let deadline = Instant::now() + BUSY_WAIT;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let context = match &self.context {
                Some(c) => c.clone(),
                None => {
                    let c = Context::establish(Scope::User).map_err(transport_error)?;
                    self.context = Some(c.clone());
                    c
                }
            };
            match CardConnection::connect(&context, &reader, share) {
                Ok(connection) => return Ok(connection),
                Err(PcscError::SharingViolation) if Instant::now() < deadline => {}
                Err(PcscError::SharingViolation) => {
                    return Err(TransportError::Reader(
                        "another application holds the card".into(),
                    ));
                }
                Err(e) if context_lost(e) && Instant::now() < deadline => self.context = None,
                Err(e) => return Err(transport_error(e)),
            }
            thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
}
