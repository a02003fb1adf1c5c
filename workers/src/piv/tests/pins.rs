//! VERIFY, CHANGE REFERENCE DATA and RESET RETRY COUNTER: formats, retry counters, blocking.

use super::*;

fn change(reference: &str, old: &str, new: &str) -> String {
    format!("00 24 00 {reference} 10 {}{}", padded(old), padded(new))
}

fn unblock(puk: &str, new_pin: &str) -> String {
    format!("00 2C 00 80 10 {}{}", padded(puk), padded(new_pin))
}

#[test]
fn verify_table() {
    let mut card = selected();
    run_table(
        &mut card,
        &[
            ("empty VERIFY reports three tries", "00 20 00 80", 0x63C3),
            (
                "empty VERIFY with Lc 00 as yubico-piv-tool sends it",
                "00 20 00 80 00",
                0x63C3,
            ),
            (
                "global PIN is not supported",
                "00 20 00 00 08 31 32 33 34 35 36 FF FF",
                0x6A88,
            ),
            (
                "PUK cannot be verified",
                "00 20 00 81 08 31 32 33 34 35 36 37 38",
                0x6A88,
            ),
            ("wrong P1", "00 20 01 80 08 31 32 33 34 35 36 FF FF", 0x6A86),
            ("seven bytes", "00 20 00 80 07 31 32 33 34 35 36 FF", 0x6A80),
            (
                "nine bytes",
                "00 20 00 80 09 31 32 33 34 35 36 FF FF FF",
                0x6A80,
            ),
            (
                "five digits",
                "00 20 00 80 08 31 32 33 34 35 FF FF FF",
                0x6A80,
            ),
            (
                "data after padding",
                "00 20 00 80 08 31 32 33 34 35 36 FF 31",
                0x6A80,
            ),
            ("malformed input used no try", "00 20 00 80", 0x63C3),
            (
                "wrong PIN",
                "00 20 00 80 08 31 31 31 31 31 31 FF FF",
                0x63C2,
            ),
            ("status after a failure", "00 20 00 80", 0x63C2),
            (
                "right PIN",
                "00 20 00 80 08 31 32 33 34 35 36 FF FF",
                0x9000,
            ),
            ("verified: empty VERIFY uses no try", "00 20 00 80", 0x9000),
            (
                "P1 FF with data",
                "00 20 FF 80 08 31 32 33 34 35 36 FF FF",
                0x6700,
            ),
            ("P1 FF clears verification", "00 20 FF 80", 0x9000),
            ("counter was reset by the right PIN", "00 20 00 80", 0x63C3),
        ],
    );
}

#[test]
fn a_wrong_pin_clears_an_earlier_verification() {
    let mut card = selected();
    assert_eq!(verify_pin(&mut card, "123456"), 0x9000);
    assert_eq!(verify_pin(&mut card, "000000"), 0x63C2);
    assert_eq!(sw(&mut card, "00 20 00 80"), 0x63C2);
    assert_eq!(sw(&mut card, "00 CB 3F FF 05 5C 03 5F C1 09"), 0x6982);
}

#[test]
fn three_wrong_pins_block_the_pin_until_the_puk_resets_it() {
    let mut card = selected();
    run_table(
        &mut card,
        &[
            (
                "first wrong PIN",
                "00 20 00 80 08 39 39 39 39 39 39 FF FF",
                0x63C2,
            ),
            (
                "second wrong PIN",
                "00 20 00 80 08 39 39 39 39 39 39 FF FF",
                0x63C1,
            ),
            (
                "third wrong PIN",
                "00 20 00 80 08 39 39 39 39 39 39 FF FF",
                0x63C0,
            ),
            (
                "blocked: right PIN",
                "00 20 00 80 08 31 32 33 34 35 36 FF FF",
                0x6983,
            ),
            ("blocked: empty VERIFY", "00 20 00 80", 0x6983),
            (
                "blocked: change PIN",
                &change("80", "123456", "654321"),
                0x6983,
            ),
            ("wrong PUK", &unblock("87654321", "654321"), 0x63C2),
            ("right PUK", &unblock("12345678", "654321"), 0x9000),
            ("unblocked with three tries", "00 20 00 80", 0x63C3),
            (
                "old PIN is gone",
                "00 20 00 80 08 31 32 33 34 35 36 FF FF",
                0x63C2,
            ),
            (
                "new PIN works",
                "00 20 00 80 08 36 35 34 33 32 31 FF FF",
                0x9000,
            ),
        ],
    );
    assert_eq!(
        card.state().puk_retries().remaining,
        3,
        "the right PUK reset its counter"
    );
}

#[test]
fn three_wrong_puks_block_the_puk() {
    let mut card = selected();
    run_table(
        &mut card,
        &[
            ("wrong PUK 1", &unblock("00000000", "654321"), 0x63C2),
            ("wrong PUK 2", &change("81", "00000000", "11111111"), 0x63C1),
            ("wrong PUK 3", &unblock("00000000", "654321"), 0x63C0),
            ("blocked PUK", &unblock("12345678", "654321"), 0x6983),
            (
                "blocked PUK cannot change",
                &change("81", "12345678", "11111111"),
                0x6983,
            ),
            (
                "PIN still works",
                "00 20 00 80 08 31 32 33 34 35 36 FF FF",
                0x9000,
            ),
        ],
    );
}

#[test]
fn change_reference_data_table() {
    let mut card = selected();
    run_table(
        &mut card,
        &[
            (
                "wrong P1",
                &change("80", "123456", "654321").replacen("00 24 00", "00 24 01", 1),
                0x6A86,
            ),
            (
                "unknown reference",
                &change("9B", "123456", "654321"),
                0x6A88,
            ),
            (
                "short data",
                "00 24 00 80 08 31 32 33 34 35 36 FF FF",
                0x6A80,
            ),
            (
                "new PIN too short",
                &change("80", "123456", "12345"),
                0x6A80,
            ),
            ("malformed input used no try", "00 20 00 80", 0x63C3),
            ("wrong old PIN", &change("80", "111111", "654321"), 0x63C2),
            ("change PIN", &change("80", "123456", "654321"), 0x9000),
            ("changing verifies the PIN", "00 20 00 80", 0x9000),
            (
                "old PIN rejected",
                "00 20 00 80 08 31 32 33 34 35 36 FF FF",
                0x63C2,
            ),
            (
                "new PIN accepted",
                "00 20 00 80 08 36 35 34 33 32 31 FF FF",
                0x9000,
            ),
            (
                "eight-digit PIN",
                &change("80", "654321", "87654321"),
                0x9000,
            ),
            ("change PUK", &change("81", "12345678", "87654321"), 0x9000),
            ("old PUK rejected", &unblock("12345678", "111111"), 0x63C2),
            ("new PUK accepted", &unblock("87654321", "111111"), 0x9000),
        ],
    );
}

#[test]
fn numeric_only_cards_reject_non_digits_without_using_a_try() {
    let options = CardOptions {
        numeric_pins_only: true,
        ..CardOptions::with_serial(SERIAL)
    };
    let mut card = selected_with(options);
    run_table(
        &mut card,
        &[
            (
                "letters in VERIFY",
                "00 20 00 80 08 31 32 33 34 35 41 FF FF",
                0x6A80,
            ),
            (
                "letters in a new PIN",
                &change("80", "123456", "abcdef"),
                0x6A80,
            ),
            (
                "letters in a new PUK",
                &change("81", "12345678", "1234567a"),
                0x6A80,
            ),
            ("no try used", "00 20 00 80", 0x63C3),
            ("digits are fine", &change("80", "123456", "135790"), 0x9000),
        ],
    );
    let mut lenient = selected();
    assert_eq!(sw(&mut lenient, &change("80", "123456", "abcdef")), 0x9000);
    assert_eq!(verify_pin(&mut lenient, "abcdef"), 0x9000);
}

#[test]
fn reset_retry_counter_table() {
    let mut card = selected();
    run_table(
        &mut card,
        &[
            (
                "wrong P1",
                &unblock("12345678", "654321").replacen("00 2C 00", "00 2C 01", 1),
                0x6A86,
            ),
            (
                "PUK reference",
                &unblock("12345678", "654321").replacen("00 2C 00 80", "00 2C 00 81", 1),
                0x6A88,
            ),
            (
                "short data",
                "00 2C 00 80 08 31 32 33 34 35 36 37 38",
                0x6A80,
            ),
            (
                "unblocking an unblocked PIN sets it",
                &unblock("12345678", "999999"),
                0x9000,
            ),
            ("new PIN", "00 20 00 80 08 39 39 39 39 39 39 FF FF", 0x9000),
        ],
    );
}

#[test]
fn a_power_cycle_clears_verification_but_keeps_counters() {
    let mut card = selected();
    assert_eq!(verify_pin(&mut card, "000000"), 0x63C2);
    assert_eq!(verify_pin(&mut card, "123456"), 0x9000);
    assert_eq!(verify_pin(&mut card, "000000"), 0x63C2);
    card.reset();
    assert_eq!(
        sw(&mut card, "00 20 00 80"),
        0x6D00,
        "nothing is selected after a reset"
    );
    assert_eq!(sw(&mut card, SELECT), 0x9000);
    assert_eq!(sw(&mut card, "00 20 00 80"), 0x63C2);
    assert_eq!(verify_pin(&mut card, "123456"), 0x9000);
    card.reset();
    assert_eq!(sw(&mut card, SELECT), 0x9000);
    assert_eq!(sw(&mut card, "00 20 00 80"), 0x63C3);
}
