//! Cards that are not YubiKey-like: no vendor data objects (the journal lives on the
//! worker), a PUK answered with a bare `6300`, PIV commands without SELECT, SELECT with
//! P2 = `0C` refused, AES-256-only management keys. Each is encoded and then checked with
//! the card's own commands.

use std::sync::Arc;

use cardfleet_schemas::StepStatus;

use super::*;
use crate::engine::faults::{FaultPlan, FaultyTransport, Pull, PullAt};
use crate::engine::journal::{JOURNAL_TAG, Journal, Mark};
use crate::engine::{DirJournalKeeper, JournalKeeper, MemoryJournalKeeper};

fn strict() -> VirtualPivCard {
    card_with(|o| o.vendor_objects = false)
}

fn detail<'r>(report: &'r EncodeReport, step: &str) -> &'r str {
    report
        .steps
        .iter()
        .find(|s| s.step == step)
        .and_then(|s| s.detail.as_deref())
        .unwrap_or("")
}

fn with_memory_keeper(mut job: Job) -> (Job, Arc<MemoryJournalKeeper>) {
    let keeper = Arc::new(MemoryJournalKeeper::default());
    job.keeper = Some(keeper.clone());
    (job, keeper)
}

#[test]
fn the_strict_card_refuses_vendor_objects_like_the_applet_that_failed() {
    let mut card = strict();
    // GET DATA 5FFF10: 6A80, as the SP 800-73-4 applet answered.
    let (_, sw) = send(
        &mut card,
        &[0x00, 0xCB, 0x3F, 0xFF, 0x05, 0x5C, 0x03, 0x5F, 0xFF, 0x10],
    );
    assert_eq!(sw, 0x6A80);
    // Standard objects still answer.
    let (_, sw) = send(
        &mut card,
        &[0x00, 0xCB, 0x3F, 0xFF, 0x05, 0x5C, 0x03, 0x5F, 0xC1, 0x02],
    );
    assert_eq!(sw, 0x9000);
}

#[test]
fn a_card_without_vendor_objects_is_encoded_with_its_journal_on_the_worker() {
    let (job, keeper) = with_memory_keeper(Job::new());
    let mut card = strict();
    let report = job.run(&mut card);
    assert_succeeded(&report);
    assert!(
        detail(&report, "read_journal").contains("keeps no journal object"),
        "{}",
        detail(&report, "read_journal")
    );
    assert!(card.state().object(JOURNAL_TAG).is_none());
    let kept = keeper.load(&SERIAL.to_string()).unwrap().unwrap();
    let journal = Journal::decode(&kept).unwrap();
    assert_eq!(journal.job_id(), job.id);
    assert!(journal.is_done(Mark::Pin) && journal.is_done(Mark::Puk));
    assert_counters_full(&card);
    assert_initialized(&mut card, &job, MgmtKeyAlgorithm::Aes192);
    assert_counters_full(&card);

    // A redelivery resumes from the worker's journal and changes nothing.
    card.reset();
    let before = state_of(&card);
    let again = job.run(&mut card);
    assert_succeeded(&again);
    assert!(detail(&again, "read_journal").contains("worker journal"));
    assert_eq!(status(&again, "change_pin"), StepStatus::AlreadyDone);
    assert_eq!(status(&again, "change_puk"), StepStatus::AlreadyDone);
    assert_eq!(state_of(&card), before);
}

#[test]
fn a_card_without_vendor_objects_and_no_worker_journal_fails_untouched() {
    let job = Job::new();
    let mut card = strict();
    let before = state_of(&card);
    let report = job.run(&mut card);
    assert_eq!(failure_code(&report), "journal_unsupported");
    let message = &report.failure.as_ref().unwrap().message;
    assert!(message.contains("worker.journal_dir"), "{message}");
    assert!(!report.retryable);
    assert_eq!(state_of(&card), before);
}

#[test]
fn another_jobs_worker_journal_protects_the_card() {
    let (first, keeper) = with_memory_keeper(Job::new());
    let mut card = strict();
    assert_succeeded(&first.run(&mut card));
    let mut second = Job::new();
    second.keeper = Some(keeper);
    card.reset();
    let before = state_of(&card);
    let report = second.run(&mut card);
    assert_eq!(failure_code(&report), "already_initialized");
    assert!(
        report
            .failure
            .as_ref()
            .unwrap()
            .message
            .contains("worker journal")
    );
    assert_eq!(state_of(&card), before);
}

/// A worker killed at any APDU and restarted (a new keeper on the same directory) finishes
/// the card, and the PIN and PUK counters are as full after as before.
#[test]
fn a_card_without_vendor_objects_pulled_at_any_apdu_is_finished_after_a_worker_restart() {
    let probe_dir = tempfile::tempdir().unwrap();
    let mut job = Job::new();
    job.keeper = Some(Arc::new(DirJournalKeeper::open(probe_dir.path()).unwrap()));
    let mut clean = FaultyTransport::new(strict(), FaultPlan::default());
    assert_succeeded(&job.run(&mut clean));
    let total = clean.sent();
    for processed in [false, true] {
        for index in 0..total {
            let pull = Pull {
                at: PullAt::Apdu(index),
                processed,
            };
            let dir = tempfile::tempdir().unwrap();
            job.keeper = Some(Arc::new(DirJournalKeeper::open(dir.path()).unwrap()));
            let plan = FaultPlan {
                pull: Some(pull),
                ..FaultPlan::default()
            };
            let mut card = FaultyTransport::new(strict(), plan);
            let first = job.run(&mut card);
            assert_eq!(failure_code(&first), "card_removed", "{pull:?}");

            // The restarted worker: a new keeper, the same directory.
            job.keeper = Some(Arc::new(DirJournalKeeper::open(dir.path()).unwrap()));
            card.reinsert();
            assert_succeeded(&job.run(&mut card));
            let mut card = card.into_inner();
            // Every try the card started with is still there (the profile sets 5 and 3).
            assert_counters_full(&card);
            assert_eq!(card.state().pin_retries().limit, 5, "{pull:?}");
            assert_initialized(&mut card, &job, MgmtKeyAlgorithm::Aes192);
        }
    }
}

/// The worker journal is gone (the card moved to another rack) after a PIN change: the
/// per-card key authenticates, so PIN and PUK are checked without a guess.
#[test]
fn a_card_whose_worker_journal_is_lost_is_finished_without_losing_a_try() {
    for (nth, processed) in [(0, true), (0, false), (1, true), (1, false)] {
        let (job, _) = with_memory_keeper(Job::new());
        let mut card = FaultyTransport::new(
            strict(),
            FaultPlan {
                pull: Some(Pull {
                    at: PullAt::Ins { ins: 0x24, nth },
                    processed,
                }),
                ..FaultPlan::default()
            },
        );
        assert_eq!(failure_code(&job.run(&mut card)), "card_removed");
        // Another worker, with an empty journal.
        let (mut other, _) = with_memory_keeper(Job::new());
        other.id = job.id;
        card.reinsert();
        let report = other.run(&mut card);
        assert_succeeded(&report);
        assert!(
            detail(&report, "authenticate").contains("no journal of this job"),
            "{}",
            detail(&report, "authenticate")
        );
        let mut card = card.into_inner();
        assert_counters_full(&card);
        assert_initialized(&mut card, &job, MgmtKeyAlgorithm::Aes192);
    }
}

#[test]
fn a_card_that_answers_a_wrong_puk_with_6300_is_encoded_and_resumed() {
    let without_tries = || {
        card_with(|o| {
            o.vendor_objects = false;
            o.puk_reports_tries = false;
        })
    };
    let mut plain = without_tries();
    assert_eq!(change_puk(&mut plain, "00000000", "00000000"), 0x6300);
    assert_eq!(plain.state().puk_retries().remaining, 2);

    // The PUK change reached the card but its answer was lost, and so was the journal:
    // the check with the new PUK is made and confirms it.
    for processed in [true, false] {
        let (job, _) = with_memory_keeper(Job::new());
        let mut card = FaultyTransport::new(
            without_tries(),
            FaultPlan {
                pull: Some(Pull {
                    at: PullAt::Ins { ins: 0x24, nth: 1 },
                    processed,
                }),
                ..FaultPlan::default()
            },
        );
        assert_eq!(failure_code(&job.run(&mut card)), "card_removed");
        card.reinsert();
        assert_succeeded(&job.run(&mut card));
        let mut card = card.into_inner();
        assert_counters_full(&card);
        assert_eq!(change_puk(&mut card, "12345678", "12345678"), 0x6300);
        assert_eq!(change_puk(&mut card, NEW_PUK, NEW_PUK), 0x9000);
        assert_eq!(verify_pin(&mut card, NEW_PIN), 0x9000);
    }
}

#[test]
fn a_card_that_answers_piv_commands_without_select_is_encoded() {
    let (job, _) = with_memory_keeper(Job::new());
    let mut card = card_with(|o| o.implicit_selection = true);
    // Without SELECT, the empty VERIFY answers.
    let mut status = card.process(&[0x00, 0x20, 0x00, 0x80]);
    assert_eq!(status.split_off(status.len() - 2), [0x63, 0xC3]);
    card.reset();
    assert_succeeded(&job.run(&mut card));
    assert_initialized(&mut card, &job, MgmtKeyAlgorithm::Aes192);
}

#[test]
fn a_card_that_refuses_select_with_p2_0c_is_encoded() {
    let (job, _) = with_memory_keeper(Job::new());
    let mut card = card_with(|o| o.select_without_response = false);
    let mut answer = card.process(&[0x00, 0xA4, 0x04, 0x0C, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08]);
    assert_eq!(answer.split_off(answer.len() - 2), [0x6A, 0x86]);
    assert_succeeded(&job.run(&mut card));
    assert_initialized(&mut card, &job, MgmtKeyAlgorithm::Aes192);
}

#[test]
fn an_aes256_only_card_without_vendor_objects_gets_the_key_as_aes256() {
    let (mut job, _) = with_memory_keeper(Job::new());
    job.secrets.management_key_algorithm = ManagementKeyAlgorithm::Aes256;
    job.secrets.management_key = "11".repeat(32);
    let aes256_factory = "0102030405060708".repeat(4);
    job.profile.transport.management_key = aes256_factory.clone();
    job.profile.transport.management_key_algorithm = ManagementKeyAlgorithm::Aes256;
    let mut card = card_with(|o| {
        o.vendor_objects = false;
        o.mgmt_key_algorithms = vec![MgmtKeyAlgorithm::Aes256];
        o.initial_mgmt_key_algorithm = MgmtKeyAlgorithm::Aes256;
    });
    let report = job.run(&mut card);
    assert_succeeded(&report);
    assert_eq!(card.state().mgmt_key_algorithm(), MgmtKeyAlgorithm::Aes256);
    assert_eq!(
        mgmt_auth(
            &mut card,
            MgmtKeyAlgorithm::Aes256,
            &job.secrets.management_key
        ),
        0x9000
    );
    assert_ne!(
        mgmt_auth(&mut card, MgmtKeyAlgorithm::Aes256, &aes256_factory),
        0x9000
    );
    assert_eq!(verify_pin(&mut card, NEW_PIN), 0x9000);
    assert_counters_full(&card);
}

#[test]
fn a_numeric_ff_padded_card_without_extensions_or_vendor_objects_is_encoded() {
    let (job, _) = with_memory_keeper(Job::new().lenient());
    let mut card = card_with(|o| {
        o.vendor_objects = false;
        o.extensions = false;
        o.numeric_pins_only = true;
    });
    let report = job.run(&mut card);
    assert_succeeded(&report);
    // Optional steps the card lacks are reported, and the card is still initialized.
    assert_eq!(status(&report, "set_retries"), StepStatus::Unsupported);
    assert_eq!(
        status(&report, "set_management_key"),
        StepStatus::Unsupported
    );
    assert_eq!(verify_pin(&mut card, NEW_PIN), 0x9000);
    assert_eq!(change_puk(&mut card, NEW_PUK, NEW_PUK), 0x9000);
    assert_counters_full(&card);
}

/// Signs `hash` with the key in `slot` (PIN verified first) and returns the DER signature.
fn card_signs(card: &mut VirtualPivCard, slot: u8, hash: &[u8; 32]) -> Vec<u8> {
    assert_eq!(verify_pin(card, NEW_PIN), 0x9000);
    let mut inner = vec![0x82, 0x00, 0x81, 0x20];
    inner.extend_from_slice(hash);
    let mut apdu = vec![
        0x00,
        0x87,
        0x11,
        slot,
        (inner.len() + 2) as u8,
        0x7C,
        inner.len() as u8,
    ];
    apdu.extend(inner);
    apdu.push(0x00);
    let (data, sw) = send(card, &apdu);
    assert_eq!(sw, 0x9000, "sign with {slot:02X}");
    let body = tlv::parse_single(&data, Tag::new(0x7C)).unwrap();
    tlv::find(body, Tag::new(0x82)).unwrap().unwrap().to_vec()
}

fn assert_keys_verify(card: &mut VirtualPivCard, job: &Job, report: &EncodeReport) {
    use base64::Engine as _;
    use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
    use p256::pkcs8::DecodePublicKey as _;

    let slots: Vec<String> = report.public_keys.iter().map(|k| k.slot.clone()).collect();
    let wanted: Vec<String> = job
        .profile
        .keys
        .iter()
        .map(|k| format!("{:02x}", k.slot.id()))
        .collect();
    assert_eq!(slots, wanted, "{:?}", report.public_keys);
    for key in &report.public_keys {
        assert_eq!(key.algorithm, "p256");
        let der = base64::engine::general_purpose::STANDARD
            .decode(&key.spki_der_base64)
            .unwrap();
        let verifier = p256::ecdsa::VerifyingKey::from_public_key_der(&der).unwrap();
        let slot = u8::from_str_radix(&key.slot, 16).unwrap();
        let hash = [0x42; 32];
        let signature = p256::ecdsa::Signature::from_der(&card_signs(card, slot, &hash)).unwrap();
        verifier.verify_prehash(&hash, &signature).unwrap();
    }
}

#[test]
fn the_result_carries_the_public_key_of_every_generated_key_pair() {
    let (job, _) = with_memory_keeper(Job::new());
    let mut card = factory_card();
    let report = job.run(&mut card);
    assert_succeeded(&report);
    assert_keys_verify(&mut card, &job, &report);

    // A redelivery generates nothing and shows the same keys through GET METADATA.
    card.reset();
    let again = job.run(&mut card);
    assert_succeeded(&again);
    assert_eq!(status(&again, "generate_key_9a"), StepStatus::AlreadyDone);
    assert_eq!(again.public_keys, report.public_keys);

    // A card without GET METADATA cannot show them again, and the step says so.
    let (job, _) = with_memory_keeper(Job::new().lenient());
    let mut card = card_with(|o| {
        o.extensions = false;
        o.vendor_objects = false;
    });
    let first = job.run(&mut card);
    assert_keys_verify(&mut card, &job, &first);
    card.reset();
    let again = job.run(&mut card);
    assert_succeeded(&again);
    assert!(again.public_keys.is_empty());
    assert!(detail(&again, "generate_key_9a").contains("cannot show the public key"));
}
