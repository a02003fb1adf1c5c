//! Faults through [`FaultyTransport`]: the card pulled at every APDU of a run, a mute chip,
//! forced status words, resets and slow cards.

use std::time::Duration;

use cardfleet_schemas::StepStatus;

use super::*;
use crate::engine::TransportError;
use crate::engine::faults::{FaultPlan, FaultyTransport, Pull, PullAt};
use crate::engine::journal::{JOURNAL_TAG, Journal, Mark};

fn faulty(plan: FaultPlan) -> FaultyTransport<VirtualPivCard> {
    FaultyTransport::new(factory_card(), plan)
}

/// Pulls the card at every APDU of a run, once with the card having processed that APDU
/// and once not; the next attempt must finish, with full retry counters, and leave a card
/// that passes `check`.
fn pull_everywhere(
    job: &Job,
    make_card: impl Fn() -> VirtualPivCard,
    check: impl Fn(&mut VirtualPivCard, Pull),
) {
    let mut clean = FaultyTransport::new(make_card(), FaultPlan::default());
    assert_succeeded(&job.run(&mut clean));
    let total = clean.sent();
    assert!(total > 20, "a run takes {total} APDUs");
    for processed in [false, true] {
        for index in 0..total {
            let pull = Pull {
                at: PullAt::Apdu(index),
                processed,
            };
            let plan = FaultPlan {
                pull: Some(pull),
                ..FaultPlan::default()
            };
            let mut card = FaultyTransport::new(make_card(), plan);
            let first = job.run(&mut card);
            assert_eq!(failure_code(&first), "card_removed", "{pull:?}");
            assert!(first.retryable, "{pull:?}");
            assert!(!first.failure.as_ref().unwrap().card_unusable);

            card.reinsert();
            assert_succeeded(&job.run(&mut card));
            let mut card = card.into_inner();
            assert_counters_full(&card);
            check(&mut card, pull);
        }
    }
}

#[test]
fn a_card_pulled_at_any_apdu_is_finished_by_the_next_attempt_with_the_same_credentials() {
    let job = Job::new();
    pull_everywhere(&job, factory_card, |card, pull| {
        assert_eq!(card.state().pin_retries().limit, 5, "{pull:?}");
        assert_initialized(card, &job, MgmtKeyAlgorithm::Aes192);
    });
}

#[test]
fn a_3des_only_card_pulled_at_any_apdu_is_finished_by_the_next_attempt() {
    let job = Job::new();
    let des_only = || card_with(|o| o.mgmt_key_algorithms = vec![MgmtKeyAlgorithm::TripleDes]);
    pull_everywhere(&job, des_only, |card, _| {
        assert_initialized(card, &job, MgmtKeyAlgorithm::TripleDes);
    });
}

#[test]
fn a_card_without_extensions_pulled_at_any_apdu_is_finished_by_the_next_attempt() {
    // No GET METADATA, so the PUK's counter is unknown in the crash window; the
    // management key stays the transport key.
    let job = Job::new().lenient();
    pull_everywhere(
        &job,
        || card_with(|o| o.extensions = false),
        |card, pull| {
            assert_eq!(verify_pin(card, NEW_PIN), 0x9000, "{pull:?}");
            assert_eq!(change_puk(card, NEW_PUK, NEW_PUK), 0x9000, "{pull:?}");
            let key = mgmt_auth(card, MgmtKeyAlgorithm::TripleDes, FACTORY_KEY);
            assert_eq!(key, 0x9000, "{pull:?}");
        },
    );
}

#[test]
fn a_pin_change_lost_in_the_crash_window_is_confirmed_with_one_verify() {
    let job = Job::new();
    // CHANGE REFERENCE DATA (24): the first is the PIN's; the card changes it, the answer
    // is lost.
    let mut card = faulty(FaultPlan {
        pull: Some(Pull {
            at: PullAt::Ins { ins: 0x24, nth: 0 },
            processed: true,
        }),
        ..FaultPlan::default()
    });
    assert_eq!(failure_code(&job.run(&mut card)), "card_removed");
    let journal = Journal::decode(card.inner().state().object(JOURNAL_TAG).unwrap()).unwrap();
    assert!(journal.has_intent(Mark::Pin) && !journal.is_done(Mark::Pin));

    card.reinsert();
    let report = job.run(&mut card);
    assert_succeeded(&report);
    assert_eq!(status(&report, "change_pin"), StepStatus::AlreadyDone);
    assert_counters_full(card.inner());
}

#[test]
fn a_pin_change_that_never_reached_the_card_spends_one_try_and_gives_it_back() {
    let job = Job::new();
    let mut card = faulty(FaultPlan {
        pull: Some(Pull {
            at: PullAt::Ins { ins: 0x24, nth: 0 },
            processed: false,
        }),
        ..FaultPlan::default()
    });
    assert_eq!(failure_code(&job.run(&mut card)), "card_removed");
    card.reinsert();
    let report = job.run(&mut card);
    assert_succeeded(&report);
    let step = report
        .steps
        .iter()
        .find(|s| s.step == "change_pin")
        .unwrap();
    assert_eq!(step.status, StepStatus::Done);
    assert!(
        step.detail.as_deref().unwrap().contains("cost one try"),
        "{step:?}"
    );
    assert_counters_full(card.inner());
}

#[test]
fn the_crash_window_check_is_not_made_with_a_single_try_left() {
    let job = Job::new().lenient();
    let mut card = FaultyTransport::new(
        card_with(|o| o.extensions = false),
        FaultPlan {
            pull: Some(Pull {
                at: PullAt::Ins { ins: 0x24, nth: 0 },
                processed: false,
            }),
            ..FaultPlan::default()
        },
    );
    assert_eq!(failure_code(&job.run(&mut card)), "card_removed");
    card.reinsert();
    for _ in 0..2 {
        assert_eq!(verify_pin(card.inner_mut(), "000000") & 0xFFF0, 0x63C0);
    }
    card.inner_mut().reset();
    let report = job.run(&mut card);
    assert_eq!(failure_code(&report), "pin_state_unknown");
    assert!(!report.retryable);
    assert_eq!(card.inner().state().pin_retries().remaining, 1);
}

#[test]
fn a_mute_chip_fails_the_job_as_card_mute() {
    let mut card = faulty(FaultPlan {
        mute_from: Some(0),
        ..FaultPlan::default()
    });
    let report = Job::new().run(&mut card);
    assert_eq!(failure_code(&report), "card_mute");
    assert!(!report.retryable);
    assert_eq!(report.steps.last().unwrap().step, "select");

    // Muted in the middle of the run.
    let mut card = faulty(FaultPlan {
        mute_from: Some(20),
        ..FaultPlan::default()
    });
    let report = Job::new().run(&mut card);
    assert_eq!(failure_code(&report), "card_mute");
}

#[test]
fn an_unexpected_status_word_is_named_in_the_failure() {
    let mut card = faulty(FaultPlan {
        forced_status: [(0x47, 0x6F00)].into(),
        ..FaultPlan::default()
    });
    let report = Job::new().run(&mut card);
    assert_eq!(failure_code(&report), "unexpected_status");
    assert!(report.failure.unwrap().message.contains("6F00"));
    assert_eq!(report.steps.last().unwrap().step, "generate_key_9a");
}

#[test]
fn key_generation_the_card_refuses_is_unsupported_when_optional_and_fatal_when_required() {
    let refused = || FaultPlan {
        forced_status: [(0x47, 0x6A80)].into(),
        ..FaultPlan::default()
    };
    let mut job = Job::new();
    for key in &mut job.profile.keys {
        key.requirement = Requirement::Optional;
    }
    let report = job.run(&mut faulty(refused()));
    assert_succeeded(&report);
    for step in ["generate_key_9a", "generate_key_9c", "generate_key_9e"] {
        assert_eq!(status(&report, step), StepStatus::Unsupported, "{step}");
    }

    let report = Job::new().run(&mut faulty(refused()));
    assert_eq!(failure_code(&report), "unsupported_step");
    assert!(report.failure.unwrap().message.contains("generate_key_9a"));
}

#[test]
fn a_reset_card_and_a_failing_reader_are_worth_another_attempt() {
    struct Failing(TransportError);
    impl CardTransport for Failing {
        fn transmit(&mut self, _: &[u8]) -> Result<Vec<u8>, TransportError> {
            Err(self.0.clone())
        }
    }
    let job = Job::new();
    for (error, code) in [
        (TransportError::Reset, "card_reset"),
        (TransportError::Removed, "card_removed"),
        (TransportError::Reader("gone".into()), "reader_error"),
    ] {
        let report = job.run(&mut Failing(error));
        assert_eq!(failure_code(&report), code);
        assert!(report.retryable, "{code}");
    }
    let report = job.run(&mut Failing(TransportError::Mute));
    assert!(!report.retryable);
}

#[test]
fn a_slow_card_is_only_slower() {
    let mut card = faulty(FaultPlan {
        latency: [(0x47, Duration::from_millis(5))].into(),
        ..FaultPlan::default()
    });
    let report = Job::new().run(&mut card);
    assert_succeeded(&report);
    let keygen = report
        .steps
        .iter()
        .find(|s| s.step == "generate_key_9a")
        .unwrap();
    assert!(keygen.duration_ms >= 5.0, "{keygen:?}");
}
