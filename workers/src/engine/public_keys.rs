//! Public keys out: the SubjectPublicKeyInfo of each key pair generated on the card, built
//! from the card's public key data object (`7F49`: `86` EC point, or `81` modulus and `82`
//! exponent), so that a CA can issue certificates for them.

use base64::Engine as _;
use cardfleet_schemas::GeneratedPublicKey;
use cardfleet_schemas::profile::{KeyAlgorithm, KeySlot};
use p256::pkcs8::EncodePublicKey as _;
use rsa::BigUint;

use crate::tlv::{self, Tag};

/// The DER SubjectPublicKeyInfo of the key whose `7F49` content is `objects`.
pub fn spki_der(algorithm: KeyAlgorithm, objects: &[u8]) -> Result<Vec<u8>, String> {
    let field = |t: u32| -> Result<&[u8], String> {
        tlv::find(objects, Tag::new(t))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("public key object {t:02X} missing"))
    };
    let der = match algorithm {
        KeyAlgorithm::P256 => p256::PublicKey::from_sec1_bytes(field(0x86)?)
            .map_err(|e| e.to_string())?
            .to_public_key_der(),
        KeyAlgorithm::P384 => p384::PublicKey::from_sec1_bytes(field(0x86)?)
            .map_err(|e| e.to_string())?
            .to_public_key_der(),
        KeyAlgorithm::Rsa2048 => {
            let n = BigUint::from_bytes_be(field(0x81)?);
            let e = BigUint::from_bytes_be(field(0x82)?);
            rsa::RsaPublicKey::new(n, e)
                .map_err(|e| e.to_string())?
                .to_public_key_der()
        }
    };
    der.map(|d| d.as_bytes().to_vec())
        .map_err(|e| e.to_string())
}

/// The report entry for one slot.
pub(crate) fn report(slot: KeySlot, algorithm: KeyAlgorithm, spki: &[u8]) -> GeneratedPublicKey {
    GeneratedPublicKey {
        slot: format!("{:02x}", slot.id()),
        algorithm: match algorithm {
            KeyAlgorithm::P256 => "p256",
            KeyAlgorithm::P384 => "p384",
            KeyAlgorithm::Rsa2048 => "rsa2048",
        }
        .to_owned(),
        spki_der_base64: base64::engine::general_purpose::STANDARD.encode(spki),
    }
}
