//! The virtual PIV card: command dispatch, command chaining, and response chaining with
//! GET RESPONSE.

use std::fmt;

use zeroize::Zeroizing;

use super::command::PivCommand;
use super::ids::{ins, key_ref};
use super::options::{CardOptions, OptionsError};
use super::state::{Chain, PendingResponse, PersistentState, Session};
use crate::apdu::{
    CLA_CHAINING, CommandApdu, MAX_EXTENDED_NE, MAX_SHORT_NE, ResponseApdu, StatusWord,
};

/// What a command handler returns: response data on success, or the status word.
pub(super) type CardResult = Result<Vec<u8>, StatusWord>;

/// Most data a command chain may accumulate.
pub const MAX_CHAIN_LEN: usize = 16 * 1024;

/// Answer to reset: T=1, historical bytes `80 59 "cardfleet"` (card issuer's data).
pub const ATR: [u8; 16] = atr();

const fn atr() -> [u8; 16] {
    let mut atr = [
        0x3B, 0x8B, 0x80, 0x01, 0x80, 0x59, b'c', b'a', b'r', b'd', b'f', b'l', b'e', b'e', b't',
        0x00,
    ];
    // TCK: exclusive-or of every byte from T0 to the last historical byte.
    let mut tck = 0;
    let mut i = 1;
    while i < atr.len() - 1 {
        tck ^= atr[i];
        i += 1;
    }
    atr[atr.len() - 1] = tck;
    atr
}

/// A PIV card application in memory, following NIST SP 800-73-4 with the YubiKey-compatible
/// management extensions.
///
/// [`VirtualPivCard::process`] takes a command APDU and returns the response APDU;
/// [`VirtualPivCard::reset`] is a power cycle. Persistent state changes are announced through
/// [`VirtualPivCard::take_state_changed`] so that a caller can save [`VirtualPivCard::state`].
pub struct VirtualPivCard {
    pub(super) state: PersistentState,
    pub(super) session: Session,
    state_changed: bool,
}

impl VirtualPivCard {
    /// A card in factory state.
    pub fn new(options: CardOptions) -> Result<Self, OptionsError> {
        PersistentState::factory(options).map(Self::from_state)
    }

    /// A card with previously saved state, freshly powered on.
    pub fn from_state(state: PersistentState) -> Self {
        Self {
            state,
            session: Session::default(),
            state_changed: false,
        }
    }

    /// The persistent state, for saving.
    pub fn state(&self) -> &PersistentState {
        &self.state
    }

    /// The options the card was made with.
    pub fn options(&self) -> &CardOptions {
        &self.state.options
    }

    /// The answer to reset.
    pub fn atr(&self) -> &'static [u8] {
        &ATR
    }

    /// Whether persistent state changed since the last call.
    pub fn take_state_changed(&mut self) -> bool {
        std::mem::take(&mut self.state_changed)
    }

    /// Power cycle: clears selection, verification, authentication and pending chains, and
    /// keeps persistent state.
    pub fn reset(&mut self) {
        self.session = Session::default();
    }

    /// Processes one command APDU and returns the response APDU (data followed by SW1 SW2).
    /// Malformed APDUs answer `6700`.
    pub fn process(&mut self, apdu: &[u8]) -> Vec<u8> {
        match CommandApdu::parse(apdu) {
            Ok(command) => self.process_command(command).to_bytes(),
            Err(_) => ResponseApdu::status(StatusWord::WrongLength).to_bytes(),
        }
    }

    /// Processes one parsed command.
    pub fn process_command(&mut self, command: CommandApdu) -> ResponseApdu {
        if command.ins() == ins::GET_RESPONSE && command.cla() == 0x00 {
            return self.get_response(&command);
        }
        self.session.response = None;
        if !class_supported(&command) {
            self.session.chain = None;
            return ResponseApdu::status(StatusWord::ClaNotSupported);
        }
        let command = match self.collect_chain(command) {
            Ok(Some(command)) => command,
            Ok(None) => return ResponseApdu::status(StatusWord::Success),
            Err(sw) => return ResponseApdu::status(sw),
        };
        match self.execute(&command) {
            Ok(data) => self.respond(data, command.ne()),
            Err(sw) => ResponseApdu::status(sw),
        }
    }

    /// Marks persistent state as changed and gives access to it.
    pub(super) fn state_mut(&mut self) -> &mut PersistentState {
        self.state_changed = true;
        &mut self.state
    }

    /// Adds a chained command to the pending chain. Returns the complete command once its last
    /// part arrives; a command with a different header abandons the pending chain.
    fn collect_chain(&mut self, command: CommandApdu) -> Result<Option<CommandApdu>, StatusWord> {
        let header = [
            command.cla() & !CLA_CHAINING,
            command.ins(),
            command.p1(),
            command.p2(),
        ];
        let previous = self
            .session
            .chain
            .take()
            .filter(|chain| chain.header == header);
        if previous.is_none() && !command.is_chained() {
            return Ok(Some(command));
        }
        let mut data = previous.map(|chain| chain.data).unwrap_or_default();
        if data.len() + command.data().len() > MAX_CHAIN_LEN {
            return Err(StatusWord::WrongLength);
        }
        data.extend_from_slice(command.data());
        if command.is_chained() {
            self.session.chain = Some(Chain { header, data });
            return Ok(None);
        }
        let [cla, ins, p1, p2] = header;
        let mut full = CommandApdu::new(cla, ins, p1, p2)
            .with_data(data.to_vec())
            .map_err(|_| StatusWord::WrongLength)?;
        if let Some(ne) = command.ne() {
            full = full.with_ne(ne).map_err(|_| StatusWord::WrongLength)?;
        }
        Ok(Some(full))
    }

    fn execute(&mut self, apdu: &CommandApdu) -> CardResult {
        // Before the PIV application is selected, only the card manager answers.
        if !self.session.selected
            && !self.state.options.implicit_selection
            && apdu.ins() != ins::SELECT
            && apdu.ins() != ins::GET_DATA_GP
        {
            return Err(StatusWord::InsNotSupported);
        }
        if apdu.ins() == ins::SELECT
            && apdu.p2() == 0x0C
            && !self.state.options.select_without_response
        {
            return Err(StatusWord::IncorrectP1P2);
        }
        let command = PivCommand::parse(apdu, self.state.options.extensions)?;
        // A management key challenge is only good for the very next command.
        if !matches!(
            command,
            PivCommand::GeneralAuthenticate {
                key_ref: key_ref::MANAGEMENT,
                ..
            }
        ) {
            self.session.pending_mgmt = None;
        }
        match command {
            PivCommand::Select {
                aid,
                return_template,
            } => self
                .select(aid)
                .map(|apt| if return_template { apt } else { Vec::new() }),
            PivCommand::GetData { object } => self.get_data(object),
            PivCommand::GetCplc => self.cplc(),
            PivCommand::Verify { key_ref, action } => self.verify(key_ref, action),
            PivCommand::ChangeReferenceData { key_ref, data } => {
                self.change_reference_data(key_ref, data)
            }
            PivCommand::ResetRetryCounter { data } => self.reset_retry_counter(data),
            PivCommand::GeneralAuthenticate {
                algorithm,
                key_ref,
                template,
            } => self.general_authenticate(algorithm, key_ref, template),
            PivCommand::GenerateKeyPair { slot, template } => {
                self.generate_key_pair(slot, template)
            }
            PivCommand::PutData { data } => self.put_data(data),
            PivCommand::GetMetadata { key_ref } => self.metadata(key_ref),
            PivCommand::GetSerial => Ok(self.state.options.chip_serial.to_be_bytes().to_vec()),
            PivCommand::SetPinRetries { pin, puk } => self.set_pin_retries(pin, puk),
            PivCommand::ResetCard => self.factory_reset(),
            PivCommand::GetVersion => Ok(self.state.options.version.to_vec()),
            PivCommand::SetManagementKey { data } => self.set_management_key(data),
        }
    }

    /// Sends at most Ne bytes (256 without Le) and keeps the rest for GET RESPONSE.
    fn respond(&mut self, mut data: Vec<u8>, ne: Option<usize>) -> ResponseApdu {
        let limit = ne.unwrap_or(MAX_SHORT_NE).min(MAX_EXTENDED_NE);
        if data.len() <= limit {
            return ResponseApdu::success(data);
        }
        let rest = data.split_off(limit);
        let sw = bytes_remaining(rest.len());
        self.session.response = Some(PendingResponse {
            data: Zeroizing::new(rest),
            offset: 0,
        });
        ResponseApdu::new(data, sw)
    }

    fn get_response(&mut self, command: &CommandApdu) -> ResponseApdu {
        if command.p1p2() != 0 {
            return ResponseApdu::status(StatusWord::IncorrectP1P2);
        }
        let Some(pending) = self.session.response.as_mut() else {
            return ResponseApdu::status(StatusWord::ConditionsOfUseNotSatisfied);
        };
        let limit = command.ne().unwrap_or(MAX_SHORT_NE);
        let end = pending.data.len().min(pending.offset + limit);
        let chunk = pending.data[pending.offset..end].to_vec();
        pending.offset = end;
        let left = pending.data.len() - end;
        if left == 0 {
            self.session.response = None;
            ResponseApdu::success(chunk)
        } else {
            ResponseApdu::new(chunk, bytes_remaining(left))
        }
    }
}

fn class_supported(command: &CommandApdu) -> bool {
    match command.cla() {
        0x00 | CLA_CHAINING => true,
        0x80 => command.ins() == ins::GET_DATA_GP,
        _ => false,
    }
}

fn bytes_remaining(left: usize) -> StatusWord {
    StatusWord::BytesRemaining(u8::try_from(left).unwrap_or(0))
}

impl fmt::Debug for VirtualPivCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtualPivCard")
            .field("chip_serial", &self.state.options.chip_serial)
            .field("selected", &self.session.selected)
            .field("pin_verified", &self.session.pin_verified)
            .field("mgmt_authenticated", &self.session.mgmt_authenticated)
            .finish_non_exhaustive()
    }
}
