//! Card variants: which extensions, PIN formats and management key algorithms a card has.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ids::alg;

/// Symmetric algorithms of the card management key (key reference `9B`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MgmtKeyAlgorithm {
    /// Three-key Triple DES, 24-byte key, 8-byte blocks.
    #[serde(rename = "3des")]
    TripleDes,
    /// AES-128.
    #[serde(rename = "aes128")]
    Aes128,
    /// AES-192.
    #[serde(rename = "aes192")]
    Aes192,
    /// AES-256.
    #[serde(rename = "aes256")]
    Aes256,
}

impl MgmtKeyAlgorithm {
    /// Every algorithm, in the order of their identifiers.
    pub const ALL: [MgmtKeyAlgorithm; 4] =
        [Self::TripleDes, Self::Aes128, Self::Aes192, Self::Aes256];

    /// The SP 800-78-4 algorithm identifier (P1 of GENERAL AUTHENTICATE).
    pub fn id(self) -> u8 {
        match self {
            Self::TripleDes => alg::TDES,
            Self::Aes128 => alg::AES_128,
            Self::Aes192 => alg::AES_192,
            Self::Aes256 => alg::AES_256,
        }
    }

    /// The algorithm with this identifier.
    pub fn from_id(id: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.id() == id)
    }

    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Self::TripleDes | Self::Aes192 => 24,
            Self::Aes128 => 16,
            Self::Aes256 => 32,
        }
    }

    /// Block length in bytes (the witness and challenge length).
    pub fn block_len(self) -> usize {
        match self {
            Self::TripleDes => 8,
            _ => 16,
        }
    }

    /// The name used on the command line and in state files.
    pub fn name(self) -> &'static str {
        match self {
            Self::TripleDes => "3des",
            Self::Aes128 => "aes128",
            Self::Aes192 => "aes192",
            Self::Aes256 => "aes256",
        }
    }
}

impl fmt::Display for MgmtKeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown management key algorithm name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown management key algorithm {0:?}; expected one of 3des, aes128, aes192, aes256")]
pub struct UnknownAlgorithm(pub String);

impl FromStr for MgmtKeyAlgorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "3des" | "tdes" => Ok(Self::TripleDes),
            "aes128" => Ok(Self::Aes128),
            "aes192" => Ok(Self::Aes192),
            "aes256" => Ok(Self::Aes256),
            _ => Err(UnknownAlgorithm(s.to_owned())),
        }
    }
}

/// Options that make one virtual card behave like one kind of real card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardOptions {
    /// Chip serial, reported by GET SERIAL, in the CPLC and in the factory CHUID's GUID.
    pub chip_serial: u32,
    /// Whether the YubiKey-compatible extensions (INS F7, F8, FA, FB, FD, FF) exist; without
    /// them those instructions answer `6D00`.
    pub extensions: bool,
    /// Whether PIN and PUK bytes before the `FF` padding must be ASCII digits (`6A80` if not).
    pub numeric_pins_only: bool,
    /// Management key algorithms the card accepts, for SET MANAGEMENT KEY and GENERAL
    /// AUTHENTICATE.
    pub mgmt_key_algorithms: Vec<MgmtKeyAlgorithm>,
    /// Algorithm of the factory management key.
    pub initial_mgmt_key_algorithm: MgmtKeyAlgorithm,
    /// Firmware version reported by GET VERSION.
    pub version: [u8; 3],
    /// Whether vendor data objects (`5FFFxx`, where the engine keeps its journal) exist;
    /// without them GET DATA and PUT DATA of such tags answer `6A80`, as strict SP 800-73-4
    /// applets do.
    #[serde(default = "yes")]
    pub vendor_objects: bool,
    /// Whether PIV commands are answered before the PIV application is selected (a card
    /// whose only application is PIV).
    #[serde(default)]
    pub implicit_selection: bool,
    /// Whether SELECT with P2 = `0C` (no response data) is accepted; when not, it answers
    /// `6A86`.
    #[serde(default = "yes")]
    pub select_without_response: bool,
    /// Whether a wrong PUK in CHANGE REFERENCE DATA is answered `63Cx` (tries left);
    /// when not, a bare `6300` that does not say how many are left.
    #[serde(default = "yes")]
    pub puk_reports_tries: bool,
}

fn yes() -> bool {
    true
}

impl Default for CardOptions {
    fn default() -> Self {
        Self {
            chip_serial: 0,
            extensions: true,
            numeric_pins_only: false,
            mgmt_key_algorithms: MgmtKeyAlgorithm::ALL.to_vec(),
            initial_mgmt_key_algorithm: MgmtKeyAlgorithm::TripleDes,
            version: [5, 4, 3],
            vendor_objects: true,
            implicit_selection: false,
            select_without_response: true,
            puk_reports_tries: true,
        }
    }
}

/// Options that describe no possible card.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// No management key algorithm allowed.
    #[error("at least one management key algorithm must be allowed")]
    NoMgmtKeyAlgorithm,
    /// The factory key's algorithm is not among the allowed ones.
    #[error("initial management key algorithm {0} is not among the allowed algorithms")]
    InitialAlgorithmNotAllowed(MgmtKeyAlgorithm),
}

impl CardOptions {
    /// Default options for a card with this chip serial.
    pub fn with_serial(chip_serial: u32) -> Self {
        Self {
            chip_serial,
            ..Self::default()
        }
    }

    /// Checks that the options describe a possible card.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.mgmt_key_algorithms.is_empty() {
            return Err(OptionsError::NoMgmtKeyAlgorithm);
        }
        if !self.allows(self.initial_mgmt_key_algorithm) {
            return Err(OptionsError::InitialAlgorithmNotAllowed(
                self.initial_mgmt_key_algorithm,
            ));
        }
        Ok(())
    }

    /// Whether the card accepts management keys of this algorithm.
    pub fn allows(&self, algorithm: MgmtKeyAlgorithm) -> bool {
        self.mgmt_key_algorithms.contains(&algorithm)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_and_ids_round_trip() {
        for algorithm in MgmtKeyAlgorithm::ALL {
            assert_eq!(algorithm.name().parse::<MgmtKeyAlgorithm>(), Ok(algorithm));
            assert_eq!(MgmtKeyAlgorithm::from_id(algorithm.id()), Some(algorithm));
        }
        assert!("des".parse::<MgmtKeyAlgorithm>().is_err());
        assert_eq!(MgmtKeyAlgorithm::from_id(0x07), None);
    }

    #[test]
    fn options_serialize_with_readable_algorithm_names() {
        let options = CardOptions::with_serial(42);
        let json = serde_json::to_string(&options).unwrap();
        assert!(json.contains("\"3des\""), "{json}");
        assert_eq!(serde_json::from_str::<CardOptions>(&json).unwrap(), options);
    }

    #[test]
    fn the_factory_algorithm_must_be_allowed() {
        let options = CardOptions {
            mgmt_key_algorithms: vec![MgmtKeyAlgorithm::Aes128],
            ..CardOptions::default()
        };
        assert_eq!(
            options.validate(),
            Err(OptionsError::InitialAlgorithmNotAllowed(
                MgmtKeyAlgorithm::TripleDes
            ))
        );
        let empty = CardOptions {
            mgmt_key_algorithms: vec![],
            ..CardOptions::default()
        };
        assert_eq!(empty.validate(), Err(OptionsError::NoMgmtKeyAlgorithm));
        assert_eq!(CardOptions::default().validate(), Ok(()));
    }
}
