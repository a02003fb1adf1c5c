//! The simulated backend: N slots of in-process virtual PIV cards, loaded
//! like an operator would (from a queue of cards, as slots free up), with
//! per-command latency and fault injection.

use std::collections::VecDeque;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Rack, RackEvent, SlotCommand};
use crate::engine::{CardTransport, TransportError};
use crate::piv::{CardOptions, StateStore, VirtualPivCard};

/// Faults one simulated card suffers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimFaults {
    /// Pull the card out after this many APDUs of its first attempt; it comes
    /// back after `reinsert` and the next attempt runs on it.
    pub pull_after_apdus: Option<usize>,
    /// The chip never answers.
    pub mute: bool,
    /// Answer this status word to every command with this INS, once per
    /// attempt: (ins, sw).
    pub status_word: Option<(u8, u16)>,
    /// The PIN is already blocked when the card arrives.
    pub pin_blocked: bool,
    /// Extra latency per command (a slow card).
    pub slow: Duration,
    /// The slot reports this serial instead of the chip's own (a misread
    /// label or a card swapped behind the reader's back).
    pub reported_serial: Option<u32>,
}

/// A card waiting to be loaded into a slot.
#[derive(Debug, Clone)]
pub struct SimCard {
    pub options: CardOptions,
    pub faults: SimFaults,
    /// Load the card even if it left the rack before: the control plane
    /// still waits for it (its result was lost in a crash), so the operator
    /// puts it back and the engine finds its work already done.
    pub reload: bool,
}

impl SimCard {
    pub fn new(chip_serial: u32) -> Self {
        Self {
            options: CardOptions::with_serial(chip_serial),
            faults: SimFaults::default(),
            reload: false,
        }
    }
}

/// Latency of the simulated cards.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub per_command: Duration,
    pub key_generation: Duration,
}

/// Cards still to be loaded, shared by every slot of the rack.
#[derive(Debug, Clone, Default)]
pub struct CardFeed(Arc<Mutex<VecDeque<SimCard>>>);

impl CardFeed {
    pub fn new(cards: impl IntoIterator<Item = SimCard>) -> Self {
        Self(Arc::new(Mutex::new(cards.into_iter().collect())))
    }
    pub fn push(&self, card: SimCard) {
        if let Ok(mut q) = self.0.lock() {
            q.push_back(card);
        }
    }
    fn next(&self) -> Option<SimCard> {
        self.0.lock().ok().and_then(|mut q| q.pop_front())
    }
    pub fn len(&self) -> usize {
        self.0.lock().map(|q| q.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Cards that left the slots, for inspection (tests check what was written).
#[derive(Debug, Clone, Default)]
pub struct OutputTray(Arc<Mutex<Vec<VirtualPivCard>>>);

impl OutputTray {
    pub fn take(&self) -> Vec<VirtualPivCard> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
    pub fn len(&self) -> usize {
        self.0.lock().map(|v| v.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn put(&self, card: VirtualPivCard) {
        if let Ok(mut v) = self.0.lock() {
            v.push(card);
        }
    }
}

/// A virtual card in a slot, with latency and faults, as a [`CardTransport`].
#[derive(Debug)]
struct LoadedCard {
    card: VirtualPivCard,
    faults: SimFaults,
    latency: Latency,
    apdus: usize,
    pulled: bool,
    /// Where the chip's state is kept, so it survives a worker restart.
    store: Option<StateStore>,
}

impl CardTransport for LoadedCard {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        if self.pulled {
            return Err(TransportError::Removed);
        }
        if self.faults.mute {
            return Err(TransportError::Mute);
        }
        if let Some(k) = self.faults.pull_after_apdus
            && self.apdus >= k
        {
            self.pulled = true;
            self.faults.pull_after_apdus = None;
            return Err(TransportError::Removed);
        }
        self.apdus += 1;
        let ins = command.get(1).copied().unwrap_or(0);
        let mut delay = self.latency.per_command + self.faults.slow;
        if ins == 0x47 {
            delay += self.latency.key_generation;
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        if let Some((fault_ins, sw)) = self.faults.status_word
            && fault_ins == ins
        {
            return Ok(sw.to_be_bytes().to_vec());
        }
        let response = self.card.process(command);
        if self.card.take_state_changed()
            && let Some(store) = &self.store
            && let Err(e) = store.save(self.card.state())
        {
            tracing::error!(error = %e, "cannot save a simulated card's state");
        }
        Ok(response)
    }
}

fn load(
    card: SimCard,
    latency: Latency,
    state_dir: Option<&std::path::Path>,
) -> Option<LoadedCard> {
    let store = state_dir.and_then(|dir| {
        StateStore::open(dir.join(card.options.chip_serial.to_string()))
            .map_err(|e| tracing::error!(error = %e, "cannot open a simulated card's state"))
            .ok()
    });
    let saved = store.as_ref().and_then(|s| s.load().ok().flatten());
    let mut virtual_card = match saved {
        Some(state) => VirtualPivCard::from_state(state),
        None => {
            let mut fresh = VirtualPivCard::new(card.options).ok()?;
            if card.faults.pin_blocked {
                block_pin(&mut fresh);
            }
            fresh
        }
    };
    if let Some(s) = &store {
        let _ = s.save(virtual_card.state());
    }
    let _ = virtual_card.take_state_changed();
    Some(LoadedCard {
        card: virtual_card,
        faults: card.faults,
        latency,
        apdus: 0,
        pulled: false,
        store,
    })
}

/// Uses up every PIN try with wrong PINs, as a careless holder would.
fn block_pin(card: &mut VirtualPivCard) {
    card.process(&[0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08]);
    for _ in 0..16 {
        let mut verify = vec![0x00, 0x20, 0x00, 0x80, 0x08];
        verify.extend_from_slice(b"00000000");
        let response = card.process(&verify);
        if response.ends_with(&[0x69, 0x83]) {
            break;
        }
    }
}

/// How a simulated rack behaves.
#[derive(Debug, Clone, Default)]
pub struct SimConfig {
    pub slots: u16,
    pub latency: Latency,
    /// How long a pulled card stays out.
    pub reinsert: Duration,
    /// Directory keeping each chip's state (one folder per serial), so a
    /// restarted worker finds half-encoded cards as they were.
    pub state_dir: Option<std::path::PathBuf>,
}

/// Starts the slot threads, which take cards from `feed` as they free up.
pub fn start(config: SimConfig, feed: CardFeed, tray: OutputTray) -> Rack {
    let SimConfig {
        slots,
        latency,
        reinsert,
        state_dir,
    } = config;
    let (events_tx, events) = mpsc::unbounded_channel();
    let mut handles = Vec::with_capacity(usize::from(slots));
    for slot in 0..slots {
        let (tx, rx) = std_mpsc::channel();
        handles.push(tx);
        let feed = feed.clone();
        let tray = tray.clone();
        let events = events_tx.clone();
        let setup = SlotSetup {
            latency,
            reinsert,
            state_dir: state_dir.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("sim-slot-{slot}"))
            .spawn(move || slot_thread(slot, rx, events, feed, tray, setup));
        if let Err(e) = spawned {
            tracing::error!(slot, error = %e, "cannot start a slot thread");
        }
    }
    Rack {
        slots: handles,
        events,
    }
}

/// File beside a card's saved state once the card has left the rack.
const LEFT_MARKER: &str = "left-the-rack";

/// File an operator (or a chaos run) puts beside a card's saved state to
/// take the card out of its slot while no job runs on it: a card whose job
/// was cancelled before it reached the rack would otherwise hold its slot.
pub const REMOVE_REQUEST: &str = "remove-from-slot";

fn removal_requested(card: &LoadedCard) -> bool {
    card.store
        .as_ref()
        .is_some_and(|s| s.path().with_file_name(REMOVE_REQUEST).exists())
}

fn left_the_rack(state_dir: Option<&std::path::Path>, card: &SimCard) -> bool {
    state_dir.is_some_and(|dir| {
        dir.join(card.options.chip_serial.to_string())
            .join(LEFT_MARKER)
            .exists()
    })
}

struct SlotSetup {
    latency: Latency,
    reinsert: Duration,
    state_dir: Option<std::path::PathBuf>,
}

fn slot_thread(
    slot: u16,
    commands: std_mpsc::Receiver<SlotCommand>,
    events: mpsc::UnboundedSender<RackEvent>,
    feed: CardFeed,
    tray: OutputTray,
    setup: SlotSetup,
) {
    let SlotSetup {
        latency,
        reinsert,
        state_dir,
    } = setup;
    let mut current: Option<(String, LoadedCard)> = None;
    loop {
        if current.is_none()
            && let Some(card) = feed.next()
        {
            if !card.reload && left_the_rack(state_dir.as_deref(), &card) {
                // Finished before a restart: the operator does not load it again.
                continue;
            }
            let serial = card
                .faults
                .reported_serial
                .unwrap_or(card.options.chip_serial)
                .to_string();
            match load(card, latency, state_dir.as_deref()) {
                Some(loaded) => {
                    let _ = events.send(RackEvent::Inserted {
                        slot,
                        chip_serial: serial.clone(),
                    });
                    current = Some((serial, loaded));
                }
                None => {
                    let _ = events.send(RackEvent::Faulted {
                        slot,
                        reason: "card options describe no possible card".into(),
                    });
                }
            }
        }
        let command = if current.is_none() {
            match commands.recv_timeout(Duration::from_millis(100)) {
                Ok(c) => c,
                Err(std_mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match commands.recv_timeout(Duration::from_millis(250)) {
                Ok(c) => c,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    // Between jobs only: an encode in progress holds the thread.
                    if current.as_ref().is_some_and(|(_, c)| removal_requested(c))
                        && let Some((_, card)) = current.take()
                    {
                        leave(slot, card, &tray, &events);
                    }
                    continue;
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        };
        match command {
            SlotCommand::Encode { job, reply } => {
                let report = match &mut current {
                    Some((serial, card)) if *serial == job.chip_serial => {
                        let report = job.encode(card);
                        if card.pulled {
                            // The operator notices and puts the card back.
                            let _ = events.send(RackEvent::Removed { slot });
                            std::thread::sleep(reinsert);
                            card.pulled = false;
                            card.card.reset();
                            let _ = events.send(RackEvent::Inserted {
                                slot,
                                chip_serial: serial.clone(),
                            });
                        }
                        report
                    }
                    _ => super::card_absent(),
                };
                let _ = reply.send(report);
            }
            SlotCommand::Done { chip_serial } => {
                if current.as_ref().is_some_and(|(s, _)| *s == chip_serial)
                    && let Some((_, card)) = current.take()
                {
                    leave(slot, card, &tray, &events);
                }
            }
        }
    }
}

/// The card leaves its slot for good: marked on disk (a restarted worker
/// does not load it again), put in the tray, reported removed.
fn leave(
    slot: u16,
    card: LoadedCard,
    tray: &OutputTray,
    events: &mpsc::UnboundedSender<RackEvent>,
) {
    if let Some(store) = &card.store
        && let Err(e) = std::fs::write(store.path().with_file_name(LEFT_MARKER), b"")
    {
        tracing::error!(error = %e, "cannot mark a simulated card as finished");
    }
    tray.put(card.card);
    let _ = events.send(RackEvent::Removed { slot });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    async fn next_event(rack: &mut Rack) -> RackEvent {
        tokio::time::timeout(Duration::from_secs(10), rack.events.recv())
            .await
            .expect("a rack event within 10 s")
            .expect("the rack is running")
    }

    #[tokio::test]
    async fn a_card_asked_out_of_its_slot_leaves_it_and_is_not_loaded_again() {
        let dir = std::env::temp_dir().join(format!("cf-sim-remove-{}", uuid::Uuid::new_v4()));
        let config = SimConfig {
            slots: 1,
            state_dir: Some(dir.clone()),
            ..SimConfig::default()
        };
        let feed = CardFeed::new([SimCard::new(7), SimCard::new(8)]);
        let tray = OutputTray::default();
        let mut rack = start(config.clone(), feed, tray.clone());
        match next_event(&mut rack).await {
            RackEvent::Inserted {
                slot: 0,
                chip_serial,
            } => assert_eq!(chip_serial, "7"),
            other => panic!("{other:?}"),
        }
        std::fs::write(dir.join("7").join(REMOVE_REQUEST), b"").unwrap();
        assert!(matches!(
            next_event(&mut rack).await,
            RackEvent::Removed { slot: 0 }
        ));
        // The slot is free again: the next card goes in.
        match next_event(&mut rack).await {
            RackEvent::Inserted {
                slot: 0,
                chip_serial,
            } => assert_eq!(chip_serial, "8"),
            other => panic!("{other:?}"),
        }
        assert_eq!(tray.len(), 1);
        // A restarted worker on the same directory does not load it again.
        drop(rack);
        let mut again = start(
            config,
            CardFeed::new([SimCard::new(7)]),
            OutputTray::default(),
        );
        let quiet = tokio::time::timeout(Duration::from_millis(800), again.events.recv()).await;
        assert!(quiet.is_err(), "card 7 was loaded again: {quiet:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
