//! PIV commands parsed from command APDUs: header checks happen here, semantics in the
//! handlers.

use super::ids::ins;
use crate::apdu::{CommandApdu, StatusWord};
use crate::tlv::{self, Tag};

use super::ids::tag;

/// What a VERIFY asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum VerifyAction<'a> {
    /// Empty data field: report the verification status.
    Status,
    /// Compare reference data.
    Check(&'a [u8]),
    /// P1 = `FF`: clear the verification status.
    Reset,
}

/// A command the card understands, borrowing its data from the APDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PivCommand<'a> {
    /// `return_template` is false for P2 = `0C` (no response data requested).
    Select {
        aid: &'a [u8],
        return_template: bool,
    },
    GetData {
        object: Tag,
    },
    GetCplc,
    Verify {
        key_ref: u8,
        action: VerifyAction<'a>,
    },
    ChangeReferenceData {
        key_ref: u8,
        data: &'a [u8],
    },
    ResetRetryCounter {
        data: &'a [u8],
    },
    GeneralAuthenticate {
        algorithm: u8,
        key_ref: u8,
        template: &'a [u8],
    },
    GenerateKeyPair {
        slot: u8,
        template: &'a [u8],
    },
    PutData {
        data: &'a [u8],
    },
    GetMetadata {
        key_ref: u8,
    },
    GetSerial,
    SetPinRetries {
        pin: u8,
        puk: u8,
    },
    ResetCard,
    GetVersion,
    SetManagementKey {
        data: &'a [u8],
    },
}

impl<'a> PivCommand<'a> {
    /// Parses the instruction and checks P1-P2; `extensions` says whether the vendor
    /// instructions exist.
    pub(super) fn parse(apdu: &'a CommandApdu, extensions: bool) -> Result<Self, StatusWord> {
        let (p1, p2, data) = (apdu.p1(), apdu.p2(), apdu.data());
        let require = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(StatusWord::IncorrectP1P2)
            }
        };
        let command = match apdu.ins() {
            ins::SELECT => {
                require(p1 == 0x04 && (p2 == 0x00 || p2 == 0x0C))?;
                Self::Select {
                    aid: data,
                    return_template: p2 == 0x00,
                }
            }
            ins::GET_DATA => {
                require(apdu.p1p2() == 0x3FFF)?;
                Self::GetData {
                    object: parse_tag_list(data)?,
                }
            }
            ins::GET_DATA_GP => {
                if apdu.p1p2() != 0x9F7F {
                    return Err(StatusWord::ReferenceDataNotFound);
                }
                Self::GetCplc
            }
            ins::VERIFY => {
                let action = match (p1, data.is_empty()) {
                    (0x00, true) => VerifyAction::Status,
                    (0x00, false) => VerifyAction::Check(data),
                    (0xFF, true) => VerifyAction::Reset,
                    (0xFF, false) => return Err(StatusWord::WrongLength),
                    _ => return Err(StatusWord::IncorrectP1P2),
                };
                Self::Verify {
                    key_ref: p2,
                    action,
                }
            }
            ins::CHANGE_REFERENCE_DATA => {
                require(p1 == 0x00)?;
                Self::ChangeReferenceData { key_ref: p2, data }
            }
            ins::RESET_RETRY_COUNTER => {
                require(p1 == 0x00)?;
                if p2 != super::ids::key_ref::PIN {
                    return Err(StatusWord::ReferenceDataNotFound);
                }
                Self::ResetRetryCounter { data }
            }
            ins::GENERAL_AUTHENTICATE => Self::GeneralAuthenticate {
                algorithm: p1,
                key_ref: p2,
                template: data,
            },
            ins::GENERATE_ASYMMETRIC_KEY_PAIR => {
                require(p1 == 0x00)?;
                Self::GenerateKeyPair {
                    slot: p2,
                    template: data,
                }
            }
            ins::PUT_DATA => {
                require(apdu.p1p2() == 0x3FFF)?;
                Self::PutData { data }
            }
            vendor @ (ins::GET_METADATA
            | ins::GET_SERIAL
            | ins::SET_PIN_RETRIES
            | ins::RESET
            | ins::GET_VERSION
            | ins::SET_MANAGEMENT_KEY) => {
                if !extensions {
                    return Err(StatusWord::InsNotSupported);
                }
                parse_extension(vendor, p1, p2, data)?
            }
            _ => return Err(StatusWord::InsNotSupported),
        };
        Ok(command)
    }
}

fn parse_extension(ins: u8, p1: u8, p2: u8, data: &[u8]) -> Result<PivCommand<'_>, StatusWord> {
    let require = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(StatusWord::IncorrectP1P2)
        }
    };
    Ok(match ins {
        ins::GET_METADATA => {
            require(p1 == 0x00)?;
            PivCommand::GetMetadata { key_ref: p2 }
        }
        ins::GET_SERIAL => PivCommand::GetSerial,
        ins::SET_PIN_RETRIES => {
            require(p1 != 0 && p2 != 0)?;
            PivCommand::SetPinRetries { pin: p1, puk: p2 }
        }
        ins::RESET => PivCommand::ResetCard,
        ins::GET_VERSION => PivCommand::GetVersion,
        _ => {
            // P2 = FE asks for touch confirmation, which a virtual card treats as FF.
            require(p1 == 0xFF && (p2 == 0xFF || p2 == 0xFE))?;
            PivCommand::SetManagementKey { data }
        }
    })
}

/// The `5C` tag list of GET DATA: exactly one tag of one to three bytes.
fn parse_tag_list(data: &[u8]) -> Result<Tag, StatusWord> {
    let bad = |_| StatusWord::IncorrectDataField;
    let value = tlv::parse_single(data, tag::TAG_LIST).map_err(bad)?;
    if value.is_empty() || value.len() > 3 {
        return Err(StatusWord::IncorrectDataField);
    }
    Tag::from_bytes(value).map_err(bad)
}
