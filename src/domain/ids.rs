//! Parsed identifiers that cross the API: parse, don't validate.

use std::fmt;

/// Why an identifier or field from outside was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ParseError {
    pub field: &'static str,
    pub message: String,
}

fn parse_token(
    field: &'static str,
    value: &str,
    max: usize,
    allowed: impl Fn(u8) -> bool,
) -> Result<String, ParseError> {
    let value = value.trim();
    if value.is_empty() || value.len() > max {
        return Err(ParseError {
            field,
            message: format!("must be 1 to {max} characters"),
        });
    }
    if !value.bytes().all(allowed) {
        return Err(ParseError {
            field,
            message: "contains characters that are not allowed".into(),
        });
    }
    Ok(value.to_owned())
}

macro_rules! token_newtype {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: &str) -> Result<Self, ParseError> {
                parse_token($field, value, $max, $allowed).map($name)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn printable(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b':')
}

token_newtype!(
    /// The bureau's number printed on the card.
    CardNumber, "card_number", 64, printable
);
token_newtype!(
    /// The chip's own serial (CPLC, vendor serial or CHUID derived).
    ChipSerial, "chip_serial", 64, printable
);
token_newtype!(
    /// Card type, e.g. `temporary`.
    CardType, "card_type", 32, |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
);
token_newtype!(
    /// A rack of slots behind one worker; part of a queue name.
    RackId, "rack_id", 64, |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_refuse_hostile_input() {
        assert!(CardNumber::parse("TC-000001").is_ok());
        assert!(CardNumber::parse("").is_err());
        assert!(CardNumber::parse("1'; DROP TABLE cards;--").is_err());
        assert!(RackId::parse("rack.1").is_err());
        assert!(ChipSerial::parse(&"9".repeat(65)).is_err());
    }
}
