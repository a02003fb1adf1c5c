//! End-to-end tests of the virtual PIV card through the real PC/SC stack: the worker binary
//! attaches a card to vpcd inside pcscd, and yubico-piv-tool, OpenSC and a PC/SC client drive
//! it. Every test name contains `vpcd` so nextest runs them one at a time (vpcd serves one
//! card per port); a lock in the harness does the same under plain `cargo test`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use cardfleet_worker::apdu::{CommandApdu, StatusWord};
use cardfleet_worker::piv::{MgmtKeyAlgorithm, factory_chuid};
use cardfleet_worker::tlv::{self, Tag};
use rand::RngCore;
use support::*;

#[test]
fn vpcd_yubico_piv_tool_manages_pins_puk_and_the_3des_management_key() {
    let _lock = prepare();
    let dir = tempfile::tempdir().unwrap();
    let card = VirtualCard::start(&dir.path().join("card"));

    let status = succeeds(piv_tool(&["-a", "status"]), "status");
    assert!(
        status.contains("Version:\t5.4.3") && status.contains("PIN tries left:\t3"),
        "{status}"
    );
    succeeds(
        piv_tool(&["-a", "verify-pin", "-P", "123456"]),
        "verify the factory PIN",
    );

    succeeds(
        piv_tool(&["-a", "change-pin", "-P", "123456", "-N", "654321"]),
        "change PIN",
    );
    let out = fails(
        piv_tool(&["-a", "verify-pin", "-P", "123456"]),
        "verify the old PIN",
    );
    assert!(out.contains("2 tries left"), "{out}");
    succeeds(
        piv_tool(&["-a", "verify-pin", "-P", "654321"]),
        "verify the new PIN",
    );

    succeeds(
        piv_tool(&["-a", "change-puk", "-P", "12345678", "-N", "87654321"]),
        "change PUK",
    );
    fails(
        piv_tool(&["-a", "unblock-pin", "-P", "12345678", "-N", "111111"]),
        "unblock with the old PUK",
    );

    for _ in 0..3 {
        fails(piv_tool(&["-a", "verify-pin", "-P", "000000"]), "wrong PIN");
    }
    let out = fails(
        piv_tool(&["-a", "verify-pin", "-P", "654321"]),
        "verify a blocked PIN",
    );
    assert!(out.to_lowercase().contains("blocked"), "{out}");
    succeeds(
        piv_tool(&["-a", "unblock-pin", "-P", "87654321", "-N", "112233"]),
        "unblock the PIN",
    );
    succeeds(
        piv_tool(&["-a", "verify-pin", "-P", "112233"]),
        "verify the PIN set by unblocking",
    );

    let new_key = "0a0b0c0d0e0f10111213141516171819a1a2a3a4a5a6a7a8";
    succeeds(
        piv_tool(&["-a", "set-mgm-key", &format!("--new-key={new_key}")]),
        "set a 3DES key",
    );
    fails(
        piv_tool(&[
            &format!("--key={FACTORY_3DES}"),
            "-a",
            "set-mgm-key",
            "--new-key",
            new_key,
        ]),
        "old key",
    );
    succeeds(
        piv_tool(&[
            &format!("--key={new_key}"),
            "-a",
            "set-mgm-key",
            &format!("--new-key={FACTORY_3DES}"),
        ]),
        "the new key authenticates",
    );
    drop(card);
}

#[test]
fn vpcd_yubico_piv_tool_generates_p256_p384_and_rsa_2048_keys() {
    use p256::pkcs8::DecodePublicKey;

    let _lock = prepare();
    let dir = tempfile::tempdir().unwrap();
    let _card = VirtualCard::start(&dir.path().join("card"));
    let key = format!("--key={FACTORY_3DES}");

    let pem = succeeds(
        piv_tool(&[&key, "-a", "generate", "-s", "9a", "-A", "ECCP256"]),
        "P-256 in 9a",
    );
    p256::PublicKey::from_public_key_pem(pem_block(&pem)).expect("a P-256 public key");
    let pem = succeeds(
        piv_tool(&[&key, "-a", "generate", "-s", "9d", "-A", "ECCP384"]),
        "P-384 in 9d",
    );
    p384::PublicKey::from_public_key_pem(pem_block(&pem)).expect("a P-384 public key");
    let pem = succeeds(
        piv_tool(&[&key, "-a", "generate", "-s", "9c", "-A", "RSA2048"]),
        "RSA-2048 in 9c",
    );
    let rsa = rsa::RsaPublicKey::from_public_key_pem(pem_block(&pem)).expect("an RSA public key");
    assert_eq!(rsa::traits::PublicKeyParts::size(&rsa), 256);

    fails(
        piv_tool(&[
            "--key=0102030405060708010203040506070801020304050607ff",
            "-a",
            "generate",
            "-s",
            "9e",
        ]),
        "wrong key",
    );
}

#[test]
fn vpcd_opensc_lists_pins_and_reads_name_and_serial() {
    let _lock = prepare();
    let dir = tempfile::tempdir().unwrap();
    let card = VirtualCard::start(&dir.path().join("card"));

    let pins = succeeds(
        run("pkcs15-tool", &["-r", READER, "--list-pins"]),
        "pkcs15-tool --list-pins",
    );
    assert!(
        pins.contains("PIV PUK") && pins.contains("Reference      : 128 (0x80)"),
        "{pins}"
    );
    let name = succeeds(run("piv-tool", &["-r", READER, "-n"]), "piv-tool -n");
    assert!(
        name.contains("Personal Identity Verification Card"),
        "{name}"
    );

    // OpenSC derives the serial from the CHUID's GUID.
    let serial = succeeds(
        run("piv-tool", &["-r", READER, "--serial"]),
        "piv-tool --serial",
    );
    let chuid = factory_chuid(card.serial);
    let body = tlv::parse_single(&chuid, Tag::new(0x53)).unwrap();
    let guid = tlv::find(body, Tag::new(0x34)).unwrap().unwrap();
    let guid_hex: Vec<String> = guid.iter().map(|b| format!("{b:02X}")).collect();
    assert!(
        serial.contains(&guid_hex.join(" ")),
        "{serial} should show GUID {guid_hex:?}"
    );
}

#[test]
fn vpcd_state_survives_a_restart_of_the_card_process() {
    let _lock = prepare();
    let dir = tempfile::tempdir().unwrap();
    let card = VirtualCard::start_with_serial(&dir.path().join("card"), 0x00C0_FFEE);
    succeeds(
        piv_tool(&["-a", "change-pin", "-P", "123456", "-N", "24681357"]),
        "change PIN",
    );
    fails(piv_tool(&["-a", "verify-pin", "-P", "123456"]), "old PIN");
    let state_dir = card.stop();

    let _card = VirtualCard::start_with_serial(&state_dir, 0x00C0_FFEE);
    let status = succeeds(piv_tool(&["-a", "status"]), "status after restart");
    assert!(
        status.contains("PIN tries left:\t2"),
        "the failed try was saved: {status}"
    );
    succeeds(
        piv_tool(&["-a", "verify-pin", "-P", "24681357"]),
        "the changed PIN was saved",
    );
}

#[test]
fn vpcd_aes_management_keys_authenticate_through_pcsc() {
    let _lock = prepare();
    let dir = tempfile::tempdir().unwrap();
    let _card = VirtualCard::start(&dir.path().join("card"));
    // yubico-piv-tool 2.2 (Debian 12) only knows 3DES management keys, so AES keys are set
    // and used with the same APDUs sent through PC/SC directly.
    let mut current = (
        MgmtKeyAlgorithm::TripleDes,
        hex::decode(FACTORY_3DES).unwrap(),
    );
    for algorithm in [
        MgmtKeyAlgorithm::Aes128,
        MgmtKeyAlgorithm::Aes192,
        MgmtKeyAlgorithm::Aes256,
    ] {
        let mut key = vec![0u8; algorithm.key_len()];
        rand::thread_rng().fill_bytes(&mut key);
        {
            let pcsc = Pcsc::connect();
            assert_eq!(
                pcsc.mutual_auth(current.0, &current.1),
                StatusWord::Success,
                "old key"
            );
            let mut data = vec![algorithm.id(), 0x9B, key.len() as u8];
            data.extend_from_slice(&key);
            let set = CommandApdu::new(0x00, 0xFF, 0xFF, 0xFF)
                .with_data(data)
                .unwrap();
            assert_eq!(
                pcsc.transmit(&set).sw(),
                StatusWord::Success,
                "set {algorithm}"
            );
        }
        {
            let pcsc = Pcsc::connect();
            let old = pcsc.mutual_auth(current.0, &current.1);
            assert_eq!(
                old,
                StatusWord::IncorrectP1P2,
                "the old {} key is gone",
                current.0
            );
            assert_eq!(
                pcsc.mutual_auth(algorithm, &key),
                StatusWord::Success,
                "{algorithm} key works"
            );
        }
        current = (algorithm, key);
    }
    fails(
        piv_tool(&[
            &format!("--key={FACTORY_3DES}"),
            "-a",
            "generate",
            "-s",
            "9a",
        ]),
        "3DES after AES",
    );
}
