//! Initialize and cancel planning: which card may be initialized, which
//! state its new job starts in, and what a cancel does to a job in each
//! state. The store reads the rows, asks these functions, and writes.

use super::{CardState, JobState};

/// Why a requested card gets no job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No card with this id is in stock.
    UnknownCard,
    /// The card is not in a state that may start initializing.
    WrongState(CardState),
    /// The card's profile is not loaded.
    UnknownProfile,
}

impl Refusal {
    /// The stable code of the refusal in the API's answer.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::UnknownCard => "unknown_card",
            Refusal::WrongState(_) => "wrong_state",
            Refusal::UnknownProfile => "unknown_profile",
        }
    }
}

/// Whether a card (`None`: not found) may be initialized. Only a card the
/// lifecycle lets become `initializing` gets a job; an in-doubt card keeps
/// its escrowed credentials and is rerun, never given new ones.
pub fn admit(state: Option<CardState>, profile_loaded: bool) -> Result<(), Refusal> {
    let state = state.ok_or(Refusal::UnknownCard)?;
    if !state.can_become(CardState::Initializing) {
        return Err(Refusal::WrongState(state));
    }
    if !profile_loaded {
        return Err(Refusal::UnknownProfile);
    }
    Ok(())
}

/// The state a new job starts in: queued for the rack where its chip was
/// last seen, or waiting for its card to be put in a slot.
pub fn initial_job_state(chip_located: bool) -> JobState {
    if chip_located {
        JobState::Queued
    } else {
        JobState::AwaitingCard
    }
}

/// What a cancel does to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelDisposition {
    /// Not yet sent: cancelled at once, the card goes back to `produced`.
    Immediate,
    /// Left for a rack: the worker is asked to stop, and its result decides,
    /// because it is a fact about the chip.
    Stopping,
    /// Already finished: nothing to do.
    Finished,
}

/// What a cancel does to a job in `state` (`None`: a state this version
/// does not know, treated as finished).
pub fn cancel_disposition(state: Option<JobState>) -> CancelDisposition {
    match state {
        Some(JobState::Dispatched | JobState::Encoding) => CancelDisposition::Stopping,
        Some(s) if s.can_become(JobState::Cancelled) => CancelDisposition::Immediate,
        _ => CancelDisposition::Finished,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn only_produced_cards_with_a_loaded_profile_are_admitted() {
        assert_eq!(admit(Some(CardState::Produced), true), Ok(()));
        assert_eq!(admit(None, true), Err(Refusal::UnknownCard));
        assert_eq!(
            admit(Some(CardState::InDoubt), true),
            Err(Refusal::WrongState(CardState::InDoubt))
        );
        assert_eq!(
            admit(Some(CardState::Produced), false),
            Err(Refusal::UnknownProfile)
        );
        // The state is checked before the profile.
        assert_eq!(
            admit(Some(CardState::Unassigned), false).map_err(Refusal::code),
            Err("wrong_state")
        );
    }

    #[test]
    fn a_located_chip_queues_its_job_at_once() {
        assert_eq!(initial_job_state(true), JobState::Queued);
        assert_eq!(initial_job_state(false), JobState::AwaitingCard);
        assert!(JobState::AwaitingCard.can_become(JobState::Queued));
    }

    #[test]
    fn cancel_sorts_jobs_by_whether_they_left() {
        use CancelDisposition::*;
        assert_eq!(cancel_disposition(Some(JobState::Queued)), Immediate);
        assert_eq!(cancel_disposition(Some(JobState::AwaitingCard)), Immediate);
        assert_eq!(cancel_disposition(Some(JobState::Dispatched)), Stopping);
        assert_eq!(cancel_disposition(Some(JobState::Encoding)), Stopping);
        assert_eq!(cancel_disposition(Some(JobState::Succeeded)), Finished);
        assert_eq!(cancel_disposition(None), Finished);
    }

    fn any_card_state() -> impl Strategy<Value = Option<CardState>> {
        prop::option::of(prop::sample::select(CardState::ALL.to_vec()))
    }

    fn any_job_state() -> impl Strategy<Value = JobState> {
        prop::sample::select(JobState::ALL.to_vec())
    }

    proptest! {
        /// An admitted card is exactly one the lifecycle lets start.
        #[test]
        fn admission_follows_the_lifecycle(state in any_card_state(), loaded in any::<bool>()) {
            let admitted = admit(state, loaded).is_ok();
            prop_assert_eq!(
                admitted,
                loaded && state.is_some_and(|s| s.can_become(CardState::Initializing))
            );
        }

        /// Cancel never touches a finished job, cancels at once only what the
        /// state machine lets be cancelled, and never cancels a job that left.
        #[test]
        fn cancel_respects_the_state_machine(state in any_job_state()) {
            match cancel_disposition(Some(state)) {
                CancelDisposition::Immediate => {
                    prop_assert!(state.can_become(JobState::Cancelled));
                    prop_assert!(!matches!(state, JobState::Dispatched | JobState::Encoding));
                }
                CancelDisposition::Stopping => prop_assert!(!state.is_terminal()),
                CancelDisposition::Finished => prop_assert!(state.is_terminal()),
            }
        }

        /// Every job starts in a state from which it can still be cancelled
        /// and can reach a rack.
        #[test]
        fn new_jobs_start_live(located in any::<bool>()) {
            let s = initial_job_state(located);
            prop_assert!(!s.is_terminal());
            prop_assert!(s.can_become(JobState::Cancelled));
        }
    }
}
