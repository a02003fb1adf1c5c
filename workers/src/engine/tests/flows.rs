//! Whole jobs on the factory card: first run, redelivery, another job's card, wrong chip.

use cardfleet_schemas::StepStatus;
use uuid::Uuid;

use super::*;
use crate::engine::journal::{JOURNAL_TAG, Journal, Mark};
use crate::engine::objects;
use crate::piv::ids::tag;

const WRITING_STEPS: [&str; 9] = [
    "set_retries",
    "set_management_key",
    "change_pin",
    "change_puk",
    "generate_key_9a",
    "generate_key_9c",
    "generate_key_9e",
    "write_chuid",
    "write_ccc",
];

#[test]
fn a_factory_card_gets_every_step_of_the_temporary_piv_profile() {
    let job = Job::new();
    let mut card = factory_card();
    let report = job.run(&mut card);
    assert_succeeded(&report);
    let names: Vec<&str> = report.steps.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(
        names,
        [
            "check_request",
            "select",
            "identify",
            "read_journal",
            "probe",
            "check_pin",
            "authenticate",
            "set_retries",
            "set_management_key",
            "change_pin",
            "change_puk",
            "generate_key_9a",
            "generate_key_9c",
            "generate_key_9e",
            "write_chuid",
            "write_ccc",
            "verify",
        ]
    );
    assert!(
        report.steps.iter().all(|s| s.status == StepStatus::Done),
        "{report:#?}"
    );
    assert!(report.steps.iter().all(|s| s.duration_ms >= 0.0));
    assert!(!report.retryable);

    let state = card.state();
    assert_eq!(state.pin_retries().limit, 5);
    assert_eq!(state.puk_retries().limit, 5);
    for slot in [0x9A, 0x9C, 0x9E] {
        let key = state
            .key(slot)
            .unwrap_or_else(|| panic!("no key in {slot:02X}"));
        assert_eq!(key.algorithm(), crate::piv::KeyAlgorithm::EccP256);
    }
    assert!(state.key(0x9D).is_none());
    let chuid = state.object(tag::CHUID).unwrap();
    assert_eq!(
        objects::guid_of_chuid(chuid),
        Some(objects::chuid_guid(job.id))
    );
    assert_eq!(state.object(tag::CCC).unwrap(), objects::ccc(job.id));
    let journal = Journal::decode(state.object(JOURNAL_TAG).unwrap()).unwrap();
    assert_eq!(journal.job_id(), job.id);
    assert!(journal.is_done(Mark::Pin) && journal.is_done(Mark::Puk));
    assert!(!journal.has_intent(Mark::Pin) && !journal.has_intent(Mark::Puk));

    assert_counters_full(&card);
    assert_initialized(&mut card, &job, MgmtKeyAlgorithm::Aes192);
}

#[test]
fn a_redelivered_job_finds_every_step_done_and_changes_nothing() {
    let job = Job::new();
    let mut card = factory_card();
    assert_succeeded(&job.run(&mut card));
    card.reset();
    card.take_state_changed();
    let before = state_of(&card);

    let again = job.run(&mut card);
    assert_succeeded(&again);
    for step in WRITING_STEPS {
        assert_eq!(
            status(&again, step),
            StepStatus::AlreadyDone,
            "{step}: {again:#?}"
        );
    }
    assert!(!card.take_state_changed(), "the card's state changed");
    assert_eq!(state_of(&card), before);
    card.reset();
    assert_eq!(pin_status(&mut card), 0x63C5, "the PIN counter is full");
    assert_counters_full(&card);
}

#[test]
fn a_card_for_another_chip_is_left_exactly_as_it_was() {
    let mut job = Job::new();
    job.chip_serial = "4022120".into();
    let mut card = factory_card();
    let report = job.run(&mut card);
    assert_eq!(failure_code(&report), "chip_serial_mismatch");
    assert!(!report.retryable);
    assert!(!report.failure.as_ref().unwrap().card_unusable);
    let message = &report.failure.as_ref().unwrap().message;
    assert!(
        message.contains("4022119") && message.contains("4022120"),
        "{message}"
    );
    assert_eq!(state_of(&card), state_of(&factory_card()));
    assert!(!card.take_state_changed());
}

#[test]
fn a_card_initialized_by_another_job_is_refused_untouched() {
    let first = Job::new();
    let mut card = factory_card();
    assert_succeeded(&first.run(&mut card));
    card.reset();
    card.take_state_changed();
    let before = state_of(&card);

    let mut second = Job::new();
    second.secrets.pin = "909090".into();
    let report = second.run(&mut card);
    assert_eq!(failure_code(&report), "already_initialized");
    assert!(
        report
            .failure
            .as_ref()
            .unwrap()
            .message
            .contains(&first.id.to_string())
    );
    assert!(!report.retryable);
    assert_eq!(status(&report, "read_journal"), StepStatus::Failed);
    assert_eq!(state_of(&card), before);
    assert!(!card.take_state_changed());
}

#[test]
fn a_journal_without_credential_work_lets_another_job_take_the_card_over() {
    let mut card = factory_card();
    // Another job claimed the card and generated a key, then stopped for good.
    let mut abandoned = Journal::new(Uuid::new_v4());
    abandoned.finish(Mark::Retries);
    abandoned.finish(Mark::Key(
        cardfleet_schemas::profile::KeySlot::Authentication,
    ));
    let mut put = vec![0x00, 0xDB, 0x3F, 0xFF];
    let mut data = tlv::build(Tag::new(0x5C), &JOURNAL_TAG.to_bytes());
    data.extend(abandoned.encode());
    put.push(data.len() as u8);
    put.extend(data);
    assert_eq!(
        mgmt_auth(&mut card, MgmtKeyAlgorithm::TripleDes, FACTORY_KEY),
        0x9000
    );
    assert_eq!(card.process(&put)[..], [0x90, 0x00]);
    card.reset();

    let job = Job::new();
    let report = job.run(&mut card);
    assert_succeeded(&report);
    assert_eq!(status(&report, "set_retries"), StepStatus::Done);
    assert_eq!(status(&report, "generate_key_9a"), StepStatus::Done);
    let journal = Journal::decode(card.state().object(JOURNAL_TAG).unwrap()).unwrap();
    assert_eq!(journal.job_id(), job.id);
}

#[test]
fn an_unreadable_journal_stops_the_job_before_anything_is_written() {
    let mut card = factory_card();
    assert_eq!(
        mgmt_auth(&mut card, MgmtKeyAlgorithm::TripleDes, FACTORY_KEY),
        0x9000
    );
    let put = [
        0x00, 0xDB, 0x3F, 0xFF, 0x09, 0x5C, 0x03, 0x5F, 0xFF, 0x10, 0x53, 0x02, 0x01, 0x02,
    ];
    assert_eq!(card.process(&put)[..], [0x90, 0x00]);
    card.reset();
    card.take_state_changed();
    let report = Job::new().run(&mut card);
    assert_eq!(failure_code(&report), "journal_unreadable");
    assert!(!card.take_state_changed());
}

#[test]
fn skipped_steps_are_reported_as_not_requested() {
    let mut job = Job::new();
    job.profile.retries = None;
    job.profile.ccc = Requirement::Skip;
    job.profile.chuid = Requirement::Skip;
    job.profile.keys[2].requirement = Requirement::Skip;
    let mut card = factory_card();
    let report = job.run(&mut card);
    assert_succeeded(&report);
    for step in ["set_retries", "write_ccc", "write_chuid", "generate_key_9e"] {
        assert_eq!(status(&report, step), StepStatus::NotRequested, "{step}");
    }
    assert_eq!(card.state().pin_retries().limit, 3);
    assert!(card.state().key(0x9E).is_none());
    assert_eq!(
        card.state().object(tag::CHUID).unwrap(),
        crate::piv::factory_chuid(SERIAL)
    );
    assert_initialized(&mut card, &job, MgmtKeyAlgorithm::Aes192);
}

#[test]
fn a_malformed_request_fails_before_any_apdu() {
    let mut job = Job::new();
    job.secrets.management_key = "00zz".into();
    let mut card = factory_card();
    let report = job.run(&mut card);
    assert_eq!(failure_code(&report), "invalid_request");
    assert_eq!(report.steps.len(), 1);
    assert!(
        report
            .failure
            .unwrap()
            .message
            .contains("per-card management key")
    );

    let mut job = Job::new();
    job.secrets.pin = "12345".into();
    assert_eq!(failure_code(&job.run(&mut card)), "invalid_request");
    assert!(!card.take_state_changed());
}

#[test]
fn a_cancelled_job_stops_before_writing_and_a_started_one_finishes() {
    let job = Job::new();
    let mut card = factory_card();
    let asked = std::cell::Cell::new(0);
    let report = crate::engine::encode_cancellable(&job.request(), &mut card, &|| {
        asked.set(asked.get() + 1);
        true
    });
    assert_eq!(asked.get(), 1);
    assert_eq!(report.outcome, cardfleet_schemas::Outcome::Cancelled);
    assert_eq!(report.failure.as_ref().unwrap().code, "cancelled");
    assert_eq!(report.steps.last().unwrap().step, "authenticate");
    assert!(!report.retryable);
    assert_eq!(state_of(&card), state_of(&factory_card()));

    // Interrupted after writing began, then redelivered while a cancel is pending: the
    // job has written already, so it runs to the end. Likewise when only the per-card key
    // made it to the card before the pull.
    let mut card = crate::engine::FaultyTransport::new(
        factory_card(),
        crate::engine::FaultPlan {
            pull: Some(crate::engine::Pull {
                at: crate::engine::PullAt::Ins { ins: 0x47, nth: 0 },
                processed: false,
            }),
            ..Default::default()
        },
    );
    assert_eq!(failure_code(&job.run(&mut card)), "card_removed");
    card.reinsert();
    let report = crate::engine::encode_cancellable(&job.request(), &mut card, &|| true);
    assert_succeeded(&report);

    let mut card = crate::engine::FaultyTransport::new(
        factory_card(),
        crate::engine::FaultPlan {
            pull: Some(crate::engine::Pull {
                at: crate::engine::PullAt::Ins { ins: 0xFF, nth: 0 },
                processed: true,
            }),
            ..Default::default()
        },
    );
    let mut no_retries = Job::new();
    no_retries.profile.retries = None;
    assert_eq!(failure_code(&no_retries.run(&mut card)), "card_removed");
    assert!(
        card.inner()
            .state()
            .object(crate::engine::JOURNAL_TAG)
            .is_none()
    );
    card.reinsert();
    let report = crate::engine::encode_cancellable(&no_retries.request(), &mut card, &|| true);
    assert_succeeded(&report);
}

#[test]
fn no_secret_reaches_a_log_line_even_at_trace_level() {
    use std::sync::{Arc, Mutex};

    #[derive(Clone)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer(Arc::default());
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let job = Job::new();
    tracing::subscriber::with_default(subscriber, || {
        let mut card = factory_card();
        assert_succeeded(&job.run(&mut card));
        card.reset();
        assert_succeeded(&job.run(&mut card));
        let mut numeric = card_with(|o| o.numeric_pins_only = true);
        let mut letters = Job::new();
        letters.secrets.pin = "AB12CD".into();
        letters.run(&mut numeric);
    });
    let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("GENERATE ASYMMETRIC KEY PAIR"),
        "APDUs are traced"
    );
    let as_hex = |s: &str| hex::encode(s.as_bytes());
    for secret in [
        NEW_PIN.to_owned(),
        NEW_PUK.to_owned(),
        "AB12CD".to_owned(),
        NEW_KEY.to_owned(),
        NEW_KEY.to_uppercase(),
        FACTORY_KEY.to_owned(),
        as_hex(NEW_PIN),
        as_hex(NEW_PUK),
        as_hex("123456"),
    ] {
        assert!(!log.contains(&secret), "{secret} in the log");
    }
}
