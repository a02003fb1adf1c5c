//! Data objects: what a card holds when it leaves production (the factory
//! CHUID and discovery object), which objects exist and who may read them.
//! The commands over them are in `data_commands.rs`, so this module does not
//! import the card (card → state → objects has no way back).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::ids::{PIV_AID, PIV_AID_TRUNCATED, tag};
use super::state::StoredObject;
use crate::tlv::{Tag, TlvBuilder};

/// Largest data object PUT DATA stores (value of `53` plus its header).
pub const MAX_OBJECT_LEN: usize = 3072;
/// FASC-N of the factory CHUID: agency code 9999, the value SP 800-73-4 readers treat as
/// "non-federal issuer", which makes clients use the GUID as the card identifier.
const FACTORY_FASCN: [u8; 25] = [
    0xD4, 0xE7, 0x39, 0xDA, 0x73, 0x9C, 0xED, 0x39, 0xCE, 0x73, 0x9D, 0x83, 0x68, 0x58, 0x21, 0x08,
    0x42, 0x10, 0x84, 0x21, 0xC8, 0x42, 0x10, 0xC3, 0xEB,
];
const FACTORY_EXPIRY: &[u8; 8] = b"20351231";
pub(super) const LABEL: &[u8] = b"cardfleet virtual PIV";

/// Who may read a data object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadAccess {
    Always,
    Pin,
}

/// Read access of a tag GET DATA and PUT DATA accept, or `None` for tags the card does not
/// know. Besides the SP 800-73-4 objects, the `5FFFxx` range is accepted for vendor objects.
pub(super) fn read_access(object: Tag) -> Option<ReadAccess> {
    let raw = object.raw();
    match raw {
        0x7E | 0x7F61 => Some(ReadAccess::Always),
        0x5FC103 | 0x5FC108 | 0x5FC109 | 0x5FC121 | 0x5FC123 => Some(ReadAccess::Pin),
        0x5FC101..=0x5FC123 => Some(ReadAccess::Always),
        0x5FFF00..=0x5FFFFF => Some(ReadAccess::Always),
        _ => None,
    }
}

/// The data objects a card has when it leaves production: a CHUID whose GUID derives from the
/// chip serial, and the discovery object.
pub(super) fn factory_objects(chip_serial: u32) -> BTreeMap<Tag, StoredObject> {
    let mut objects = BTreeMap::new();
    objects.insert(tag::CHUID, StoredObject(factory_chuid(chip_serial)));
    objects.insert(tag::DISCOVERY, StoredObject(discovery_object()));
    objects
}

/// A CHUID (`53` wrapped) with the factory FASC-N, a GUID derived from the chip serial, an
/// expiry date and an empty signature.
pub fn factory_chuid(chip_serial: u32) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(b"cardfleet virtual PIV card GUID");
    hasher.update(chip_serial.to_be_bytes());
    let digest = hasher.finalize();
    let mut guid = [0u8; 16];
    guid.copy_from_slice(&digest[..16]);
    // RFC 9562 version 8 (custom) with the RFC variant bits.
    guid[6] = (guid[6] & 0x0F) | 0x80;
    guid[8] = (guid[8] & 0x3F) | 0x80;
    TlvBuilder::new()
        .nested(tag::DATA, |b| {
            b.push(Tag::new(0x30), &FACTORY_FASCN)
                .push(Tag::new(0x34), &guid)
                .push(Tag::new(0x35), FACTORY_EXPIRY)
                .push(Tag::new(0x3E), &[])
                .push(Tag::new(0xFE), &[]);
        })
        .finish()
}

/// The discovery object: the PIV AID and a PIN usage policy of "PIV PIN only".
fn discovery_object() -> Vec<u8> {
    TlvBuilder::new()
        .nested(tag::DISCOVERY, |b| {
            b.push(Tag::new(0x4F), &PIV_AID)
                .push(Tag::new(0x5F2F), &[0x40, 0x00]);
        })
        .finish()
}

/// Whether a SELECT data field names the PIV application: the full AID or a right-truncated
/// form of at least the RID.
pub(super) fn is_piv_aid(aid: &[u8]) -> bool {
    aid.len() >= PIV_AID_TRUNCATED.len() && PIV_AID.starts_with(aid)
}
