//! Management key authentication (GENERAL AUTHENTICATE with `9B`) and SET MANAGEMENT KEY.

use super::*;
use crate::piv::ManagementKey;

/// Factory key bytes for an algorithm: 01..08 repeated to the key length.
fn factory_key(algorithm: MgmtKeyAlgorithm) -> Vec<u8> {
    (1..=8u8).cycle().take(algorithm.key_len()).collect()
}

fn set_key_apdu(algorithm: MgmtKeyAlgorithm, key: &[u8]) -> Vec<u8> {
    let mut apdu = vec![
        0x00,
        0xFF,
        0xFF,
        0xFF,
        (3 + key.len()) as u8,
        algorithm.id(),
        0x9B,
        key.len() as u8,
    ];
    apdu.extend_from_slice(key);
    apdu
}

#[test]
fn mutual_authentication_works_for_every_algorithm_as_the_factory_key() {
    for algorithm in MgmtKeyAlgorithm::ALL {
        let options = CardOptions {
            initial_mgmt_key_algorithm: algorithm,
            ..CardOptions::default()
        };
        let mut card = selected_with(options);
        assert_eq!(
            sw(&mut card, "00 47 00 9A 05 AC 03 80 01 11"),
            0x6982,
            "{algorithm}: before"
        );
        assert_eq!(
            mutual_auth(&mut card, algorithm, &factory_key(algorithm)),
            0x9000,
            "{algorithm}"
        );
        assert!(card.session.mgmt_authenticated);
    }
}

#[test]
fn a_new_key_of_every_algorithm_can_be_set_and_used() {
    for algorithm in MgmtKeyAlgorithm::ALL {
        let mut card = selected();
        authenticate(&mut card);
        let mut key = vec![0u8; algorithm.key_len()];
        rand::thread_rng().fill_bytes(&mut key);
        assert_eq!(
            send(&mut card, &set_key_apdu(algorithm, &key)).1,
            0x9000,
            "{algorithm}"
        );
        assert!(card.take_state_changed());
        card.reset();
        assert_eq!(sw(&mut card, SELECT), 0x9000);
        assert_eq!(
            mutual_auth(&mut card, MgmtKeyAlgorithm::TripleDes, &h(FACTORY_3DES)),
            if algorithm == MgmtKeyAlgorithm::TripleDes {
                0x6982
            } else {
                0x6A86
            },
            "{algorithm}: the factory key no longer works"
        );
        assert_eq!(
            mutual_auth(&mut card, algorithm, &key),
            0x9000,
            "{algorithm}: the new key works"
        );
    }
}

#[test]
fn challenge_response_authenticates_the_host() {
    for algorithm in MgmtKeyAlgorithm::ALL {
        let options = CardOptions {
            initial_mgmt_key_algorithm: algorithm,
            ..CardOptions::default()
        };
        let mut card = selected_with(options);
        let key = factory_key(algorithm);
        let alg = algorithm.id();
        let (data, status) = send(
            &mut card,
            &[0x00, 0x87, alg, 0x9B, 0x04, 0x7C, 0x02, 0x81, 0x00],
        );
        assert_eq!(status, 0x9000);
        let challenge = auth_value(&data, 0x81);
        assert_eq!(challenge.len(), algorithm.block_len());
        let response = ecb(algorithm, &key, &challenge, true);
        let template = tlv::build(Tag::new(0x7C), &tlv::build(Tag::new(0x82), &response));
        let mut apdu = vec![0x00, 0x87, alg, 0x9B, template.len() as u8];
        apdu.extend_from_slice(&template);
        assert_eq!(send(&mut card, &apdu), (vec![], 0x9000), "{algorithm}");
        assert!(card.session.mgmt_authenticated);
    }
}

#[test]
fn the_card_proves_it_holds_the_key() {
    let mut card = selected();
    let challenge = h("0011223344556677");
    let (data, status) = send(
        &mut card,
        &h("00 87 03 9B 0E 7C 0C 81 08 0011223344556677 82 00"),
    );
    assert_eq!(status, 0x9000);
    let expected = ecb(
        MgmtKeyAlgorithm::TripleDes,
        &h(FACTORY_3DES),
        &challenge,
        true,
    );
    assert_eq!(auth_value(&data, 0x82), expected);
    assert!(
        !card.session.mgmt_authenticated,
        "the card proving itself does not authenticate the host"
    );
}

#[test]
fn wrong_witnesses_keys_and_orders_fail() {
    let mut card = selected();
    let wrong_key = h("080706050403020108070605040302010807060504030201");
    assert_eq!(
        mutual_auth(&mut card, MgmtKeyAlgorithm::TripleDes, &wrong_key),
        0x6982
    );
    assert!(!card.session.mgmt_authenticated);
    run_table(
        &mut card,
        &[
            (
                "witness without a request",
                "00 87 03 9B 16 7C 14 80 08 0000000000000000 81 08 0000000000000000",
                0x6985,
            ),
            (
                "response without a challenge",
                "00 87 03 9B 0C 7C 0A 82 08 0000000000000000",
                0x6985,
            ),
            (
                "AES algorithm for a 3DES key",
                "00 87 08 9B 04 7C 02 80 00",
                0x6A86,
            ),
            (
                "unknown key reference",
                "00 87 03 9F 04 7C 02 80 00",
                0x6A88,
            ),
            ("no 7C template", "00 87 03 9B 04 7D 02 80 00", 0x6A80),
            ("unknown inner tag", "00 87 03 9B 04 7C 02 83 00", 0x6A80),
            (
                "repeated inner tag",
                "00 87 03 9B 06 7C 04 80 00 80 00",
                0x6A80,
            ),
            ("truncated template", "00 87 03 9B 04 7C 05 80 00", 0x6A80),
            ("empty template", "00 87 03 9B 02 7C 00", 0x6A80),
            (
                "witness of the wrong length",
                "00 87 03 9B 0C 7C 0A 80 04 00000000 81 02 0000",
                0x6A80,
            ),
        ],
    );
    // A witness is only good for the very next command.
    assert_eq!(sw(&mut card, "00 87 03 9B 04 7C 02 80 00"), 0x9000);
    assert_eq!(sw(&mut card, "00 20 00 80"), 0x63C3);
    assert_eq!(
        sw(
            &mut card,
            "00 87 03 9B 16 7C 14 80 08 0000000000000000 81 08 0000000000000000"
        ),
        0x6985
    );
    authenticate(&mut card);
}

#[test]
fn set_management_key_table() {
    let only_aes = CardOptions {
        mgmt_key_algorithms: vec![MgmtKeyAlgorithm::Aes128, MgmtKeyAlgorithm::Aes256],
        initial_mgmt_key_algorithm: MgmtKeyAlgorithm::Aes128,
        ..CardOptions::default()
    };
    let mut card = selected_with(only_aes);
    let aes_key = "00 FF FF FF 13 08 9B 10 000102030405060708090A0B0C0D0E0F";
    run_table(&mut card, &[("without authentication", aes_key, 0x6982)]);
    assert_eq!(
        mutual_auth(
            &mut card,
            MgmtKeyAlgorithm::Aes128,
            &factory_key(MgmtKeyAlgorithm::Aes128)
        ),
        0x9000
    );
    run_table(
        &mut card,
        &[
            (
                "3DES is not allowed on this card",
                &format!("00 FF FF FF 1B 03 9B 18 {FACTORY_3DES}"),
                0x6A80,
            ),
            (
                "AES-192 is not allowed on this card",
                &format!("00 FF FF FF 1B 0A 9B 18 {FACTORY_3DES}"),
                0x6A80,
            ),
            (
                "key length does not match the algorithm",
                "00 FF FF FF 0B 08 9B 08 0001020304050607",
                0x6A80,
            ),
            (
                "length byte does not match the key",
                "00 FF FF FF 13 08 9B 11 000102030405060708090A0B0C0D0E0F",
                0x6A80,
            ),
            (
                "wrong key reference",
                "00 FF FF FF 13 08 9A 10 000102030405060708090A0B0C0D0E0F",
                0x6A80,
            ),
            (
                "unknown algorithm",
                "00 FF FF FF 13 07 9B 10 000102030405060708090A0B0C0D0E0F",
                0x6A80,
            ),
            ("no data", "00 FF FF FF", 0x6A80),
            (
                "wrong P1",
                "00 FF FE FF 13 08 9B 10 000102030405060708090A0B0C0D0E0F",
                0x6A86,
            ),
            (
                "wrong P2",
                "00 FF FF 00 13 08 9B 10 000102030405060708090A0B0C0D0E0F",
                0x6A86,
            ),
            (
                "touch variant",
                "00 FF FF FE 13 08 9B 10 000102030405060708090A0B0C0D0E0F",
                0x9000,
            ),
            ("AES-128", aes_key, 0x9000),
        ],
    );
    assert_eq!(card.state().mgmt_key_algorithm(), MgmtKeyAlgorithm::Aes128);
    let mut fresh = selected_with(CardOptions {
        mgmt_key_algorithms: vec![MgmtKeyAlgorithm::TripleDes],
        ..CardOptions::default()
    });
    let (apt, _) = send(&mut fresh, &h(SELECT));
    assert!(
        !apt.windows(3).any(|w| w == [0x80, 0x01, 0x08]),
        "AES is not advertised"
    );
}

#[test]
fn management_keys_never_reach_debug_output() {
    let card = selected();
    let shown = format!("{card:?} {:?}", card.state());
    assert!(!shown.contains("[1, 2, 3, 4"), "{shown}");
    assert!(!shown.contains("0102030405060708"), "{shown}");
    let key = ManagementKey::factory(MgmtKeyAlgorithm::Aes256);
    assert!(!format!("{key:?}").contains("1, 2"));
}
