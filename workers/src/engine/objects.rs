//! PIV data objects the engine reads and writes: GET DATA and PUT DATA, and the CHUID and
//! CCC it derives from the job id so that a redelivered job recognises what it wrote.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::EngineError;
use super::session::{Session, command, command_no_le};
use crate::apdu::StatusWord;
use crate::piv_ids::{ins, tag};
use crate::tlv::{self, Tag, TlvBuilder};

/// FASC-N for issuers outside the US federal government (agency, system and credential
/// numbers all nines), the value SP 800-73-4 readers take as "use the GUID instead".
const NON_FEDERAL_FASCN: [u8; 25] = [
    0xD4, 0xE7, 0x39, 0xDA, 0x73, 0x9C, 0xED, 0x39, 0xCE, 0x73, 0x9D, 0x83, 0x68, 0x58, 0x21, 0x08,
    0x42, 0x10, 0x84, 0x21, 0xC8, 0x42, 0x10, 0xC3, 0xEB,
];
/// CHUID expiration date (YYYYMMDD). Temporary cards carry no expiry of their own and the
/// value must be the same on every attempt, so it is a constant.
const CHUID_EXPIRY: &[u8; 8] = b"20991231";
/// GSC-IS registered application provider identifier that starts a CCC card identifier.
const CCC_GSC_RID: [u8; 5] = [0xA0, 0x00, 0x00, 0x01, 0x16];

/// GET DATA of one object: its full encoding (`53 …`), or `None` when the card has none.
pub(crate) fn get_data(
    session: &mut Session<'_>,
    name: &'static str,
    object: Tag,
) -> Result<Option<Vec<u8>>, EngineError> {
    let list = tlv::build(tag::TAG_LIST, &object.to_bytes());
    let response = session.transmit(name, command(name, ins::GET_DATA, 0x3F, 0xFF, &list)?)?;
    match response.sw() {
        StatusWord::Success => Ok(Some(response.into_data())),
        StatusWord::NotFound => Ok(None),
        sw => Err(EngineError::status(name, sw)),
    }
}

/// GET DATA of one object, telling a card that refuses the tag itself (`6A80`, `6D00`, …:
/// `Err(sw)`) apart from one that merely has no such object (`Ok(None)`).
pub(crate) fn get_data_or_refusal(
    session: &mut Session<'_>,
    name: &'static str,
    object: Tag,
) -> Result<Result<Option<Vec<u8>>, StatusWord>, EngineError> {
    let list = tlv::build(tag::TAG_LIST, &object.to_bytes());
    let response = session.transmit(name, command(name, ins::GET_DATA, 0x3F, 0xFF, &list)?)?;
    match response.sw() {
        StatusWord::Success => Ok(Ok(Some(response.into_data()))),
        StatusWord::NotFound => Ok(Ok(None)),
        sw if is_capability_refusal(sw) => Ok(Err(sw)),
        sw => Err(EngineError::status(name, sw)),
    }
}

/// PUT DATA of one object given as its `53` encoding; returns the card's status word for
/// the caller to judge (`9000`, or why the card refuses).
pub(crate) fn put_data(
    session: &mut Session<'_>,
    name: &'static str,
    object: Tag,
    encoded: &[u8],
) -> Result<StatusWord, EngineError> {
    let mut data = tlv::build(tag::TAG_LIST, &object.to_bytes());
    data.extend_from_slice(encoded);
    let apdu = command_no_le(name, ins::PUT_DATA, 0x3F, 0xFF, &data)?;
    Ok(session.transmit(name, apdu)?.sw())
}

/// Whether a PUT DATA or GENERATE refusal means "this card cannot do that" rather than an
/// error: unknown object or algorithm, function or instruction not supported, no memory.
pub(crate) fn is_capability_refusal(sw: StatusWord) -> bool {
    matches!(
        sw,
        StatusWord::IncorrectDataField
            | StatusWord::IncorrectP1P2
            | StatusWord::FunctionNotSupported
            | StatusWord::ReferenceDataNotFound
            | StatusWord::InsNotSupported
            | StatusWord::Other(0x6A84)
    )
}

fn derive(label: &[u8], job_id: Uuid) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(label);
    hasher.update(job_id.as_bytes());
    hasher.finalize().into()
}

/// The CHUID GUID of a job: SHA-256 over a label and the job id, shaped as an RFC 9562
/// version 8 UUID. It names the job without revealing its id.
pub fn chuid_guid(job_id: Uuid) -> [u8; 16] {
    let digest = derive(b"cardfleet CHUID GUID v1", job_id);
    let mut guid = [0u8; 16];
    guid.copy_from_slice(&digest[..16]);
    guid[6] = (guid[6] & 0x0F) | 0x80;
    guid[8] = (guid[8] & 0x3F) | 0x80;
    guid
}

/// The CHUID the engine writes for a job (`53`-wrapped): non-federal FASC-N, the job's GUID,
/// the expiry date, an empty signature and the error detection code.
pub fn chuid(job_id: Uuid) -> Vec<u8> {
    TlvBuilder::new()
        .nested(tag::DATA, |b| {
            b.push(Tag::new(0x30), &NON_FEDERAL_FASCN)
                .push(Tag::new(0x34), &chuid_guid(job_id))
                .push(Tag::new(0x35), CHUID_EXPIRY)
                .push(Tag::new(0x3E), &[])
                .push(Tag::new(0xFE), &[]);
        })
        .finish()
}

/// The GUID (`34`) of a `53`-wrapped CHUID, if it has one of 16 bytes.
pub fn guid_of_chuid(encoded: &[u8]) -> Option<[u8; 16]> {
    let body = tlv::parse_single(encoded, tag::DATA).ok()?;
    let guid = tlv::find(body, Tag::new(0x34)).ok()??;
    guid.try_into().ok()
}

/// The Card Capability Container the engine writes for a job (`53`-wrapped), laid out as
/// yubico-piv-tool writes it, with a card identifier derived from the job id.
pub fn ccc(job_id: Uuid) -> Vec<u8> {
    let digest = derive(b"cardfleet CCC card identifier v1", job_id);
    let mut card_id = Vec::with_capacity(21);
    card_id.extend_from_slice(&CCC_GSC_RID);
    // Manufacturer "unknown" (FF) and card type "Java card" (02), then 14 identifying bytes.
    card_id.extend_from_slice(&[0xFF, 0x02]);
    card_id.extend_from_slice(&digest[..14]);
    TlvBuilder::new()
        .nested(tag::DATA, |b| {
            b.push(Tag::new(0xF0), &card_id)
                .push(Tag::new(0xF1), &[0x21])
                .push(Tag::new(0xF2), &[0x21])
                .push(Tag::new(0xF3), &[])
                .push(Tag::new(0xF4), &[0x00])
                .push(Tag::new(0xF5), &[0x10])
                .push(Tag::new(0xF6), &[])
                .push(Tag::new(0xF7), &[])
                .push(Tag::new(0xFA), &[])
                .push(Tag::new(0xFB), &[])
                .push(Tag::new(0xFC), &[])
                .push(Tag::new(0xFD), &[])
                .push(Tag::new(0xFE), &[]);
        })
        .finish()
}
