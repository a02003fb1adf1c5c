//! Card and job states and their pure transition rules.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// The part of a card's lifecycle cardfleet owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CardState {
    Produced,
    Initializing,
    Unassigned,
    Failed,
    /// The chip may hold the new credentials of a job that did not succeed:
    /// they stay escrowed until the job runs again or the card is reset.
    InDoubt,
}

impl CardState {
    pub const ALL: [CardState; 5] = [
        CardState::Produced,
        CardState::Initializing,
        CardState::Unassigned,
        CardState::Failed,
        CardState::InDoubt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CardState::Produced => "produced",
            CardState::Initializing => "initializing",
            CardState::Unassigned => "unassigned",
            CardState::Failed => "failed",
            CardState::InDoubt => "in_doubt",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether the card may move from `self` to `to`.
    pub fn can_become(self, to: CardState) -> bool {
        use CardState::*;
        matches!(
            (self, to),
            (Produced, Initializing)
                | (Initializing, Unassigned)
                | (Initializing, Produced)
                | (Initializing, Failed)
                | (Initializing, InDoubt)
        )
        // An in-doubt card leaves its state only by an operator's action
        // on its existing job and credentials (`Store::rerun_in_doubt`),
        // never as a fresh card with new ones.
    }
}

impl fmt::Display for CardState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One job per card per initialize request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    AwaitingCard,
    Dispatched,
    Encoding,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::AwaitingCard,
        JobState::Dispatched,
        JobState::Encoding,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::AwaitingCard => "awaiting_card",
            JobState::Dispatched => "dispatched",
            JobState::Encoding => "encoding",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|j| j.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// Whether the job may move from `self` to `to`.
    pub fn can_become(self, to: JobState) -> bool {
        use JobState::*;
        match (self, to) {
            (AwaitingCard, Queued) | (Queued, Dispatched) | (Dispatched, Encoding) => true,
            // A fast worker can report before the dispatcher has recorded the
            // publish (it does so after the broker's confirm): the worker's
            // report is the truth, and the late "dispatched" is then skipped.
            (Queued, Encoding) => true,
            // A result may overtake its own "started" notice.
            (Queued | Dispatched | Encoding, Succeeded | Failed | Cancelled) => true,
            // Cancel before encoding is immediate (from dispatched too, above).
            (AwaitingCard, Cancelled) => true,
            _ => false,
        }
    }

    /// Every state from which `to` may be reached; the store's conditional
    /// updates use this so that the database refuses what the rules refuse.
    pub fn sources_of(to: JobState) -> Vec<&'static str> {
        Self::ALL
            .into_iter()
            .filter(|from| from.can_become(to))
            .map(JobState::as_str)
            .collect()
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One job transition for the audit trail (`AuditRows::push_job`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobTransition {
    pub job_id: Uuid,
    pub card_id: Uuid,
    pub batch_id: Uuid,
    pub from: Option<&'static str>,
    pub to: &'static str,
    /// The card's state after the transition, when it changed.
    pub card_state: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_card_only_moves_along_the_lifecycle() {
        use CardState::*;
        assert!(Produced.can_become(Initializing));
        assert!(Initializing.can_become(Unassigned));
        assert!(Initializing.can_become(Produced));
        assert!(Initializing.can_become(Failed));
        assert!(!Produced.can_become(Unassigned));
        assert!(!Unassigned.can_become(Produced));
        assert!(!Failed.can_become(Produced));
        for s in CardState::ALL {
            assert!(!s.can_become(s), "{s} to itself");
        }
    }

    #[test]
    fn terminal_jobs_never_move_again() {
        for from in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in JobState::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn cancel_is_immediate_only_before_dispatch_or_via_a_result() {
        assert_eq!(
            JobState::sources_of(JobState::Cancelled),
            vec!["queued", "awaiting_card", "dispatched", "encoding"]
        );
        assert_eq!(
            JobState::sources_of(JobState::Succeeded),
            vec!["queued", "dispatched", "encoding"]
        );
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        for s in CardState::ALL {
            assert_eq!(CardState::parse(s.as_str()), Some(s));
        }
        assert_eq!(CardState::parse("Produced"), None);
    }
}
