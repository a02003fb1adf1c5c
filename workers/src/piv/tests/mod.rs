//! Card model tests: APDU tables per command and full protocol flows, with the expected
//! status words; cryptography on the client side is computed here, independently of the card.

mod chaining;
mod extensions;
mod keys;
mod mgmt;
mod objects;
mod pins;

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};
use rand::RngCore;

use super::{CardOptions, MgmtKeyAlgorithm, VirtualPivCard};
use crate::tlv::{self, Tag};

pub(super) const SERIAL: u32 = 0x0012_D687;
pub(super) const FACTORY_3DES: &str = "010203040506070801020304050607080102030405060708";
pub(super) const SELECT: &str = "00 A4 04 00 05 A0 00 00 03 08";

/// Bytes from spaced hex.
pub(super) fn h(text: &str) -> Vec<u8> {
    hex::decode(text.replace(' ', "")).unwrap()
}

/// A factory card, not yet selected.
pub(super) fn card_with(options: CardOptions) -> VirtualPivCard {
    VirtualPivCard::new(options).unwrap()
}

/// A factory card with the PIV application selected.
pub(super) fn selected() -> VirtualPivCard {
    selected_with(CardOptions::with_serial(SERIAL))
}

pub(super) fn selected_with(options: CardOptions) -> VirtualPivCard {
    let mut card = card_with(options);
    assert_eq!(sw(&mut card, SELECT), 0x9000);
    card
}

/// Sends a command and splits the response into data and status word.
pub(super) fn send(card: &mut VirtualPivCard, apdu: &[u8]) -> (Vec<u8>, u16) {
    let mut response = card.process(apdu);
    assert!(response.len() >= 2, "response shorter than a status word");
    let sw = response.split_off(response.len() - 2);
    (response, u16::from_be_bytes([sw[0], sw[1]]))
}

/// Sends a command given as spaced hex and returns only the status word.
pub(super) fn sw(card: &mut VirtualPivCard, apdu: &str) -> u16 {
    send(card, &h(apdu)).1
}

/// Runs a table of (description, APDU, expected status word) against one card, in order.
pub(super) fn run_table(card: &mut VirtualPivCard, table: &[(&str, &str, u16)]) {
    for (what, apdu, expected) in table {
        let got = sw(card, apdu);
        assert_eq!(
            got, *expected,
            "{what}: {apdu} answered {got:04X}, expected {expected:04X}"
        );
    }
}

/// PIN or PUK padded with FF to eight bytes, as hex.
pub(super) fn padded(value: &str) -> String {
    let mut bytes = value.as_bytes().to_vec();
    bytes.resize(8, 0xFF);
    hex::encode(bytes)
}

pub(super) fn verify_pin(card: &mut VirtualPivCard, pin: &str) -> u16 {
    sw(card, &format!("00 20 00 80 08 {}", padded(pin)))
}

/// One ECB block operation computed with the RustCrypto ciphers directly.
pub(super) fn ecb(algorithm: MgmtKeyAlgorithm, key: &[u8], block: &[u8], encrypt: bool) -> Vec<u8> {
    fn run<C: BlockEncrypt + BlockDecrypt + KeyInit>(
        key: &[u8],
        block: &[u8],
        encrypt: bool,
    ) -> Vec<u8> {
        let cipher = C::new_from_slice(key).unwrap();
        let mut out = GenericArray::clone_from_slice(block);
        if encrypt {
            cipher.encrypt_block(&mut out);
        } else {
            cipher.decrypt_block(&mut out);
        }
        out.to_vec()
    }
    match algorithm {
        MgmtKeyAlgorithm::TripleDes => run::<des::TdesEde3>(key, block, encrypt),
        MgmtKeyAlgorithm::Aes128 => run::<aes::Aes128>(key, block, encrypt),
        MgmtKeyAlgorithm::Aes192 => run::<aes::Aes192>(key, block, encrypt),
        MgmtKeyAlgorithm::Aes256 => run::<aes::Aes256>(key, block, encrypt),
    }
}

/// The value of `inner` inside a `7C` dynamic authentication template.
pub(super) fn auth_value(data: &[u8], inner: u32) -> Vec<u8> {
    let body = tlv::parse_single(data, Tag::new(0x7C)).unwrap();
    tlv::find(body, Tag::new(inner)).unwrap().unwrap().to_vec()
}

/// Mutual authentication with the management key as yubico-piv-tool does it; returns the
/// status word of the second step after checking the card's answer to our challenge.
pub(super) fn mutual_auth(
    card: &mut VirtualPivCard,
    algorithm: MgmtKeyAlgorithm,
    key: &[u8],
) -> u16 {
    let alg = algorithm.id();
    let (data, status) = send(card, &[0x00, 0x87, alg, 0x9B, 0x04, 0x7C, 0x02, 0x80, 0x00]);
    if status != 0x9000 {
        return status;
    }
    let encrypted_witness = auth_value(&data, 0x80);
    assert_eq!(encrypted_witness.len(), algorithm.block_len());
    let witness = ecb(algorithm, key, &encrypted_witness, false);
    let mut challenge = vec![0u8; algorithm.block_len()];
    rand::thread_rng().fill_bytes(&mut challenge);
    let body = [
        tlv::build(Tag::new(0x80), &witness),
        tlv::build(Tag::new(0x81), &challenge),
    ]
    .concat();
    let template = tlv::build(Tag::new(0x7C), &body);
    let mut apdu = vec![0x00, 0x87, alg, 0x9B, template.len() as u8];
    apdu.extend_from_slice(&template);
    let (data, status) = send(card, &apdu);
    if status == 0x9000 {
        assert_eq!(
            auth_value(&data, 0x82),
            ecb(algorithm, key, &challenge, true),
            "card response"
        );
    }
    status
}

/// Mutual authentication with the factory 3DES key.
pub(super) fn authenticate(card: &mut VirtualPivCard) {
    assert_eq!(
        mutual_auth(card, MgmtKeyAlgorithm::TripleDes, &h(FACTORY_3DES)),
        0x9000
    );
}

/// Sends a command and follows `61xx` with GET RESPONSE until the whole answer is in.
pub(super) fn send_all(card: &mut VirtualPivCard, apdu: &[u8]) -> (Vec<u8>, u16) {
    let (mut data, mut status) = send(card, apdu);
    while status >> 8 == 0x61 {
        let (more, next) = send(card, &[0x00, 0xC0, 0x00, 0x00, 0x00]);
        data.extend(more);
        status = next;
    }
    (data, status)
}

/// Generates a key and returns the inner objects of its `7F49` public key template.
pub(super) fn generate(card: &mut VirtualPivCard, slot: u8, algorithm: u8) -> Vec<u8> {
    let (data, status) = send_all(
        card,
        &[
            0x00, 0x47, 0x00, slot, 0x05, 0xAC, 0x03, 0x80, 0x01, algorithm,
        ],
    );
    assert_eq!(status, 0x9000, "generate {algorithm:02X} in {slot:02X}");
    tlv::parse_single(&data, Tag::new(0x7F49)).unwrap().to_vec()
}

/// GENERAL AUTHENTICATE with a slot key and a `81` input; returns the `82` output.
pub(super) fn sign(
    card: &mut VirtualPivCard,
    slot: u8,
    algorithm: u8,
    input: &[u8],
) -> (Vec<u8>, u16) {
    let body = [
        tlv::build(Tag::new(0x82), &[]),
        tlv::build(Tag::new(0x81), input),
    ]
    .concat();
    let template = tlv::build(Tag::new(0x7C), &body);
    let apdu = crate::apdu::CommandApdu::new(0x00, 0x87, algorithm, slot)
        .with_data(template)
        .unwrap();
    // Chained the way yubico-piv-tool sends long templates.
    let mut last = (Vec::new(), 0);
    for part in apdu.into_chain(255) {
        last = send_all(card, &part.to_bytes());
    }
    let (data, status) = last;
    if status == 0x9000 {
        (auth_value(&data, 0x82), status)
    } else {
        (data, status)
    }
}
