//! Status words (SW1-SW2) with the meanings ISO 7816-4 and NIST SP 800-73-4 give them.

use std::fmt;

/// The two status bytes that end every response APDU.
///
/// Variants name the status words PIV cards use; everything else is kept as [`StatusWord::Other`]
/// so that no value is lost when converting from and back to `u16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusWord {
    /// `9000`: normal processing.
    Success,
    /// `61xx`: normal processing, `xx` more bytes are available with GET RESPONSE (`00` means
    /// 256 or more).
    BytesRemaining(u8),
    /// `6Cxx`: wrong Le; `xx` is the exact number of available bytes.
    WrongLe(u8),
    /// `63Cx`: verification failed, `x` further tries allowed (also the answer to an empty VERIFY).
    VerificationFailed {
        /// Remaining tries before the reference data is blocked.
        retries: u8,
    },
    /// `6700`: wrong length.
    WrongLength,
    /// `6982`: security status not satisfied.
    SecurityStatusNotSatisfied,
    /// `6983`: authentication method blocked.
    AuthenticationMethodBlocked,
    /// `6984`: reference data not usable.
    ReferenceDataNotUsable,
    /// `6985`: conditions of use not satisfied.
    ConditionsOfUseNotSatisfied,
    /// `6A80`: incorrect parameters in the command data field.
    IncorrectDataField,
    /// `6A81`: function not supported.
    FunctionNotSupported,
    /// `6A82`: file, application or data object not found.
    NotFound,
    /// `6A86`: incorrect parameters P1-P2.
    IncorrectP1P2,
    /// `6A88`: referenced data or reference data not found.
    ReferenceDataNotFound,
    /// `6B00`: wrong parameters P1-P2.
    WrongP1P2,
    /// `6D00`: instruction code not supported or invalid.
    InsNotSupported,
    /// `6E00`: class not supported.
    ClaNotSupported,
    /// `6F00`: no precise diagnosis.
    NoPreciseDiagnosis,
    /// Any other status word, kept verbatim.
    Other(u16),
}

impl StatusWord {
    /// Builds the status word from SW1 and SW2.
    pub fn from_bytes(sw1: u8, sw2: u8) -> Self {
        Self::from(u16::from_be_bytes([sw1, sw2]))
    }

    /// The status word as `[SW1, SW2]`.
    pub fn to_bytes(self) -> [u8; 2] {
        u16::from(self).to_be_bytes()
    }

    /// Whether the command completed normally: `9000`, or `61xx` (normal processing with more
    /// response bytes to fetch).
    pub fn is_success(self) -> bool {
        matches!(self, Self::Success | Self::BytesRemaining(_))
    }

    /// For `61xx`, how many more bytes the card announced (`61 00` counts as 256).
    pub fn bytes_remaining(self) -> Option<usize> {
        match self {
            Self::BytesRemaining(0) => Some(256),
            Self::BytesRemaining(n) => Some(usize::from(n)),
            _ => None,
        }
    }

    /// For `63Cx`, the tries left; for `6983` (blocked), zero.
    pub fn retries_remaining(self) -> Option<u8> {
        match self {
            Self::VerificationFailed { retries } => Some(retries),
            Self::AuthenticationMethodBlocked => Some(0),
            _ => None,
        }
    }

    fn description(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::BytesRemaining(_) => "more response bytes available",
            Self::WrongLe(_) => "wrong Le",
            Self::VerificationFailed { .. } => "verification failed",
            Self::WrongLength => "wrong length",
            Self::SecurityStatusNotSatisfied => "security status not satisfied",
            Self::AuthenticationMethodBlocked => "authentication method blocked",
            Self::ReferenceDataNotUsable => "reference data not usable",
            Self::ConditionsOfUseNotSatisfied => "conditions of use not satisfied",
            Self::IncorrectDataField => "incorrect data field",
            Self::FunctionNotSupported => "function not supported",
            Self::NotFound => "file or data object not found",
            Self::IncorrectP1P2 => "incorrect P1-P2",
            Self::ReferenceDataNotFound => "reference data not found",
            Self::WrongP1P2 => "wrong P1-P2",
            Self::InsNotSupported => "instruction not supported",
            Self::ClaNotSupported => "class not supported",
            Self::NoPreciseDiagnosis => "no precise diagnosis",
            Self::Other(_) => "unknown status",
        }
    }
}

impl From<u16> for StatusWord {
    fn from(sw: u16) -> Self {
        let [sw1, sw2] = sw.to_be_bytes();
        match (sw1, sw2) {
            (0x90, 0x00) => Self::Success,
            (0x61, n) => Self::BytesRemaining(n),
            (0x6C, n) => Self::WrongLe(n),
            (0x63, n) if n & 0xF0 == 0xC0 => Self::VerificationFailed { retries: n & 0x0F },
            (0x67, 0x00) => Self::WrongLength,
            (0x69, 0x82) => Self::SecurityStatusNotSatisfied,
            (0x69, 0x83) => Self::AuthenticationMethodBlocked,
            (0x69, 0x84) => Self::ReferenceDataNotUsable,
            (0x69, 0x85) => Self::ConditionsOfUseNotSatisfied,
            (0x6A, 0x80) => Self::IncorrectDataField,
            (0x6A, 0x81) => Self::FunctionNotSupported,
            (0x6A, 0x82) => Self::NotFound,
            (0x6A, 0x86) => Self::IncorrectP1P2,
            (0x6A, 0x88) => Self::ReferenceDataNotFound,
            (0x6B, 0x00) => Self::WrongP1P2,
            (0x6D, 0x00) => Self::InsNotSupported,
            (0x6E, 0x00) => Self::ClaNotSupported,
            (0x6F, 0x00) => Self::NoPreciseDiagnosis,
            _ => Self::Other(sw),
        }
    }
}

impl From<StatusWord> for u16 {
    fn from(sw: StatusWord) -> Self {
        match sw {
            StatusWord::Success => 0x9000,
            StatusWord::BytesRemaining(n) => 0x6100 | u16::from(n),
            StatusWord::WrongLe(n) => 0x6C00 | u16::from(n),
            StatusWord::VerificationFailed { retries } => 0x63C0 | u16::from(retries.min(0x0F)),
            StatusWord::WrongLength => 0x6700,
            StatusWord::SecurityStatusNotSatisfied => 0x6982,
            StatusWord::AuthenticationMethodBlocked => 0x6983,
            StatusWord::ReferenceDataNotUsable => 0x6984,
            StatusWord::ConditionsOfUseNotSatisfied => 0x6985,
            StatusWord::IncorrectDataField => 0x6A80,
            StatusWord::FunctionNotSupported => 0x6A81,
            StatusWord::NotFound => 0x6A82,
            StatusWord::IncorrectP1P2 => 0x6A86,
            StatusWord::ReferenceDataNotFound => 0x6A88,
            StatusWord::WrongP1P2 => 0x6B00,
            StatusWord::InsNotSupported => 0x6D00,
            StatusWord::ClaNotSupported => 0x6E00,
            StatusWord::NoPreciseDiagnosis => 0x6F00,
            StatusWord::Other(sw) => sw,
        }
    }
}

impl fmt::Display for StatusWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04X} ({})", u16::from(*self), self.description())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn every_status_word_survives_a_round_trip_through_u16() {
        for sw in 0..=u16::MAX {
            assert_eq!(u16::from(StatusWord::from(sw)), sw, "{sw:04X}");
        }
    }

    #[test]
    fn named_status_words_decode_to_their_variants() {
        let cases = [
            (0x9000, StatusWord::Success),
            (0x6110, StatusWord::BytesRemaining(0x10)),
            (0x6C08, StatusWord::WrongLe(8)),
            (0x63C2, StatusWord::VerificationFailed { retries: 2 }),
            (0x6700, StatusWord::WrongLength),
            (0x6982, StatusWord::SecurityStatusNotSatisfied),
            (0x6983, StatusWord::AuthenticationMethodBlocked),
            (0x6984, StatusWord::ReferenceDataNotUsable),
            (0x6985, StatusWord::ConditionsOfUseNotSatisfied),
            (0x6A80, StatusWord::IncorrectDataField),
            (0x6A81, StatusWord::FunctionNotSupported),
            (0x6A82, StatusWord::NotFound),
            (0x6A86, StatusWord::IncorrectP1P2),
            (0x6A88, StatusWord::ReferenceDataNotFound),
            (0x6B00, StatusWord::WrongP1P2),
            (0x6D00, StatusWord::InsNotSupported),
            (0x6E00, StatusWord::ClaNotSupported),
            (0x6F00, StatusWord::NoPreciseDiagnosis),
            (0x6A84, StatusWord::Other(0x6A84)),
            (0x6310, StatusWord::Other(0x6310)),
        ];
        for (raw, sw) in cases {
            assert_eq!(StatusWord::from(raw), sw, "{raw:04X}");
        }
    }

    #[test]
    fn success_covers_9000_and_61xx_only() {
        assert!(StatusWord::Success.is_success());
        assert!(StatusWord::BytesRemaining(0).is_success());
        assert!(!StatusWord::VerificationFailed { retries: 3 }.is_success());
        assert!(!StatusWord::Other(0x9001).is_success());
        assert_eq!(StatusWord::BytesRemaining(0).bytes_remaining(), Some(256));
        assert_eq!(StatusWord::BytesRemaining(7).bytes_remaining(), Some(7));
        assert_eq!(
            StatusWord::AuthenticationMethodBlocked.retries_remaining(),
            Some(0)
        );
    }

    #[test]
    fn display_shows_the_code_and_its_meaning() {
        assert_eq!(
            StatusWord::NotFound.to_string(),
            "6A82 (file or data object not found)"
        );
    }
}
