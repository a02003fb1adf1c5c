//! What a chip accepts after encoding, asked through yubico-piv-tool, openssl and plain
//! PC/SC with the client side of management key authentication computed here.

use std::path::{Path, PathBuf};

use aes_gcm::aes::Aes192;
use aes_gcm::aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};
use cardfleet_worker::apdu::{CommandApdu, ResponseApdu, StatusWord};
use cardfleet_worker::engine::CardTransport;
use cardfleet_worker::rack::pcsc::CardConnection;
use cardfleet_worker::tlv::{self, Tag};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::stack::{run, text};

const FACTORY_KEY: &str = "010203040506070801020304050607080102030405060708";

/// yubico-piv-tool against one reader; the output, and whether the tool succeeded.
fn piv_tool(reader: &str, args: &[&str]) -> (bool, String) {
    let mut all = vec!["-r", reader];
    all.extend_from_slice(args);
    let output = run("yubico-piv-tool", &all);
    (output.status.success(), text(&output))
}

/// What the chip in `reader` accepts now: one try each of the factory PIN and PUK (the
/// right PIN and PUK then restore the counters), the factory and the derived management key,
/// and a signature from each profile key, checked by openssl.
pub fn check_card(reader: &str, pin: &str, puk: &str, derived_key: &[u8], dir: &Path) {
    let (ok, out) = piv_tool(reader, &["-a", "verify-pin", "-P", "123456"]);
    assert!(!ok, "{reader}: the factory PIN still verifies:\n{out}");
    println!("{reader}: factory PIN 123456 rejected: {}", out.trim());
    let (ok, out) = piv_tool(reader, &["-a", "verify-pin", "-P", pin]);
    assert!(ok, "{reader}: the stored PIN does not verify:\n{out}");
    println!("{reader}: stored PIN verifies: {}", out.trim());

    let (ok, out) = piv_tool(
        reader,
        &["-a", "change-puk", "-P", "12345678", "-N", "87654321"],
    );
    assert!(!ok, "{reader}: the factory PUK still works:\n{out}");
    println!("{reader}: factory PUK 12345678 rejected: {}", out.trim());
    let (ok, out) = piv_tool(reader, &["-a", "change-puk", "-P", puk, "-N", puk]);
    assert!(ok, "{reader}: the stored PUK is not the card's:\n{out}");
    println!("{reader}: stored PUK accepted: {}", out.trim());

    let (ok, out) = piv_tool(reader, &[&format!("--key={FACTORY_KEY}"), "-a", "set-ccc"]);
    assert!(
        !ok,
        "{reader}: the factory 3DES management key still authenticates:\n{out}"
    );
    println!(
        "{reader}: factory management key rejected by the tool: {}",
        out.trim()
    );

    let mut connection = CardConnection::open(reader, true).unwrap();
    let mut card = connection.transaction().unwrap();
    let card: &mut dyn CardTransport = &mut card;
    assert_eq!(
        send(
            card,
            CommandApdu::new(0x00, 0xA4, 0x04, 0x00)
                .with_data(vec![0xA0, 0, 0, 3, 8])
                .unwrap()
        )
        .sw(),
        StatusWord::Success
    );
    let meta = send(
        card,
        CommandApdu::new(0x00, 0xF7, 0x00, 0x9B)
            .with_ne(256)
            .unwrap(),
    );
    assert_eq!(
        tlv::find(meta.data(), Tag::new(0x01)).unwrap(),
        Some(&[0x0A][..]),
        "management key is AES-192"
    );
    assert_eq!(
        tlv::find(meta.data(), Tag::new(0x05)).unwrap(),
        Some(&[0x00][..]),
        "and not the default"
    );
    let factory = hex::decode(FACTORY_KEY).unwrap();
    assert_ne!(
        auth_aes192(card, &factory),
        StatusWord::Success,
        "factory key bytes as AES-192"
    );
    assert_eq!(
        auth_aes192(card, derived_key),
        StatusWord::Success,
        "{reader}: the derived management key"
    );
    println!(
        "{reader}: management key is AES-192, factory key rejected, derived key authenticates"
    );

    for slot in [0x9A, 0x9C, 0x9E] {
        let meta = send(
            card,
            CommandApdu::new(0x00, 0xF7, 0x00, slot)
                .with_ne(256)
                .unwrap(),
        );
        assert_eq!(
            meta.sw(),
            StatusWord::Success,
            "{reader}: no key in {slot:02X}"
        );
        assert_eq!(
            tlv::find(meta.data(), Tag::new(0x01)).unwrap(),
            Some(&[0x11][..]),
            "P-256 in {slot:02X}"
        );
        assert_eq!(
            tlv::find(meta.data(), Tag::new(0x03)).unwrap(),
            Some(&[0x01][..]),
            "generated on the card"
        );
        let public = tlv::find(meta.data(), Tag::new(0x04)).unwrap().unwrap();
        let point = tlv::find(public, Tag::new(0x86)).unwrap().unwrap().to_vec();
        let message = format!("signed by slot {slot:02X} of {reader}");
        let signature = sign_p256(card, slot, pin, message.as_bytes());
        let verdict = openssl_verify(dir, slot, &point, message.as_bytes(), &signature);
        println!(
            "{reader}: slot {slot:02X} holds a generated P-256 key; openssl: {}",
            verdict.trim()
        );
    }
}

fn send(card: &mut dyn CardTransport, command: CommandApdu) -> ResponseApdu {
    let mut response = ResponseApdu::parse(&card.transmit(&command.to_bytes()).unwrap()).unwrap();
    let mut data = response.data().to_vec();
    while let StatusWord::BytesRemaining(_) = response.sw() {
        let more = CommandApdu::new(0x00, 0xC0, 0x00, 0x00)
            .with_ne(256)
            .unwrap();
        response = ResponseApdu::parse(&card.transmit(&more.to_bytes()).unwrap()).unwrap();
        data.extend_from_slice(response.data());
    }
    ResponseApdu::new(data, response.sw())
}

/// Mutual authentication with an AES-192 management key, the client side computed here.
fn auth_aes192(card: &mut dyn CardTransport, key: &[u8]) -> StatusWord {
    let cipher = Aes192::new_from_slice(key).unwrap();
    let general_auth = |template: Vec<u8>| {
        CommandApdu::new(0x00, 0x87, 0x0A, 0x9B)
            .with_data(template)
            .unwrap()
    };
    let response = send(card, general_auth(vec![0x7C, 0x02, 0x80, 0x00]));
    if response.sw() != StatusWord::Success {
        return response.sw();
    }
    let body = tlv::parse_single(response.data(), Tag::new(0x7C)).unwrap();
    let mut witness =
        GenericArray::clone_from_slice(tlv::find(body, Tag::new(0x80)).unwrap().unwrap());
    cipher.decrypt_block(&mut witness);
    let mut challenge = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut challenge);
    let inner = [
        tlv::build(Tag::new(0x80), &witness),
        tlv::build(Tag::new(0x81), &challenge),
    ]
    .concat();
    let response = send(card, general_auth(tlv::build(Tag::new(0x7C), &inner)));
    if response.sw() == StatusWord::Success {
        let body = tlv::parse_single(response.data(), Tag::new(0x7C)).unwrap();
        let mut expected = GenericArray::clone_from_slice(&challenge);
        cipher.encrypt_block(&mut expected);
        assert_eq!(
            tlv::find(body, Tag::new(0x82)).unwrap().unwrap(),
            &expected[..],
            "the card knows the key"
        );
    }
    response.sw()
}

/// VERIFY the PIN, then an ECDSA P-256 signature over SHA-256 of `message` (DER).
fn sign_p256(card: &mut dyn CardTransport, slot: u8, pin: &str, message: &[u8]) -> Vec<u8> {
    let mut reference = pin.as_bytes().to_vec();
    reference.resize(8, 0xFF);
    let verify = CommandApdu::new(0x00, 0x20, 0x00, 0x80)
        .with_data(reference)
        .unwrap();
    assert_eq!(send(card, verify).sw(), StatusWord::Success);
    let digest = Sha256::digest(message);
    let inner = [
        tlv::build(Tag::new(0x82), &[]),
        tlv::build(Tag::new(0x81), &digest),
    ]
    .concat();
    let sign = CommandApdu::new(0x00, 0x87, 0x11, slot)
        .with_data(tlv::build(Tag::new(0x7C), &inner))
        .unwrap();
    let response = send(card, sign.with_ne(256).unwrap());
    assert_eq!(
        response.sw(),
        StatusWord::Success,
        "signing with {slot:02X}"
    );
    let body = tlv::parse_single(response.data(), Tag::new(0x7C)).unwrap();
    tlv::find(body, Tag::new(0x82)).unwrap().unwrap().to_vec()
}

/// `openssl dgst -verify` with the slot's public key; panics unless openssl says OK.
fn openssl_verify(dir: &Path, slot: u8, point: &[u8], message: &[u8], signature: &[u8]) -> String {
    // SubjectPublicKeyInfo of a P-256 key: the fixed algorithm header, then the point.
    let mut spki = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
    spki.extend_from_slice(point);
    let path = |name: &str| -> PathBuf { dir.join(format!("{slot:02x}-{name}")) };
    std::fs::write(path("key.der"), &spki).unwrap();
    std::fs::write(path("message"), message).unwrap();
    std::fs::write(path("signature.der"), signature).unwrap();
    let [key, msg, sig] =
        ["key.der", "message", "signature.der"].map(|n| path(n).to_string_lossy().into_owned());
    let output = run(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-keyform",
            "DER",
            "-verify",
            &key,
            "-signature",
            &sig,
            &msg,
        ],
    );
    let said = text(&output);
    assert!(
        output.status.success() && said.contains("Verified OK"),
        "slot {slot:02X}: {said}"
    );
    said
}
