//! The monitor thread: follows pcscd's reader list and every matching reader's state with
//! `SCardGetStatusChange`, gives readers slots and tells slot threads about their cards.

use std::collections::HashSet;
use std::ffi::CString;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread;

use ::pcsc::{Context, Error as PcscError, ReaderState, Scope, State};
use tokio::sync::mpsc;

use super::connection::context_lost;
use super::readers::{Change, Presence, SlotTable, change, is_present, name_matches};
use super::slot::{SlotWorker, forward};
use super::{FIRST_BACKOFF, MAX_BACKOFF, MAX_READERS, SlotInput, WATCHDOG};
use crate::rack::{RackEvent, SlotCommand};

/// A matching reader and what the monitor knows of its card.
struct Watched {
    slot: u16,
    presence: Option<Presence>,
}

pub(super) struct Monitor {
    context: Context,
    patterns: Vec<String>,
    table: SlotTable,
    /// `states[0]` is the PnP notification; `states[i + 1]` belongs to `watched[i]`.
    states: Vec<ReaderState>,
    watched: Vec<Watched>,
    /// Matching readers without a slot, warned about once.
    ignored: HashSet<CString>,
    /// The runtime's command channel of each slot, until its thread starts.
    pending: Vec<Option<std_mpsc::Receiver<SlotCommand>>>,
    slots: Vec<Option<std_mpsc::Sender<SlotInput>>>,
    events: mpsc::UnboundedSender<RackEvent>,
    stop: Arc<AtomicBool>,
}

impl Monitor {
    pub(super) fn new(
        context: Context,
        patterns: Vec<String>,
        pending: Vec<Option<std_mpsc::Receiver<SlotCommand>>>,
        events: mpsc::UnboundedSender<RackEvent>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Self {
            context,
            patterns,
            table: SlotTable::default(),
            states: vec![ReaderState::new(::pcsc::PNP_NOTIFICATION(), State::UNAWARE)],
            watched: Vec::new(),
            ignored: HashSet::new(),
            slots: pending.iter().map(|_| None).collect(),
            pending,
            events,
            stop,
        }
    }

    pub(super) fn run(mut self) {
        let mut backoff = FIRST_BACKOFF;
        while !self.stop.load(Ordering::Relaxed) && !self.events.is_closed() {
            let result = self.reconcile().and_then(|()| {
                self.states
                    .iter_mut()
                    .for_each(ReaderState::sync_current_state);
                self.context.get_status_change(WATCHDOG, &mut self.states)
            });
            match result {
                Ok(()) => {
                    backoff = FIRST_BACKOFF;
                    self.apply();
                }
                Err(PcscError::Timeout | PcscError::Cancelled) => {}
                Err(e) => {
                    // A reader leaving between listing and waiting is ordinary; pcscd
                    // restarting is not, but the readers come back with it.
                    if !matches!(e, PcscError::UnknownReader | PcscError::ReaderUnavailable) {
                        tracing::warn!(error = %e, "waiting for PC/SC reader events failed; retrying");
                    }
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    if context_lost(e) {
                        self.reestablish();
                    }
                }
            }
        }
        for sender in self.slots.iter().flatten() {
            let _ = sender.send(SlotInput::Stop);
        }
        tracing::debug!("PC/SC monitor stopped");
    }

    fn reestablish(&mut self) {
        match Context::establish(Scope::User) {
            Ok(context) => {
                self.context = context;
                for state in &mut self.states {
                    *state = ReaderState::new(state.name().to_owned(), State::UNAWARE);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot reach pcscd; retrying"),
        }
    }

    /// Follows the reader list: readers unplugged leave (with their cards), new matching
    /// readers get a slot.
    fn reconcile(&mut self) -> Result<(), PcscError> {
        let names = match self.context.list_readers_owned() {
            Ok(names) => names,
            Err(PcscError::NoReadersAvailable) => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut i = 0;
        while i < self.watched.len() {
            if names
                .iter()
                .any(|n| n.as_c_str() == self.states[i + 1].name())
            {
                i += 1;
                continue;
            }
            let gone = self.watched.remove(i);
            let state = self.states.remove(i + 1);
            let name = state.name().to_string_lossy();
            tracing::info!(slot = gone.slot, reader = %name, "reader unplugged");
            self.table.detach(&name);
            // A reader turned away for want of a slot may have one now.
            self.ignored.clear();
            if gone.presence.is_some_and(|p| p.present) {
                self.tell(gone.slot, SlotInput::Left);
            }
        }
        for name in names {
            let known = self
                .states
                .iter()
                .skip(1)
                .any(|s| s.name() == name.as_c_str());
            let text = name.to_string_lossy();
            if known || self.ignored.contains(&name) || !name_matches(&text, &self.patterns) {
                continue;
            }
            let Some(slot) = self
                .table
                .attach(&text)
                .filter(|&slot| self.ensure_slot_thread(slot))
            else {
                tracing::warn!(reader = %text, "no free slot for this reader (at most {MAX_READERS}); ignoring it");
                self.table.detach(&text);
                self.ignored.insert(name);
                continue;
            };
            tracing::info!(slot, reader = %text, "reader attached");
            self.watched.push(Watched {
                slot,
                presence: None,
            });
            self.states.push(ReaderState::new(name, State::UNAWARE));
        }
        Ok(())
    }

    /// Turns the readers' new states into arrivals and departures for their slots.
    fn apply(&mut self) {
        let mut notices = Vec::new();
        for (watched, state) in self.watched.iter_mut().zip(self.states.iter().skip(1)) {
            let event = state.event_state();
            if watched.presence.is_some() && !event.contains(State::CHANGED) {
                continue;
            }
            let now = Presence {
                present: is_present(event),
                events: state.event_count(),
            };
            let reader = state.name().to_owned();
            match change(watched.presence, now) {
                Change::Nothing => {}
                Change::Arrived => notices.push((watched.slot, SlotInput::Arrived(reader))),
                Change::Left => notices.push((watched.slot, SlotInput::Left)),
                Change::Replaced => {
                    notices.push((watched.slot, SlotInput::Left));
                    notices.push((watched.slot, SlotInput::Arrived(reader)));
                }
            }
            watched.presence = Some(now);
        }
        for (slot, notice) in notices {
            self.tell(slot, notice);
        }
    }

    fn tell(&self, slot: u16, input: SlotInput) {
        if let Some(Some(sender)) = self.slots.get(usize::from(slot)) {
            let _ = sender.send(input);
        }
    }

    /// Starts the slot's thread and its forwarder the first time the slot gets a reader.
    fn ensure_slot_thread(&mut self, slot: u16) -> bool {
        let index = usize::from(slot);
        if matches!(self.slots.get(index), Some(Some(_))) {
            return true;
        }
        let Some(commands) = self.pending.get_mut(index).and_then(Option::take) else {
            return false;
        };
        let (inputs_tx, inputs) = std_mpsc::channel();
        let worker = SlotWorker::new(slot, self.events.clone());
        let forward_to = inputs_tx.clone();
        let stop = Arc::clone(&self.stop);
        let started = thread::Builder::new()
            .name(format!("pcsc-slot-{slot}"))
            .spawn(move || worker.run(inputs))
            .and_then(|_| {
                thread::Builder::new()
                    .name(format!("pcsc-commands-{slot}"))
                    .spawn(move || forward(commands, forward_to, stop))
            });
        match started {
            Ok(_) => {
                self.slots[index] = Some(inputs_tx);
                true
            }
            Err(e) => {
                tracing::error!(slot, error = %e, "cannot start a slot thread");
                false
            }
        }
    }
}
