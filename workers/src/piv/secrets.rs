//! Secret values on the card: PIN and PUK reference data and the management key.
//!
//! Every type here zeroizes on drop, shows nothing secret in `Debug` and serializes as hex
//! for the card's own state file only.

use std::fmt;

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::options::MgmtKeyAlgorithm;
use crate::apdu::StatusWord;

/// Length of PIN and PUK reference data on the wire, padding included.
pub const REFERENCE_DATA_LEN: usize = 8;
/// Fewest characters a PIN or PUK has before its `FF` padding.
pub const MIN_REFERENCE_CHARS: usize = 6;
const PADDING: u8 = 0xFF;

/// PIN or PUK reference data: 6 to 8 bytes padded with `FF` to 8.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ReferenceData([u8; REFERENCE_DATA_LEN]);

impl ReferenceData {
    /// Checks the wire format: exactly 8 bytes, 6 to 8 non-`FF` bytes followed only by `FF`,
    /// and, when `numeric_only`, ASCII digits before the padding. Anything else is `6A80`.
    pub fn parse(bytes: &[u8], numeric_only: bool) -> Result<Self, StatusWord> {
        let bytes: [u8; REFERENCE_DATA_LEN] = bytes
            .try_into()
            .map_err(|_| StatusWord::IncorrectDataField)?;
        let chars = bytes.iter().take_while(|b| **b != PADDING).count();
        let padding_ok = bytes[chars..].iter().all(|b| *b == PADDING);
        let digits_ok = !numeric_only || bytes[..chars].iter().all(u8::is_ascii_digit);
        if chars < MIN_REFERENCE_CHARS || !padding_ok || !digits_ok {
            return Err(StatusWord::IncorrectDataField);
        }
        Ok(Self(bytes))
    }

    /// Reference data from bytes already in wire format; for factory constants.
    pub(super) const fn from_padded(bytes: [u8; REFERENCE_DATA_LEN]) -> Self {
        Self(bytes)
    }

    /// Pads a 6- to 8-character value with `FF`; used for factory values.
    pub fn from_ascii(value: &str) -> Result<Self, StatusWord> {
        let mut padded = Zeroizing::new([PADDING; REFERENCE_DATA_LEN]);
        let raw = value.as_bytes();
        if raw.len() > REFERENCE_DATA_LEN {
            return Err(StatusWord::IncorrectDataField);
        }
        padded[..raw.len()].copy_from_slice(raw);
        Self::parse(&padded[..], false)
    }

    /// Constant-time comparison with candidate reference data.
    pub fn matches(&self, candidate: &ReferenceData) -> bool {
        self.0.ct_eq(&candidate.0).into()
    }
}

impl fmt::Debug for ReferenceData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReferenceData([redacted])")
    }
}

impl Serialize for ReferenceData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        hex_secret::serialize(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for ReferenceData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = hex_secret::deserialize(deserializer)?;
        // Stored values were validated when set; only the length is re-checked so that a
        // state file written under other PIN rules still loads.
        let array: [u8; REFERENCE_DATA_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| serde::de::Error::custom("reference data must be 8 bytes"))?;
        Ok(Self(array))
    }
}

/// The card management key (key reference `9B`).
#[derive(Clone, Serialize, Deserialize)]
pub struct ManagementKey {
    algorithm: MgmtKeyAlgorithm,
    #[serde(with = "hex_secret")]
    key: Zeroizing<Vec<u8>>,
}

impl ManagementKey {
    /// A key of the algorithm's length; `6A80` otherwise.
    pub fn new(algorithm: MgmtKeyAlgorithm, key: &[u8]) -> Result<Self, StatusWord> {
        if key.len() != algorithm.key_len() {
            return Err(StatusWord::IncorrectDataField);
        }
        Ok(Self {
            algorithm,
            key: Zeroizing::new(key.to_vec()),
        })
    }

    /// The well-known factory key: `01 02 … 08` repeated to the key length.
    pub fn factory(algorithm: MgmtKeyAlgorithm) -> Self {
        let key = (1..=8u8)
            .cycle()
            .take(algorithm.key_len())
            .collect::<Vec<_>>();
        Self {
            algorithm,
            key: Zeroizing::new(key),
        }
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> MgmtKeyAlgorithm {
        self.algorithm
    }

    /// Whether this is still the factory key.
    pub fn is_factory_default(&self) -> bool {
        self.key.ct_eq(&Self::factory(self.algorithm).key).into()
    }

    /// Encrypts one block in place (ECB); `block` must be one block long.
    pub fn encrypt_block(&self, block: &mut [u8]) -> Result<(), StatusWord> {
        self.ecb(block, Direction::Encrypt)
    }

    /// Decrypts one block in place (ECB); `block` must be one block long.
    pub fn decrypt_block(&self, block: &mut [u8]) -> Result<(), StatusWord> {
        self.ecb(block, Direction::Decrypt)
    }

    fn ecb(&self, block: &mut [u8], direction: Direction) -> Result<(), StatusWord> {
        match self.algorithm {
            MgmtKeyAlgorithm::TripleDes => ecb::<des::TdesEde3>(&self.key, block, direction),
            MgmtKeyAlgorithm::Aes128 => ecb::<aes::Aes128>(&self.key, block, direction),
            MgmtKeyAlgorithm::Aes192 => ecb::<aes::Aes192>(&self.key, block, direction),
            MgmtKeyAlgorithm::Aes256 => ecb::<aes::Aes256>(&self.key, block, direction),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    Encrypt,
    Decrypt,
}

/// One block of a block cipher in ECB mode; a wrong block length is `6A80`.
fn ecb<C>(key: &[u8], block: &mut [u8], direction: Direction) -> Result<(), StatusWord>
where
    C: BlockEncrypt + BlockDecrypt + KeyInit,
{
    let cipher = C::new_from_slice(key).map_err(|_| StatusWord::NoPreciseDiagnosis)?;
    if block.len() != C::block_size() {
        return Err(StatusWord::IncorrectDataField);
    }
    let block = GenericArray::from_mut_slice(block);
    match direction {
        Direction::Encrypt => cipher.encrypt_block(block),
        Direction::Decrypt => cipher.decrypt_block(block),
    }
    Ok(())
}

impl fmt::Debug for ManagementKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagementKey")
            .field("algorithm", &self.algorithm)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// Serde helpers writing secret bytes as hex, wiping the intermediate strings.
pub(crate) mod hex_secret {
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        let text = Zeroizing::new(hex::encode(bytes));
        serializer.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Zeroizing<Vec<u8>>, D::Error> {
        let text = Zeroizing::new(String::deserialize(deserializer)?);
        hex::decode(text.as_bytes())
            .map(Zeroizing::new)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn reference_data_format_rules() {
        let ok: [&[u8]; 3] = [b"123456\xFF\xFF", b"1234567\xFF", b"12345678"];
        for bytes in ok {
            assert!(ReferenceData::parse(bytes, true).is_ok(), "{bytes:02X?}");
        }
        let bad: [&[u8]; 5] = [
            b"12345\xFF\xFF\xFF",
            b"123456\xFF",
            b"123456\xFF1",
            b"123456789",
            b"\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF",
        ];
        for bytes in bad {
            assert_eq!(
                ReferenceData::parse(bytes, false).err(),
                Some(StatusWord::IncorrectDataField),
                "{bytes:02X?}"
            );
        }
        assert!(ReferenceData::parse(b"abcdef\xFF\xFF", false).is_ok());
        assert!(ReferenceData::parse(b"abcdef\xFF\xFF", true).is_err());
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let pin = ReferenceData::from_ascii("123456").unwrap();
        let key = ManagementKey::factory(MgmtKeyAlgorithm::TripleDes);
        let shown = format!("{pin:?} {key:?}");
        assert!(
            !shown.contains("123456") && !shown.contains("0102"),
            "{shown}"
        );
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn factory_keys_have_the_algorithm_length() {
        for algorithm in MgmtKeyAlgorithm::ALL {
            let key = ManagementKey::factory(algorithm);
            assert_eq!(key.key.len(), algorithm.key_len());
            assert!(key.is_factory_default());
        }
        let key = ManagementKey::factory(MgmtKeyAlgorithm::TripleDes);
        assert_eq!(
            hex::encode(&*key.key),
            "010203040506070801020304050607080102030405060708"
        );
    }

    #[test]
    fn blocks_encrypt_and_decrypt_back() {
        for algorithm in MgmtKeyAlgorithm::ALL {
            let key = ManagementKey::factory(algorithm);
            let plain = vec![0x5A; algorithm.block_len()];
            let mut block = plain.clone();
            key.encrypt_block(&mut block).unwrap();
            assert_ne!(block, plain);
            key.decrypt_block(&mut block).unwrap();
            assert_eq!(block, plain);
            assert!(key.encrypt_block(&mut [0; 3]).is_err());
        }
    }

    #[test]
    fn secrets_survive_serialization() {
        let key = ManagementKey::new(MgmtKeyAlgorithm::Aes128, &[7; 16]).unwrap();
        let json = serde_json::to_string(&key).unwrap();
        let back: ManagementKey = serde_json::from_str(&json).unwrap();
        assert_eq!(&*back.key, &[7; 16]);
        let pin = ReferenceData::from_ascii("654321").unwrap();
        let back: ReferenceData =
            serde_json::from_str(&serde_json::to_string(&pin).unwrap()).unwrap();
        assert!(back.matches(&pin));
    }
}
