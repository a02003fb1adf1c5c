//! PIV identifiers from NIST SP 800-73-4 (shared by the encoding engine and
//! the virtual card, so neither imports the other for them): AIDs, instruction bytes, key references, algorithm
//! identifiers and data object tags, plus the YubiKey-compatible management extensions.

use crate::tlv::Tag;

/// Full PIV application AID (RID `A0 00 00 03 08`, PIX `00 00 10 00 01 00`).
pub const PIV_AID: [u8; 11] = [
    0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00,
];
/// The right-truncated AID (the RID alone) that real tokens also accept in SELECT.
pub const PIV_AID_TRUNCATED: [u8; 5] = [0xA0, 0x00, 0x00, 0x03, 0x08];
/// The PIX part of the AID, returned in the application property template.
pub const PIV_PIX: [u8; 6] = [0x00, 0x00, 0x10, 0x00, 0x01, 0x00];

/// Instruction bytes of the PIV card application and its extensions.
pub mod ins {
    /// VERIFY.
    pub const VERIFY: u8 = 0x20;
    /// CHANGE REFERENCE DATA.
    pub const CHANGE_REFERENCE_DATA: u8 = 0x24;
    /// RESET RETRY COUNTER.
    pub const RESET_RETRY_COUNTER: u8 = 0x2C;
    /// GENERATE ASYMMETRIC KEY PAIR.
    pub const GENERATE_ASYMMETRIC_KEY_PAIR: u8 = 0x47;
    /// GENERAL AUTHENTICATE.
    pub const GENERAL_AUTHENTICATE: u8 = 0x87;
    /// SELECT.
    pub const SELECT: u8 = 0xA4;
    /// GET RESPONSE.
    pub const GET_RESPONSE: u8 = 0xC0;
    /// GlobalPlatform GET DATA (CPLC).
    pub const GET_DATA_GP: u8 = 0xCA;
    /// GET DATA.
    pub const GET_DATA: u8 = 0xCB;
    /// PUT DATA.
    pub const PUT_DATA: u8 = 0xDB;
    /// Extension: GET METADATA.
    pub const GET_METADATA: u8 = 0xF7;
    /// Extension: GET SERIAL.
    pub const GET_SERIAL: u8 = 0xF8;
    /// Extension: SET PIN RETRIES.
    pub const SET_PIN_RETRIES: u8 = 0xFA;
    /// Extension: RESET (only when PIN and PUK are blocked).
    pub const RESET: u8 = 0xFB;
    /// Extension: GET VERSION.
    pub const GET_VERSION: u8 = 0xFD;
    /// Extension: SET MANAGEMENT KEY.
    pub const SET_MANAGEMENT_KEY: u8 = 0xFF;
}

/// Key references.
pub mod key_ref {
    /// PIV card application PIN.
    pub const PIN: u8 = 0x80;
    /// PIN unblocking key.
    pub const PUK: u8 = 0x81;
    /// Card application administration (management) key.
    pub const MANAGEMENT: u8 = 0x9B;
    /// PIV authentication key.
    pub const AUTHENTICATION: u8 = 0x9A;
    /// Digital signature key.
    pub const SIGNATURE: u8 = 0x9C;
    /// Key management key.
    pub const KEY_MANAGEMENT: u8 = 0x9D;
    /// Card authentication key.
    pub const CARD_AUTHENTICATION: u8 = 0x9E;
}

/// Cryptographic algorithm identifiers (SP 800-78-4).
pub mod alg {
    /// Three-key Triple DES (ECB).
    pub const TDES: u8 = 0x03;
    /// RSA 2048.
    pub const RSA_2048: u8 = 0x07;
    /// AES-128 (ECB).
    pub const AES_128: u8 = 0x08;
    /// AES-192 (ECB).
    pub const AES_192: u8 = 0x0A;
    /// AES-256 (ECB).
    pub const AES_256: u8 = 0x0C;
    /// ECC P-256.
    pub const ECC_P256: u8 = 0x11;
    /// ECC P-384.
    pub const ECC_P384: u8 = 0x14;
    /// Algorithm identifier GET METADATA reports for PINs.
    pub const PIN: u8 = 0xFF;
}

/// Data object tags.
pub mod tag {
    use super::Tag;

    /// Card Capability Container.
    pub const CCC: Tag = Tag::new(0x5FC107);
    /// Card Holder Unique Identifier.
    pub const CHUID: Tag = Tag::new(0x5FC102);
    /// X.509 certificate for PIV authentication (slot 9A).
    pub const CERT_AUTHENTICATION: Tag = Tag::new(0x5FC105);
    /// X.509 certificate for digital signature (slot 9C).
    pub const CERT_SIGNATURE: Tag = Tag::new(0x5FC10A);
    /// X.509 certificate for key management (slot 9D).
    pub const CERT_KEY_MANAGEMENT: Tag = Tag::new(0x5FC10B);
    /// X.509 certificate for card authentication (slot 9E).
    pub const CERT_CARD_AUTHENTICATION: Tag = Tag::new(0x5FC101);
    /// Cardholder fingerprints.
    pub const FINGERPRINTS: Tag = Tag::new(0x5FC103);
    /// Security object.
    pub const SECURITY_OBJECT: Tag = Tag::new(0x5FC106);
    /// Cardholder facial image.
    pub const FACIAL_IMAGE: Tag = Tag::new(0x5FC108);
    /// Printed information.
    pub const PRINTED_INFORMATION: Tag = Tag::new(0x5FC109);
    /// Key history object.
    pub const KEY_HISTORY: Tag = Tag::new(0x5FC10C);
    /// Cardholder iris images.
    pub const IRIS: Tag = Tag::new(0x5FC121);
    /// Pairing code reference data container.
    pub const PAIRING_CODE: Tag = Tag::new(0x5FC123);
    /// Discovery object.
    pub const DISCOVERY: Tag = Tag::new(0x7E);
    /// Biometric information templates group template.
    pub const BIT_GROUP: Tag = Tag::new(0x7F61);
    /// Tag list wrapper of GET DATA and PUT DATA.
    pub const TAG_LIST: Tag = Tag::new(0x5C);
    /// Data wrapper of stored objects.
    pub const DATA: Tag = Tag::new(0x53);
    /// Application property template returned by SELECT.
    pub const APPLICATION_PROPERTY_TEMPLATE: Tag = Tag::new(0x61);
    /// Dynamic authentication template of GENERAL AUTHENTICATE.
    pub const DYNAMIC_AUTH: Tag = Tag::new(0x7C);
    /// Control reference template of GENERATE ASYMMETRIC KEY PAIR.
    pub const KEY_CRT: Tag = Tag::new(0xAC);
    /// Public key template returned by GENERATE ASYMMETRIC KEY PAIR.
    pub const PUBLIC_KEY: Tag = Tag::new(0x7F49);
    /// GlobalPlatform Card Production Life Cycle data.
    pub const CPLC: Tag = Tag::new(0x9F7F);
}

/// The certificate object that belongs to a key slot.
pub fn certificate_tag(slot: u8) -> Option<Tag> {
    match slot {
        key_ref::AUTHENTICATION => Some(tag::CERT_AUTHENTICATION),
        key_ref::SIGNATURE => Some(tag::CERT_SIGNATURE),
        key_ref::KEY_MANAGEMENT => Some(tag::CERT_KEY_MANAGEMENT),
        key_ref::CARD_AUTHENTICATION => Some(tag::CERT_CARD_AUTHENTICATION),
        _ => None,
    }
}
