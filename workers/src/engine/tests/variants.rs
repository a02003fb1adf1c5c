//! Card variants: no vendor extensions, restricted management key algorithms, numeric-only
//! PINs, a blocked PIN.

use cardfleet_schemas::StepStatus;

use super::*;

#[test]
fn a_card_without_extensions_reports_optional_steps_unsupported_and_succeeds() {
    let job = Job::new().lenient();
    let mut card = card_with(|o| o.extensions = false);
    let report = job.run(&mut card);
    assert_succeeded(&report);
    assert_eq!(status(&report, "set_retries"), StepStatus::Unsupported);
    assert_eq!(
        status(&report, "set_management_key"),
        StepStatus::Unsupported
    );
    let detail = report.steps[7].detail.as_deref().unwrap();
    assert!(detail.contains("SET PIN RETRIES"), "{detail}");
    assert_eq!(card.state().pin_retries().limit, 3);
    assert_eq!(verify_pin(&mut card, NEW_PIN), 0x9000);
    assert_eq!(change_puk(&mut card, NEW_PUK, NEW_PUK), 0x9000);
    // The transport key stays, and the verify step checked it.
    assert_eq!(
        mgmt_auth(&mut card, MgmtKeyAlgorithm::TripleDes, FACTORY_KEY),
        0x9000
    );

    // A redelivery agrees with the first run and spends nothing.
    card.reset();
    let again = job.run(&mut card);
    assert_succeeded(&again);
    assert_eq!(status(&again, "set_retries"), StepStatus::Unsupported);
    assert_eq!(status(&again, "change_pin"), StepStatus::AlreadyDone);
    assert_counters_full(&card);
}

#[test]
fn a_card_without_extensions_fails_a_profile_that_requires_retries() {
    let mut job = Job::new().lenient();
    job.profile.retries.as_mut().unwrap().requirement = Requirement::Required;
    let mut card = card_with(|o| o.extensions = false);
    let report = job.run(&mut card);
    assert_eq!(failure_code(&report), "unsupported_step");
    let failure = report.failure.as_ref().unwrap();
    assert!(
        failure.message.contains("set_retries"),
        "{}",
        failure.message
    );
    assert!(!failure.card_unusable && !report.retryable);
    assert_eq!(report.steps.last().unwrap().step, "set_retries");
    // Retries come before any credential change: the card is untouched.
    assert_eq!(
        state_of(&card),
        state_of(&card_with(|o| o.extensions = false))
    );
}

#[test]
fn a_card_without_extensions_fails_a_profile_that_requires_a_per_card_key() {
    let mut job = Job::new().lenient();
    job.profile.management_key.requirement = Requirement::Required;
    let report = job.run(&mut card_with(|o| o.extensions = false));
    assert_eq!(failure_code(&report), "unsupported_step");
    assert!(
        report
            .failure
            .unwrap()
            .message
            .contains("set_management_key")
    );
}

#[test]
fn a_3des_only_card_gets_the_aes192_key_as_3des() {
    let job = Job::new();
    let mut card = card_with(|o| o.mgmt_key_algorithms = vec![MgmtKeyAlgorithm::TripleDes]);
    let report = job.run(&mut card);
    assert_succeeded(&report);
    let step = report
        .steps
        .iter()
        .find(|s| s.step == "set_management_key")
        .unwrap();
    assert_eq!(
        step.detail.as_deref(),
        Some("3des (the card refused aes192)")
    );
    assert_initialized(&mut card, &job, MgmtKeyAlgorithm::TripleDes);

    card.reset();
    let again = job.run(&mut card);
    assert_succeeded(&again);
    assert_eq!(
        status(&again, "set_management_key"),
        StepStatus::AlreadyDone
    );
}

#[test]
fn an_aes_only_card_takes_the_transport_key_as_aes192() {
    let aes_only = |o: &mut CardOptions| {
        o.mgmt_key_algorithms = vec![
            MgmtKeyAlgorithm::Aes128,
            MgmtKeyAlgorithm::Aes192,
            MgmtKeyAlgorithm::Aes256,
        ];
        o.initial_mgmt_key_algorithm = MgmtKeyAlgorithm::Aes192;
    };
    let job = Job::new();
    let mut card = card_with(aes_only);
    let report = job.run(&mut card);
    assert_succeeded(&report);
    let auth = report
        .steps
        .iter()
        .find(|s| s.step == "authenticate")
        .unwrap();
    assert_eq!(auth.detail.as_deref(), Some("transport key (aes192)"));
    assert_initialized(&mut card, &job, MgmtKeyAlgorithm::Aes192);

    // Without GET METADATA the engine finds the algorithm by trying.
    let job = Job::new().lenient();
    let mut card = card_with(|o| {
        aes_only(o);
        o.extensions = false;
    });
    let report = job.run(&mut card);
    assert_succeeded(&report);
    let auth = report
        .steps
        .iter()
        .find(|s| s.step == "authenticate")
        .unwrap();
    assert_eq!(auth.detail.as_deref(), Some("transport key (aes192)"));
    assert_counters_full(&card);
}

#[test]
fn a_numeric_only_card_takes_a_numeric_pin() {
    let job = Job::new();
    let mut card = card_with(|o| o.numeric_pins_only = true);
    assert_succeeded(&job.run(&mut card));
    assert_initialized(&mut card, &job, MgmtKeyAlgorithm::Aes192);
}

#[test]
fn a_numeric_only_card_refuses_letters_and_is_returned_to_transport_state() {
    let mut job = Job::new();
    job.secrets.pin = "AB12CD".into();
    let mut card = card_with(|o| o.numeric_pins_only = true);
    let report = job.run(&mut card);
    assert_eq!(failure_code(&report), "pin_format_unsupported");
    let failure = report.failure.as_ref().unwrap();
    assert!(!failure.card_unusable && !report.retryable);
    assert!(
        failure.message.contains("returned to its transport"),
        "{}",
        failure.message
    );
    assert_eq!(report.steps.last().unwrap().step, "change_pin");

    // Transport credentials work again and no journal is left, so a later job can run.
    assert!(card.state().object(crate::engine::JOURNAL_TAG).is_none());
    assert_eq!(verify_pin(&mut card, "123456"), 0x9000);
    assert_eq!(
        mgmt_auth(&mut card, MgmtKeyAlgorithm::TripleDes, FACTORY_KEY),
        0x9000
    );
    assert_counters_full(&card);
    card.reset();
    let next = Job::new();
    assert_succeeded(&next.run(&mut card));
    assert_initialized(&mut card, &next, MgmtKeyAlgorithm::Aes192);
}

#[test]
fn a_puk_with_letters_on_a_numeric_only_card_also_restores_the_transport_pin() {
    let mut job = Job::new();
    job.secrets.puk = "ABCD1234".into();
    let mut card = card_with(|o| o.numeric_pins_only = true);
    let report = job.run(&mut card);
    assert_eq!(failure_code(&report), "puk_format_unsupported");
    assert_eq!(status(&report, "change_pin"), StepStatus::Done);
    assert!(card.state().object(crate::engine::JOURNAL_TAG).is_none());
    assert_eq!(verify_pin(&mut card, "123456"), 0x9000);
    assert_eq!(change_puk(&mut card, "12345678", "12345678"), 0x9000);
    assert_eq!(
        mgmt_auth(&mut card, MgmtKeyAlgorithm::TripleDes, FACTORY_KEY),
        0x9000
    );
}

#[test]
fn a_card_whose_pin_was_blocked_before_the_job_is_unusable() {
    let mut card = factory_card();
    for _ in 0..3 {
        assert_eq!(verify_pin(&mut card, "000000") & 0xFFF0, 0x63C0);
    }
    card.reset();
    card.take_state_changed();
    let report = Job::new().run(&mut card);
    assert_eq!(failure_code(&report), "pin_blocked");
    let failure = report.failure.as_ref().unwrap();
    assert!(failure.card_unusable && !report.retryable);
    assert!(
        failure.message.contains("before this job"),
        "{}",
        failure.message
    );
    assert_eq!(report.steps.last().unwrap().step, "check_pin");
    assert!(
        !card.take_state_changed(),
        "a blocked card must not be written to"
    );
}

#[test]
fn a_card_whose_puk_was_blocked_is_unusable() {
    let mut card = factory_card();
    for _ in 0..3 {
        assert_eq!(
            change_puk(&mut card, "00000000", "11111111") & 0xFFF0,
            0x63C0
        );
    }
    card.reset();
    let report = Job::new().run(&mut card);
    assert_eq!(failure_code(&report), "puk_blocked");
    assert!(report.failure.unwrap().card_unusable);
}

#[test]
fn a_transport_pin_the_card_rejects_is_a_permanent_failure() {
    let mut job = Job::new();
    job.profile.transport.pin = "654321".into();
    let mut card = factory_card();
    let report = job.run(&mut card);
    assert_eq!(failure_code(&report), "transport_pin_rejected");
    assert!(!report.retryable);
}
