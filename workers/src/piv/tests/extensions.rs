//! The YubiKey-compatible extensions: version, serial, retries, reset, metadata, and a card
//! without them.

use super::*;

fn metadata(card: &mut VirtualPivCard, reference: u8) -> Vec<(u32, Vec<u8>)> {
    let (data, status) = send(card, &[0x00, 0xF7, 0x00, reference]);
    assert_eq!(status, 0x9000, "metadata of {reference:02X}");
    tlv::iter(&data)
        .map(|t| t.unwrap())
        .map(|t| (t.tag.raw(), t.value.to_vec()))
        .collect()
}

fn field(metadata: &[(u32, Vec<u8>)], tag: u32) -> Vec<u8> {
    metadata
        .iter()
        .find(|(t, _)| *t == tag)
        .map(|(_, v)| v.clone())
        .unwrap()
}

#[test]
fn version_and_serial_come_from_the_options() {
    let options = CardOptions {
        version: [5, 7, 1],
        ..CardOptions::with_serial(SERIAL)
    };
    let mut card = selected_with(options);
    assert_eq!(send(&mut card, &h("00 FD 00 00")), (vec![5, 7, 1], 0x9000));
    assert_eq!(
        send(&mut card, &h("00 F8 00 00 00")),
        (SERIAL.to_be_bytes().to_vec(), 0x9000)
    );
}

#[test]
fn without_extensions_every_vendor_instruction_is_unknown() {
    let options = CardOptions {
        extensions: false,
        ..CardOptions::with_serial(SERIAL)
    };
    let mut card = selected_with(options);
    authenticate(&mut card);
    assert_eq!(verify_pin(&mut card, "123456"), 0x9000);
    run_table(
        &mut card,
        &[
            ("GET VERSION", "00 FD 00 00", 0x6D00),
            ("GET SERIAL", "00 F8 00 00", 0x6D00),
            ("SET PIN RETRIES", "00 FA 05 05", 0x6D00),
            ("RESET", "00 FB 00 00", 0x6D00),
            ("GET METADATA", "00 F7 00 9B", 0x6D00),
            (
                "SET MANAGEMENT KEY",
                &format!("00 FF FF FF 1B 03 9B 18 {FACTORY_3DES}"),
                0x6D00,
            ),
            ("standard commands still work", "00 20 00 80", 0x9000),
        ],
    );
}

#[test]
fn set_pin_retries_needs_both_authentications_and_resets_pin_and_puk() {
    let mut card = selected();
    assert_eq!(
        sw(
            &mut card,
            &format!("00 24 00 80 10 {}{}", padded("123456"), padded("111111"))
        ),
        0x9000
    );
    card.reset();
    assert_eq!(sw(&mut card, SELECT), 0x9000);
    run_table(&mut card, &[("neither", "00 FA 05 06", 0x6982)]);
    authenticate(&mut card);
    run_table(&mut card, &[("management key only", "00 FA 05 06", 0x6982)]);
    card.reset();
    assert_eq!(sw(&mut card, SELECT), 0x9000);
    assert_eq!(verify_pin(&mut card, "111111"), 0x9000);
    run_table(&mut card, &[("PIN only", "00 FA 05 06", 0x6982)]);
    authenticate(&mut card);
    run_table(
        &mut card,
        &[
            ("zero PIN tries", "00 FA 00 06", 0x6A86),
            ("zero PUK tries", "00 FA 05 00", 0x6A86),
            ("both", "00 FA 05 06", 0x9000),
            ("the PIN is no longer verified", "00 20 00 80", 0x63C5),
            (
                "the PIN is back to its factory value",
                "00 20 00 80 08 31 31 31 31 31 31 FF FF",
                0x63C4,
            ),
            (
                "factory PIN",
                "00 20 00 80 08 31 32 33 34 35 36 FF FF",
                0x9000,
            ),
        ],
    );
    assert_eq!(card.state().pin_retries().limit, 5);
    assert_eq!(card.state().puk_retries(), crate::piv::RetryCounter::new(6));
}

#[test]
fn reset_is_refused_until_pin_and_puk_are_blocked() {
    let mut card = selected();
    authenticate(&mut card);
    generate(&mut card, 0x9A, 0x11);
    assert_eq!(
        sw(&mut card, "00 DB 3F FF 0B 5C 03 5F C1 07 53 04 F0 02 01 02"),
        0x9000
    );
    assert_eq!(
        sw(
            &mut card,
            &format!("00 FF FF FF 13 08 9B 10 {}", "11".repeat(16))
        ),
        0x9000
    );
    run_table(&mut card, &[("nothing blocked", "00 FB 00 00", 0x6985)]);
    for _ in 0..3 {
        verify_pin(&mut card, "000000");
    }
    run_table(
        &mut card,
        &[("only the PIN blocked", "00 FB 00 00", 0x6985)],
    );
    for _ in 0..3 {
        sw(
            &mut card,
            &format!("00 2C 00 80 10 {}{}", padded("00000000"), padded("000000")),
        );
    }
    run_table(
        &mut card,
        &[
            ("both blocked", "00 FB 00 00", 0x9000),
            ("PIN has its tries back", "00 20 00 80", 0x63C3),
            (
                "factory PIN",
                "00 20 00 80 08 31 32 33 34 35 36 FF FF",
                0x9000,
            ),
            ("key is gone", "00 F7 00 9A", 0x6A88),
            ("CCC is gone", "00 CB 3F FF 05 5C 03 5F C1 07", 0x6A82),
            ("CHUID is back", "00 CB 3F FF 05 5C 03 5F C1 02", 0x9000),
            (
                "management authentication was cleared",
                "00 47 00 9A 05 AC 03 80 01 11",
                0x6982,
            ),
        ],
    );
    authenticate(&mut card);
}

#[test]
fn metadata_describes_pins_keys_and_the_management_key() {
    let mut card = selected();
    let pin = metadata(&mut card, 0x80);
    assert_eq!(
        (field(&pin, 0x01), field(&pin, 0x05), field(&pin, 0x06)),
        (vec![0xFF], vec![1], vec![3, 3])
    );
    let puk = metadata(&mut card, 0x81);
    assert_eq!(field(&puk, 0x06), [3, 3]);
    let mgmt = metadata(&mut card, 0x9B);
    assert_eq!(
        (field(&mgmt, 0x01), field(&mgmt, 0x05)),
        (vec![0x03], vec![1])
    );

    verify_pin(&mut card, "000000");
    assert_eq!(
        sw(
            &mut card,
            &format!("00 24 00 80 10 {}{}", padded("123456"), padded("222222"))
        ),
        0x9000
    );
    let pin = metadata(&mut card, 0x80);
    assert_eq!(
        (field(&pin, 0x05), field(&pin, 0x06)),
        (vec![0], vec![3, 3])
    );

    authenticate(&mut card);
    run_table(
        &mut card,
        &[
            ("empty slot", "00 F7 00 9A", 0x6A88),
            ("unknown reference", "00 F7 00 42", 0x6A88),
            ("wrong P1", "00 F7 01 9B", 0x6A86),
        ],
    );
    let public = generate(&mut card, 0x9A, 0x11);
    let slot = metadata(&mut card, 0x9A);
    assert_eq!(field(&slot, 0x01), [0x11]);
    assert_eq!(field(&slot, 0x02), [0x02, 0x01], "PIN once, touch never");
    assert_eq!(field(&slot, 0x03), [0x01], "generated on the card");
    assert_eq!(field(&slot, 0x04), public);

    assert_eq!(
        sw(
            &mut card,
            &format!("00 FF FF FF 23 0C 9B 20 {}", "42".repeat(32))
        ),
        0x9000
    );
    let mgmt = metadata(&mut card, 0x9B);
    assert_eq!(
        (field(&mgmt, 0x01), field(&mgmt, 0x05)),
        (vec![0x0C], vec![0])
    );
}
