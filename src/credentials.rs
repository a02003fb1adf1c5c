//! Card credentials: PIN and PUK generation under a profile's policy, their
//! AES-256-GCM encryption at rest under a keyring (the current key encrypts,
//! previous keys still decrypt, so keys rotate while the system runs), and
//! the per-card management key KDF.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use cardfleet_schemas::profile::{CredentialPolicy, ManagementKeyAlgorithm};
use hkdf::Hkdf;
use rand::rngs::OsRng;
use rand::{Rng, RngCore};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A secret string (PIN or PUK): zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    /// The secret itself; call only where it is written to a card or sealed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

const ALPHANUMERIC: &[u8] = b"0123456789ABCDEFGHJKLMNPQRSTUVWXYZ";

/// Generates a credential from the operating system's CSPRNG.
pub fn generate(policy: &CredentialPolicy) -> Secret {
    generate_with(policy, &mut OsRng)
}

/// Generates a credential from `rng`, which must be a CSPRNG (`OsRng` or
/// `thread_rng`, a ChaCha generator seeded and reseeded from the OS).
pub fn generate_with<R: Rng + rand::CryptoRng>(policy: &CredentialPolicy, rng: &mut R) -> Secret {
    let alphabet: &[u8] = if policy.digits_only {
        &ALPHANUMERIC[..10]
    } else {
        ALPHANUMERIC
    };
    let value = (0..policy.length)
        .map(|_| char::from(alphabet[rng.gen_range(0..alphabet.len())]))
        .collect();
    Secret(value)
}

/// The keyring for credentials at rest: a current 256-bit key, whose id is
/// stored beside every value it encrypts, and previous keys by id that
/// still decrypt older values until `cardfleet keys rotate` re-encrypted them.
#[derive(Clone)]
pub struct CredentialCipher {
    key_id: String,
    cipher: Aes256Gcm,
    previous: Vec<(String, Aes256Gcm)>,
}

impl std::fmt::Debug for CredentialCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let previous: Vec<&str> = self.previous.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("CredentialCipher")
            .field("key_id", &self.key_id)
            .field("previous", &previous)
            .finish_non_exhaustive()
    }
}

fn aes_key_from_hex(hex_key: &str) -> Result<Aes256Gcm, CredentialError> {
    let mut key = hex::decode(hex_key.trim()).map_err(|_| CredentialError::BadKey)?;
    let cipher = (key.len() == 32)
        .then(|| Aes256Gcm::new_from_slice(&key).ok())
        .flatten();
    key.zeroize();
    cipher.ok_or(CredentialError::BadKey)
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("credentials.encryption_key must be 64 hex characters (32 bytes)")]
    BadKey,
    #[error("credentials.previous_keys.{0} must be 64 hex characters (32 bytes)")]
    BadPreviousKey(String),
    #[error("key id '{0}' is both the current key and a previous key")]
    DuplicateKeyId(String),
    #[error("credentials.master_key must be at least 32 bytes of hex")]
    BadMasterKey,
    #[error("stored credential was encrypted under key '{0}', which is not configured")]
    UnknownKeyId(String),
    #[error("stored credential does not decrypt (tampered or wrong key)")]
    Decrypt,
}

/// Nonce and ciphertext of one encrypted value.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl CredentialCipher {
    pub fn from_hex(key_id: &str, hex_key: &str) -> Result<Self, CredentialError> {
        Ok(Self {
            key_id: key_id.to_owned(),
            cipher: aes_key_from_hex(hex_key)?,
            previous: Vec::new(),
        })
    }

    /// Adds a previous key: it no longer encrypts, but still decrypts values
    /// stored under `key_id`.
    pub fn with_previous(mut self, key_id: &str, hex_key: &str) -> Result<Self, CredentialError> {
        if key_id == self.key_id || self.previous.iter().any(|(id, _)| id == key_id) {
            return Err(CredentialError::DuplicateKeyId(key_id.to_owned()));
        }
        let cipher = aes_key_from_hex(hex_key)
            .map_err(|_| CredentialError::BadPreviousKey(key_id.into()))?;
        self.previous.push((key_id.to_owned(), cipher));
        Ok(self)
    }

    /// Ids of the previous keys, whose values `keys rotate` re-encrypts.
    pub fn previous_key_ids(&self) -> Vec<String> {
        self.previous.iter().map(|(id, _)| id.clone()).collect()
    }

    /// The key that decrypts values stored under `key_id`.
    fn key_for(&self, key_id: &str) -> Result<&Aes256Gcm, CredentialError> {
        if key_id == self.key_id {
            return Ok(&self.cipher);
        }
        self.previous
            .iter()
            .find(|(id, _)| id == key_id)
            .map(|(_, c)| c)
            .ok_or_else(|| CredentialError::UnknownKeyId(key_id.to_owned()))
    }

    /// Decrypts a value stored under `key_id` and encrypts it again under
    /// the current key, in the same context. The plaintext is zeroized.
    pub fn reseal(
        &self,
        key_id: &str,
        sealed: &Sealed,
        context: &[u8],
    ) -> Result<Sealed, CredentialError> {
        let secret = self.open(key_id, sealed, context)?;
        Ok(self.seal(&secret, context))
    }

    /// A fresh random key, for standalone runs that keep nothing.
    pub fn random(key_id: &str) -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        let cipher = Aes256Gcm::new(&key.into());
        key.zeroize();
        Self {
            key_id: key_id.to_owned(),
            cipher,
            previous: Vec::new(),
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Encrypts `secret`, binding it to `context` (job id and field) so a
    /// ciphertext cannot be moved to another row.
    pub fn seal(&self, secret: &Secret, context: &[u8]) -> Sealed {
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.expose().as_bytes(),
                    aad: context,
                },
            )
            // AES-GCM encryption fails only for messages over 64 GiB.
            .unwrap_or_default();
        Sealed {
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    pub fn open(
        &self,
        key_id: &str,
        sealed: &Sealed,
        context: &[u8],
    ) -> Result<Secret, CredentialError> {
        let cipher = self.key_for(key_id)?;
        if sealed.nonce.len() != 12 {
            return Err(CredentialError::Decrypt);
        }
        let plain = cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| CredentialError::Decrypt)?;
        String::from_utf8(plain)
            .map(Secret)
            .map_err(|_| CredentialError::Decrypt)
    }
}

/// The master key from which per-card management keys are derived.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey(Vec<u8>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Salt of version 1 of the management-key KDF; part of the documented derivation.
pub const MANAGEMENT_KEY_KDF_SALT: &[u8] = b"cardfleet/piv-management-key/v1";
/// Salt of version 2 of the management-key KDF.
pub const MANAGEMENT_KEY_KDF_SALT_V2: &[u8] = b"cardfleet/piv-management-key/v2";

/// Version of the management-key KDF a card's key was derived with; stored
/// per card (`cards.management_key_kdf`) so a card keeps the key its chip
/// holds when the KDF changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManagementKeyKdf {
    /// salt `.../v1`, info = chip serial: the keys of one chip under two
    /// algorithms share a prefix (AES-128's key is the start of AES-192's).
    V1,
    /// salt `.../v2`, info = algorithm name, a zero byte, chip serial: keys
    /// of different algorithms are independent.
    V2,
}

impl ManagementKeyKdf {
    /// The version cards imported now get.
    pub const CURRENT: Self = Self::V2;

    /// The version as stored and shown (1 or 2).
    pub fn number(self) -> i16 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }

    /// The version with stored number `n`, if it is one.
    pub fn from_number(n: i64) -> Option<Self> {
        match n {
            1 => Some(Self::V1),
            2 => Some(Self::V2),
            _ => None,
        }
    }
}

impl MasterKey {
    pub fn from_hex(hex_key: &str) -> Result<Self, CredentialError> {
        let key = hex::decode(hex_key.trim()).map_err(|_| CredentialError::BadMasterKey)?;
        if key.len() < 32 {
            return Err(CredentialError::BadMasterKey);
        }
        Ok(Self(key))
    }

    pub fn random() -> Self {
        let mut key = vec![0u8; 32];
        OsRng.fill_bytes(&mut key);
        Self(key)
    }

    /// Per-card management key under the current KDF version
    /// ([`ManagementKeyKdf::CURRENT`]), as cards imported now get it.
    pub fn derive_management_key(
        &self,
        chip_serial: &str,
        algorithm: ManagementKeyAlgorithm,
    ) -> Secret {
        self.derive_management_key_with(ManagementKeyKdf::CURRENT, chip_serial, algorithm)
    }

    /// Per-card management key: HKDF-SHA256 with the master key as input
    /// keying material and output length the algorithm's key length.
    /// Version 1: salt [`MANAGEMENT_KEY_KDF_SALT`], info the chip serial's
    /// UTF-8 bytes. Version 2: salt [`MANAGEMENT_KEY_KDF_SALT_V2`], info the
    /// algorithm's name (`3des`, `aes128`, `aes192`, `aes256`), a zero byte
    /// and the chip serial's UTF-8 bytes.
    pub fn derive_management_key_with(
        &self,
        kdf: ManagementKeyKdf,
        chip_serial: &str,
        algorithm: ManagementKeyAlgorithm,
    ) -> Secret {
        let (salt, info) = match kdf {
            ManagementKeyKdf::V1 => (MANAGEMENT_KEY_KDF_SALT, chip_serial.as_bytes().to_vec()),
            ManagementKeyKdf::V2 => {
                let mut info = algorithm.as_str().as_bytes().to_vec();
                info.push(0);
                info.extend_from_slice(chip_serial.as_bytes());
                (MANAGEMENT_KEY_KDF_SALT_V2, info)
            }
        };
        let hk = Hkdf::<Sha256>::new(Some(salt), &self.0);
        let mut okm = vec![0u8; algorithm.key_len()];
        // Expansion fails only past 255 * 32 bytes of output.
        let _ = hk.expand(&info, &mut okm);
        let key = Secret(hex::encode(&okm));
        okm.zeroize();
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pins_follow_the_policy() {
        let policy = CredentialPolicy {
            length: 8,
            digits_only: true,
        };
        for _ in 0..200 {
            let pin = generate(&policy);
            assert_eq!(pin.expose().len(), 8);
            assert!(pin.expose().bytes().all(|b| b.is_ascii_digit()));
        }
        let policy = CredentialPolicy {
            length: 6,
            digits_only: false,
        };
        let letters = (0..200)
            .map(|_| generate(&policy))
            .any(|p| p.expose().bytes().any(|b| b.is_ascii_uppercase()));
        assert!(letters, "alphanumeric policy never produced a letter");
    }

    #[test]
    fn sealed_credentials_open_only_in_their_context() {
        let cipher = CredentialCipher::random("k1");
        let pin = Secret::new("482913".into());
        let sealed = cipher.seal(&pin, b"job-1/pin");
        assert_ne!(sealed.ciphertext, b"482913");
        assert_eq!(cipher.open("k1", &sealed, b"job-1/pin").unwrap(), pin);
        assert!(cipher.open("k1", &sealed, b"job-2/pin").is_err());
        assert!(matches!(
            cipher.open("k2", &sealed, b"job-1/pin"),
            Err(CredentialError::UnknownKeyId(_))
        ));
    }

    #[test]
    fn a_keyring_decrypts_under_previous_keys_and_reseals_under_the_current_one() {
        let old = CredentialCipher::from_hex("k1", &"11".repeat(32)).unwrap();
        let pin = Secret::new("482913".into());
        let sealed = old.seal(&pin, b"job-1/pin");
        let ring = CredentialCipher::from_hex("k2", &"22".repeat(32))
            .unwrap()
            .with_previous("k1", &"11".repeat(32))
            .unwrap();
        assert_eq!(ring.previous_key_ids(), ["k1"]);
        assert_eq!(ring.open("k1", &sealed, b"job-1/pin").unwrap(), pin);
        let resealed = ring.reseal("k1", &sealed, b"job-1/pin").unwrap();
        let only_new = CredentialCipher::from_hex("k2", &"22".repeat(32)).unwrap();
        assert_eq!(only_new.open("k2", &resealed, b"job-1/pin").unwrap(), pin);
        assert!(only_new.open("k1", &sealed, b"job-1/pin").is_err());
        assert!(ring.reseal("k1", &sealed, b"job-2/pin").is_err());

        assert!(matches!(
            ring.clone().with_previous("k2", &"33".repeat(32)),
            Err(CredentialError::DuplicateKeyId(_))
        ));
        let bad = ring.with_previous("k0", "abcd").unwrap_err().to_string();
        assert!(bad.contains("previous_keys.k0"), "{bad}");
    }

    #[test]
    fn management_keys_are_stable_per_chip_and_differ_between_chips() {
        let master = MasterKey::from_hex(&"11".repeat(32)).unwrap();
        let v1 = |serial, algorithm| {
            master.derive_management_key_with(ManagementKeyKdf::V1, serial, algorithm)
        };
        let a = v1("CHIP-1", ManagementKeyAlgorithm::Aes192);
        let b = v1("CHIP-1", ManagementKeyAlgorithm::Aes192);
        let c = v1("CHIP-2", ManagementKeyAlgorithm::Aes192);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.expose().len(), 48);
        // The vector published in the README, computed independently, so
        // other tools can check their implementation of the KDF.
        assert_eq!(
            a.expose(),
            "636a159cffefc12cfdc2a0430a43a4094f71f9e2f1ddf5dd"
        );
        assert_eq!(
            v1("CHIP-1", ManagementKeyAlgorithm::Aes128).expose(),
            "636a159cffefc12cfdc2a0430a43a409"
        );
    }

    const V2_AES192_VECTOR: &str = "c1f0f873cdc1034010b395832d13ed174ffc7c0ae50d43c1";
    const V2_AES128_VECTOR: &str = "f1084fbd5d0ee5f721e22ba2ac6a5905";

    #[test]
    fn version_2_separates_algorithms_and_is_the_current_version() {
        let master = MasterKey::from_hex(&"11".repeat(32)).unwrap();
        let v2 = |serial, algorithm| {
            master.derive_management_key_with(ManagementKeyKdf::V2, serial, algorithm)
        };
        let aes192 = v2("CHIP-1", ManagementKeyAlgorithm::Aes192);
        let aes128 = v2("CHIP-1", ManagementKeyAlgorithm::Aes128);
        let tdes = v2("CHIP-1", ManagementKeyAlgorithm::TripleDes);
        // No prefix relation between algorithms, nor with version 1.
        assert!(!aes192.expose().starts_with(aes128.expose()));
        assert_ne!(aes192, tdes);
        let v1 = master.derive_management_key_with(
            ManagementKeyKdf::V1,
            "CHIP-1",
            ManagementKeyAlgorithm::Aes192,
        );
        assert_ne!(aes192, v1);
        assert_eq!(
            master.derive_management_key("CHIP-1", ManagementKeyAlgorithm::Aes192),
            aes192
        );
        // The vectors published in the README, computed independently.
        assert_eq!(aes192.expose(), V2_AES192_VECTOR);
        assert_eq!(aes128.expose(), V2_AES128_VECTOR);
        assert_eq!(ManagementKeyKdf::from_number(2), Some(ManagementKeyKdf::V2));
        assert_eq!(ManagementKeyKdf::from_number(3), None);
        assert_eq!(ManagementKeyKdf::V1.number(), 1);
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("12345678".into());
        assert!(!format!("{s:?}").contains("1234"));
        assert!(!format!("{:?}", MasterKey::random()).contains('0'));
    }
}
