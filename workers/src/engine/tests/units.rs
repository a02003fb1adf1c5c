//! The APDU session on its own: command chaining and GET RESPONSE chaining.

use super::*;
use crate::engine::identity::parse_cplc_serial;
use crate::engine::objects;
use crate::engine::session::{Session, command};

#[test]
fn long_objects_go_out_chained_and_come_back_through_get_response() {
    let mut card = factory_card();
    assert_eq!(
        mgmt_auth(&mut card, MgmtKeyAlgorithm::TripleDes, FACTORY_KEY),
        0x9000
    );
    let value: Vec<u8> = (0..700u32).map(|i| (i % 251) as u8).collect();
    let encoded = tlv::build(Tag::new(0x53), &value);
    let object = Tag::new(0x5FFF01);
    let mut recorder = Recorder {
        card: &mut card,
        sent: Vec::new(),
    };
    let mut session = Session::new(&mut recorder);
    let sw = objects::put_data(&mut session, "PUT DATA", object, &encoded).unwrap();
    assert_eq!(sw, crate::apdu::StatusWord::Success);
    let back = objects::get_data(&mut session, "GET DATA", object).unwrap();
    assert_eq!(back.as_deref(), Some(encoded.as_slice()));
    let classes: Vec<(u8, u8)> = recorder.sent.iter().map(|c| (c[0], c[1])).collect();
    assert_eq!(
        classes,
        [
            (0x10, 0xDB),
            (0x10, 0xDB),
            (0x00, 0xDB),
            (0x00, 0xCB),
            (0x00, 0xC0),
            (0x00, 0xC0)
        ]
    );
}

#[test]
fn a_command_refused_mid_chain_returns_that_status() {
    let mut card = factory_card();
    assert_eq!(pin_status(&mut card), 0x63C3);
    // Not authenticated: the card accepts the chained parts, then refuses the whole.
    let mut session = Session::new(&mut card);
    let encoded = tlv::build(Tag::new(0x53), &[7u8; 400]);
    let sw = objects::put_data(&mut session, "PUT DATA", Tag::new(0x5FFF01), &encoded).unwrap();
    assert_eq!(sw, crate::apdu::StatusWord::SecurityStatusNotSatisfied);
    let response = session
        .transmit(
            "GET VERSION",
            command("GET VERSION", 0xFD, 0, 0, &[]).unwrap(),
        )
        .unwrap();
    assert_eq!(response.data(), [5, 4, 3]);
}

#[test]
fn the_cplc_serial_is_read_with_or_without_its_wrapper() {
    let mut cplc = vec![0u8; 42];
    cplc[12..16].copy_from_slice(&1234u32.to_be_bytes());
    assert_eq!(parse_cplc_serial(&cplc), Some(1234));
    assert_eq!(
        parse_cplc_serial(&tlv::build(Tag::new(0x9F7F), &cplc)),
        Some(1234)
    );
    assert_eq!(parse_cplc_serial(&cplc[..15]), None);
    cplc[12..16].copy_from_slice(&[0; 4]);
    assert_eq!(parse_cplc_serial(&cplc), None);
}

#[test]
fn chuid_and_ccc_derive_from_the_job_id_only() {
    let job = Uuid::new_v4();
    assert_eq!(objects::chuid(job), objects::chuid(job));
    assert_ne!(
        objects::chuid_guid(job),
        objects::chuid_guid(Uuid::new_v4())
    );
    assert_eq!(
        objects::guid_of_chuid(&objects::chuid(job)),
        Some(objects::chuid_guid(job))
    );
    assert_ne!(objects::ccc(job), objects::ccc(Uuid::new_v4()));
}

/// Passes APDUs to the card and keeps a copy of each.
struct Recorder<'a> {
    card: &'a mut VirtualPivCard,
    sent: Vec<Vec<u8>>,
}

impl CardTransport for Recorder<'_> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, crate::engine::TransportError> {
        self.sent.push(command.to_vec());
        Ok(self.card.process(command))
    }
}
