//! SELECT, GET DATA, PUT DATA, CPLC and the generic class, instruction and length checks.

use super::*;
use crate::piv::ids::{PIV_AID, tag};
use crate::piv::{ATR, factory_chuid};

#[test]
fn select_accepts_the_full_and_the_truncated_aid_and_returns_the_property_template() {
    for aid in [
        "A0 00 00 03 08",
        "A0 00 00 03 08 00 00 10 00",
        "A0 00 00 03 08 00 00 10 00 01 00",
    ] {
        let mut card = card_with(CardOptions::default());
        let len = h(aid).len();
        let (data, status) = send(&mut card, &h(&format!("00 A4 04 00 {len:02X} {aid} 00")));
        assert_eq!(status, 0x9000, "{aid}");
        let apt = tlv::parse_single(&data, Tag::new(0x61)).unwrap();
        assert_eq!(
            tlv::find(apt, Tag::new(0x4F)).unwrap(),
            Some(&h("00 00 10 00 01 00")[..])
        );
        let authority = tlv::find(apt, Tag::new(0x79)).unwrap().unwrap();
        assert_eq!(
            tlv::find(authority, Tag::new(0x4F)).unwrap(),
            Some(&h("A0 00 00 03 08")[..])
        );
        let algorithms = tlv::find(apt, Tag::new(0xAC)).unwrap().unwrap();
        let ids: Vec<u8> = tlv::iter(algorithms)
            .map(|t| t.unwrap())
            .filter(|t| t.tag == Tag::new(0x80))
            .map(|t| t.value[0])
            .collect();
        assert_eq!(ids, [0x03, 0x08, 0x0A, 0x0C, 0x07, 0x11, 0x14]);
    }
}

#[test]
fn select_with_p2_0c_answers_no_data() {
    let mut card = card_with(CardOptions::default());
    assert_eq!(
        send(&mut card, &h("00 A4 04 0C 05 A0 00 00 03 08")),
        (vec![], 0x9000)
    );
}

#[test]
fn select_table() {
    let mut card = card_with(CardOptions::default());
    run_table(
        &mut card,
        &[
            (
                "PIV command before selection",
                "00 CB 3F FF 05 5C 03 5F C1 02",
                0x6D00,
            ),
            ("VERIFY before selection", "00 20 00 80", 0x6D00),
            ("unknown AID", "00 A4 04 00 05 A0 00 00 05 27", 0x6A82),
            (
                "AID shorter than the RID",
                "00 A4 04 00 04 A0 00 00 03",
                0x6A82,
            ),
            (
                "AID longer than the full AID",
                "00 A4 04 00 0C A0 00 00 03 08 00 00 10 00 01 00 00",
                0x6A82,
            ),
            ("wrong P1", "00 A4 00 00 05 A0 00 00 03 08", 0x6A86),
            ("wrong P2", "00 A4 04 01 05 A0 00 00 03 08", 0x6A86),
            (
                "P2 0C selects without answering data",
                "00 A4 04 0C 05 A0 00 00 03 08",
                0x9000,
            ),
            ("selected", "00 CB 3F FF 05 5C 03 5F C1 02", 0x9000),
            ("truncated AID", SELECT, 0x9000),
            (
                "selection survives a failed SELECT",
                "00 A4 04 00 05 A0 00 00 05 27",
                0x6A82,
            ),
            ("still selected", "00 CB 3F FF 05 5C 03 5F C1 02", 0x9000),
        ],
    );
}

#[test]
fn malformed_apdus_and_unknown_instructions_are_rejected() {
    let mut card = selected();
    run_table(
        &mut card,
        &[
            ("too short", "00 A4 04", 0x6700),
            ("Lc larger than the data", "00 CB 3F FF 05 5C 03", 0x6700),
            ("unknown INS", "00 12 00 00", 0x6D00),
            ("import key is not supported", "00 FE 11 9A 00", 0x6D00),
            ("proprietary class", "80 CB 3F FF 05 5C 03 5F C1 02", 0x6E00),
            (
                "secure messaging class",
                "0C CB 3F FF 05 5C 03 5F C1 02",
                0x6E00,
            ),
            ("PC/SC pseudo class", "FF CA 00 00 00", 0x6E00),
        ],
    );
}

#[test]
fn get_data_table() {
    let mut card = selected();
    run_table(
        &mut card,
        &[
            ("CHUID", "00 CB 3F FF 05 5C 03 5F C1 02 00", 0x9000),
            ("discovery object", "00 CB 3F FF 03 5C 01 7E 00", 0x9000),
            ("absent CCC", "00 CB 3F FF 05 5C 03 5F C1 07", 0x6A82),
            (
                "absent key history",
                "00 CB 3F FF 05 5C 03 5F C1 0C",
                0x6A82,
            ),
            (
                "absent certificate 9A",
                "00 CB 3F FF 05 5C 03 5F C1 05",
                0x6A82,
            ),
            (
                "absent certificate 9C",
                "00 CB 3F FF 05 5C 03 5F C1 0A",
                0x6A82,
            ),
            (
                "absent certificate 9D",
                "00 CB 3F FF 05 5C 03 5F C1 0B",
                0x6A82,
            ),
            (
                "absent certificate 9E",
                "00 CB 3F FF 05 5C 03 5F C1 01",
                0x6A82,
            ),
            (
                "absent BIT group template",
                "00 CB 3F FF 04 5C 02 7F 61",
                0x6A82,
            ),
            ("unknown object", "00 CB 3F FF 05 5C 03 5F C2 01", 0x6A82),
            (
                "printed information needs the PIN",
                "00 CB 3F FF 05 5C 03 5F C1 09",
                0x6982,
            ),
            (
                "facial image needs the PIN",
                "00 CB 3F FF 05 5C 03 5F C1 08",
                0x6982,
            ),
            ("wrong P1-P2", "00 CB 3F FE 05 5C 03 5F C1 02", 0x6A86),
            ("no tag list", "00 CB 3F FF 05 4C 03 5F C1 02", 0x6A80),
            (
                "truncated tag list",
                "00 CB 3F FF 05 5C 04 5F C1 02",
                0x6A80,
            ),
            (
                "bytes after the tag list",
                "00 CB 3F FF 06 5C 03 5F C1 02 00",
                0x6A80,
            ),
            ("empty tag list", "00 CB 3F FF 02 5C 00", 0x6A80),
            ("four-byte tag", "00 CB 3F FF 06 5C 04 5F C1 82 01", 0x6A80),
            ("no data at all", "00 CB 3F FF", 0x6A80),
        ],
    );
    assert_eq!(verify_pin(&mut card, "123456"), 0x9000);
    assert_eq!(
        sw(&mut card, "00 CB 3F FF 05 5C 03 5F C1 09"),
        0x6A82,
        "verified, but absent"
    );
}

#[test]
fn factory_objects_carry_the_chip_serial_and_the_aid() {
    let mut card = selected();
    let (chuid, status) = send(&mut card, &h("00 CB 3F FF 05 5C 03 5F C1 02"));
    assert_eq!(status, 0x9000);
    assert_eq!(chuid, factory_chuid(SERIAL));
    let body = tlv::parse_single(&chuid, Tag::new(0x53)).unwrap();
    assert_eq!(tlv::find(body, Tag::new(0x30)).unwrap().unwrap().len(), 25);
    let guid = tlv::find(body, Tag::new(0x34)).unwrap().unwrap();
    assert_eq!(guid.len(), 16);
    assert_ne!(factory_chuid(SERIAL), factory_chuid(SERIAL + 1));

    let (discovery, _) = send(&mut card, &h("00 CB 3F FF 03 5C 01 7E"));
    let body = tlv::parse_single(&discovery, Tag::new(0x7E)).unwrap();
    assert_eq!(tlv::find(body, Tag::new(0x4F)).unwrap(), Some(&PIV_AID[..]));
    assert_eq!(
        tlv::find(body, Tag::new(0x5F2F)).unwrap(),
        Some(&[0x40, 0x00][..])
    );
}

#[test]
fn cplc_answers_with_class_00_or_80_even_before_selection() {
    for class in ["00", "80"] {
        let mut card = card_with(CardOptions::with_serial(SERIAL));
        let (data, status) = send(&mut card, &h(&format!("{class} CA 9F 7F 00")));
        assert_eq!(status, 0x9000, "class {class}");
        let cplc = tlv::parse_single(&data, tag::CPLC).unwrap();
        assert_eq!(cplc.len(), 42);
        assert_eq!(&cplc[12..16], &SERIAL.to_be_bytes());
        assert_eq!(
            sw(&mut card, &format!("{class} CA 00 66 00")),
            0x6A88,
            "other GP data object"
        );
    }
}

#[test]
fn put_data_table() {
    let mut card = selected();
    let cert = "5C 03 5F C1 05 53 04 70 02 AB CD";
    run_table(
        &mut card,
        &[(
            "without management key",
            &format!("00 DB 3F FF 0B {cert}"),
            0x6982,
        )],
    );
    authenticate(&mut card);
    run_table(
        &mut card,
        &[
            ("certificate 9A", &format!("00 DB 3F FF 0B {cert}"), 0x9000),
            ("read back", "00 CB 3F FF 05 5C 03 5F C1 05", 0x9000),
            (
                "CCC",
                "00 DB 3F FF 0B 5C 03 5F C1 07 53 04 F0 02 01 02",
                0x9000,
            ),
            (
                "key history",
                "00 DB 3F FF 0D 5C 03 5F C1 0C 53 06 C1 01 00 C2 01 00",
                0x9000,
            ),
            (
                "printed information",
                "00 DB 3F FF 0A 5C 03 5F C1 09 53 03 01 01 41",
                0x9000,
            ),
            (
                "discovery object whole",
                "00 DB 3F FF 08 7E 06 4F 04 A0 00 00 03",
                0x9000,
            ),
            (
                "discovery object in 53",
                "00 DB 3F FF 09 5C 01 7E 53 04 4F 02 A0 00",
                0x6A80,
            ),
            ("wrong P1-P2", &format!("00 DB 3F 00 0B {cert}"), 0x6A86),
            ("missing 53", "00 DB 3F FF 05 5C 03 5F C1 05", 0x6A80),
            (
                "53 length too long",
                "00 DB 3F FF 09 5C 03 5F C1 05 53 05 70 02",
                0x6A80,
            ),
            (
                "trailing bytes",
                "00 DB 3F FF 0C 5C 03 5F C1 05 53 04 70 02 AB CD 00",
                0x6A80,
            ),
            (
                "unknown object",
                "00 DB 3F FF 07 5C 03 5F C2 05 53 00",
                0x6A80,
            ),
            ("neither 5C nor 7E", "00 DB 3F FF 04 53 02 01 02", 0x6A80),
            (
                "delete with an empty 53",
                "00 DB 3F FF 07 5C 03 5F C1 05 53 00",
                0x9000,
            ),
            ("deleted", "00 CB 3F FF 05 5C 03 5F C1 05", 0x6A82),
        ],
    );
    let (ccc, _) = send(&mut card, &h("00 CB 3F FF 05 5C 03 5F C1 07"));
    assert_eq!(ccc, h("53 04 F0 02 01 02"));
    let (discovery, _) = send(&mut card, &h("00 CB 3F FF 03 5C 01 7E"));
    assert_eq!(discovery, h("7E 06 4F 04 A0 00 00 03"));
}

#[test]
fn oversized_objects_are_refused() {
    let mut card = selected();
    authenticate(&mut card);
    let value = vec![0x42; crate::piv::MAX_OBJECT_LEN];
    let mut data = h("5C 03 5F C1 05");
    data.extend(tlv::build(Tag::new(0x53), &value));
    let apdu = crate::apdu::CommandApdu::new(0, 0xDB, 0x3F, 0xFF)
        .with_data(data)
        .unwrap();
    assert_eq!(send(&mut card, &apdu.to_bytes()).1, 0x6A84);
}

#[test]
fn the_atr_is_a_valid_t1_answer_to_reset() {
    assert_eq!(ATR[0], 0x3B);
    let checksum = ATR[1..].iter().fold(0u8, |acc, b| acc ^ b);
    assert_eq!(checksum, 0, "TCK makes the exclusive-or of T0..TCK zero");
    let historical = usize::from(ATR[1] & 0x0F);
    assert_eq!(ATR.len(), 2 + 2 + historical + 1);
}
