//! What racks report (slot events, heartbeats), the dispatch of jobs that
//! were waiting for their card, and the read models of racks, batches and
//! dead letters.

use std::collections::HashMap;

use cardfleet_schemas::{EventMessage, SlotEventKind, SlotState};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::audit::JobTransition;
use super::{AuditRows, Result, Store, StoreError, on_backend};
use crate::domain::JobState;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SlotView {
    pub slot: i32,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chip_serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RackView {
    pub rack_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub in_flight: i32,
    pub slots: Vec<SlotView>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeadLetterView {
    pub id: i64,
    pub received_at: DateTime<Utc>,
    pub source: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The message as received; job messages are listed without their secrets.
    pub payload: String,
    /// When an operator sent it again (once only), and who.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redriven_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redriven_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchCard {
    pub card_id: Uuid,
    pub job_id: Uuid,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rack_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Set while the job waits for its silent rack (see `store::leases`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_expired_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchStatus {
    pub batch_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub requested: i32,
    pub accepted: i32,
    /// Jobs per state; every state is listed.
    pub counts: HashMap<String, i64>,
    /// No job of the batch can move any more.
    pub finished: bool,
    /// Live jobs of the batch waiting for a rack whose lease ran out
    /// (no heartbeat for `ledger.rack_lease_seconds`).
    pub awaiting_rack: i64,
    pub cards: Vec<BatchCard>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Transition {
    #[serde(skip)]
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub job_id: Uuid,
    pub card_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card_state: Option<String>,
}

/// A slot's last reported state, chip serial and reason.
pub(super) type SlotReport = (&'static str, Option<String>, Option<String>);

impl Store {
    /// Applies slot events and heartbeats in order, then queues every job
    /// that was waiting for a card that has now been seen.
    pub async fn apply_events(&self, events: &[EventMessage], actor: &str) -> Result<usize> {
        let fold = fold_events(events);
        on_backend!(self, s => s.apply_events(fold, actor).await)
    }

    /// Asks the rack's worker to put a quarantined slot back into service.
    pub async fn release_slot(&self, rack_id: &str, slot: u16, actor: &str) -> Result<()> {
        on_backend!(self, s => s.release_slot(rack_id, slot, actor).await)
    }

    pub async fn list_racks(&self) -> Result<Vec<RackView>> {
        on_backend!(self, s => s.list_racks().await)
    }

    pub async fn list_dead_letters(&self, limit: i64, offset: i64) -> Result<Vec<DeadLetterView>> {
        on_backend!(self, s => s.list_dead_letters(limit, offset).await)
    }

    pub async fn batch_status(
        &self,
        batch_id: Uuid,
        limit: i64,
        offset: i64,
    ) -> Result<BatchStatus> {
        let mut status = on_backend!(self, s => s.batch_status(batch_id, limit, offset).await)?;
        let ids: Vec<Uuid> = status.cards.iter().map(|c| c.job_id).collect();
        let marks = self.lease_marks(&ids).await?;
        for card in &mut status.cards {
            card.lease_expired_at = marks.get(&card.job_id).copied();
        }
        status.awaiting_rack = self.batch_awaiting_rack(batch_id).await?;
        Ok(status)
    }

    /// Job transitions of a batch after audit sequence `after`, oldest first.
    pub async fn batch_transitions(
        &self,
        batch_id: Uuid,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Transition>> {
        on_backend!(self, s => s.batch_transitions(batch_id, after, limit).await)
    }
}

/// A run of slot events and heartbeats folded into the rows they leave.
#[derive(Debug, Default)]
pub(super) struct EventFold {
    /// Last word per (rack, slot).
    pub slots: HashMap<(String, i32), SlotReport>,
    /// Where each chip now is.
    pub located: HashMap<String, (String, i32)>,
    /// Slots seen empty: chips last located there are gone.
    pub vacated: Vec<(String, i32)>,
    /// Per rack: worker id, jobs in flight, worker version.
    pub racks: HashMap<String, (String, i32, String)>,
}

/// Folds events in order: the last word on each slot and chip wins.
pub(super) fn fold_events(events: &[EventMessage]) -> EventFold {
    // Fold in order: the last word on each slot and chip wins.
    let mut slots: HashMap<(String, i32), SlotReport> = HashMap::new();
    let mut located: HashMap<String, (String, i32)> = HashMap::new();
    let mut vacated: Vec<(String, i32)> = Vec::new();
    let mut racks: HashMap<String, (String, i32, String)> = HashMap::new();
    for event in events {
        match event {
            EventMessage::SlotEvent(e) => {
                let key = (e.rack_id.clone(), i32::from(e.slot));
                let state = match e.kind {
                    SlotEventKind::Inserted | SlotEventKind::Released => "present",
                    SlotEventKind::Removed => "empty",
                    SlotEventKind::Faulted => "faulted",
                    SlotEventKind::Quarantined => "quarantined",
                };
                let serial = match e.kind {
                    SlotEventKind::Removed => None,
                    _ => e.chip_serial.clone(),
                };
                if e.kind == SlotEventKind::Inserted
                    && let Some(s) = &e.chip_serial
                {
                    located.insert(s.clone(), key.clone());
                }
                if e.kind == SlotEventKind::Removed {
                    located.retain(|_, at| *at != key);
                    vacated.push(key.clone());
                }
                slots.insert(key, (state, serial, e.reason.clone()));
            }
            EventMessage::WorkerHeartbeat(h) => {
                let in_flight = i32::try_from(h.in_flight).unwrap_or(i32::MAX);
                racks.insert(
                    h.rack_id.clone(),
                    (h.worker_id.clone(), in_flight, h.version.clone()),
                );
                for s in &h.slots {
                    // Heartbeats repeat where every chip is, repairing lost slot events.
                    let key = (h.rack_id.clone(), i32::from(s.slot));
                    match (&s.chip_serial, s.state) {
                        (Some(serial), SlotState::Present | SlotState::Encoding) => {
                            located.insert(serial.clone(), key);
                        }
                        (_, SlotState::Empty) => {
                            located.retain(|_, at| *at != key);
                            vacated.push(key);
                        }
                        _ => {}
                    }
                    let state = match s.state {
                        SlotState::Empty => "empty",
                        SlotState::Present => "present",
                        SlotState::Encoding => "encoding",
                        SlotState::Faulted => "faulted",
                        SlotState::Quarantined => "quarantined",
                    };
                    slots.insert(
                        (h.rack_id.clone(), i32::from(s.slot)),
                        (state, s.chip_serial.clone(), None),
                    );
                }
            }
        }
    }

    EventFold {
        slots,
        located,
        vacated,
        racks,
    }
}

/// The audit row of each waiting job (id, card, batch, rack) now queued.
pub(super) fn located_audit(jobs: &[(Uuid, Uuid, Uuid, String)]) -> AuditRows {
    let mut audit = AuditRows::default();
    for (job_id, card_id, batch_id, rack) in jobs {
        audit.push_job(
            "job.card_located",
            JobTransition {
                job_id: *job_id,
                card_id: *card_id,
                batch_id: *batch_id,
                from: Some(JobState::AwaitingCard.as_str()),
                to: JobState::Queued.as_str(),
                card_state: None,
            },
            Some(serde_json::json!({ "rack_id": rack })),
        );
    }
    audit
}

/// The control message and audit row of a slot release.
pub(super) fn release_request(
    rack_id: &str,
    slot: u16,
) -> (cardfleet_schemas::ControlMessage, AuditRows) {
    let message = cardfleet_schemas::ControlMessage::ReleaseSlot(cardfleet_schemas::ReleaseSlot {
        meta: cardfleet_schemas::Meta::now(),
        rack_id: rack_id.to_owned(),
        slot,
    });
    let mut audit = AuditRows::default();
    audit.push_admin(
        "slot.release_requested",
        serde_json::json!({ "rack_id": rack_id, "slot": slot }),
    );
    (message, audit)
}

/// Job counts of a batch with every state listed, and whether no job can
/// move any more.
pub(super) fn batch_counts(counted: Vec<(String, i64)>) -> (HashMap<String, i64>, bool) {
    let mut counts: HashMap<String, i64> = JobState::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    counts.extend(counted);
    let finished = JobState::ALL
        .iter()
        .filter(|s| !s.is_terminal())
        .all(|s| counts.get(s.as_str()).copied().unwrap_or(0) == 0);
    (counts, finished)
}

super::dialect::for_each_dialect! {
    impl Db {
        pub(in crate::store) async fn release_slot(
            &self,
            rack_id: &str,
            slot: u16,
            actor: &str,
        ) -> Result<()> {
            let mut tx = self.write().await?;
            let known: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM slots WHERE rack_id = $1 AND slot = $2)",
            )
            .bind(rack_id)
            .bind(i32::from(slot))
            .fetch_one(&mut *tx)
            .await?;
            if !known {
                return Err(StoreError::NotFound);
            }
            let (message, audit) = release_request(rack_id, slot);
            sqlx::query("INSERT INTO control_outbox (payload) VALUES ($1)")
                .bind(sqlx::types::Json(&message))
                .execute(&mut *tx)
                .await?;
            d::insert_audit(&mut tx, audit, actor).await?;
            self.commit_waking(tx).await?;
            Ok(())
        }

        pub(in crate::store) async fn list_racks(&self) -> Result<Vec<RackView>> {
            let racks = sqlx::query(
                "SELECT rack_id, worker_id, last_heartbeat, in_flight FROM racks ORDER BY rack_id",
            )
            .fetch_all(self.reader())
            .await?;
            let slots = sqlx::query(
                "SELECT rack_id, slot, state, chip_serial, reason, updated_at FROM slots ORDER BY rack_id, slot",
            )
            .fetch_all(self.reader())
            .await?;
            let mut by_rack: HashMap<String, Vec<SlotView>> = HashMap::new();
            for s in slots {
                by_rack
                    .entry(s.try_get("rack_id")?)
                    .or_default()
                    .push(SlotView {
                        slot: s.try_get("slot")?,
                        state: s.try_get("state")?,
                        chip_serial: s.try_get("chip_serial")?,
                        reason: s.try_get("reason")?,
                        updated_at: s.try_get("updated_at")?,
                    });
            }
            racks
                .into_iter()
                .map(|r| {
                    let rack_id: String = r.try_get("rack_id")?;
                    Ok(RackView {
                        slots: by_rack.remove(&rack_id).unwrap_or_default(),
                        rack_id,
                        worker_id: r.try_get("worker_id")?,
                        last_heartbeat: r.try_get("last_heartbeat")?,
                        in_flight: r.try_get("in_flight")?,
                    })
                })
                .collect()
        }

        pub(in crate::store) async fn list_dead_letters(
            &self,
            limit: i64,
            offset: i64,
        ) -> Result<Vec<DeadLetterView>> {
            let rows = sqlx::query(
                "SELECT id, received_at, source, reason, message_id, payload, redriven_at, redriven_by
                 FROM dead_letters ORDER BY id DESC LIMIT $1 OFFSET $2",
            )
            .bind(limit)
            .bind(offset)
            .fetch_all(self.reader())
            .await?;
            rows.into_iter()
                .map(|r| {
                    Ok(DeadLetterView {
                        id: r.try_get("id")?,
                        received_at: r.try_get("received_at")?,
                        source: r.try_get("source")?,
                        reason: r.try_get("reason")?,
                        message_id: r.try_get("message_id")?,
                        payload: r.try_get("payload")?,
                        redriven_at: r.try_get("redriven_at")?,
                        redriven_by: r.try_get("redriven_by")?,
                    })
                })
                .collect()
        }

        pub(in crate::store) async fn batch_status(
            &self,
            batch_id: Uuid,
            limit: i64,
            offset: i64,
        ) -> Result<BatchStatus> {
            let batch =
                sqlx::query("SELECT created_at, requested, accepted FROM batches WHERE id = $1")
                    .bind(d::id(batch_id))
                    .fetch_optional(self.reader())
                    .await?
                    .ok_or(StoreError::NotFound)?;
            let counted: Vec<(String, i64)> =
                sqlx::query_as("SELECT state, count(*) FROM jobs WHERE batch_id = $1 GROUP BY state")
                    .bind(d::id(batch_id))
                    .fetch_all(self.reader())
                    .await?;
            let (counts, finished) = batch_counts(counted);
            let cards = sqlx::query(
                "SELECT card_id, id, state, rack_id, reason FROM jobs WHERE batch_id = $1
                 ORDER BY card_id LIMIT $2 OFFSET $3",
            )
            .bind(d::id(batch_id))
            .bind(limit)
            .bind(offset)
            .fetch_all(self.reader())
            .await?
            .into_iter()
            .map(|r| {
                Ok(BatchCard {
                    card_id: r.uuid("card_id")?,
                    job_id: r.uuid("id")?,
                    state: r.try_get("state")?,
                    rack_id: r.try_get("rack_id")?,
                    reason: r.try_get("reason")?,
                    lease_expired_at: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
            Ok(BatchStatus {
                batch_id,
                created_at: batch.try_get("created_at")?,
                requested: batch.try_get("requested")?,
                accepted: batch.try_get("accepted")?,
                counts,
                finished,
                awaiting_rack: 0,
                cards,
            })
        }

        pub(in crate::store) async fn batch_transitions(
            &self,
            batch_id: Uuid,
            after: i64,
            limit: i64,
        ) -> Result<Vec<Transition>> {
            let rows = sqlx::query(
                "SELECT id, at, job_id, card_id, from_state, to_state, card_state FROM audit
                 WHERE batch_id = $1 AND id > $2
                   AND to_state IS NOT NULL ORDER BY id LIMIT $3",
            )
            .bind(d::id(batch_id))
            .bind(after)
            .bind(limit)
            .fetch_all(self.reader())
            .await?;
            rows.into_iter()
                .map(|r| {
                    Ok(Transition {
                        seq: r.try_get("id")?,
                        at: r.try_get("at")?,
                        job_id: r.opt_uuid("job_id")?.unwrap_or_default(),
                        card_id: r.opt_uuid("card_id")?.unwrap_or_default(),
                        from: r.try_get("from_state")?,
                        to: r
                            .try_get::<Option<String>, _>("to_state")?
                            .unwrap_or_default(),
                        card_state: r.try_get("card_state")?,
                    })
                })
                .collect()
        }
    }
}
