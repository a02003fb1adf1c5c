//! A rack's identity on the broker: every result and event a worker
//! publishes is signed with the rack's Ed25519 key, and the ledger accepts
//! only messages whose signature verifies under the key the rack enrolled
//! and whose body speaks for that same rack.
//!
//! The signing key is derived from the rack's X25519 enrolment secret (HKDF-
//! SHA256, info [`SIGNING_KEY_INFO`]), so a rack keeps one secret file and
//! enrols both public keys at once. The signature covers
//! [`SIGNATURE_CONTEXT`], the rack id, a zero byte and the exact message
//! body; it travels in the headers [`RACK_HEADER`] and [`SIGNATURE_HEADER`]
//! (standard base64 of the 64 signature bytes).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::sealing::RackSecretKey;

/// Header naming the rack that signed the message.
pub const RACK_HEADER: &str = "x-cardfleet-rack";
/// Header with the signature over the message.
pub const SIGNATURE_HEADER: &str = "x-cardfleet-signature";
/// HKDF info deriving the signing key from the enrolment secret.
pub const SIGNING_KEY_INFO: &[u8] = b"cardfleet/rack-signing-key/v1";
/// Start of every signed byte string; the rack id follows it.
pub const SIGNATURE_CONTEXT: &[u8] = b"cardfleet/rack-message/v1/rack:";

/// Dead-letter reason of a message without a valid signature of an
/// enrolled rack (no headers, unknown rack, no signing key, bad signature).
pub const UNAUTHENTICATED_RACK: &str = crate::codes::Code::UnauthenticatedRack.as_str();
/// Dead-letter reason of a validly signed message that speaks for another
/// rack than the one that signed it.
pub const RACK_MISMATCH: &str = crate::codes::Code::RackMismatch.as_str();

fn signed_bytes(rack_id: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SIGNATURE_CONTEXT.len() + rack_id.len() + 1 + body.len());
    bytes.extend_from_slice(SIGNATURE_CONTEXT);
    bytes.extend_from_slice(rack_id.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(body);
    bytes
}

/// Signs a rack's messages. Holds the private signing key; never printed.
pub struct RackSigner {
    rack_id: String,
    key: SigningKey,
}

impl std::fmt::Debug for RackSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RackSigner")
            .field("rack_id", &self.rack_id)
            .finish_non_exhaustive()
    }
}

impl RackSigner {
    /// The signer of `rack_id`, its key derived from the enrolment secret.
    pub fn new(rack_id: &str, secret: &RackSecretKey) -> Self {
        Self {
            rack_id: rack_id.to_owned(),
            key: signing_key(secret),
        }
    }

    pub fn rack_id(&self) -> &str {
        &self.rack_id
    }

    /// The 32 bytes of the public verifying key, as enrolled.
    pub fn verifying_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The two headers to send with `body`: (name, value) pairs.
    pub fn headers(&self, body: &[u8]) -> [(&'static str, String); 2] {
        let signature = self.key.sign(&signed_bytes(&self.rack_id, body));
        [
            (RACK_HEADER, self.rack_id.clone()),
            (SIGNATURE_HEADER, B64.encode(signature.to_bytes())),
        ]
    }
}

fn signing_key(secret: &RackSecretKey) -> SigningKey {
    let ikm = secret.to_bytes();
    let mut seed = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's limit of 255 * 32: cannot fail.
    let _ = hkdf::Hkdf::<sha2::Sha256>::new(None, ikm.as_slice())
        .expand(SIGNING_KEY_INFO, seed.as_mut_slice());
    SigningKey::from_bytes(&seed)
}

/// The public signing key of the rack whose enrolment secret is `secret`.
pub fn verifying_key(secret: &RackSecretKey) -> [u8; 32] {
    signing_key(secret).verifying_key().to_bytes()
}

/// Whether `bytes` is a usable Ed25519 public key (a valid curve point of
/// full order; the identity and small-order points are refused).
pub fn is_valid_verifying_key(bytes: &[u8; 32]) -> bool {
    VerifyingKey::from_bytes(bytes).is_ok_and(|k| !k.is_weak())
}

/// Checks `signature` (header text) over `body` as sent by `rack_id`,
/// under that rack's enrolled `verifying_key`.
pub fn verify(verifying_key: &[u8; 32], rack_id: &str, body: &[u8], signature: &str) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(verifying_key) else {
        return false;
    };
    let Ok(bytes) = B64.decode(signature.trim()) else {
        return false;
    };
    let Ok(signature) = ed25519_dalek::Signature::from_slice(&bytes) else {
        return false;
    };
    key.verify_strict(&signed_bytes(rack_id, body), &signature)
        .is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn header<'a>(headers: &'a [(&'static str, String); 2], name: &str) -> &'a str {
        &headers.iter().find(|(n, _)| *n == name).unwrap().1
    }

    #[test]
    fn a_signed_message_verifies_under_the_racks_key_only() {
        let secret = RackSecretKey::generate();
        let signer = RackSigner::new("rack-a", &secret);
        assert_eq!(signer.verifying_key(), verifying_key(&secret));
        assert!(is_valid_verifying_key(&signer.verifying_key()));
        let headers = signer.headers(b"{\"x\":1}");
        assert_eq!(header(&headers, RACK_HEADER), "rack-a");
        let sig = header(&headers, SIGNATURE_HEADER);
        let key = signer.verifying_key();
        assert!(verify(&key, "rack-a", b"{\"x\":1}", sig));
        // Another body, another rack name, another key: refused.
        assert!(!verify(&key, "rack-a", b"{\"x\":2}", sig));
        assert!(!verify(&key, "rack-b", b"{\"x\":1}", sig));
        let other = verifying_key(&RackSecretKey::generate());
        assert!(!verify(&other, "rack-a", b"{\"x\":1}", sig));
        assert!(!verify(&key, "rack-a", b"{\"x\":1}", "not base64!"));
        assert!(!verify(
            &key,
            "rack-a",
            b"{\"x\":1}",
            &B64.encode([0u8; 64])
        ));
    }

    #[test]
    fn the_signing_key_is_stable_and_distinct_from_the_sealing_key() {
        let secret = RackSecretKey::generate();
        let again = RackSecretKey::from_bytes(secret.to_bytes().as_slice()).unwrap();
        assert_eq!(verifying_key(&secret), verifying_key(&again));
        assert_ne!(verifying_key(&secret), *secret.public_key().as_bytes());
        assert!(!format!("{:?}", RackSigner::new("r", &secret)).contains("key:"));
    }

    #[test]
    fn weak_or_invalid_verifying_keys_are_refused() {
        assert!(!is_valid_verifying_key(&[0u8; 32]));
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(!is_valid_verifying_key(&identity));
    }
}
