//! GENERATE ASYMMETRIC KEY PAIR and GENERAL AUTHENTICATE with generated keys.

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rsa::BigUint;

use super::*;

fn point(public: &[u8]) -> Vec<u8> {
    tlv::find(public, Tag::new(0x86)).unwrap().unwrap().to_vec()
}

#[test]
fn generate_table() {
    let mut card = selected();
    run_table(
        &mut card,
        &[(
            "without management key",
            "00 47 00 9A 05 AC 03 80 01 11",
            0x6982,
        )],
    );
    authenticate(&mut card);
    run_table(
        &mut card,
        &[
            (
                "management key slot",
                "00 47 00 9B 05 AC 03 80 01 11",
                0x6A86,
            ),
            ("retired slot", "00 47 00 82 05 AC 03 80 01 11", 0x6A86),
            ("wrong P1", "00 47 01 9A 05 AC 03 80 01 11", 0x6A86),
            ("no AC template", "00 47 00 9A 03 80 01 11", 0x6A80),
            (
                "RSA-1024 is not offered",
                "00 47 00 9A 05 AC 03 80 01 06",
                0x6A80,
            ),
            (
                "3DES is not asymmetric",
                "00 47 00 9A 05 AC 03 80 01 03",
                0x6A80,
            ),
            ("no algorithm", "00 47 00 9A 05 AC 03 AA 01 01", 0x6A80),
            (
                "two-byte algorithm",
                "00 47 00 9A 06 AC 04 80 02 00 11",
                0x6A80,
            ),
            (
                "unknown PIN policy",
                "00 47 00 9A 08 AC 06 80 01 11 AA 01 09",
                0x6A80,
            ),
            (
                "unknown tag",
                "00 47 00 9A 08 AC 06 80 01 11 99 01 01",
                0x6A80,
            ),
            (
                "truncated template",
                "00 47 00 9A 05 AC 04 80 01 11",
                0x6A80,
            ),
            (
                "with PIN and touch policy",
                "00 47 00 9A 0B AC 09 80 01 11 AA 01 01 AB 01 01",
                0x9000,
            ),
        ],
    );
}

#[test]
fn generated_ec_keys_are_valid_points_that_sign_and_agree() {
    let mut card = selected();
    authenticate(&mut card);
    card.take_state_changed();
    let public = generate(&mut card, 0x9A, 0x11);
    assert!(card.take_state_changed(), "a new key is persistent state");
    let p256_point = point(&public);
    assert_eq!(p256_point.len(), 65);
    let verifier = p256::ecdsa::VerifyingKey::from_sec1_bytes(&p256_point).unwrap();

    let public = generate(&mut card, 0x9D, 0x14);
    let p384_point = point(&public);
    assert_eq!(p384_point.len(), 97);
    let verifier384 = p384::ecdsa::VerifyingKey::from_sec1_bytes(&p384_point).unwrap();

    let hash = [0x5A; 32];
    assert_eq!(
        sign(&mut card, 0x9A, 0x11, &hash).1,
        0x6982,
        "PIN policy once needs the PIN"
    );
    assert_eq!(verify_pin(&mut card, "123456"), 0x9000);
    let (der, status) = sign(&mut card, 0x9A, 0x11, &hash);
    assert_eq!(status, 0x9000);
    let signature = p256::ecdsa::Signature::from_der(&der).unwrap();
    verifier.verify_prehash(&hash, &signature).unwrap();
    assert_eq!(
        sign(&mut card, 0x9A, 0x11, &hash).1,
        0x9000,
        "once means once per session"
    );

    let hash384 = [0xA5; 48];
    let (der, status) = sign(&mut card, 0x9D, 0x14, &hash384);
    assert_eq!(status, 0x9000);
    let signature = p384::ecdsa::Signature::from_der(&der).unwrap();
    verifier384.verify_prehash(&hash384, &signature).unwrap();

    let ephemeral = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let ours = ephemeral.public_key().to_encoded_point(false);
    let body = [
        tlv::build(Tag::new(0x82), &[]),
        tlv::build(Tag::new(0x85), ours.as_bytes()),
    ]
    .concat();
    let template = tlv::build(Tag::new(0x7C), &body);
    let mut apdu = vec![0x00, 0x87, 0x11, 0x9A, template.len() as u8];
    apdu.extend_from_slice(&template);
    let (data, status) = send(&mut card, &apdu);
    assert_eq!(status, 0x9000);
    let theirs = p256::PublicKey::from_sec1_bytes(&p256_point).unwrap();
    let expected = p256::ecdh::diffie_hellman(ephemeral.to_nonzero_scalar(), theirs.as_affine());
    assert_eq!(
        auth_value(&data, 0x82),
        expected.raw_secret_bytes().to_vec()
    );
}

#[test]
fn generated_rsa_keys_have_a_2048_bit_modulus_and_do_private_operations() {
    let mut card = selected();
    authenticate(&mut card);
    let (raw, status) = send(&mut card, &h("00 47 00 9E 05 AC 03 80 01 07"));
    assert_eq!(
        status, 0x610E,
        "270 bytes of template: 256 now, 14 with GET RESPONSE"
    );
    assert_eq!(raw.len(), 256);
    let (rest, status) = send(&mut card, &h("00 C0 00 00 00"));
    assert_eq!((rest.len(), status), (14, 0x9000));
    let template = [raw, rest].concat();
    let public = tlv::parse_single(&template, Tag::new(0x7F49)).unwrap();
    let n = tlv::find(public, Tag::new(0x81)).unwrap().unwrap();
    let e = tlv::find(public, Tag::new(0x82)).unwrap().unwrap();
    assert_eq!(
        (n.len(), n[0] & 0x80),
        (256, 0x80),
        "a full 2048-bit modulus"
    );
    assert_eq!(e, [0x01, 0x00, 0x01]);

    // PKCS#1 v1.5 block for a SHA-256 digest, padded by the client as yubico-piv-tool does.
    let digest_info = h("3031300d060960864801650304020105000420");
    let mut block = vec![0x00, 0x01];
    block.resize(256 - digest_info.len() - 32 - 1, 0xFF);
    block.push(0x00);
    block.extend(&digest_info);
    block.extend([0x77; 32]);
    assert_eq!(block.len(), 256);
    // 9E has PIN policy never.
    let (signature, status) = sign(&mut card, 0x9E, 0x07, &block);
    assert_eq!(status, 0x9000);
    let n = BigUint::from_bytes_be(n);
    let recovered = BigUint::from_bytes_be(&signature).modpow(&BigUint::from_bytes_be(e), &n);
    assert_eq!(
        recovered.to_bytes_be(),
        block[1..],
        "signature^e mod n gives the block back"
    );

    run_table(
        &mut card,
        &[(
            "RSA has no ECDH",
            "00 87 07 9E 08 7C 06 82 00 85 02 04 00",
            0x6A80,
        )],
    );
    assert_eq!(
        sign(&mut card, 0x9E, 0x07, &block[..255]).1,
        0x6A80,
        "input shorter than the modulus"
    );
    assert_eq!(
        sign(&mut card, 0x9E, 0x07, &[0xFF; 256]).1,
        0x6A80,
        "input not below the modulus"
    );
    assert_eq!(
        sign(&mut card, 0x9E, 0x11, &block).1,
        0x6A86,
        "P1 names another algorithm"
    );
}

#[test]
fn the_signature_key_needs_the_pin_right_before_every_use() {
    let mut card = selected();
    authenticate(&mut card);
    generate(&mut card, 0x9C, 0x11);
    let hash = [1u8; 32];
    assert_eq!(sign(&mut card, 0x9C, 0x11, &hash).1, 0x6982);
    assert_eq!(verify_pin(&mut card, "123456"), 0x9000);
    assert_eq!(sign(&mut card, 0x9C, 0x11, &hash).1, 0x9000);
    assert_eq!(
        sign(&mut card, 0x9C, 0x11, &hash).1,
        0x6982,
        "one verification, one signature"
    );
    assert_eq!(verify_pin(&mut card, "123456"), 0x9000);
    assert_eq!(sign(&mut card, 0x9C, 0x11, &hash).1, 0x9000);
}

#[test]
fn slot_authentication_table() {
    let mut card = selected();
    authenticate(&mut card);
    generate(&mut card, 0x9E, 0x11);
    let digest = "5A".repeat(32);
    run_table(
        &mut card,
        &[
            (
                "empty slot",
                &format!("00 87 11 9A 26 7C 24 82 00 81 20 {digest}"),
                0x6A88,
            ),
            (
                "wrong algorithm",
                &format!("00 87 14 9E 26 7C 24 82 00 81 20 {digest}"),
                0x6A86,
            ),
            (
                "no 82",
                &format!("00 87 11 9E 24 7C 22 81 20 {digest}"),
                0x6A80,
            ),
            (
                "82 not empty",
                &format!("00 87 11 9E 27 7C 25 82 01 00 81 20 {digest}"),
                0x6A80,
            ),
            (
                "witness in a slot template",
                &format!("00 87 11 9E 28 7C 26 80 00 82 00 81 20 {digest}"),
                0x6A80,
            ),
            ("neither 81 nor 85", "00 87 11 9E 04 7C 02 82 00", 0x6A80),
            (
                "too short a hash",
                "00 87 11 9E 08 7C 06 82 00 81 02 01 02",
                0x6A80,
            ),
            (
                "not a point",
                "00 87 11 9E 08 7C 06 82 00 85 02 04 00",
                0x6A80,
            ),
            (
                "card authentication needs no PIN",
                &format!("00 87 11 9E 26 7C 24 82 00 81 20 {digest}"),
                0x9000,
            ),
        ],
    );
}
