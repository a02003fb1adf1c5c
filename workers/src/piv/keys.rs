//! Asymmetric key pairs in the slots 9A, 9C, 9D and 9E: generation, public key templates,
//! signing, RSA private operations and ECDH, and how they are stored.

use std::fmt;

use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand::rngs::OsRng;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPrivateKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::ids::{alg, key_ref};
use super::secrets::hex_secret;
use crate::apdu::StatusWord;
use crate::tlv::{self, Tag};

const RSA_BITS: usize = 2048;
const RSA_BYTES: usize = RSA_BITS / 8;
const RSA_EXPONENT: u64 = 65_537;

/// The key slots that hold generated key pairs.
pub const KEY_SLOTS: [u8; 4] = [
    key_ref::AUTHENTICATION,
    key_ref::SIGNATURE,
    key_ref::KEY_MANAGEMENT,
    key_ref::CARD_AUTHENTICATION,
];

/// Whether the key reference names one of the asymmetric key slots.
pub fn is_key_slot(reference: u8) -> bool {
    KEY_SLOTS.contains(&reference)
}

/// Asymmetric algorithms the card generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    /// RSA with a 2048-bit modulus and exponent 65537 (`07`).
    #[serde(rename = "rsa2048")]
    Rsa2048,
    /// ECDSA/ECDH on P-256 (`11`).
    #[serde(rename = "eccp256")]
    EccP256,
    /// ECDSA/ECDH on P-384 (`14`).
    #[serde(rename = "eccp384")]
    EccP384,
}

impl KeyAlgorithm {
    /// The SP 800-78-4 algorithm identifier.
    pub fn id(self) -> u8 {
        match self {
            Self::Rsa2048 => alg::RSA_2048,
            Self::EccP256 => alg::ECC_P256,
            Self::EccP384 => alg::ECC_P384,
        }
    }

    /// The algorithm with this identifier, if the card supports it.
    pub fn from_id(id: u8) -> Option<Self> {
        [Self::Rsa2048, Self::EccP256, Self::EccP384]
            .into_iter()
            .find(|a| a.id() == id)
    }
}

/// When the PIN must be verified before a slot's key is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PinPolicy {
    /// Never (card authentication key).
    Never,
    /// Once per session.
    Once,
    /// Immediately before every use (digital signature key).
    Always,
}

impl PinPolicy {
    /// The SP 800-73-4 default for a slot.
    pub fn default_for(slot: u8) -> Self {
        match slot {
            key_ref::SIGNATURE => Self::Always,
            key_ref::CARD_AUTHENTICATION => Self::Never,
            _ => Self::Once,
        }
    }

    /// The policy byte of the YubiKey-compatible `AA` tag and GET METADATA (`00` = default).
    pub fn from_byte(byte: u8, slot: u8) -> Option<Self> {
        match byte {
            0x00 => Some(Self::default_for(slot)),
            0x01 => Some(Self::Never),
            0x02 => Some(Self::Once),
            0x03 => Some(Self::Always),
            _ => None,
        }
    }

    /// The policy byte reported by GET METADATA.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Never => 0x01,
            Self::Once => 0x02,
            Self::Always => 0x03,
        }
    }
}

enum KeyMaterial {
    Rsa(Box<RsaPrivateKey>),
    P256(p256::SecretKey),
    P384(p384::SecretKey),
}

/// A key pair held in a slot.
#[derive(Deserialize)]
#[serde(try_from = "StoredKey")]
pub struct SlotKey {
    material: KeyMaterial,
    pin_policy: PinPolicy,
    touch_policy: u8,
}

impl SlotKey {
    /// Generates a fresh key pair.
    pub fn generate(
        algorithm: KeyAlgorithm,
        pin_policy: PinPolicy,
        touch_policy: u8,
    ) -> Result<Self, StatusWord> {
        let material = match algorithm {
            KeyAlgorithm::Rsa2048 => {
                let exponent = BigUint::from(RSA_EXPONENT);
                let key = RsaPrivateKey::new_with_exp(&mut OsRng, RSA_BITS, &exponent)
                    .map_err(|_| StatusWord::NoPreciseDiagnosis)?;
                KeyMaterial::Rsa(Box::new(key))
            }
            KeyAlgorithm::EccP256 => KeyMaterial::P256(p256::SecretKey::random(&mut OsRng)),
            KeyAlgorithm::EccP384 => KeyMaterial::P384(p384::SecretKey::random(&mut OsRng)),
        };
        Ok(Self {
            material,
            pin_policy,
            touch_policy,
        })
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        match self.material {
            KeyMaterial::Rsa(_) => KeyAlgorithm::Rsa2048,
            KeyMaterial::P256(_) => KeyAlgorithm::EccP256,
            KeyMaterial::P384(_) => KeyAlgorithm::EccP384,
        }
    }

    /// When the PIN must be verified before use.
    pub fn pin_policy(&self) -> PinPolicy {
        self.pin_policy
    }

    /// The touch policy byte as requested at generation (a virtual card has nothing to touch).
    pub fn touch_policy(&self) -> u8 {
        self.touch_policy
    }

    /// The public key as the data objects inside `7F49`: `81` modulus and `82` exponent for
    /// RSA, `86` uncompressed point for ECC.
    pub fn public_key_objects(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match &self.material {
            KeyMaterial::Rsa(key) => {
                tlv::write(&mut out, Tag::new(0x81), &key.n().to_bytes_be());
                tlv::write(&mut out, Tag::new(0x82), &key.e().to_bytes_be());
            }
            KeyMaterial::P256(key) => {
                let point = key.public_key().to_encoded_point(false);
                tlv::write(&mut out, Tag::new(0x86), point.as_bytes());
            }
            KeyMaterial::P384(key) => {
                let point = key.public_key().to_encoded_point(false);
                tlv::write(&mut out, Tag::new(0x86), point.as_bytes());
            }
        }
        out
    }

    /// The `7F49` public key template GENERATE ASYMMETRIC KEY PAIR returns.
    pub fn public_key_template(&self) -> Vec<u8> {
        tlv::build(super::ids::tag::PUBLIC_KEY, &self.public_key_objects())
    }

    /// The private-key operation behind GENERAL AUTHENTICATE with a `81` challenge: a raw RSA
    /// private operation on a modulus-sized block (the caller did the padding), or an ECDSA
    /// signature (DER) over a hash.
    pub fn private_operation(&self, input: &[u8]) -> Result<Vec<u8>, StatusWord> {
        use p256::ecdsa::signature::hazmat::PrehashSigner;
        let bad = |_| StatusWord::IncorrectDataField;
        match &self.material {
            KeyMaterial::Rsa(key) => {
                if input.len() != RSA_BYTES {
                    return Err(StatusWord::IncorrectDataField);
                }
                let m = BigUint::from_bytes_be(input);
                if &m >= key.n() {
                    return Err(StatusWord::IncorrectDataField);
                }
                let result = rsa::hazmat::rsa_decrypt_and_check(key.as_ref(), Some(&mut OsRng), &m)
                    .map_err(bad)?;
                let raw = Zeroizing::new(result.to_bytes_be());
                let mut out = vec![0; RSA_BYTES - raw.len().min(RSA_BYTES)];
                out.extend_from_slice(&raw);
                Ok(out)
            }
            KeyMaterial::P256(key) => {
                let signer = p256::ecdsa::SigningKey::from(key);
                let signature: p256::ecdsa::Signature = signer
                    .sign_prehash(input)
                    .map_err(|_| StatusWord::IncorrectDataField)?;
                Ok(signature.to_der().as_bytes().to_vec())
            }
            KeyMaterial::P384(key) => {
                let signer = p384::ecdsa::SigningKey::from(key);
                let signature: p384::ecdsa::Signature = signer
                    .sign_prehash(input)
                    .map_err(|_| StatusWord::IncorrectDataField)?;
                Ok(signature.to_der().as_bytes().to_vec())
            }
        }
    }

    /// ECDH with the peer's uncompressed point (`85`); the shared secret's x-coordinate.
    pub fn key_agreement(&self, peer_point: &[u8]) -> Result<Vec<u8>, StatusWord> {
        let bad = |_| StatusWord::IncorrectDataField;
        match &self.material {
            KeyMaterial::Rsa(_) => Err(StatusWord::IncorrectDataField),
            KeyMaterial::P256(key) => {
                let peer = p256::PublicKey::from_sec1_bytes(peer_point).map_err(bad)?;
                let shared = p256::ecdh::diffie_hellman(key.to_nonzero_scalar(), peer.as_affine());
                Ok(shared.raw_secret_bytes().to_vec())
            }
            KeyMaterial::P384(key) => {
                let peer = p384::PublicKey::from_sec1_bytes(peer_point).map_err(bad)?;
                let shared = p384::ecdh::diffie_hellman(key.to_nonzero_scalar(), peer.as_affine());
                Ok(shared.raw_secret_bytes().to_vec())
            }
        }
    }
}

impl fmt::Debug for SlotKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotKey")
            .field("algorithm", &self.algorithm())
            .field("pin_policy", &self.pin_policy)
            .field("private_key", &"[redacted]")
            .finish()
    }
}

impl Clone for SlotKey {
    fn clone(&self) -> Self {
        let material = match &self.material {
            KeyMaterial::Rsa(key) => KeyMaterial::Rsa(key.clone()),
            KeyMaterial::P256(key) => KeyMaterial::P256(key.clone()),
            KeyMaterial::P384(key) => KeyMaterial::P384(key.clone()),
        };
        Self {
            material,
            pin_policy: self.pin_policy,
            touch_policy: self.touch_policy,
        }
    }
}

/// The stored form: PKCS#1 DER for RSA, the scalar for ECC.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    algorithm: KeyAlgorithm,
    #[serde(with = "hex_secret")]
    private_key: Zeroizing<Vec<u8>>,
    pin_policy: PinPolicy,
    touch_policy: u8,
}

impl Serialize for SlotKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let private_key = match &self.material {
            KeyMaterial::Rsa(rsa) => {
                let der = rsa.to_pkcs1_der().map_err(serde::ser::Error::custom)?;
                Zeroizing::new(der.as_bytes().to_vec())
            }
            KeyMaterial::P256(ec) => Zeroizing::new(ec.to_bytes().to_vec()),
            KeyMaterial::P384(ec) => Zeroizing::new(ec.to_bytes().to_vec()),
        };
        StoredKey {
            algorithm: self.algorithm(),
            private_key,
            pin_policy: self.pin_policy,
            touch_policy: self.touch_policy,
        }
        .serialize(serializer)
    }
}

/// A stored key that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("stored {0:?} private key does not decode")]
pub struct InvalidStoredKey(KeyAlgorithm);

impl TryFrom<StoredKey> for SlotKey {
    type Error = InvalidStoredKey;

    fn try_from(stored: StoredKey) -> Result<Self, Self::Error> {
        let invalid = |()| InvalidStoredKey(stored.algorithm);
        let material = match stored.algorithm {
            KeyAlgorithm::Rsa2048 => KeyMaterial::Rsa(Box::new(
                RsaPrivateKey::from_pkcs1_der(&stored.private_key).map_err(|_| invalid(()))?,
            )),
            KeyAlgorithm::EccP256 => KeyMaterial::P256(
                p256::SecretKey::from_slice(&stored.private_key).map_err(|_| invalid(()))?,
            ),
            KeyAlgorithm::EccP384 => KeyMaterial::P384(
                p384::SecretKey::from_slice(&stored.private_key).map_err(|_| invalid(()))?,
            ),
        };
        Ok(Self {
            material,
            pin_policy: stored.pin_policy,
            touch_policy: stored.touch_policy,
        })
    }
}
