//! The `pcsc` backend: real readers through pcscd, one slot per reader.
//!
//! Threads, each with its own pcscd context (PC/SC calls block, so none of this runs on the
//! async runtime):
//!
//! - the **monitor** waits in `SCardGetStatusChange` on every matching reader and on
//!   `\\?PnP?\Notification`, so card insertions and removals and readers plugged in or out
//!   arrive as events. It gives a reader a slot on first sight and tells that slot's thread
//!   when a card arrives or leaves. It never talks to a card, so a mute card cannot hold up
//!   the other readers.
//! - one **slot thread** per reader seen: identifies an arriving card (shared connection,
//!   [`engine::read_chip_serial`]) and encodes jobs (exclusive connection, one transaction),
//!   one thing at a time, so identification and encoding never race for the card.
//! - one **forwarder** per slot thread hands it the runtime's [`SlotCommand`]s, since a std
//!   channel cannot wait on two senders' kinds at once.
//!
//! pcscd serves at most 16 readers, so a rack has [`MAX_READERS`] slots.

mod connection;
mod monitor;
mod readers;
mod slot;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::Duration;

use std::ffi::CString;

use ::pcsc::{Context, Scope};
use tokio::sync::mpsc;

use super::{Rack, SlotCommand};
pub use connection::{CardConnection, PcscTransport, transport_error};
use monitor::Monitor;
pub use readers::{SlotTable, name_matches};

/// Readers one pcscd serves, and so the slots of a PC/SC rack.
pub const MAX_READERS: u16 = 16;
/// How often the monitor wakes without an event, to notice that the rack was dropped.
const WATCHDOG: Duration = Duration::from_secs(2);
/// How long a slot waits for another application to let go of its card.
const BUSY_WAIT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Starts a rack of the readers pcscd offers whose names match `name_patterns` (all when
/// empty). Fails at once when pcscd cannot be reached.
pub fn start(name_patterns: &[String]) -> anyhow::Result<Rack> {
    let context = Context::establish(Scope::User).map_err(|e| {
        anyhow::anyhow!("cannot reach pcscd (reader.type = \"pcsc\"): {e}; is pcscd running?")
    })?;
    let (events_tx, events) = mpsc::unbounded_channel();
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::with_capacity(usize::from(MAX_READERS));
    let mut pending = Vec::with_capacity(usize::from(MAX_READERS));
    for _ in 0..MAX_READERS {
        let (tx, rx) = std_mpsc::channel();
        senders.push(tx);
        pending.push(Some(rx));
    }
    let monitor = Monitor::new(context, name_patterns.to_vec(), pending, events_tx, stop);
    thread::Builder::new()
        .name("pcsc-monitor".into())
        .spawn(move || monitor.run())
        .map_err(|e| anyhow::anyhow!("cannot start the PC/SC monitor thread: {e}"))?;
    tracing::info!(patterns = ?name_patterns, "watching PC/SC readers");
    Ok(Rack {
        slots: senders,
        events,
    })
}

/// What a slot thread is told.
enum SlotInput {
    Command(SlotCommand),
    /// A card is in the slot's reader (named here: a slot may change readers).
    Arrived(CString),
    Left,
    Stop,
}
