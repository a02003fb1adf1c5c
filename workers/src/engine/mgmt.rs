//! The card management key (`9B`): mutual authentication with 3DES or AES through the
//! RustCrypto block ciphers, and the SET MANAGEMENT KEY extension (`FF`).
//!
//! Key bytes live in zeroizing buffers and no `Debug` shows them.

use std::fmt;

use aes::cipher::{
    BlockDecrypt, BlockEncrypt, BlockSizeUser, KeyInit, generic_array::GenericArray,
};
use cardfleet_schemas::profile::ManagementKeyAlgorithm;
use rand::RngCore;
use rand::rngs::OsRng;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::error::EngineError;
use super::session::{Session, command, command_no_le};
use crate::apdu::StatusWord;
use crate::piv_ids::{ins, key_ref, tag};
use crate::tlv::{self, Tag};

/// Every management key algorithm, in the order tried when nothing better is known.
pub(crate) const ALL_ALGORITHMS: [ManagementKeyAlgorithm; 4] = [
    ManagementKeyAlgorithm::TripleDes,
    ManagementKeyAlgorithm::Aes128,
    ManagementKeyAlgorithm::Aes192,
    ManagementKeyAlgorithm::Aes256,
];

/// The algorithm with this SP 800-78-4 identifier.
pub(crate) fn algorithm_from_id(id: u8) -> Option<ManagementKeyAlgorithm> {
    ALL_ALGORITHMS.into_iter().find(|a| a.piv_id() == id)
}

/// A management key: its bytes and the algorithm to use them with.
#[derive(Clone)]
pub(crate) struct MgmtKey {
    algorithm: ManagementKeyAlgorithm,
    key: Zeroizing<Vec<u8>>,
}

impl MgmtKey {
    /// The key, if its length suits the algorithm.
    pub(crate) fn new(algorithm: ManagementKeyAlgorithm, key: &[u8]) -> Option<Self> {
        (key.len() == algorithm.key_len()).then(|| Self {
            algorithm,
            key: Zeroizing::new(key.to_vec()),
        })
    }

    /// The same bytes under another algorithm of the same key length (a 24-byte key serves
    /// 3DES and AES-192).
    pub(crate) fn with_algorithm(&self, algorithm: ManagementKeyAlgorithm) -> Option<Self> {
        Self::new(algorithm, &self.key)
    }

    pub(crate) fn algorithm(&self) -> ManagementKeyAlgorithm {
        self.algorithm
    }

    /// This key under each algorithm in `order` whose key length fits, without repeats.
    pub(crate) fn candidates(&self, order: &[ManagementKeyAlgorithm]) -> Vec<MgmtKey> {
        let mut seen = Vec::new();
        order
            .iter()
            .filter(|a| {
                let fresh = !seen.contains(*a);
                seen.push(**a);
                fresh
            })
            .filter_map(|a| self.with_algorithm(*a))
            .collect()
    }

    fn block_len(&self) -> usize {
        match self.algorithm {
            ManagementKeyAlgorithm::TripleDes => 8,
            _ => 16,
        }
    }

    /// One ECB block operation in place.
    fn ecb(&self, block: &mut [u8], encrypt: bool) -> Result<(), EngineError> {
        let ok = match self.algorithm {
            ManagementKeyAlgorithm::TripleDes => ecb::<des::TdesEde3>(&self.key, block, encrypt),
            ManagementKeyAlgorithm::Aes128 => ecb::<aes::Aes128>(&self.key, block, encrypt),
            ManagementKeyAlgorithm::Aes192 => ecb::<aes::Aes192>(&self.key, block, encrypt),
            ManagementKeyAlgorithm::Aes256 => ecb::<aes::Aes256>(&self.key, block, encrypt),
        };
        ok.ok_or_else(|| EngineError::malformed(AUTH, "block or key of the wrong length"))
    }
}

impl fmt::Debug for MgmtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MgmtKey")
            .field("algorithm", &self.algorithm)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn ecb<C: BlockEncrypt + BlockDecrypt + KeyInit>(
    key: &[u8],
    block: &mut [u8],
    encrypt: bool,
) -> Option<()> {
    let cipher = C::new_from_slice(key).ok()?;
    if block.len() != <C as BlockSizeUser>::block_size() {
        return None;
    }
    let block = GenericArray::from_mut_slice(block);
    if encrypt {
        cipher.encrypt_block(block);
    } else {
        cipher.decrypt_block(block);
    }
    Some(())
}

const AUTH: &str = "GENERAL AUTHENTICATE 9B";
const SET_KEY: &str = "SET MANAGEMENT KEY";

/// How an authentication attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthOutcome {
    /// The card accepted the key, and its answer to our challenge proves it holds the key.
    Authenticated,
    /// The card's key has this algorithm but other bytes.
    WrongKey,
    /// The card's key has another algorithm (or the card does not know this one).
    WrongAlgorithm,
}

/// Mutual authentication (SP 800-73-4 Appendix A): ask for a witness, decrypt it, return it
/// with a challenge, and check the card's encryption of the challenge. A wrong management
/// key costs no try on PIV cards.
pub(crate) fn authenticate(
    session: &mut Session<'_>,
    key: &MgmtKey,
) -> Result<AuthOutcome, EngineError> {
    let alg = key.algorithm.piv_id();
    let request = tlv::build(tag::DYNAMIC_AUTH, &tlv::build(Tag::new(0x80), &[]));
    let apdu = command(
        AUTH,
        ins::GENERAL_AUTHENTICATE,
        alg,
        key_ref::MANAGEMENT,
        &request,
    )?;
    let response = session.transmit(AUTH, apdu)?;
    match response.sw() {
        StatusWord::Success => {}
        StatusWord::IncorrectP1P2 | StatusWord::IncorrectDataField | StatusWord::WrongP1P2 => {
            return Ok(AuthOutcome::WrongAlgorithm);
        }
        sw => return Err(EngineError::status(AUTH, sw)),
    }
    let mut witness = Zeroizing::new(dynamic_auth_value(response.data(), 0x80)?);
    if witness.len() != key.block_len() {
        return Err(EngineError::malformed(AUTH, "witness of the wrong length"));
    }
    key.ecb(&mut witness, false)?;
    let mut challenge = vec![0u8; key.block_len()];
    OsRng.fill_bytes(&mut challenge);
    let body = Zeroizing::new(
        [
            tlv::build(Tag::new(0x80), &witness),
            tlv::build(Tag::new(0x81), &challenge),
        ]
        .concat(),
    );
    let template = Zeroizing::new(tlv::build(tag::DYNAMIC_AUTH, &body));
    let apdu = command(
        AUTH,
        ins::GENERAL_AUTHENTICATE,
        alg,
        key_ref::MANAGEMENT,
        &template,
    )?;
    let response = session.transmit(AUTH, apdu)?;
    match response.sw() {
        StatusWord::Success => {}
        // Some applets (the Nitrokey PIV applet) answer a witness that does not decrypt to
        // theirs with 6A80 (incorrect data field) rather than 6982: a wrong key all the same.
        StatusWord::SecurityStatusNotSatisfied | StatusWord::IncorrectDataField => {
            return Ok(AuthOutcome::WrongKey);
        }
        sw => return Err(EngineError::status(AUTH, sw)),
    }
    let answer = dynamic_auth_value(response.data(), 0x82)?;
    let mut expected = challenge;
    key.ecb(&mut expected, true)?;
    if bool::from(expected.ct_eq(&answer)) {
        Ok(AuthOutcome::Authenticated)
    } else {
        Err(EngineError::malformed(
            AUTH,
            "the card's answer to our challenge does not match its key",
        ))
    }
}

fn dynamic_auth_value(data: &[u8], inner: u32) -> Result<Vec<u8>, EngineError> {
    let body =
        tlv::parse_single(data, tag::DYNAMIC_AUTH).map_err(|e| EngineError::malformed(AUTH, e))?;
    match tlv::find(body, Tag::new(inner)) {
        Ok(Some(value)) => Ok(value.to_vec()),
        Ok(None) => Err(EngineError::malformed(
            AUTH,
            format!("no {inner:02X} in 7C"),
        )),
        Err(e) => Err(EngineError::malformed(AUTH, e)),
    }
}

/// How a SET MANAGEMENT KEY ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetKeyOutcome {
    Set,
    /// The card refuses this algorithm or key.
    Refused(StatusWord),
    /// The card has no SET MANAGEMENT KEY instruction.
    NoExtension,
}

/// SET MANAGEMENT KEY (`FF FF FF`): algorithm, `9B`, key length, key. Needs management key
/// authentication.
pub(crate) fn set_key(
    session: &mut Session<'_>,
    key: &MgmtKey,
) -> Result<SetKeyOutcome, EngineError> {
    let len =
        u8::try_from(key.key.len()).map_err(|_| EngineError::malformed(SET_KEY, "key too long"))?;
    let mut data = Zeroizing::new(vec![key.algorithm.piv_id(), key_ref::MANAGEMENT, len]);
    data.extend_from_slice(&key.key);
    let apdu = command_no_le(SET_KEY, ins::SET_MANAGEMENT_KEY, 0xFF, 0xFF, &data)?;
    let sw = session.transmit(SET_KEY, apdu)?.sw();
    Ok(match sw {
        StatusWord::Success => SetKeyOutcome::Set,
        StatusWord::InsNotSupported => SetKeyOutcome::NoExtension,
        StatusWord::IncorrectDataField
        | StatusWord::IncorrectP1P2
        | StatusWord::WrongP1P2
        | StatusWord::FunctionNotSupported => SetKeyOutcome::Refused(sw),
        sw => return Err(EngineError::status(SET_KEY, sw)),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn candidates_keep_only_algorithms_of_the_key_length_once_each() {
        let key = MgmtKey::new(ManagementKeyAlgorithm::Aes192, &[7; 24]).unwrap();
        let order = [
            ManagementKeyAlgorithm::Aes192,
            ManagementKeyAlgorithm::Aes128,
            ManagementKeyAlgorithm::TripleDes,
            ManagementKeyAlgorithm::Aes192,
        ];
        let algorithms: Vec<_> = key
            .candidates(&order)
            .iter()
            .map(MgmtKey::algorithm)
            .collect();
        assert_eq!(
            algorithms,
            [
                ManagementKeyAlgorithm::Aes192,
                ManagementKeyAlgorithm::TripleDes
            ]
        );
    }

    #[test]
    fn a_3des_block_round_trips_and_matches_a_known_answer() {
        // Single-DES test vector (FIPS 81 / "Now is t"), tripled: K1 = K2 = K3.
        let k = hex::decode("0123456789abcdef").unwrap();
        let key = MgmtKey::new(ManagementKeyAlgorithm::TripleDes, &k.repeat(3)).unwrap();
        let mut block = b"Now is t".to_vec();
        key.ecb(&mut block, true).unwrap();
        assert_eq!(hex::encode(&block), "3fa40e8a984d4815");
        key.ecb(&mut block, false).unwrap();
        assert_eq!(&block, b"Now is t");
    }

    #[test]
    fn debug_output_hides_the_key() {
        let key = MgmtKey::new(ManagementKeyAlgorithm::Aes128, &[0xAB; 16]).unwrap();
        let shown = format!("{key:?}");
        assert!(
            shown.contains("redacted") && !shown.contains("171"),
            "{shown}"
        );
    }
}
