//! Connections to a card through pcscd: the engine's transport over one transaction, and
//! what PC/SC errors mean to the engine.

use std::ffi::{CStr, CString};

use ::pcsc::{Context, Disposition, Error as PcscError, Protocols, Scope, ShareMode};
use cardfleet_schemas::{Failure, Outcome};
use zeroize::Zeroizing;

use crate::engine::{CardTransport, EncodeReport, EngineError, TransportError};

/// What a PC/SC error means to the engine.
pub fn transport_error(error: PcscError) -> TransportError {
    match error {
        PcscError::RemovedCard | PcscError::NoSmartcard => TransportError::Removed,
        PcscError::ResetCard => TransportError::Reset,
        PcscError::Timeout | PcscError::UnresponsiveCard | PcscError::UnpoweredCard => {
            TransportError::Mute
        }
        other => TransportError::Reader(other.to_string()),
    }
}

/// Whether pcscd itself went away, so the context must be established again.
pub(super) fn context_lost(error: PcscError) -> bool {
    matches!(
        error,
        PcscError::NoService
            | PcscError::ServiceStopped
            | PcscError::InvalidHandle
            | PcscError::CommError
    )
}

/// A failed attempt that never reached the engine.
pub(super) fn failed(error: TransportError) -> EncodeReport {
    let error = EngineError::from(error);
    EncodeReport {
        outcome: Outcome::Failed,
        failure: Some(Failure {
            code: error.code().as_str().into(),
            message: error.to_string(),
            card_unusable: error.card_unusable(),
        }),
        retryable: error.retryable(),
        steps: Vec::new(),
        public_keys: Vec::new(),
    }
}

/// A connection to the card in one reader. Closing (or dropping) it leaves the card as it
/// is: a plain `pcsc::Card` resets the card when dropped.
pub struct CardConnection {
    card: Option<::pcsc::Card>,
    share: ShareMode,
}

impl std::fmt::Debug for CardConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardConnection")
            .field("share", &self.share)
            .finish_non_exhaustive()
    }
}

impl CardConnection {
    /// Connects to the card in `reader` (its full pcscd name) through a new pcscd context:
    /// for tools, tests and benchmarks.
    pub fn open(reader: &str, exclusive: bool) -> Result<Self, TransportError> {
        let context = Context::establish(Scope::User).map_err(transport_error)?;
        let name = CString::new(reader)
            .map_err(|_| TransportError::Reader("reader name contains NUL".into()))?;
        let share = if exclusive {
            ShareMode::Exclusive
        } else {
            ShareMode::Shared
        };
        Self::connect(&context, &name, share).map_err(transport_error)
    }

    pub(super) fn connect(
        context: &Context,
        reader: &CStr,
        share: ShareMode,
    ) -> Result<Self, PcscError> {
        let card = context.connect(reader, share, Protocols::ANY)?;
        Ok(Self {
            card: Some(card),
            share,
        })
    }

    /// Begins a transaction; a card reset since the connection was made is reconnected once.
    pub fn transaction(&mut self) -> Result<PcscTransport<'_>, TransportError> {
        let share = self.share;
        let card = self.card.as_mut().ok_or(TransportError::Removed)?;
        let card = match card.transaction2() {
            Ok(tx) => return Ok(PcscTransport::new(tx, share)),
            Err((card, PcscError::ResetCard)) => {
                card.reconnect(share, Protocols::ANY, Disposition::LeaveCard)
                    .map_err(transport_error)?;
                card
            }
            Err((_, e)) => return Err(transport_error(e)),
        };
        let tx = card.transaction().map_err(transport_error)?;
        Ok(PcscTransport::new(tx, share))
    }
}

impl Drop for CardConnection {
    fn drop(&mut self) {
        if let Some(card) = self.card.take()
            && let Err((_, e)) = card.disconnect(Disposition::LeaveCard)
        {
            tracing::debug!(error = %e, "disconnecting from a card failed");
        }
    }
}

/// The engine's [`CardTransport`] over one PC/SC transaction. Dropping it ends the
/// transaction, leaving the card as it is.
pub struct PcscTransport<'c> {
    tx: ::pcsc::Transaction<'c>,
    share: ShareMode,
    /// Nothing sent yet: a reset reported now happened before this session began.
    fresh: bool,
    buffer: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for PcscTransport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcscTransport")
            .field("fresh", &self.fresh)
            .finish_non_exhaustive()
    }
}

impl<'c> PcscTransport<'c> {
    fn new(tx: ::pcsc::Transaction<'c>, share: ShareMode) -> Self {
        Self {
            tx,
            share,
            fresh: true,
            buffer: Zeroizing::new(vec![0; ::pcsc::MAX_BUFFER_SIZE_EXTENDED]),
        }
    }

    /// Ends the transaction, leaving the card as it is.
    pub fn end(self) -> Result<(), TransportError> {
        self.tx
            .end(Disposition::LeaveCard)
            .map_err(|(_, e)| transport_error(e))
    }

    /// Ends the transaction with a card reset, so that no application that
    /// connects next inherits a verified PIN or an authenticated management key.
    pub fn end_with_reset(self) -> Result<(), TransportError> {
        self.tx
            .end(Disposition::ResetCard)
            .map_err(|(_, e)| transport_error(e))
    }
}

impl CardTransport for PcscTransport<'_> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let first = std::mem::replace(&mut self.fresh, false);
        let error = match self.tx.transmit(command, &mut self.buffer) {
            Ok(response) => return Ok(response.to_vec()),
            Err(e) => e,
        };
        // Only the header: data fields carry PINs and keys.
        tracing::trace!(header = %hex::encode(command.get(..4).unwrap_or(command)), error = %error, "transmit failed");
        if error != PcscError::ResetCard || !first {
            return Err(transport_error(error));
        }
        // Reset by someone else before this session sent anything: nothing of ours is lost.
        self.tx
            .reconnect(self.share, Protocols::ANY, Disposition::LeaveCard)
            .map_err(transport_error)?;
        match self.tx.transmit(command, &mut self.buffer) {
            Ok(response) => Ok(response.to_vec()),
            Err(e) => Err(transport_error(e)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn pcsc_errors_map_to_what_the_engine_retries_on() {
        assert_eq!(
            transport_error(PcscError::RemovedCard),
            TransportError::Removed
        );
        assert_eq!(
            transport_error(PcscError::NoSmartcard),
            TransportError::Removed
        );
        assert_eq!(transport_error(PcscError::ResetCard), TransportError::Reset);
        assert_eq!(transport_error(PcscError::Timeout), TransportError::Mute);
        assert_eq!(
            transport_error(PcscError::UnresponsiveCard),
            TransportError::Mute
        );
        assert_eq!(
            transport_error(PcscError::UnpoweredCard),
            TransportError::Mute
        );
        assert!(
            matches!(transport_error(PcscError::ReaderUnavailable), TransportError::Reader(m) if !m.is_empty())
        );
        assert!(matches!(
            transport_error(PcscError::SharingViolation),
            TransportError::Reader(_)
        ));
    }

    #[test]
    fn reports_of_attempts_that_never_reached_the_card_carry_engine_codes() {
        let removed = failed(TransportError::Removed);
        assert_eq!(removed.failure.as_ref().unwrap().code, "card_removed");
        assert!(removed.retryable && removed.steps.is_empty());
        let mute = failed(TransportError::Mute);
        assert_eq!(mute.failure.as_ref().unwrap().code, "card_mute");
        let reader = failed(TransportError::Reader("busy".into()));
        assert_eq!(reader.failure.as_ref().unwrap().code, "reader_error");
        assert!(reader.retryable);
    }
}
