//! Engine errors and the catalogue of failure codes they become in an [`EncodeReport`].
//!
//! Each code carries the two decisions the runtime and the ledger need: whether another
//! attempt on the same card may succeed (`retryable`) and whether the chip can never be
//! initialized (`card_unusable`). Messages never carry a PIN, PUK or key.
//!
//! [`EncodeReport`]: super::EncodeReport

use std::fmt;

use cardfleet_schemas::codes::Code;

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
    pub const ALL: [FailureCode; 25] = [
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
        Self::JournalStoreFailed,
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

    /// The code as it appears in `Failure.code` (from the catalogue).
    pub fn as_str(self) -> &'static str {
        Code::from(self).as_str()
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

/// Every engine failure code is a catalogue code.
impl From<FailureCode> for Code {
    fn from(code: FailureCode) -> Code {
        match code {
            FailureCode::InvalidRequest => Code::InvalidRequest,
            FailureCode::CardRemoved => Code::CardRemoved,
            FailureCode::CardReset => Code::CardReset,
            FailureCode::CardMute => Code::CardMute,
            FailureCode::ReaderError => Code::ReaderError,
            FailureCode::NotPiv => Code::NotPiv,
            FailureCode::ChipSerialUnavailable => Code::ChipSerialUnavailable,
            FailureCode::ChipSerialMismatch => Code::ChipSerialMismatch,
            FailureCode::AlreadyInitialized => Code::AlreadyInitialized,
            FailureCode::JournalUnreadable => Code::JournalUnreadable,
            FailureCode::JournalUnsupported => Code::JournalUnsupported,
            FailureCode::JournalStoreFailed => Code::JournalStoreFailed,
            FailureCode::PinBlocked => Code::PinBlocked,
            FailureCode::PukBlocked => Code::PukBlocked,
            FailureCode::PinStateUnknown => Code::PinStateUnknown,
            FailureCode::ManagementKeyUnknown => Code::ManagementKeyUnknown,
            FailureCode::TransportPinRejected => Code::TransportPinRejected,
            FailureCode::TransportPukRejected => Code::TransportPukRejected,
            FailureCode::PinFormatUnsupported => Code::PinFormatUnsupported,
            FailureCode::PukFormatUnsupported => Code::PukFormatUnsupported,
            FailureCode::UnsupportedStep => Code::UnsupportedStep,
            FailureCode::VerificationFailed => Code::VerificationFailed,
            FailureCode::UnexpectedStatus => Code::UnexpectedStatus,
            FailureCode::MalformedResponse => Code::MalformedResponse,
            FailureCode::Cancelled => Code::Cancelled,
        }
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use cardfleet_schemas::codes::{Code, Kind};

    use super::FailureCode;

    /// Failure codes set outside the engine: by the worker runtime (a slot
    /// without a card, quarantined or unknown; secrets it cannot open) and
    /// by the control plane (dead-lettered or undispatchable jobs).
    const NOT_THE_ENGINES: [Code; 6] = [
        Code::CardAbsent,
        Code::SlotQuarantined,
        Code::SlotUnavailable,
        Code::SecretsUnopenable,
        Code::DeadLettered,
        Code::RackNotEnrolled,
    ];

    #[test]
    fn all_lists_every_engine_failure_code_of_the_catalogue_once() {
        let listed: HashSet<Code> = FailureCode::ALL.iter().map(|&c| Code::from(c)).collect();
        assert_eq!(listed.len(), FailureCode::ALL.len(), "a code twice in ALL");
        let engine: HashSet<Code> = Code::ALL
            .iter()
            .copied()
            .filter(|c| c.is(Kind::JobFailure) && !NOT_THE_ENGINES.contains(c))
            .collect();
        assert_eq!(listed, engine);
        for code in FailureCode::ALL {
            assert_eq!(code.to_string(), Code::from(code).as_str());
        }
    }
}
