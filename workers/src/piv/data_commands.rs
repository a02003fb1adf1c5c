//! Commands over data objects and application identity: SELECT and its
//! application property template, GET DATA, PUT DATA and GlobalPlatform
//! CPLC.

use super::card::{CardResult, VirtualPivCard};
use super::ids::{PIV_AID_TRUNCATED, PIV_PIX, tag};
use super::keys::KeyAlgorithm;
use super::objects::{LABEL, MAX_OBJECT_LEN, ReadAccess, is_piv_aid, read_access};
use super::state::StoredObject;
use crate::apdu::StatusWord;
use crate::tlv::{self, Tag, TlvBuilder};

impl VirtualPivCard {
    /// SELECT: the application property template, or `6A82` (selection unchanged).
    pub(super) fn select(&mut self, aid: &[u8]) -> CardResult {
        if !is_piv_aid(aid) {
            return Err(StatusWord::NotFound);
        }
        // Re-selecting the PIV application keeps its security status (SP 800-73-4 3.1.1).
        self.session.selected = true;
        Ok(self.application_property_template())
    }

    fn application_property_template(&self) -> Vec<u8> {
        let mut algorithms = TlvBuilder::new();
        for mgmt in &self.state.options.mgmt_key_algorithms {
            algorithms.push(Tag::new(0x80), &[mgmt.id()]);
        }
        for asym in [
            KeyAlgorithm::Rsa2048,
            KeyAlgorithm::EccP256,
            KeyAlgorithm::EccP384,
        ] {
            algorithms.push(Tag::new(0x80), &[asym.id()]);
        }
        algorithms.push(Tag::new(0x06), &[0x00]);
        let algorithms = algorithms.finish();
        TlvBuilder::new()
            .nested(tag::APPLICATION_PROPERTY_TEMPLATE, |b| {
                b.push(Tag::new(0x4F), &PIV_PIX)
                    .nested(Tag::new(0x79), |b| {
                        b.push(Tag::new(0x4F), &PIV_AID_TRUNCATED);
                    })
                    .push(Tag::new(0x50), LABEL)
                    .push(tag::KEY_CRT, &algorithms);
            })
            .finish()
    }

    /// GET DATA: the stored object, `6982` for PIN-protected objects without a verified PIN,
    /// `6A82` when absent or unknown.
    pub(super) fn get_data(&self, object: Tag) -> CardResult {
        if self.is_refused_vendor_object(object) {
            return Err(StatusWord::IncorrectDataField);
        }
        match read_access(object) {
            None => Err(StatusWord::NotFound),
            Some(ReadAccess::Pin) if !self.session.pin_verified => {
                Err(StatusWord::SecurityStatusNotSatisfied)
            }
            Some(_) => match self.state.objects.get(&object) {
                Some(stored) => Ok(stored.0.clone()),
                None => Err(StatusWord::NotFound),
            },
        }
    }

    /// PUT DATA: `5C` tag list and `53` value, or a whole `7E` / `7F61` object. An empty `53`
    /// deletes the object, as YubiKeys do.
    pub(super) fn put_data(&mut self, data: &[u8]) -> CardResult {
        if !self.session.mgmt_authenticated {
            return Err(StatusWord::SecurityStatusNotSatisfied);
        }
        let bad = |_| StatusWord::IncorrectDataField;
        let (first, rest) = tlv::parse_one(data).map_err(bad)?;
        let (object, encoded, empty) = if first.tag == tag::DISCOVERY || first.tag == tag::BIT_GROUP
        {
            if !rest.is_empty() {
                return Err(StatusWord::IncorrectDataField);
            }
            (first.tag, data.to_vec(), false)
        } else if first.tag == tag::TAG_LIST {
            let object = Tag::from_bytes(first.value).map_err(bad)?;
            let value = tlv::parse_single(rest, tag::DATA).map_err(bad)?;
            (object, rest.to_vec(), value.is_empty())
        } else {
            return Err(StatusWord::IncorrectDataField);
        };
        let whole_object_only = object == tag::DISCOVERY || object == tag::BIT_GROUP;
        if read_access(object).is_none()
            || self.is_refused_vendor_object(object)
            || (whole_object_only && first.tag == tag::TAG_LIST)
        {
            return Err(StatusWord::IncorrectDataField);
        }
        if encoded.len() > MAX_OBJECT_LEN {
            return Err(StatusWord::Other(0x6A84));
        }
        let objects = &mut self.state_mut().objects;
        if empty {
            objects.remove(&object);
        } else {
            objects.insert(object, StoredObject(encoded));
        }
        Ok(Vec::new())
    }

    /// A vendor object (`5FFFxx`) on a card without them.
    fn is_refused_vendor_object(&self, object: Tag) -> bool {
        !self.state.options.vendor_objects && (0x5FFF00..=0x5FFFFF).contains(&object.raw())
    }

    /// GlobalPlatform GET DATA for CPLC: `9F7F` and 42 bytes with the chip serial in the IC
    /// serial number field.
    pub(super) fn cplc(&self) -> CardResult {
        let serial = self.state.options.chip_serial.to_be_bytes();
        let mut cplc = Vec::with_capacity(42);
        cplc.extend_from_slice(&[0x40, 0x90]); // IC fabricator
        cplc.extend_from_slice(&[0x7C, 0x46]); // IC type
        cplc.extend_from_slice(&[0x43, 0x46]); // operating system identifier
        cplc.extend_from_slice(&[0x52, 0x01]); // operating system release date
        cplc.extend_from_slice(&[0x01, 0x00]); // operating system release level
        cplc.extend_from_slice(&[0x52, 0x10]); // IC fabrication date
        cplc.extend_from_slice(&serial); // IC serial number
        cplc.extend_from_slice(&[0x00, 0x01]); // IC batch identifier
        cplc.extend_from_slice(&[0x00; 16]); // module, embedding and pre-personalization data
        cplc.extend_from_slice(&[0x00; 8]); // personalizer, date and equipment
        Ok(tlv::build(tag::CPLC, &cplc))
    }
}
