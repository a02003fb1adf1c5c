//! Engine tests against the virtual PIV card: whole jobs on card variants, redelivery,
//! cards pulled at every APDU, and faults. Card state is checked with raw APDUs and
//! client-side cryptography computed here, independently of the engine's own code.

mod faults;
mod flows;
mod identity;
mod matrix;
mod strict_cards;
mod units;
mod variants;

use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use cardfleet_schemas::profile::{ManagementKeyAlgorithm, Requirement};
use cardfleet_schemas::{CardProfile, CardSecrets, StepStatus};
use uuid::Uuid;

use super::{CardTransport, EncodeReport, EncodeRequest, encode};
use crate::piv::{CardOptions, MgmtKeyAlgorithm, VirtualPivCard};
use crate::tlv::{self, Tag};

pub(super) const SERIAL: u32 = 4_022_119;
pub(super) const FACTORY_KEY: &str = "010203040506070801020304050607080102030405060708";
pub(super) const NEW_KEY: &str = "9f1c2b3a4d5e6f708192a3b4c5d6e7f80112233445566778";
pub(super) const NEW_PIN: &str = "271828";
pub(super) const NEW_PUK: &str = "31415926";

/// One job: id, profile and secrets, as the runtime would hand them over.
pub(super) struct Job {
    pub id: Uuid,
    pub chip_serial: String,
    pub profile: CardProfile,
    pub secrets: CardSecrets,
    /// The worker's journal, for cards that keep none.
    pub keeper: Option<std::sync::Arc<dyn super::JournalKeeper>>,
}

impl Job {
    /// A job for the factory card with the shipped temporary-piv profile.
    pub fn new() -> Self {
        Self {
            id: Uuid::new_v4(),
            chip_serial: SERIAL.to_string(),
            profile: CardProfile::builtin().unwrap().remove(0),
            secrets: CardSecrets {
                pin: NEW_PIN.into(),
                puk: NEW_PUK.into(),
                management_key: NEW_KEY.into(),
                management_key_algorithm: ManagementKeyAlgorithm::Aes192,
            },
            keeper: None,
        }
    }

    pub fn request(&self) -> EncodeRequest<'_> {
        EncodeRequest {
            job_id: self.id,
            chip_serial: &self.chip_serial,
            profile: &self.profile,
            secrets: &self.secrets,
            journal_keeper: self.keeper.as_deref(),
        }
    }

    pub fn run(&self, card: &mut dyn CardTransport) -> EncodeReport {
        let report = encode(&self.request(), card);
        assert_no_secret(self, &report);
        report
    }

    /// The profile with retries and the management key change optional, for cards without
    /// the vendor extensions.
    pub fn lenient(mut self) -> Self {
        if let Some(retries) = self.profile.retries.as_mut() {
            retries.requirement = Requirement::Optional;
        }
        self.profile.management_key.requirement = Requirement::Optional;
        self
    }
}

/// No secret of the job appears anywhere in the report.
fn assert_no_secret(job: &Job, report: &EncodeReport) {
    let shown = format!("{report:?}");
    for secret in [
        NEW_PIN,
        NEW_PUK,
        NEW_KEY,
        &job.secrets.pin,
        &job.secrets.puk,
        &job.secrets.management_key,
        FACTORY_KEY,
        "123456",
    ] {
        assert!(
            !shown.contains(secret),
            "a secret leaks into the report: {shown}"
        );
    }
}

pub(super) fn factory_card() -> VirtualPivCard {
    card_with(|_| {})
}

pub(super) fn card_with(change: impl FnOnce(&mut CardOptions)) -> VirtualPivCard {
    let mut options = CardOptions::with_serial(SERIAL);
    change(&mut options);
    VirtualPivCard::new(options).unwrap()
}

/// The card's persistent state, serialized: equal states serialize equally.
pub(super) fn state_of(card: &VirtualPivCard) -> Vec<u8> {
    card.state().to_json().unwrap().to_vec()
}

pub(super) fn status(report: &EncodeReport, step: &str) -> StepStatus {
    report
        .steps
        .iter()
        .find(|s| s.step == step)
        .unwrap_or_else(|| panic!("no step {step} in {:#?}", report.steps))
        .status
}

pub(super) fn assert_succeeded(report: &EncodeReport) {
    assert!(
        report.failure.is_none() && report.outcome == cardfleet_schemas::Outcome::Succeeded,
        "{report:#?}"
    );
    assert!(report.steps.iter().all(|s| s.status != StepStatus::Failed));
}

/// The failure code, checking the report is consistent for a failure.
pub(super) fn failure_code(report: &EncodeReport) -> &str {
    assert_eq!(
        report.outcome,
        cardfleet_schemas::Outcome::Failed,
        "{report:#?}"
    );
    let failure = report.failure.as_ref().unwrap();
    assert_eq!(
        report.steps.last().unwrap().status,
        StepStatus::Failed,
        "{report:#?}"
    );
    &failure.code
}

/// Sends one APDU (selecting the PIV application first) and returns data and status word.
pub(super) fn send(card: &mut VirtualPivCard, apdu: &[u8]) -> (Vec<u8>, u16) {
    let select = card.process(&[0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08]);
    assert_eq!(select[select.len() - 2..], [0x90, 0x00]);
    let mut response = card.process(apdu);
    let sw = response.split_off(response.len() - 2);
    (response, u16::from_be_bytes([sw[0], sw[1]]))
}

fn padded(value: &str) -> Vec<u8> {
    let mut bytes = value.as_bytes().to_vec();
    bytes.resize(8, 0xFF);
    bytes
}

pub(super) fn verify_pin(card: &mut VirtualPivCard, pin: &str) -> u16 {
    let mut apdu = vec![0x00, 0x20, 0x00, 0x80, 0x08];
    apdu.extend(padded(pin));
    send(card, &apdu).1
}

/// The empty VERIFY: `63Cx` with the tries left.
pub(super) fn pin_status(card: &mut VirtualPivCard) -> u16 {
    send(card, &[0x00, 0x20, 0x00, 0x80]).1
}

pub(super) fn change_puk(card: &mut VirtualPivCard, old: &str, new: &str) -> u16 {
    let mut apdu = vec![0x00, 0x24, 0x00, 0x81, 0x10];
    apdu.extend(padded(old));
    apdu.extend(padded(new));
    send(card, &apdu).1
}

/// Challenge-response authentication with the management key (the flow the engine does
/// not use): `81` empty → challenge; `82` with the challenge encrypted.
pub(super) fn mgmt_auth(
    card: &mut VirtualPivCard,
    algorithm: MgmtKeyAlgorithm,
    key_hex: &str,
) -> u16 {
    let alg = algorithm.id();
    let (data, sw) = send(card, &[0x00, 0x87, alg, 0x9B, 0x04, 0x7C, 0x02, 0x81, 0x00]);
    if sw != 0x9000 {
        return sw;
    }
    let body = tlv::parse_single(&data, Tag::new(0x7C)).unwrap();
    let challenge = tlv::find(body, Tag::new(0x81)).unwrap().unwrap();
    let key = hex::decode(key_hex).unwrap();
    let encrypted = match algorithm {
        MgmtKeyAlgorithm::TripleDes => encrypt::<des::TdesEde3>(&key, challenge),
        MgmtKeyAlgorithm::Aes128 => encrypt::<aes::Aes128>(&key, challenge),
        MgmtKeyAlgorithm::Aes192 => encrypt::<aes::Aes192>(&key, challenge),
        MgmtKeyAlgorithm::Aes256 => encrypt::<aes::Aes256>(&key, challenge),
    };
    let template = tlv::build(Tag::new(0x7C), &tlv::build(Tag::new(0x82), &encrypted));
    let mut apdu = vec![0x00, 0x87, alg, 0x9B, template.len() as u8];
    apdu.extend(template);
    // No reselect between the two halves: the card keeps the challenge for the next command.
    let mut response = card.process(&apdu);
    let sw = response.split_off(response.len() - 2);
    u16::from_be_bytes([sw[0], sw[1]])
}

fn encrypt<C: BlockEncrypt + KeyInit>(key: &[u8], block: &[u8]) -> Vec<u8> {
    let mut block = GenericArray::clone_from_slice(block);
    C::new_from_slice(key).unwrap().encrypt_block(&mut block);
    block.to_vec()
}

/// The card holds the job's credentials and none of the factory ones work any more. Uses
/// up factory tries on purpose, then restores the counters with the right values.
pub(super) fn assert_initialized(
    card: &mut VirtualPivCard,
    job: &Job,
    algorithm: MgmtKeyAlgorithm,
) {
    assert_eq!(
        verify_pin(card, "123456") & 0xFFF0,
        0x63C0,
        "factory PIN still works"
    );
    assert_eq!(verify_pin(card, &job.secrets.pin), 0x9000, "new PIN");
    assert_eq!(
        change_puk(card, "12345678", "12345678") & 0xFFF0,
        0x63C0,
        "factory PUK"
    );
    assert_eq!(
        change_puk(card, &job.secrets.puk, &job.secrets.puk),
        0x9000,
        "new PUK"
    );
    assert_ne!(
        mgmt_auth(card, algorithm, FACTORY_KEY),
        0x9000,
        "factory key"
    );
    assert_ne!(
        mgmt_auth(card, MgmtKeyAlgorithm::TripleDes, FACTORY_KEY),
        0x9000,
        "factory 3DES key"
    );
    assert_eq!(
        mgmt_auth(card, algorithm, &job.secrets.management_key),
        0x9000,
        "new key"
    );
    assert_eq!(card.state().mgmt_key_algorithm(), algorithm);
}

/// Both retry counters are at their limit.
pub(super) fn assert_counters_full(card: &VirtualPivCard) {
    let (pin, puk) = (card.state().pin_retries(), card.state().puk_retries());
    assert_eq!(pin.remaining, pin.limit, "PIN counter {pin:?}");
    assert_eq!(puk.remaining, puk.limit, "PUK counter {puk:?}");
}
