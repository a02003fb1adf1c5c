//! PIN and PUK on the wire: values padded with `FF` to eight bytes, the free status check
//! (VERIFY with no data), VERIFY, and CHANGE REFERENCE DATA.

use std::fmt;

use zeroize::Zeroizing;

use super::error::EngineError;
use super::session::{Session, command_no_le};
use crate::apdu::StatusWord;
use crate::piv_ids::{ins, key_ref};

/// Length of PIN and PUK reference data on the wire.
const WIRE_LEN: usize = 8;
/// Fewest characters of a PIN or PUK.
const MIN_CHARS: usize = 6;

/// A PIN or PUK in wire format: 6 to 8 ASCII characters padded with `FF` to 8 bytes.
/// Always sent padded, so numeric-only cards see the format they expect.
#[derive(Clone)]
pub(crate) struct Secret(Zeroizing<[u8; WIRE_LEN]>);

impl Secret {
    /// Pads a value; `None` unless it has 6 to 8 printable ASCII characters.
    pub(crate) fn parse(value: &str) -> Option<Self> {
        let bytes = value.as_bytes();
        let ok = (MIN_CHARS..=WIRE_LEN).contains(&bytes.len())
            && bytes.iter().all(|b| b.is_ascii_graphic());
        if !ok {
            return None;
        }
        let mut padded = Zeroizing::new([0xFF; WIRE_LEN]);
        padded[..bytes.len()].copy_from_slice(bytes);
        Some(Self(padded))
    }

    fn bytes(&self) -> &[u8] {
        &self.0[..]
    }

    /// Whether the value is all digits (before its padding).
    pub(crate) fn is_numeric(&self) -> bool {
        self.0
            .iter()
            .take_while(|b| **b != 0xFF)
            .all(u8::is_ascii_digit)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0[..].ct_eq(&other.0[..]).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Tries left after a wrong value, when the card says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tries(pub Option<u8>);

impl std::fmt::Display for Tries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n} tries left"),
            None => f.write_str("tries left not reported"),
        }
    }
}

/// What the card said to a VERIFY or CHANGE REFERENCE DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Accepted.
    Accepted,
    /// The compared value was wrong; this many tries are left (unknown when the card
    /// answers a bare `6300`, as some do for a wrong PUK).
    Wrong { retries: Tries },
    /// The reference is blocked.
    Blocked,
    /// The card refused a value's format before comparing (`6A80`), which costs no try.
    FormatRefused,
}

impl Check {
    fn from_sw(name: &'static str, sw: StatusWord) -> Result<Self, EngineError> {
        match sw {
            StatusWord::Success => Ok(Self::Accepted),
            StatusWord::VerificationFailed { retries: 0 } => Ok(Self::Blocked),
            StatusWord::VerificationFailed { retries } => Ok(Self::Wrong {
                retries: Tries(Some(retries)),
            }),
            StatusWord::Other(0x6300) => Ok(Self::Wrong {
                retries: Tries(None),
            }),
            StatusWord::AuthenticationMethodBlocked => Ok(Self::Blocked),
            StatusWord::IncorrectDataField => Ok(Self::FormatRefused),
            sw => Err(EngineError::status(name, sw)),
        }
    }
}

/// The PIN's state as the empty VERIFY reports it, without using a try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PinStatus {
    /// Already verified in this session (the card does not say how many tries are left).
    Verified,
    /// Not verified; this many tries left.
    Remaining(u8),
    /// Blocked.
    Blocked,
}

/// VERIFY with an empty data field: the PIN's retry counter, free of charge.
pub(crate) fn pin_status(session: &mut Session<'_>) -> Result<PinStatus, EngineError> {
    const NAME: &str = "VERIFY PIN (status)";
    let apdu = command_no_le(NAME, ins::VERIFY, 0x00, key_ref::PIN, &[])?;
    match session.transmit(NAME, apdu)?.sw() {
        StatusWord::Success => Ok(PinStatus::Verified),
        StatusWord::VerificationFailed { retries: 0 } | StatusWord::AuthenticationMethodBlocked => {
            Ok(PinStatus::Blocked)
        }
        StatusWord::VerificationFailed { retries } => Ok(PinStatus::Remaining(retries)),
        sw => Err(EngineError::status(NAME, sw)),
    }
}

/// VERIFY the PIN. A wrong value uses up a try: callers only send values they know.
pub(crate) fn verify_pin(session: &mut Session<'_>, pin: &Secret) -> Result<Check, EngineError> {
    const NAME: &str = "VERIFY PIN";
    let apdu = command_no_le(NAME, ins::VERIFY, 0x00, key_ref::PIN, pin.bytes())?;
    let sw = session.transmit(NAME, apdu)?.sw();
    Check::from_sw(NAME, sw)
}

/// Which reference data CHANGE REFERENCE DATA addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reference {
    Pin,
    Puk,
}

impl Reference {
    fn key_ref(self) -> u8 {
        match self {
            Self::Pin => key_ref::PIN,
            Self::Puk => key_ref::PUK,
        }
    }

    fn command(self) -> &'static str {
        match self {
            Self::Pin => "CHANGE REFERENCE DATA PIN",
            Self::Puk => "CHANGE REFERENCE DATA PUK",
        }
    }

    /// `PIN` or `PUK`, for messages.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Pin => "PIN",
            Self::Puk => "PUK",
        }
    }
}

/// CHANGE REFERENCE DATA: `old` then `new`, eight bytes each. A wrong `old` uses up a try.
pub(crate) fn change(
    session: &mut Session<'_>,
    reference: Reference,
    old: &Secret,
    new: &Secret,
) -> Result<Check, EngineError> {
    let name = reference.command();
    let mut data = Zeroizing::new(Vec::with_capacity(2 * WIRE_LEN));
    data.extend_from_slice(old.bytes());
    data.extend_from_slice(new.bytes());
    let apdu = command_no_le(
        name,
        ins::CHANGE_REFERENCE_DATA,
        0x00,
        reference.key_ref(),
        &data,
    )?;
    let sw = session.transmit(name, apdu)?.sw();
    Check::from_sw(name, sw)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn values_are_padded_with_ff_to_eight_bytes() {
        assert_eq!(Secret::parse("123456").unwrap().bytes(), b"123456\xFF\xFF");
        assert_eq!(Secret::parse("12345678").unwrap().bytes(), b"12345678");
        assert!(Secret::parse("12345").is_none());
        assert!(Secret::parse("123456789").is_none());
        assert!(Secret::parse("12 456").is_none());
        assert!(Secret::parse("12345é").is_none());
    }

    #[test]
    fn numeric_means_digits_before_the_padding() {
        assert!(Secret::parse("123456").unwrap().is_numeric());
        assert!(!Secret::parse("12A456").unwrap().is_numeric());
    }

    #[test]
    fn debug_output_hides_the_value() {
        let shown = format!("{:?}", Secret::parse("918273").unwrap());
        assert!(
            !shown.contains("918273") && !shown.contains("57"),
            "{shown}"
        );
    }
}
