//! Applying what workers report: results move jobs, cards and credentials in
//! one transaction per batch of messages; duplicates and stale results change
//! nothing. Dead letters are recorded for inspection.

use std::collections::HashMap;

use cardfleet_schemas::{Outcome, ResultMessage};
use sqlx::Row;
use uuid::Uuid;

use super::audit::JobTransition;
use super::{AuditRows, Result, Store};
use crate::domain::{CardState, JobState};

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

struct JobRow {
    card_id: Uuid,
    batch_id: Uuid,
    state: JobState,
}

#[derive(Default)]
struct Changes {
    job_id: Vec<Uuid>,
    job_state: Vec<&'static str>,
    reason: Vec<Option<String>>,
    steps: Vec<Option<serde_json::Value>>,
    card_id: Vec<Uuid>,
    card_state: Vec<Option<&'static str>>,
    credential_status: Vec<Option<&'static str>>,
}

/// A dead letter to record.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub source: String,
    pub reason: String,
    pub message_id: Option<String>,
    pub payload: String,
}

/// The card's next state and the credentials' status after a final outcome.
fn card_after(outcome: Outcome, card_unusable: bool) -> (CardState, &'static str) {
    match outcome {
        Outcome::Succeeded => (CardState::Unassigned, "active"),
        Outcome::Failed if card_unusable => (CardState::Failed, "revoked"),
        Outcome::Failed | Outcome::Cancelled => (CardState::Produced, "revoked"),
    }
}

impl Store {
    /// Applies result messages in order, all in one transaction.
    pub async fn apply_results(
        &self,
        messages: &[ResultMessage],
        actor: &str,
    ) -> Result<Vec<Applied>> {
        let mut tx = self.pool.begin().await?;
        let mut ids: Vec<Uuid> = messages.iter().map(ResultMessage::job_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let rows = sqlx::query(
            "SELECT id, card_id, batch_id, state FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut jobs: HashMap<Uuid, JobRow> = HashMap::with_capacity(rows.len());
        for r in rows {
            let state: String = r.try_get("state")?;
            jobs.insert(
                r.try_get("id")?,
                JobRow {
                    card_id: r.try_get("card_id")?,
                    batch_id: r.try_get("batch_id")?,
                    state: JobState::parse(&state).unwrap_or(JobState::Failed),
                },
            );
        }

        let mut outcomes = Vec::with_capacity(messages.len());
        let mut changes: HashMap<Uuid, usize> = HashMap::new();
        let mut c = Changes::default();
        let mut audit = AuditRows::default();
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
                    let unusable = r.failure.as_ref().is_some_and(|f| f.card_unusable);
                    let (card, creds) = card_after(r.outcome, unusable);
                    let to = match r.outcome {
                        Outcome::Succeeded => JobState::Succeeded,
                        Outcome::Failed => JobState::Failed,
                        Outcome::Cancelled => JobState::Cancelled,
                    };
                    let reason = r
                        .failure
                        .as_ref()
                        .map(|f| format!("{}: {}", f.code, f.message));
                    let steps = serde_json::to_value(&r.steps).ok();
                    let detail = serde_json::json!({
                        "rack_id": r.rack_id, "slot": r.slot, "worker_id": r.worker_id,
                        "failure_code": r.failure.as_ref().map(|f| f.code.clone()),
                    });
                    (to, reason, steps, Some(card), Some(creds), detail)
                }
            };
            if !job.state.can_become(to) {
                outcomes.push(Applied::Unchanged);
                continue;
            }
            audit.push_job(
                if to == JobState::Encoding {
                    "job.started"
                } else {
                    "job.finished"
                },
                JobTransition {
                    job_id,
                    card_id: job.card_id,
                    batch_id: job.batch_id,
                    from: Some(job.state.as_str()),
                    to: to.as_str(),
                    card_state: card.map(CardState::as_str),
                },
                Some(detail),
            );
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
                c.credential_status[i] = creds;
            }
            outcomes.push(Applied::Changed);
        }

        if !c.job_id.is_empty() {
            sqlx::query(
                "UPDATE jobs SET state = u.state, reason = COALESCE(u.reason, jobs.reason),
                        steps = COALESCE(u.steps, jobs.steps), updated_at = now()
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[]) AS u(id, state, reason, steps)
                 WHERE jobs.id = u.id",
            )
            .bind(&c.job_id)
            .bind(&c.job_state)
            .bind(&c.reason)
            .bind(&c.steps)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE cards SET state = u.state,
                        state_reason = CASE WHEN u.state = 'unassigned' THEN NULL ELSE u.reason END,
                        updated_at = now()
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS u(id, state, reason)
                 WHERE cards.id = u.id AND u.state IS NOT NULL AND cards.state = 'initializing'",
            )
            .bind(&c.card_id)
            .bind(&c.card_state)
            .bind(&c.reason)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE credentials SET status = u.status, updated_at = now()
                 FROM UNNEST($1::uuid[], $2::text[]) AS u(job_id, status)
                 WHERE credentials.job_id = u.job_id AND u.status IS NOT NULL AND credentials.status = 'pending'",
            )
            .bind(&c.job_id)
            .bind(&c.credential_status)
            .execute(&mut *tx)
            .await?;
        }
        audit.insert(&mut tx, actor).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    pub async fn record_dead_letters(&self, letters: &[DeadLetter]) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let source: Vec<&str> = letters.iter().map(|l| l.source.as_str()).collect();
        let reason: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
        let message_id: Vec<Option<&str>> =
            letters.iter().map(|l| l.message_id.as_deref()).collect();
        let payload: Vec<&str> = letters.iter().map(|l| l.payload.as_str()).collect();
        sqlx::query(
            "INSERT INTO dead_letters (source, reason, message_id, payload)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[])",
        )
        .bind(&source)
        .bind(&reason)
        .bind(&message_id)
        .bind(&payload)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_card_states() {
        assert_eq!(
            card_after(Outcome::Succeeded, false),
            (CardState::Unassigned, "active")
        );
        assert_eq!(
            card_after(Outcome::Failed, true),
            (CardState::Failed, "revoked")
        );
        assert_eq!(
            card_after(Outcome::Failed, false),
            (CardState::Produced, "revoked")
        );
        assert_eq!(
            card_after(Outcome::Cancelled, false),
            (CardState::Produced, "revoked")
        );
    }
}
