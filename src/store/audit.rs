//! Audit rows, collected per transaction and inserted with one statement.

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// Audit rows of one transaction, as column arrays for UNNEST.
#[derive(Debug, Default)]
pub struct AuditRows {
    action: Vec<&'static str>,
    card_id: Vec<Option<Uuid>>,
    job_id: Vec<Option<Uuid>>,
    batch_id: Vec<Option<Uuid>>,
    from_state: Vec<Option<&'static str>>,
    to_state: Vec<Option<&'static str>>,
    card_state: Vec<Option<&'static str>>,
    detail: Vec<Option<serde_json::Value>>,
}

/// One job transition for [`AuditRows::push_job`].
#[derive(Debug, Clone, Copy)]
pub struct JobTransition {
    pub job_id: Uuid,
    pub card_id: Uuid,
    pub batch_id: Uuid,
    pub from: Option<&'static str>,
    pub to: &'static str,
    /// The card's state after the transition, when it changed.
    pub card_state: Option<&'static str>,
}

impl AuditRows {
    pub fn len(&self) -> usize {
        self.action.len()
    }

    pub fn is_empty(&self) -> bool {
        self.action.is_empty()
    }

    pub fn push_job(
        &mut self,
        action: &'static str,
        t: JobTransition,
        detail: Option<serde_json::Value>,
    ) {
        self.action.push(action);
        self.card_id.push(Some(t.card_id));
        self.job_id.push(Some(t.job_id));
        self.batch_id.push(Some(t.batch_id));
        self.from_state.push(t.from);
        self.to_state.push(Some(t.to));
        self.card_state.push(t.card_state);
        self.detail.push(detail);
    }

    pub fn push_card(&mut self, action: &'static str, card_id: Uuid, card_state: &'static str) {
        self.action.push(action);
        self.card_id.push(Some(card_id));
        self.job_id.push(None);
        self.batch_id.push(None);
        self.from_state.push(None);
        self.to_state.push(None);
        self.card_state.push(Some(card_state));
        self.detail.push(None);
    }

    pub fn push_admin(&mut self, action: &'static str, detail: serde_json::Value) {
        self.action.push(action);
        self.card_id.push(None);
        self.job_id.push(None);
        self.batch_id.push(None);
        self.from_state.push(None);
        self.to_state.push(None);
        self.card_state.push(None);
        self.detail.push(Some(detail));
    }

    pub async fn insert(self, tx: &mut Transaction<'_, Postgres>, actor: &str) -> sqlx::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO audit (actor, action, card_id, job_id, batch_id, from_state, to_state, card_state, detail)
             SELECT $1, * FROM UNNEST($2::text[], $3::uuid[], $4::uuid[], $5::uuid[], $6::text[], $7::text[], $8::text[], $9::jsonb[])",
        )
        .bind(actor)
        .bind(&self.action)
        .bind(&self.card_id)
        .bind(&self.job_id)
        .bind(&self.batch_id)
        .bind(&self.from_state)
        .bind(&self.to_state)
        .bind(&self.card_state)
        .bind(&self.detail)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}
