//! Command chaining, response chaining with GET RESPONSE, and state change reporting.

use super::*;
use crate::apdu::CommandApdu;

fn put_certificate(value: &[u8]) -> CommandApdu {
    let mut data = h("5C 03 5F C1 05");
    data.extend(tlv::build(Tag::new(0x53), value));
    CommandApdu::new(0x00, 0xDB, 0x3F, 0xFF)
        .with_data(data)
        .unwrap()
}

#[test]
fn a_chained_put_data_stores_a_large_object_that_reads_back_through_get_response() {
    let mut card = selected();
    authenticate(&mut card);
    let certificate: Vec<u8> = (0..1500u32).map(|i| (i % 251) as u8).collect();
    let chain = put_certificate(&certificate).into_chain(255);
    assert_eq!(chain.len(), 6);
    for (i, part) in chain.iter().enumerate() {
        assert_eq!(
            send(&mut card, &part.to_bytes()),
            (vec![], 0x9000),
            "part {i}"
        );
    }
    let read = h("00 CB 3F FF 05 5C 03 5F C1 05");
    let (first, status) = send(&mut card, &read);
    assert_eq!(
        (first.len(), status),
        (256, 0x6100),
        "more than 256 bytes remain"
    );
    let (all, status) = send_all(&mut card, &read);
    assert_eq!(status, 0x9000);
    assert_eq!(all, tlv::build(Tag::new(0x53), &certificate));
}

#[test]
fn le_limits_each_response_part() {
    let mut card = selected();
    let (part, status) = send(&mut card, &h("00 CB 3F FF 05 5C 03 5F C1 02 10"));
    assert_eq!(
        (part.len(), status),
        (16, 0x612D),
        "61 bytes CHUID, 16 sent"
    );
    let (next, status) = send(&mut card, &h("00 C0 00 00 20"));
    assert_eq!((next.len(), status), (32, 0x610D));
    let (last, status) = send(&mut card, &h("00 C0 00 00 00"));
    assert_eq!((last.len(), status), (13, 0x9000));
    assert_eq!(
        [part, next, last].concat(),
        crate::piv::factory_chuid(SERIAL)
    );

    let extended = CommandApdu::new(0x00, 0xCB, 0x3F, 0xFF)
        .with_data(h("5C 03 5F C1 02"))
        .unwrap()
        .with_ne(65_536)
        .unwrap();
    assert_eq!(send(&mut card, &extended.to_bytes()).1, 0x9000);
}

#[test]
fn get_response_table() {
    let mut card = selected();
    run_table(
        &mut card,
        &[
            ("nothing pending", "00 C0 00 00 00", 0x6985),
            (
                "start a long answer",
                "00 CB 3F FF 05 5C 03 5F C1 02 08",
                0x6135,
            ),
            ("wrong P1-P2", "00 C0 01 00 00", 0x6A86),
            (
                "still pending after a bad GET RESPONSE",
                "00 C0 00 00 08",
                0x612D,
            ),
            ("another command drops the rest", "00 20 00 80", 0x63C3),
            ("dropped", "00 C0 00 00 00", 0x6985),
        ],
    );
}

#[test]
fn a_different_command_abandons_a_pending_chain() {
    let mut card = selected();
    authenticate(&mut card);
    let chain = put_certificate(&[0x11; 400]).into_chain(255);
    assert_eq!(send(&mut card, &chain[0].to_bytes()).1, 0x9000);
    assert_eq!(sw(&mut card, "00 20 00 80"), 0x63C3);
    assert_eq!(
        send(&mut card, &chain[1].to_bytes()).1,
        0x6A80,
        "the tail alone is no object"
    );
    assert_eq!(sw(&mut card, "00 CB 3F FF 05 5C 03 5F C1 05"), 0x6A82);
}

#[test]
fn chains_longer_than_the_limit_are_refused() {
    let mut card = selected();
    let part = CommandApdu::new(0x10, 0xDB, 0x3F, 0xFF)
        .with_data(vec![0; 255])
        .unwrap()
        .to_bytes();
    let parts = crate::piv::MAX_CHAIN_LEN / 255;
    for _ in 0..parts {
        assert_eq!(send(&mut card, &part).1, 0x9000);
    }
    assert_eq!(send(&mut card, &part).1, 0x6700);
}

#[test]
fn only_persistent_changes_are_reported() {
    let mut card = selected();
    assert!(
        !card.take_state_changed(),
        "selecting changes nothing persistent"
    );
    assert_eq!(verify_pin(&mut card, "123456"), 0x9000);
    assert!(
        !card.take_state_changed(),
        "a right PIN with a full counter changes nothing"
    );
    assert_eq!(verify_pin(&mut card, "654321"), 0x63C2);
    assert!(card.take_state_changed(), "a failed try is persistent");
    assert!(!card.take_state_changed());
    assert_eq!(verify_pin(&mut card, "123456"), 0x9000);
    assert!(card.take_state_changed(), "the counter reset is persistent");
    authenticate(&mut card);
    assert!(!card.take_state_changed());
}

#[test]
fn saved_state_restores_a_card_with_keys_and_credentials() {
    let mut card = selected();
    authenticate(&mut card);
    let public = generate(&mut card, 0x9A, 0x14);
    assert_eq!(
        sw(
            &mut card,
            &format!("00 24 00 80 10 {}{}", padded("123456"), padded("24680135"))
        ),
        0x9000
    );
    let json = card.state().to_json().unwrap();
    let text = String::from_utf8(json.to_vec()).unwrap();
    assert!(!text.contains("\"123456"), "no ASCII PIN in the file");

    let restored = crate::piv::PersistentState::from_json(&json).unwrap();
    let mut card = VirtualPivCard::from_state(restored);
    assert_eq!(sw(&mut card, SELECT), 0x9000);
    assert_eq!(verify_pin(&mut card, "24680135"), 0x9000);
    let (data, status) = send(&mut card, &h("00 F7 00 9A"));
    assert_eq!(status, 0x9000);
    assert_eq!(tlv::find(&data, Tag::new(0x04)).unwrap().unwrap(), public);
    let (signature, status) = sign(&mut card, 0x9A, 0x14, &[3; 48]);
    assert_eq!(status, 0x9000);
    assert!(p384::ecdsa::Signature::from_der(&signature).is_ok());
}
