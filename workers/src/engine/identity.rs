//! Which chip is in the slot: SELECT of the PIV application and the chip serial, taken from
//! GlobalPlatform CPLC, else the vendor serial, else the CHUID GUID.

use super::error::{EngineError, FailureCode};
use super::objects;
use super::session::{Session, command};
use crate::apdu::{CommandApdu, MAX_SHORT_NE, StatusWord};
use crate::piv_ids::{PIV_AID, ins, tag};
use crate::tlv;

/// Offset of the 4-byte IC serial number in CPLC data (after fabricator, type, OS id, OS
/// release date, OS release level and fabrication date, two bytes each).
const CPLC_IC_SERIAL: std::ops::Range<usize> = 12..16;

/// SELECT the PIV application; a card without it is `not_piv`.
pub(crate) fn select(session: &mut Session<'_>) -> Result<(), EngineError> {
    const NAME: &str = "SELECT PIV";
    let response = session.transmit(NAME, command(NAME, ins::SELECT, 0x04, 0x00, &PIV_AID)?)?;
    match response.sw() {
        StatusWord::Success => Ok(()),
        StatusWord::NotFound => Err(EngineError::refused(
            FailureCode::NotPiv,
            "the card has no PIV application",
        )),
        sw => Err(EngineError::status(NAME, sw)),
    }
}

/// The chip serial of a card whose PIV application is selected: the CPLC IC serial number
/// as a decimal `u32`, else the vendor serial in decimal, else the CHUID GUID in upper-case
/// hex.
pub(crate) fn chip_serial(session: &mut Session<'_>) -> Result<String, EngineError> {
    if let Some(serial) = cplc_serial(session)? {
        return Ok(serial.to_string());
    }
    if let Some(serial) = vendor_serial(session)? {
        return Ok(serial.to_string());
    }
    let chuid = objects::get_data(session, "GET DATA CHUID", tag::CHUID)?;
    if let Some(guid) = chuid.as_deref().and_then(objects::guid_of_chuid) {
        return Ok(hex::encode_upper(guid));
    }
    Err(EngineError::refused(
        FailureCode::ChipSerialUnavailable,
        "the card has no CPLC, vendor serial or CHUID GUID",
    ))
}

/// GlobalPlatform GET DATA `9F7F`, first with the GlobalPlatform class `80`, then with `00`
/// for cards that refuse the proprietary class. Any refusal means "no CPLC".
fn cplc_serial(session: &mut Session<'_>) -> Result<Option<u32>, EngineError> {
    const NAME: &str = "GET DATA CPLC";
    for cla in [0x80, 0x00] {
        let apdu = CommandApdu::new(cla, ins::GET_DATA_GP, 0x9F, 0x7F)
            .with_ne(MAX_SHORT_NE)
            .map_err(|e| EngineError::build(NAME, e))?;
        let response = session.transmit(NAME, apdu)?;
        match response.sw() {
            StatusWord::Success => return Ok(parse_cplc_serial(response.data())),
            StatusWord::ClaNotSupported => continue,
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// The IC serial number of CPLC data, with or without its `9F7F` wrapper. A serial of all
/// zeros or all ones is a placeholder, not an identity.
pub(crate) fn parse_cplc_serial(data: &[u8]) -> Option<u32> {
    let cplc = match tlv::parse_single(data, tag::CPLC) {
        Ok(value) => value,
        Err(_) => data,
    };
    let bytes: [u8; 4] = cplc.get(CPLC_IC_SERIAL)?.try_into().ok()?;
    let serial = u32::from_be_bytes(bytes);
    (serial != 0 && serial != u32::MAX).then_some(serial)
}

/// The vendor GET SERIAL extension (`F8`): four bytes, big-endian.
fn vendor_serial(session: &mut Session<'_>) -> Result<Option<u32>, EngineError> {
    const NAME: &str = "GET SERIAL";
    let response = session.transmit(NAME, command(NAME, ins::GET_SERIAL, 0x00, 0x00, &[])?)?;
    if response.sw() != StatusWord::Success {
        return Ok(None);
    }
    let bytes: Option<[u8; 4]> = response.data().try_into().ok();
    Ok(bytes.map(u32::from_be_bytes))
}
