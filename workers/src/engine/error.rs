//! Engine errors and the catalogue of failure codes they become in an [`EncodeReport`].
//!
//! Each code carries the two decisions the runtime and the ledger need: whether another
//! attempt on the same card may succeed (`retryable`) and whether the chip can never be
//! initialized (`card_unusable`). Messages never carry a PIN, PUK or key.
//!
//! [`EncodeReport`]: super::EncodeReport

use std::fmt;

use super::TransportError;
use crate::apdu::{ApduError, StatusWord};

/// Stable, machine-readable reasons a job fails on the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCode {
    /// The request itself is malformed (e.g. a PIN of the wrong length); nothing was sent.
    InvalidRequest,
    /// The card left the slot.
    CardRemoved,
    /// The card was reset by another party.
    CardReset,
    /// The chip does not answer.
    CardMute,
    /// The reader failed.
    ReaderError,
    /// The card has no PIV application.
    NotPiv,
    /// The card reveals no CPLC, vendor serial or CHUID.
    ChipSerialUnavailable,
    /// The chip in the slot is not the one the job is for; nothing was written.
    ChipSerialMismatch,
    /// Another job already changed this card's credentials.
    AlreadyInitialized,
    /// The journal object on the card cannot be parsed.
    JournalUnreadable,
    /// The card refuses to store the journal object and the worker keeps no journal.
    JournalUnsupported,
    /// The worker's own journal (for cards that keep none) could not be read or written.
    JournalStoreFailed,
    /// The PIN is blocked.
    PinBlocked,
    /// The PUK is blocked.
    PukBlocked,
    /// After an interrupted PIN or PUK change, too few tries are left to find out which
    /// value is set without risking a block.
    PinStateUnknown,
    /// Neither the per-card nor the transport management key authenticates.
    ManagementKeyUnknown,
    /// The card rejects the profile's transport PIN.
    TransportPinRejected,
    /// The card rejects the profile's transport PUK.
    TransportPukRejected,
    /// The card refuses the new PIN's format (e.g. a numeric-only card and letters).
    PinFormatUnsupported,
    /// The card refuses the new PUK's format.
    PukFormatUnsupported,
    /// A step the profile requires is not supported by the card.
    UnsupportedStep,
    /// The final read-back does not match what was written.
    VerificationFailed,
    /// The card answered a status word the engine has no rule for.
    UnexpectedStatus,
    /// The card's answer cannot be parsed.
    MalformedResponse,
    /// The job was cancelled before it wrote anything (outcome `cancelled`).
    Cancelled,
}

impl FailureCode {
    /// Every code, so metrics can show a zero for each before the first failure.
    pub const ALL: [FailureCode; 24] = [
        Self::InvalidRequest,
        Self::CardRemoved,
        Self::CardReset,
        Self::CardMute,
        Self::ReaderError,
        Self::NotPiv,
        Self::ChipSerialUnavailable,
        Self::ChipSerialMismatch,
        Self::AlreadyInitialized,
        Self::JournalUnreadable,
        Self::JournalUnsupported,
        Self::PinBlocked,
        Self::PukBlocked,
        Self::PinStateUnknown,
        Self::ManagementKeyUnknown,
        Self::TransportPinRejected,
        Self::TransportPukRejected,
        Self::PinFormatUnsupported,
        Self::PukFormatUnsupported,
        Self::UnsupportedStep,
        Self::VerificationFailed,
        Self::UnexpectedStatus,
        Self::MalformedResponse,
        Self::Cancelled,
    ];

    /// The code as it appears in `Failure.code`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::CardRemoved => "card_removed",
            Self::CardReset => "card_reset",
            Self::CardMute => "card_mute",
            Self::ReaderError => "reader_error",
            Self::NotPiv => "not_piv",
            Self::ChipSerialUnavailable => "chip_serial_unavailable",
            Self::ChipSerialMismatch => "chip_serial_mismatch",
            Self::AlreadyInitialized => "already_initialized",
            Self::JournalUnreadable => "journal_unreadable",
            Self::JournalUnsupported => "journal_unsupported",
            Self::JournalStoreFailed => "journal_store_failed",
            Self::PinBlocked => "pin_blocked",
            Self::PukBlocked => "puk_blocked",
            Self::PinStateUnknown => "pin_state_unknown",
            Self::ManagementKeyUnknown => "management_key_unknown",
            Self::TransportPinRejected => "transport_pin_rejected",
            Self::TransportPukRejected => "transport_puk_rejected",
            Self::PinFormatUnsupported => "pin_format_unsupported",
            Self::PukFormatUnsupported => "puk_format_unsupported",
            Self::UnsupportedStep => "unsupported_step",
            Self::VerificationFailed => "verification_failed",
            Self::UnexpectedStatus => "unexpected_status",
            Self::MalformedResponse => "malformed_response",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether another attempt on the same card may succeed: only when the card went away
    /// or the reader failed, never when the card said no.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::CardRemoved | Self::CardReset | Self::ReaderError | Self::JournalStoreFailed
        )
    }

    /// Whether the chip can never be initialized.
    pub fn card_unusable(self) -> bool {
        matches!(self, Self::PinBlocked | Self::PukBlocked)
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an engine operation stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The APDU exchange itself failed.
    #[error("{0}")]
    Transport(#[from] TransportError),
    /// The card answered a status word the step has no rule for.
    #[error("{command} answered {sw}")]
    Status {
        /// What was sent, e.g. `GENERATE ASYMMETRIC KEY PAIR 9A`.
        command: &'static str,
        /// The status word received.
        sw: StatusWord,
    },
    /// The card's answer does not parse.
    #[error("{command}: malformed response: {reason}")]
    Malformed {
        /// What was sent.
        command: &'static str,
        /// What is wrong with the answer.
        reason: String,
    },
    /// The engine decided the job cannot go on.
    #[error("{message}")]
    Refused {
        /// The failure code.
        code: FailureCode,
        /// Explanation without secrets.
        message: String,
    },
}

impl EngineError {
    /// A refusal with a code and an explanation.
    pub fn refused(code: FailureCode, message: impl Into<String>) -> Self {
        Self::Refused {
            code,
            message: message.into(),
        }
    }

    /// An unexpected status word.
    pub fn status(command: &'static str, sw: StatusWord) -> Self {
        Self::Status { command, sw }
    }

    /// An answer that does not parse.
    pub fn malformed(command: &'static str, reason: impl fmt::Display) -> Self {
        Self::Malformed {
            command,
            reason: reason.to_string(),
        }
    }

    /// A command the engine could not even build (a bug or an impossible request).
    pub(crate) fn build(command: &'static str, error: ApduError) -> Self {
        Self::refused(
            FailureCode::InvalidRequest,
            format!("cannot build {command}: {error}"),
        )
    }

    /// The failure code this error reports.
    pub fn code(&self) -> FailureCode {
        match self {
            Self::Transport(TransportError::Removed) => FailureCode::CardRemoved,
            Self::Transport(TransportError::Reset) => FailureCode::CardReset,
            Self::Transport(TransportError::Mute) => FailureCode::CardMute,
            Self::Transport(TransportError::Reader(_)) => FailureCode::ReaderError,
            Self::Status { .. } => FailureCode::UnexpectedStatus,
            Self::Malformed { .. } => FailureCode::MalformedResponse,
            Self::Refused { code, .. } => *code,
        }
    }

    /// See [`FailureCode::retryable`].
    pub fn retryable(&self) -> bool {
        self.code().retryable()
    }

    /// See [`FailureCode::card_unusable`].
    pub fn card_unusable(&self) -> bool {
        self.code().card_unusable()
    }
}
