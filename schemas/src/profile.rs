//! Card profiles: what to write onto a card, loaded from TOML files and
//! validated at load with errors that name the offending field.

use std::collections::BTreeMap;
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The profile shipped with cardfleet, also available without a profile directory.
pub const BUILTIN_TEMPORARY_PIV: &str = include_str!("../../profiles/temporary-piv.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CardProfile {
    /// Unique name; must equal the file name without `.toml`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Card type this profile applies to, e.g. `temporary`.
    pub card_type: String,
    pub kind: CardKind,
    pub pin: CredentialPolicy,
    pub puk: CredentialPolicy,
    /// Factory (transport) credentials the cards arrive with.
    pub transport: TransportCredentials,
    pub management_key: ManagementKeyPolicy,
    /// PIN and PUK retry counters to set (a vendor extension on most cards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    /// Key pairs to generate on the card.
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    /// Write a fresh CHUID (with a new GUID).
    #[serde(default = "Requirement::required")]
    pub chuid: Requirement,
    /// Write a Card Capability Container.
    #[serde(default = "Requirement::optional")]
    pub ccc: Requirement,
    /// Keep the PINs of a batch after its PIN mailers were released
    /// (default: destroy them, so the printed letter is the only copy).
    #[serde(default)]
    pub keep_pins_after_mailer: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CardKind {
    Piv,
}

/// How a generated credential looks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialPolicy {
    /// Number of characters, 6 to 8 (the PIV limit).
    pub length: u8,
    /// Digits only (`true`) or digits and upper-case letters.
    #[serde(default = "default_true")]
    pub digits_only: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransportCredentials {
    pub pin: String,
    pub puk: String,
    /// Hex of the factory management key.
    pub management_key: String,
    pub management_key_algorithm: ManagementKeyAlgorithm,
}

impl std::fmt::Debug for TransportCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportCredentials")
            .field("management_key_algorithm", &self.management_key_algorithm)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManagementKeyPolicy {
    /// Algorithm of the per-card management key.
    pub algorithm: ManagementKeyAlgorithm,
    /// Algorithms to fall back to, in order, on a card that does not take
    /// `algorithm` (e.g. a 3DES-only card for an `aes192` profile).
    #[serde(default)]
    pub fallback: Vec<ManagementKeyAlgorithm>,
    /// Setting the per-card key needs the set-management-key extension;
    /// whether a card without it fails the job.
    #[serde(default = "Requirement::required")]
    pub requirement: Requirement,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ManagementKeyAlgorithm {
    #[serde(rename = "3des")]
    TripleDes,
    Aes128,
    Aes192,
    Aes256,
}

impl ManagementKeyAlgorithm {
    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            ManagementKeyAlgorithm::TripleDes | ManagementKeyAlgorithm::Aes192 => 24,
            ManagementKeyAlgorithm::Aes128 => 16,
            ManagementKeyAlgorithm::Aes256 => 32,
        }
    }
    /// PIV algorithm identifier.
    pub fn piv_id(self) -> u8 {
        match self {
            ManagementKeyAlgorithm::TripleDes => 0x03,
            ManagementKeyAlgorithm::Aes128 => 0x08,
            ManagementKeyAlgorithm::Aes192 => 0x0A,
            ManagementKeyAlgorithm::Aes256 => 0x0C,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ManagementKeyAlgorithm::TripleDes => "3des",
            ManagementKeyAlgorithm::Aes128 => "aes128",
            ManagementKeyAlgorithm::Aes192 => "aes192",
            ManagementKeyAlgorithm::Aes256 => "aes256",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    pub pin: u8,
    pub puk: u8,
    #[serde(default = "Requirement::optional")]
    pub requirement: Requirement,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub slot: KeySlot,
    pub algorithm: KeyAlgorithm,
    #[serde(default = "Requirement::required")]
    pub requirement: Requirement,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum KeySlot {
    #[serde(rename = "9a")]
    Authentication,
    #[serde(rename = "9c")]
    Signature,
    #[serde(rename = "9d")]
    KeyManagement,
    #[serde(rename = "9e")]
    CardAuthentication,
}

impl KeySlot {
    pub fn id(self) -> u8 {
        match self {
            KeySlot::Authentication => 0x9A,
            KeySlot::Signature => 0x9C,
            KeySlot::KeyManagement => 0x9D,
            KeySlot::CardAuthentication => 0x9E,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyAlgorithm {
    P256,
    P384,
    Rsa2048,
}

impl KeyAlgorithm {
    /// PIV algorithm identifier.
    pub fn piv_id(self) -> u8 {
        match self {
            KeyAlgorithm::P256 => 0x11,
            KeyAlgorithm::P384 => 0x14,
            KeyAlgorithm::Rsa2048 => 0x07,
        }
    }
}

/// Whether a profile step must succeed, may be unsupported, or is not wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// The job fails if the card cannot do it.
    Required,
    /// Done when the card supports it; reported as unsupported otherwise.
    Optional,
    /// Not done.
    Skip,
}

impl Requirement {
    fn required() -> Self {
        Requirement::Required
    }
    fn optional() -> Self {
        Requirement::Optional
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("profile {source_name}: {message}")]
    Parse {
        source_name: String,
        message: String,
    },
    #[error("profile {source_name}: {field}: {message}")]
    Invalid {
        source_name: String,
        field: String,
        message: String,
    },
    #[error("profile directory {path}: {message}")]
    Directory { path: String, message: String },
    #[error("profile {name} is defined twice")]
    Duplicate { name: String },
}

impl CardProfile {
    /// Parses and validates one profile. `source_name` names the file in errors.
    pub fn from_toml(source_name: &str, text: &str) -> Result<Self, ProfileError> {
        let profile: CardProfile = toml::from_str(text).map_err(|e| ProfileError::Parse {
            source_name: source_name.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        profile.validate(source_name)?;
        Ok(profile)
    }

    /// Checks the rules serde cannot express.
    pub fn validate(&self, source_name: &str) -> Result<(), ProfileError> {
        let invalid = |field: &str, message: String| ProfileError::Invalid {
            source_name: source_name.to_owned(),
            field: field.to_owned(),
            message,
        };
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(invalid(
                "name",
                "must be 1 to 64 characters of a-z, 0-9 and '-'".into(),
            ));
        }
        if self.card_type.is_empty() {
            return Err(invalid("card_type", "must not be empty".into()));
        }
        for (field, policy) in [("pin.length", &self.pin), ("puk.length", &self.puk)] {
            if !(6..=8).contains(&policy.length) {
                return Err(invalid(
                    field,
                    format!("must be between 6 and 8, got {}", policy.length),
                ));
            }
        }
        for (field, value) in [
            ("transport.pin", &self.transport.pin),
            ("transport.puk", &self.transport.puk),
        ] {
            if !(6..=8).contains(&value.len()) || !value.is_ascii() {
                return Err(invalid(field, "must be 6 to 8 ASCII characters".into()));
            }
        }
        let key = hex_decode(&self.transport.management_key)
            .ok_or_else(|| invalid("transport.management_key", "must be hex".into()))?;
        let want = self.transport.management_key_algorithm.key_len();
        if key.len() != want {
            return Err(invalid(
                "transport.management_key",
                format!(
                    "must be {want} bytes for {}, got {}",
                    self.transport.management_key_algorithm.as_str(),
                    key.len()
                ),
            ));
        }
        if let Some(retries) = &self.retries {
            for (field, n) in [("retries.pin", retries.pin), ("retries.puk", retries.puk)] {
                if !(1..=15).contains(&n) {
                    return Err(invalid(field, format!("must be between 1 and 15, got {n}")));
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, key) in self.keys.iter().enumerate() {
            if !seen.insert(key.slot) {
                return Err(invalid(
                    &format!("keys[{i}].slot"),
                    "slot is listed twice".into(),
                ));
            }
        }
        Ok(())
    }

    /// The profiles compiled into cardfleet.
    pub fn builtin() -> Result<Vec<CardProfile>, ProfileError> {
        Ok(vec![CardProfile::from_toml(
            "temporary-piv.toml (built in)",
            BUILTIN_TEMPORARY_PIV,
        )?])
    }
}

/// Loads the built-in profiles, then every `*.toml` in `dir` (if given); a
/// file may replace a built-in profile of the same name.
pub fn load_profiles(dir: Option<&Path>) -> Result<BTreeMap<String, CardProfile>, ProfileError> {
    let mut profiles: BTreeMap<String, CardProfile> = CardProfile::builtin()?
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect();
    let Some(dir) = dir else {
        return Ok(profiles);
    };
    let dir_error = |message: String| ProfileError::Directory {
        path: dir.display().to_string(),
        message,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| dir_error(e.to_string()))?;
    let mut from_dir = std::collections::BTreeSet::new();
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        let source_name = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| ProfileError::Parse {
            source_name: source_name.clone(),
            message: e.to_string(),
        })?;
        let profile = CardProfile::from_toml(&source_name, &text)?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if stem != profile.name {
            return Err(ProfileError::Invalid {
                source_name,
                field: "name".into(),
                message: format!("must equal the file name '{stem}', got '{}'", profile.name),
            });
        }
        if !from_dir.insert(profile.name.clone()) {
            return Err(ProfileError::Duplicate { name: profile.name });
        }
        profiles.insert(profile.name.clone(), profile);
    }
    Ok(profiles)
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_profile_loads() {
        let profiles = CardProfile::builtin().unwrap();
        assert_eq!(profiles[0].name, "temporary-piv");
        assert_eq!(profiles[0].card_type, "temporary");
    }

    #[test]
    fn an_out_of_range_pin_length_names_the_field() {
        let text = BUILTIN_TEMPORARY_PIV.replacen("length = 6", "length = 12", 1);
        let err = CardProfile::from_toml("x.toml", &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pin.length"), "{err}");
        assert!(err.contains("12"), "{err}");
    }

    #[test]
    fn an_unknown_field_is_named() {
        let text = format!("{BUILTIN_TEMPORARY_PIV}\ncolour = \"blue\"\n");
        let err = CardProfile::from_toml("x.toml", &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn a_wrong_length_transport_key_is_refused() {
        let text = BUILTIN_TEMPORARY_PIV
            .replace("010203040506070801020304050607080102030405060708", "0102");
        let err = CardProfile::from_toml("x.toml", &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("transport.management_key"), "{err}");
    }

    #[test]
    fn transport_secrets_are_not_in_debug_output() {
        let p = &CardProfile::builtin().unwrap()[0];
        let dbg = format!("{p:?}");
        assert!(!dbg.contains("123456"), "{dbg}");
        assert!(!dbg.contains("010203040506070801"), "{dbg}");
    }

    #[test]
    fn a_directory_profile_must_match_its_file_name() {
        let dir = std::env::temp_dir().join(format!("cf-profiles-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("other.toml"), BUILTIN_TEMPORARY_PIV).unwrap();
        let err = load_profiles(Some(&dir)).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("name"), "{err}");
    }
}
