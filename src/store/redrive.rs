//! Redrive of dead letters: an operator sends a message no consumer could
//! handle once more, e.g. after the fault that killed it is fixed. Each
//! letter is sent again at most once; the row keeps who did it and when.

use super::racks::DeadLetterView;
use super::{AuditRows, Result, Store, on_backend};

impl Store {
    pub async fn dead_letter(&self, id: i64) -> Result<DeadLetterView> {
        on_backend!(self, s => s.dead_letter(id).await)
    }

    /// Marks the letter as sent again by `actor` and audits it as
    /// `dead_letter.redriven`. `NotFound` for an unknown letter, a conflict
    /// `already_redriven` when it was sent again before.
    pub async fn mark_redriven(&self, id: i64, source: &str, actor: &str) -> Result<()> {
        let mut audit = AuditRows::default();
        audit.push_access(
            "dead_letter.redriven",
            (None, None, None),
            serde_json::json!({ "dead_letter": id, "source": source }),
        );
        on_backend!(self, s => s.mark_redriven(id, audit, actor).await)
    }
}

pub fn already_redriven() -> super::StoreError {
    super::StoreError::Conflict {
        code: "already_redriven",
        message: "this dead letter was sent again already".into(),
    }
}
