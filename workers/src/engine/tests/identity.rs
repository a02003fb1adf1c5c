//! Chip identity: CPLC, vendor serial and CHUID GUID give the chip serial in that order.

use super::*;
use crate::engine::faults::{FaultPlan, FaultyTransport};
use crate::engine::read_chip_serial;

#[test]
fn the_cplc_and_the_vendor_serial_give_the_same_decimal_serial() {
    let mut card = factory_card();
    assert_eq!(read_chip_serial(&mut card).unwrap(), "4022119");

    // Without CPLC, the vendor serial (F8) is read instead.
    let mut no_cplc = FaultyTransport::new(
        factory_card(),
        FaultPlan {
            forced_status: [(0xCA, 0x6A88)].into(),
            ..FaultPlan::default()
        },
    );
    assert_eq!(read_chip_serial(&mut no_cplc).unwrap(), "4022119");

    // The CPLC of the virtual card carries the serial in its IC serial number field.
    let (data, sw) = send(&mut card, &[0x80, 0xCA, 0x9F, 0x7F, 0x00]);
    assert_eq!(sw, 0x9000);
    assert_eq!(&data[..3], [0x9F, 0x7F, 42]);
    assert_eq!(data[3 + 12..3 + 16], SERIAL.to_be_bytes());
}

#[test]
fn a_card_without_cplc_or_vendor_serial_is_named_by_its_chuid_guid() {
    let mut card = FaultyTransport::new(
        card_with(|o| o.extensions = false),
        FaultPlan {
            forced_status: [(0xCA, 0x6D00)].into(),
            ..FaultPlan::default()
        },
    );
    let serial = read_chip_serial(&mut card).unwrap();
    let guid = crate::engine::objects::guid_of_chuid(&crate::piv::factory_chuid(SERIAL)).unwrap();
    assert_eq!(serial, hex::encode_upper(guid));
    assert_eq!(serial.len(), 32);
}

#[test]
fn a_card_without_the_piv_application_is_not_piv() {
    struct NoPiv;
    impl CardTransport for NoPiv {
        fn transmit(&mut self, _: &[u8]) -> Result<Vec<u8>, crate::engine::TransportError> {
            Ok(vec![0x6A, 0x82])
        }
    }
    let error = read_chip_serial(&mut NoPiv).unwrap_err();
    assert_eq!(error.code().as_str(), "not_piv");
    let report = Job::new().run(&mut NoPiv);
    assert_eq!(failure_code(&report), "not_piv");
}

#[test]
fn a_card_that_answers_garbage_gets_a_malformed_response_failure() {
    struct Garbage;
    impl CardTransport for Garbage {
        fn transmit(&mut self, _: &[u8]) -> Result<Vec<u8>, crate::engine::TransportError> {
            Ok(vec![0x90])
        }
    }
    let report = Job::new().run(&mut Garbage);
    assert_eq!(failure_code(&report), "malformed_response");
    assert!(!report.retryable);
}
