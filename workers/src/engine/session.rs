//! APDU exchange with one card: command chaining for long data and GET RESPONSE chaining
//! for long answers, in exactly this one place.
//!
//! APDUs are traced with their instruction, lengths and status word only: data fields may
//! carry a PIN, PUK or key and never reach a log line.

use zeroize::Zeroizing;

use super::CardTransport;
use super::error::EngineError;
use crate::apdu::{CommandApdu, MAX_SHORT_DATA, MAX_SHORT_NE, ResponseApdu, StatusWord, ins};

/// Most response bytes collected through GET RESPONSE before the card is deemed broken.
const MAX_RESPONSE_LEN: usize = 64 * 1024;

/// A conversation with one card through its transport.
pub(crate) struct Session<'c> {
    card: &'c mut dyn CardTransport,
    apdus: usize,
}

impl<'c> Session<'c> {
    pub(crate) fn new(card: &'c mut dyn CardTransport) -> Self {
        Self { card, apdus: 0 }
    }

    /// APDUs exchanged so far, GET RESPONSE and chained parts included.
    pub(crate) fn apdus(&self) -> usize {
        self.apdus
    }

    /// Sends a command, split into a chain when its data does not fit one short APDU, and
    /// returns the whole answer: every `61xx` is followed with GET RESPONSE and a `6Cxx`
    /// repeats the command with the exact Le. A chained part that is refused ends the
    /// exchange with that part's status word.
    pub(crate) fn transmit(
        &mut self,
        name: &'static str,
        command: CommandApdu,
    ) -> Result<ResponseApdu, EngineError> {
        let mut parts = command.into_chain(MAX_SHORT_DATA).into_iter().peekable();
        while let Some(part) = parts.next() {
            let response = self.exchange(name, &part)?;
            if parts.peek().is_some() {
                if response.sw() != StatusWord::Success {
                    return Ok(response);
                }
                continue;
            }
            let response = match response.sw() {
                StatusWord::WrongLe(exact) => {
                    let ne = if exact == 0 {
                        MAX_SHORT_NE
                    } else {
                        usize::from(exact)
                    };
                    let again = part.with_ne(ne).map_err(|e| EngineError::build(name, e))?;
                    self.exchange(name, &again)?
                }
                _ => response,
            };
            return self.collect(name, response);
        }
        Err(EngineError::malformed(name, "empty command chain"))
    }

    fn collect(
        &mut self,
        name: &'static str,
        first: ResponseApdu,
    ) -> Result<ResponseApdu, EngineError> {
        let mut sw = first.sw();
        let mut data = first.into_data();
        while let Some(remaining) = sw.bytes_remaining() {
            if data.len() > MAX_RESPONSE_LEN {
                return Err(EngineError::malformed(
                    name,
                    format!("answer grows past {MAX_RESPONSE_LEN} bytes"),
                ));
            }
            let get = CommandApdu::new(0x00, ins::GET_RESPONSE, 0x00, 0x00)
                .with_ne(remaining)
                .map_err(|e| EngineError::build(name, e))?;
            let next = self.exchange(name, &get)?;
            sw = next.sw();
            data.extend_from_slice(next.data());
        }
        Ok(ResponseApdu::new(data, sw))
    }

    fn exchange(
        &mut self,
        name: &'static str,
        command: &CommandApdu,
    ) -> Result<ResponseApdu, EngineError> {
        let bytes = Zeroizing::new(command.to_bytes());
        self.apdus += 1;
        let raw = self.card.transmit(&bytes).inspect_err(|error| {
            tracing::debug!(command = name, ins = command.ins(), %error, "apdu not exchanged");
        })?;
        let response = ResponseApdu::parse(&raw).map_err(|e| EngineError::malformed(name, e))?;
        let [sw1, sw2] = response.sw().to_bytes();
        crate::metrics::record_status_word(sw1, sw2);
        tracing::trace!(
            command = name,
            ins = command.ins(),
            data_len = command.data().len(),
            response_len = response.data().len(),
            sw = %response.sw(),
            "apdu"
        );
        Ok(response)
    }
}

/// Builds a command APDU with a data field (none when `data` is empty) and Le `00`.
pub(crate) fn command(
    name: &'static str,
    ins: u8,
    p1: u8,
    p2: u8,
    data: &[u8],
) -> Result<CommandApdu, EngineError> {
    let mut apdu = CommandApdu::new(0x00, ins, p1, p2);
    if !data.is_empty() {
        apdu = apdu
            .with_data(data.to_vec())
            .map_err(|e| EngineError::build(name, e))?;
    }
    apdu.with_ne(MAX_SHORT_NE)
        .map_err(|e| EngineError::build(name, e))
}

/// Builds a command without Le, for commands that return no data (VERIFY, CHANGE REFERENCE
/// DATA, PUT DATA, SET MANAGEMENT KEY).
pub(crate) fn command_no_le(
    name: &'static str,
    ins: u8,
    p1: u8,
    p2: u8,
    data: &[u8],
) -> Result<CommandApdu, EngineError> {
    let apdu = CommandApdu::new(0x00, ins, p1, p2);
    if data.is_empty() {
        return Ok(apdu);
    }
    apdu.with_data(data.to_vec())
        .map_err(|e| EngineError::build(name, e))
}
