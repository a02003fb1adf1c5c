//! ISO 7816-4 application protocol data units: command and response APDUs and status words.
//!
//! These types are shared by everything that talks to a card: the virtual PIV card parses
//! commands with them and the encoding engine builds commands and reads responses with them.

mod command;
mod response;
mod status;

pub use command::{
    ApduError, CLA_CHAINING, CommandApdu, MAX_EXTENDED_DATA, MAX_EXTENDED_NE, MAX_SHORT_DATA,
    MAX_SHORT_NE,
};
pub use response::ResponseApdu;
pub use status::StatusWord;

/// Instruction bytes defined by ISO 7816-4 that are not specific to one application.
pub mod ins {
    /// SELECT (by DF name when P1 = 04).
    pub const SELECT: u8 = 0xA4;
    /// GET RESPONSE: fetch the rest of a response announced with `61xx`.
    pub const GET_RESPONSE: u8 = 0xC0;
    /// GET DATA with the data object named in P1-P2 (GlobalPlatform CPLC uses this).
    pub const GET_DATA_EVEN: u8 = 0xCA;
}
