//! Sealing a job's secrets to its rack: HPKE (RFC 9180) in base mode with
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and ChaCha20-Poly1305, from the
//! `hpke` crate. The control plane seals with the rack's public key, the
//! rack's worker opens with its private key; both call this one module.
//!
//! The context is bound: HPKE `info` is [`INFO_LABEL`] followed by the rack
//! id, and the AEAD's associated data is the job id's 16 bytes, so a sealed
//! payload opens only on the rack and for the job it was made for.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use rand::rngs::OsRng;
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

use crate::messages::{CardSecrets, JobSecrets, SecretScheme};

type Kem = X25519HkdfSha256;
type Kdf = HkdfSha256;
type Aead = ChaCha20Poly1305;

/// Dead-letter reason (and failure code) of a job whose secrets the rack
/// cannot open: sealed to another rack's key, for another job, or tampered.
pub const SECRETS_UNOPENABLE: &str = crate::codes::Code::SecretsUnopenable.as_str();

/// Start of the HPKE `info`; the rack id follows it.
pub const INFO_LABEL: &[u8] = b"cardfleet/job-secrets/v1/rack:";

/// Why a job's secrets could not be sealed or opened. Says nothing about
/// the secrets or keys themselves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("a rack key must be 32 bytes")]
    BadKey,
    #[error("sealing failed")]
    Seal,
    #[error("the sealed secrets are malformed: {0}")]
    Malformed(&'static str),
    #[error("the secrets are sealed to key {sealed_to}, not this rack's key {ours}")]
    OtherKey { sealed_to: String, ours: String },
    #[error("the sealed secrets do not open (another rack or job, or tampered)")]
    Open,
}

/// A rack's public key: 32 bytes of X25519.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RackPublicKey([u8; 32]);

impl std::fmt::Debug for RackPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RackPublicKey({})", self.key_id())
    }
}

impl RackPublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key's id on the wire and in the audit trail: hex of the first 16
    /// bytes of SHA-256 of the key, so a worker can tell "sealed to another
    /// key" from "tampered".
    pub fn key_id(&self) -> String {
        use sha2::Digest;
        hex_prefix(&sha2::Sha256::digest(self.0)[..16])
    }

    fn hpke(&self) -> Result<<Kem as hpke::Kem>::PublicKey, SealError> {
        <Kem as hpke::Kem>::PublicKey::from_bytes(&self.0).map_err(|_| SealError::BadKey)
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A rack's private key; zeroized on drop, never printed.
pub struct RackSecretKey {
    secret: <Kem as hpke::Kem>::PrivateKey,
    public: RackPublicKey,
}

impl std::fmt::Debug for RackSecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RackSecretKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl RackSecretKey {
    /// A new key pair from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let (secret, public) = Kem::gen_keypair(&mut OsRng);
        let public = RackPublicKey(public.to_bytes().into());
        Self { secret, public }
    }

    /// The key whose 32 private bytes are `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        if bytes.len() != 32 {
            return Err(SealError::BadKey);
        }
        let secret =
            <Kem as hpke::Kem>::PrivateKey::from_bytes(bytes).map_err(|_| SealError::BadKey)?;
        let public = RackPublicKey(Kem::sk_to_pk(&secret).to_bytes().into());
        Ok(Self { secret, public })
    }

    /// The 32 private bytes, for writing the key file.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        let mut bytes = self.secret.to_bytes();
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&bytes);
        bytes.as_mut_slice().zeroize();
        out
    }

    pub fn public_key(&self) -> RackPublicKey {
        self.public
    }
}

fn info(rack_id: &str) -> Vec<u8> {
    let mut info = INFO_LABEL.to_vec();
    info.extend_from_slice(rack_id.as_bytes());
    info
}

/// Seals `secrets` to `rack_key` for job `job_id` on rack `rack_id`.
pub fn seal(
    rack_key: &RackPublicKey,
    rack_id: &str,
    job_id: Uuid,
    secrets: &CardSecrets,
) -> Result<JobSecrets, SealError> {
    let plain = Zeroizing::new(serde_json::to_vec(secrets).map_err(|_| SealError::Seal)?);
    let (encapped, ciphertext) = hpke::single_shot_seal::<Aead, Kdf, Kem, _>(
        &OpModeS::Base,
        &rack_key.hpke()?,
        &info(rack_id),
        &plain,
        job_id.as_bytes(),
        &mut OsRng,
    )
    .map_err(|_| SealError::Seal)?;
    Ok(JobSecrets {
        scheme: SecretScheme::Hpke,
        key_id: rack_key.key_id(),
        enc: B64.encode(encapped.to_bytes()),
        ciphertext: B64.encode(ciphertext),
    })
}

/// Opens `sealed` with the rack's key for job `job_id` on rack `rack_id`.
pub fn open(
    rack_key: &RackSecretKey,
    rack_id: &str,
    job_id: Uuid,
    sealed: &JobSecrets,
) -> Result<CardSecrets, SealError> {
    match sealed.scheme {
        SecretScheme::Hpke => {}
    }
    let ours = rack_key.public.key_id();
    if sealed.key_id != ours {
        return Err(SealError::OtherKey {
            sealed_to: sealed.key_id.clone(),
            ours,
        });
    }
    let enc = B64
        .decode(&sealed.enc)
        .map_err(|_| SealError::Malformed("enc is not base64"))?;
    let encapped = <Kem as hpke::Kem>::EncappedKey::from_bytes(&enc)
        .map_err(|_| SealError::Malformed("enc is not an X25519 key"))?;
    let ciphertext = B64
        .decode(&sealed.ciphertext)
        .map_err(|_| SealError::Malformed("ciphertext is not base64"))?;
    let plain = Zeroizing::new(
        hpke::single_shot_open::<Aead, Kdf, Kem>(
            &OpModeR::Base,
            &rack_key.secret,
            &encapped,
            &info(rack_id),
            &ciphertext,
            job_id.as_bytes(),
        )
        .map_err(|_| SealError::Open)?,
    );
    serde_json::from_slice(&plain).map_err(|_| SealError::Malformed("not card secrets"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::profile::ManagementKeyAlgorithm;

    fn secrets() -> CardSecrets {
        CardSecrets {
            pin: "48291377".into(),
            puk: "99887766".into(),
            management_key: "0f".repeat(24),
            management_key_algorithm: ManagementKeyAlgorithm::Aes192,
        }
    }

    #[test]
    fn sealed_secrets_open_with_the_rack_key_for_the_same_rack_and_job() {
        let key = RackSecretKey::generate();
        let job = Uuid::new_v4();
        let sealed = seal(&key.public_key(), "rack-a", job, &secrets()).unwrap();
        assert_eq!(sealed.scheme, SecretScheme::Hpke);
        assert_eq!(B64.decode(&sealed.enc).unwrap().len(), 32);
        let text = serde_json::to_string(&sealed).unwrap();
        for secret in ["48291377", "99887766", &"0f".repeat(24)] {
            assert!(!text.contains(secret), "{text}");
        }
        assert_eq!(open(&key, "rack-a", job, &sealed).unwrap(), secrets());
    }

    #[test]
    fn a_key_survives_its_bytes() {
        let key = RackSecretKey::generate();
        let again = RackSecretKey::from_bytes(key.to_bytes().as_slice()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        assert!(RackSecretKey::from_bytes(&[1u8; 31]).is_err());
        assert!(!format!("{key:?}").contains(&hex_prefix(key.to_bytes().as_slice())));
    }

    #[test]
    fn another_racks_key_does_not_open_them() {
        let key = RackSecretKey::generate();
        let other = RackSecretKey::generate();
        let job = Uuid::new_v4();
        let sealed = seal(&key.public_key(), "rack-a", job, &secrets()).unwrap();
        assert!(matches!(
            open(&other, "rack-a", job, &sealed),
            Err(SealError::OtherKey { .. })
        ));
        // Even with the key id forged to match, the key itself does not open them.
        let forged = JobSecrets {
            key_id: other.public_key().key_id(),
            ..sealed
        };
        assert_eq!(open(&other, "rack-a", job, &forged), Err(SealError::Open));
    }

    #[test]
    fn another_rack_id_or_job_id_does_not_open_them() {
        let key = RackSecretKey::generate();
        let job = Uuid::new_v4();
        let sealed = seal(&key.public_key(), "rack-a", job, &secrets()).unwrap();
        assert_eq!(open(&key, "rack-b", job, &sealed), Err(SealError::Open));
        assert_eq!(
            open(&key, "rack-a", Uuid::new_v4(), &sealed),
            Err(SealError::Open)
        );
    }

    #[test]
    fn tampered_secrets_do_not_open() {
        let key = RackSecretKey::generate();
        let job = Uuid::new_v4();
        let sealed = seal(&key.public_key(), "rack-a", job, &secrets()).unwrap();
        let mut ct = B64.decode(&sealed.ciphertext).unwrap();
        ct[3] ^= 1;
        let flipped = JobSecrets {
            ciphertext: B64.encode(&ct),
            ..sealed.clone()
        };
        assert_eq!(open(&key, "rack-a", job, &flipped), Err(SealError::Open));
        let mut enc = B64.decode(&sealed.enc).unwrap();
        enc[0] ^= 1;
        let other_enc = JobSecrets {
            enc: B64.encode(&enc),
            ..sealed.clone()
        };
        assert_eq!(open(&key, "rack-a", job, &other_enc), Err(SealError::Open));
        let short = JobSecrets {
            enc: B64.encode([1u8; 5]),
            ..sealed
        };
        assert!(matches!(
            open(&key, "rack-a", job, &short),
            Err(SealError::Malformed(_))
        ));
    }
}
