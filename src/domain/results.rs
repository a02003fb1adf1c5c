//! Folding workers' reports over the jobs they name: which apply (the state
//! machine allows the move), the net change per job to save, and every move
//! for the audit trail. Duplicates and stale reports change nothing.

use std::collections::HashMap;

use cardfleet_schemas::{Outcome, ResultMessage};
use uuid::Uuid;

use super::failures::{CredentialStatus, classify};
use super::{CardState, JobState, JobTransition};

/// What became of one result message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The job moved.
    Changed,
    /// Already applied or overtaken (redelivery, late "started"): nothing changed.
    Unchanged,
    /// No such job: the message belongs in the dead letters.
    UnknownJob,
}

/// A job a result names, as read (and, on PostgreSQL, locked) in the
/// applying transaction.
#[derive(Debug)]
pub struct JobRow {
    pub card_id: Uuid,
    pub batch_id: Uuid,
    pub state: JobState,
    /// An operator asked to cancel the job after it left for a rack.
    pub cancel_requested: bool,
}

/// The net change per job of a run of results, as column arrays.
#[derive(Debug, Default)]
pub struct Changes {
    pub job_id: Vec<Uuid>,
    pub job_state: Vec<&'static str>,
    pub reason: Vec<Option<String>>,
    pub steps: Vec<Option<serde_json::Value>>,
    pub card_id: Vec<Uuid>,
    pub card_state: Vec<Option<&'static str>>,
    pub credential_status: Vec<Option<&'static str>>,
}

/// The reason a job shows when its result arrived after an operator asked
/// to cancel it: the card is encoded and keeps its credentials.
pub const FINISHED_BEFORE_CANCEL: &str = "finished before the cancel reached it";

/// One applied move, for the audit trail.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    /// `job.started` or `job.finished`.
    pub action: &'static str,
    pub transition: JobTransition,
    pub detail: serde_json::Value,
}

/// Folds result messages, in order, over the jobs they name: which apply
/// (the state machine allows the move), the net change per job and the
/// audit row of every move.
pub fn fold(
    messages: &[ResultMessage],
    mut jobs: HashMap<Uuid, JobRow>,
) -> (Vec<Applied>, Changes, Vec<Move>) {
    let mut outcomes = Vec::with_capacity(messages.len());
    let mut changes: HashMap<Uuid, usize> = HashMap::new();
    let mut c = Changes::default();
    let mut moves = Vec::new();
    for message in messages {
        let job_id = message.job_id();
        let Some(job) = jobs.get_mut(&job_id) else {
            outcomes.push(Applied::UnknownJob);
            continue;
        };
        let (to, reason, steps, card, creds, detail) = match message {
            ResultMessage::JobStarted(m) => (
                JobState::Encoding,
                None,
                None,
                None,
                None,
                serde_json::json!({ "rack_id": m.rack_id, "slot": m.slot, "worker_id": m.worker_id }),
            ),
            ResultMessage::EncodeResult(r) => {
                let (card, creds) = classify(r);
                let to = match r.outcome {
                    Outcome::Succeeded => JobState::Succeeded,
                    Outcome::Failed => JobState::Failed,
                    Outcome::Cancelled => JobState::Cancelled,
                };
                let reason = match (&r.failure, r.outcome) {
                    (Some(f), _) => Some(format!("{}: {}", f.code, f.message)),
                    (None, Outcome::Succeeded) if job.cancel_requested => {
                        Some(FINISHED_BEFORE_CANCEL.to_owned())
                    }
                    (None, _) => None,
                };
                let steps = serde_json::to_value(&r.steps).ok();
                let mut detail = serde_json::json!({
                    "rack_id": r.rack_id, "slot": r.slot, "worker_id": r.worker_id,
                    "failure_code": r.failure.as_ref().map(|f| f.code.clone()),
                });
                if job.cancel_requested {
                    detail["cancel_requested"] = true.into();
                }
                (to, reason, steps, Some(card), Some(creds), detail)
            }
        };
        if !job.state.can_become(to) {
            outcomes.push(Applied::Unchanged);
            continue;
        }
        moves.push(Move {
            action: if to == JobState::Encoding {
                "job.started"
            } else {
                "job.finished"
            },
            transition: JobTransition {
                job_id,
                card_id: job.card_id,
                batch_id: job.batch_id,
                from: Some(job.state.as_str()),
                to: to.as_str(),
                card_state: card.map(CardState::as_str),
            },
            detail,
        });
        job.state = to;
        let i = *changes.entry(job_id).or_insert_with(|| {
            c.job_id.push(job_id);
            c.job_state.push(to.as_str());
            c.reason.push(None);
            c.steps.push(None);
            c.card_id.push(job.card_id);
            c.card_state.push(None);
            c.credential_status.push(None);
            c.job_id.len() - 1
        });
        c.job_state[i] = to.as_str();
        if reason.is_some() {
            c.reason[i] = reason;
        }
        if steps.is_some() {
            c.steps[i] = steps;
        }
        if card.is_some() {
            c.card_state[i] = card.map(CardState::as_str);
            c.credential_status[i] = creds.map(CredentialStatus::as_str);
        }
        outcomes.push(Applied::Changed);
    }

    (outcomes, c, moves)
}

#[cfg(test)]
mod tests {
    use cardfleet_schemas::{JobStarted, Meta};
    use proptest::prelude::*;

    use super::*;
    use crate::domain::failures::tests::failed;

    fn job(state: JobState) -> JobRow {
        JobRow {
            card_id: Uuid::now_v7(),
            batch_id: Uuid::now_v7(),
            state,
            cancel_requested: false,
        }
    }

    fn started(job_id: Uuid) -> ResultMessage {
        ResultMessage::JobStarted(JobStarted {
            meta: Meta::now(),
            job_id,
            rack_id: "rack-1".into(),
            slot: 1,
            worker_id: "w".into(),
        })
    }

    fn result(job_id: Uuid, outcome: Outcome) -> ResultMessage {
        let mut r = failed("unexpected_status", vec![]);
        r.job_id = job_id;
        r.outcome = outcome;
        if outcome != Outcome::Failed {
            r.failure = None;
        }
        ResultMessage::EncodeResult(r)
    }

    #[test]
    fn a_redelivered_result_changes_nothing() {
        let id = Uuid::now_v7();
        let jobs = HashMap::from([(id, job(JobState::Dispatched))]);
        let r = result(id, Outcome::Succeeded);
        let (applied, changes, moves) = fold(&[started(id), r.clone(), r], jobs);
        assert_eq!(
            applied,
            vec![Applied::Changed, Applied::Changed, Applied::Unchanged]
        );
        assert_eq!(changes.job_id, vec![id]);
        assert_eq!(changes.job_state, vec!["succeeded"]);
        assert_eq!(changes.card_state, vec![Some("unassigned")]);
        assert_eq!(changes.credential_status, vec![Some("active")]);
        assert_eq!(moves.len(), 2);
        assert_eq!(moves[1].action, "job.finished");
    }

    #[test]
    fn a_result_may_overtake_its_started_notice() {
        let id = Uuid::now_v7();
        let jobs = HashMap::from([(id, job(JobState::Queued))]);
        let (applied, changes, _) = fold(&[result(id, Outcome::Failed), started(id)], jobs);
        assert_eq!(applied, vec![Applied::Changed, Applied::Unchanged]);
        assert_eq!(changes.job_state, vec!["failed"]);
        assert_eq!(changes.card_state, vec![Some("produced")]);
        assert_eq!(changes.credential_status, vec![Some("revoked")]);
        assert_eq!(
            changes.reason,
            vec![Some("unexpected_status: m".to_owned())]
        );
    }

    #[test]
    fn a_result_for_no_known_job_goes_to_the_dead_letters() {
        let (applied, changes, moves) =
            fold(&[result(Uuid::now_v7(), Outcome::Failed)], HashMap::new());
        assert_eq!(applied, vec![Applied::UnknownJob]);
        assert!(changes.job_id.is_empty() && moves.is_empty());
    }

    #[test]
    fn a_success_after_a_cancel_request_says_so() {
        let id = Uuid::now_v7();
        let mut row = job(JobState::Encoding);
        row.cancel_requested = true;
        let (_, changes, moves) = fold(
            &[result(id, Outcome::Succeeded)],
            HashMap::from([(id, row)]),
        );
        assert_eq!(
            changes.reason,
            vec![Some(FINISHED_BEFORE_CANCEL.to_owned())]
        );
        assert_eq!(moves[0].detail["cancel_requested"], true);
    }

    fn any_message(ids: Vec<Uuid>) -> impl Strategy<Value = ResultMessage> {
        let outcomes = prop_oneof![
            Just(Outcome::Succeeded),
            Just(Outcome::Failed),
            Just(Outcome::Cancelled),
        ];
        (prop::sample::select(ids), prop::option::of(outcomes)).prop_map(|(id, outcome)| {
            match outcome {
                None => started(id),
                Some(o) => result(id, o),
            }
        })
    }

    fn scenario() -> impl Strategy<Value = (Vec<(Uuid, JobState)>, Vec<ResultMessage>)> {
        prop::collection::vec(prop::sample::select(JobState::ALL.to_vec()), 1..5).prop_flat_map(
            |states| {
                let jobs: Vec<(Uuid, JobState)> =
                    states.into_iter().map(|s| (Uuid::new_v4(), s)).collect();
                let mut ids: Vec<Uuid> = jobs.iter().map(|(id, _)| *id).collect();
                // A job the store does not know.
                ids.push(Uuid::new_v4());
                (Just(jobs), prop::collection::vec(any_message(ids), 0..12))
            },
        )
    }

    fn rows(jobs: &[(Uuid, JobState)]) -> HashMap<Uuid, JobRow> {
        jobs.iter().map(|(id, s)| (*id, job(*s))).collect()
    }

    proptest! {
        /// Every change the fold reports is a move the state machine allows,
        /// each job appears once in the changes, and every applied message
        /// leaves one audit move.
        #[test]
        fn folding_follows_the_state_machine((jobs, messages) in scenario()) {
            let before: HashMap<Uuid, JobState> = jobs.iter().copied().collect();
            let (applied, changes, moves) = fold(&messages, rows(&jobs));
            prop_assert_eq!(applied.len(), messages.len());
            let changed = applied.iter().filter(|a| **a == Applied::Changed).count();
            prop_assert_eq!(moves.len(), changed);
            let mut seen = changes.job_id.clone();
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), changes.job_id.len());
            for m in &moves {
                let from = JobState::parse(m.transition.from.unwrap_or_default()).unwrap();
                let to = JobState::parse(m.transition.to).unwrap();
                prop_assert!(from.can_become(to));
            }
            for (i, id) in changes.job_id.iter().enumerate() {
                prop_assert!(!before[id].is_terminal());
                let to = JobState::parse(changes.job_state[i]).unwrap();
                prop_assert_eq!(to.is_terminal(), changes.card_state[i].is_some());
            }
        }

        /// A result is applied once: the same messages folded again over the
        /// states they produced change nothing.
        #[test]
        fn folding_again_changes_nothing((jobs, messages) in scenario()) {
            let (_, changes, _) = fold(&messages, rows(&jobs));
            let mut after = rows(&jobs);
            for (i, id) in changes.job_id.iter().enumerate() {
                if let Some(row) = after.get_mut(id) {
                    row.state = JobState::parse(changes.job_state[i]).unwrap();
                }
            }
            let (again, _, _) = fold(&messages, after);
            for (m, a) in messages.iter().zip(&again) {
                if matches!(m, ResultMessage::EncodeResult(_)) {
                    prop_assert_ne!(*a, Applied::Changed, "a result applied twice");
                }
            }
        }
    }
}
