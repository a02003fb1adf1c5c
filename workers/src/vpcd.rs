//! Attaches a virtual card to vsmartcard's vpcd reader driver, so that pcscd, the PC/SC client
//! library and external tools talk to it as to a card in a real reader.
//!
//! The card is a TCP client of vpcd (which listens inside pcscd, on 35963 and 35964 for the
//! two slots of its default reader). Every message is a two-byte big-endian length and a
//! payload: a one-byte payload is a control message (power off, power on, reset, ATR request),
//! anything longer is a command APDU answered with the response APDU.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use socket2::SockRef;
use tracing::{debug, info, trace, warn};
use zeroize::Zeroizing;

use crate::piv::{
    CardOptions, MgmtKeyAlgorithm, OptionsError, StateStore, StoreError, VirtualPivCard,
};

/// Control message: power off.
pub const CTRL_OFF: u8 = 0;
/// Control message: power on.
pub const CTRL_ON: u8 = 1;
/// Control message: reset.
pub const CTRL_RESET: u8 = 2;
/// Control message: send the ATR.
pub const CTRL_ATR: u8 = 4;

const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Why the virtual card stopped.
#[derive(Debug, thiserror::Error)]
pub enum VpcdError {
    /// The card options describe no possible card.
    #[error("invalid card options: {0}")]
    Options(#[from] OptionsError),
    /// Card state could not be loaded or saved.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The connection to vpcd failed in a way reconnecting does not fix.
    #[error("vpcd connection: {0}")]
    Io(#[from] io::Error),
}

/// Everything needed to run one virtual card attached to vpcd.
#[derive(Debug, Clone)]
pub struct VirtualCardConfig {
    /// vpcd address, `host:port`.
    pub vpcd_addr: String,
    /// Directory for the card's state; without it the card forgets everything on exit.
    pub state_dir: Option<PathBuf>,
    /// Chip serial for a new card; `None` picks a random one. A saved card keeps its own.
    pub chip_serial: Option<u32>,
    /// Whether the YubiKey-compatible extensions exist.
    pub extensions: bool,
    /// Whether PINs and PUKs must be digits.
    pub numeric_pins_only: bool,
    /// See [`CardOptions::vendor_objects`].
    pub vendor_objects: bool,
    /// See [`CardOptions::implicit_selection`].
    pub implicit_selection: bool,
    /// See [`CardOptions::select_without_response`].
    pub select_without_response: bool,
    /// See [`CardOptions::puk_reports_tries`].
    pub puk_reports_tries: bool,
    /// Allowed management key algorithms; the factory key uses 3DES when allowed, else the
    /// first one listed.
    pub mgmt_key_algorithms: Vec<MgmtKeyAlgorithm>,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl VirtualCardConfig {
    /// A default card attached to `vpcd_addr`.
    pub fn new(vpcd_addr: impl Into<String>) -> Self {
        let defaults = CardOptions::default();
        Self {
            vpcd_addr: vpcd_addr.into(),
            state_dir: None,
            chip_serial: None,
            extensions: defaults.extensions,
            numeric_pins_only: defaults.numeric_pins_only,
            vendor_objects: defaults.vendor_objects,
            implicit_selection: defaults.implicit_selection,
            select_without_response: defaults.select_without_response,
            puk_reports_tries: defaults.puk_reports_tries,
            mgmt_key_algorithms: defaults.mgmt_key_algorithms,
            max_backoff: Duration::from_secs(2),
        }
    }

    /// The card options this configuration asks for.
    pub fn card_options(&self, chip_serial: u32) -> CardOptions {
        let initial = if self
            .mgmt_key_algorithms
            .contains(&MgmtKeyAlgorithm::TripleDes)
        {
            MgmtKeyAlgorithm::TripleDes
        } else {
            self.mgmt_key_algorithms
                .first()
                .copied()
                .unwrap_or(MgmtKeyAlgorithm::TripleDes)
        };
        CardOptions {
            chip_serial,
            extensions: self.extensions,
            numeric_pins_only: self.numeric_pins_only,
            vendor_objects: self.vendor_objects,
            implicit_selection: self.implicit_selection,
            select_without_response: self.select_without_response,
            puk_reports_tries: self.puk_reports_tries,
            mgmt_key_algorithms: self.mgmt_key_algorithms.clone(),
            initial_mgmt_key_algorithm: initial,
            ..CardOptions::default()
        }
    }
}

/// Loads the card saved in `store`, or makes a new one from `config` and saves it.
///
/// A saved card keeps the options it was made with; options on the command line that differ
/// are reported and ignored, as a real card cannot be changed by asking differently.
pub fn load_or_create(
    config: &VirtualCardConfig,
    store: Option<&StateStore>,
) -> Result<VirtualPivCard, VpcdError> {
    if let Some(saved) = store.map(StateStore::load).transpose()?.flatten() {
        let serial = config.chip_serial.unwrap_or(saved.options().chip_serial);
        if config.card_options(serial) != *saved.options() {
            warn!(
                chip_serial = saved.options().chip_serial,
                "saved card options differ from the requested ones; the saved card keeps its own"
            );
        }
        info!(
            chip_serial = saved.options().chip_serial,
            "loaded saved virtual card"
        );
        return Ok(VirtualPivCard::from_state(saved));
    }
    let serial = config
        .chip_serial
        .unwrap_or_else(|| rand::random::<u32>().max(1));
    let card = VirtualPivCard::new(config.card_options(serial))?;
    if let Some(store) = store {
        store.save(card.state())?;
    }
    info!(chip_serial = serial, "created factory-fresh virtual card");
    Ok(card)
}

/// Runs the card described by `config` until `stop` is set: loads or creates it, connects to
/// vpcd and reconnects with backoff whenever vpcd goes away.
///
/// `stop` is checked between connections; the process may also simply be killed, since state
/// is saved before each response leaves the card.
pub fn run_virtual_card(config: &VirtualCardConfig, stop: &AtomicBool) -> Result<(), VpcdError> {
    let store = config
        .state_dir
        .as_ref()
        .map(StateStore::open)
        .transpose()?;
    let mut card = load_or_create(config, store.as_ref())?;
    let mut backoff = FIRST_BACKOFF;
    let mut announced_wait = false;
    while !stop.load(Ordering::Relaxed) {
        match TcpStream::connect(&config.vpcd_addr) {
            Ok(stream) => {
                info!(vpcd = %config.vpcd_addr, "connected to vpcd: card inserted");
                backoff = FIRST_BACKOFF;
                announced_wait = false;
                match serve_connection(stream, &mut card, store.as_ref()) {
                    Ok(()) => info!("vpcd closed the connection; reconnecting"),
                    Err(VpcdError::Io(err)) => {
                        warn!(error = %err, "vpcd connection lost; reconnecting")
                    }
                    Err(fatal) => return Err(fatal),
                }
                // Being pulled from the reader is a power cycle.
                card.reset();
            }
            Err(err) => {
                if announced_wait {
                    debug!(vpcd = %config.vpcd_addr, error = %err, "vpcd still unreachable");
                } else {
                    info!(vpcd = %config.vpcd_addr, error = %err, "waiting for vpcd");
                    announced_wait = true;
                }
                thread::sleep(backoff);
                backoff = (backoff * 2).min(config.max_backoff);
            }
        }
    }
    Ok(())
}

/// Serves one vpcd connection until vpcd closes it. Returns `Ok` on a clean close,
/// [`VpcdError::Io`] when the connection breaks, and [`VpcdError::Store`] when state cannot
/// be saved (the response is then withheld, so nothing is acknowledged that is not on disk).
pub fn serve_connection(
    mut stream: TcpStream,
    card: &mut VirtualPivCard,
    store: Option<&StateStore>,
) -> Result<(), VpcdError> {
    // Without these every APDU waits for a delayed ACK (about 40 ms); with them ~80 µs.
    stream.set_nodelay(true)?;
    loop {
        SockRef::from(&stream).set_tcp_quickack(true)?;
        let Some(message) = read_frame(&mut stream)? else {
            return Ok(());
        };
        let reply = match message.as_slice() {
            [] => {
                debug!("ignoring an empty vpcd message");
                None
            }
            [control] => control_message(card, *control),
            apdu => Some(Zeroizing::new(handle_apdu(card, apdu, store)?)),
        };
        if let Some(reply) = reply {
            write_frame(&mut stream, &reply)?;
        }
    }
}

fn control_message(card: &mut VirtualPivCard, control: u8) -> Option<Zeroizing<Vec<u8>>> {
    match control {
        CTRL_OFF | CTRL_ON | CTRL_RESET => {
            trace!(control, "power event");
            card.reset();
            None
        }
        CTRL_ATR => {
            trace!("ATR requested");
            Some(Zeroizing::new(card.atr().to_vec()))
        }
        other => {
            warn!(control = other, "ignoring unknown vpcd control message");
            None
        }
    }
}

fn handle_apdu(
    card: &mut VirtualPivCard,
    apdu: &[u8],
    store: Option<&StateStore>,
) -> Result<Vec<u8>, VpcdError> {
    let response = card.process(apdu);
    if card.take_state_changed()
        && let Some(store) = store
    {
        store.save(card.state())?;
    }
    // Only the header and status word are traced: data fields carry PINs and keys.
    let sw = response
        .len()
        .checked_sub(2)
        .map(|i| &response[i..])
        .unwrap_or_default();
    trace!(header = %hex::encode(apdu.get(..4).unwrap_or(apdu)), sw = %hex::encode(sw), "apdu");
    Ok(response)
}

/// Reads one length-prefixed message; `None` when the peer closed between messages.
fn read_frame(stream: &mut impl Read) -> io::Result<Option<Zeroizing<Vec<u8>>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let mut payload = Zeroizing::new(vec![0u8; usize::from(u16::from_be_bytes(len))]);
    stream.read_exact(&mut payload)?;
    Ok(Some(payload))
}

/// Writes one length-prefixed message in a single write, so it leaves in one segment.
fn write_frame(stream: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let len = u16::try_from(payload.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "vpcd message longer than 65535 bytes",
        )
    })?;
    let mut frame = Zeroizing::new(Vec::with_capacity(payload.len() + 2));
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
