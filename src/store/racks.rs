//! What racks report (slot events, heartbeats), the dispatch of jobs that
//! were waiting for their card, and the read models of racks, batches and
//! dead letters.

use std::collections::HashMap;

use cardfleet_schemas::{EventMessage, SlotEventKind, SlotState};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use super::audit::JobTransition;
use super::{AuditRows, OUTBOX_CHANNEL, Result, Store, StoreError};
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
type SlotReport = (&'static str, Option<String>, Option<String>);

impl Store {
    /// Applies slot events and heartbeats in order, then queues every job
    /// that was waiting for a card that has now been seen.
    pub async fn apply_events(&self, events: &[EventMessage], actor: &str) -> Result<usize> {
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

        let mut tx = self.pool.begin().await?;
        if !racks.is_empty() {
            let (ids, rest): (Vec<_>, Vec<_>) = racks.into_iter().unzip();
            let workers: Vec<String> = rest.iter().map(|r| r.0.clone()).collect();
            let in_flight: Vec<i32> = rest.iter().map(|r| r.1).collect();
            let versions: Vec<String> = rest.iter().map(|r| r.2.clone()).collect();
            sqlx::query(
                "INSERT INTO racks (rack_id, worker_id, last_heartbeat, in_flight, version)
                 SELECT r.id, r.worker, now(), r.in_flight, r.version
                 FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[]) AS r(id, worker, in_flight, version)
                 ON CONFLICT (rack_id) DO UPDATE SET worker_id = EXCLUDED.worker_id,
                    last_heartbeat = now(), in_flight = EXCLUDED.in_flight, version = EXCLUDED.version",
            )
            .bind(&ids)
            .bind(&workers)
            .bind(&in_flight)
            .bind(&versions)
            .execute(&mut *tx)
            .await?;
        }
        if !slots.is_empty() {
            let mut rack_ids = Vec::new();
            let mut numbers = Vec::new();
            let mut states = Vec::new();
            let mut serials = Vec::new();
            let mut reasons = Vec::new();
            for ((rack, slot), (state, serial, reason)) in slots {
                rack_ids.push(rack);
                numbers.push(slot);
                states.push(state);
                serials.push(serial);
                reasons.push(reason);
            }
            sqlx::query(
                "INSERT INTO racks (rack_id) SELECT DISTINCT r FROM UNNEST($1::text[]) AS r
                 ON CONFLICT (rack_id) DO NOTHING",
            )
            .bind(&rack_ids)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO slots (rack_id, slot, state, chip_serial, reason)
                 SELECT * FROM UNNEST($1::text[], $2::int[], $3::text[], $4::text[], $5::text[])
                 ON CONFLICT (rack_id, slot) DO UPDATE SET state = EXCLUDED.state,
                    chip_serial = EXCLUDED.chip_serial, reason = EXCLUDED.reason, updated_at = now()",
            )
            .bind(&rack_ids)
            .bind(&numbers)
            .bind(&states)
            .bind(&serials)
            .bind(&reasons)
            .execute(&mut *tx)
            .await?;
        }
        for (rack, slot) in &vacated {
            sqlx::query("DELETE FROM slot_locations WHERE rack_id = $1 AND slot = $2")
                .bind(rack)
                .bind(slot)
                .execute(&mut *tx)
                .await?;
        }
        let mut queued = 0;
        if !located.is_empty() {
            let mut serials = Vec::new();
            let mut rack_ids = Vec::new();
            let mut numbers = Vec::new();
            for (serial, (rack, slot)) in located {
                serials.push(serial);
                rack_ids.push(rack);
                numbers.push(slot);
            }
            sqlx::query(
                "INSERT INTO slot_locations (chip_serial, rack_id, slot)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[])
                 ON CONFLICT (chip_serial) DO UPDATE SET rack_id = EXCLUDED.rack_id,
                    slot = EXCLUDED.slot, seen_at = now()",
            )
            .bind(&serials)
            .bind(&rack_ids)
            .bind(&numbers)
            .execute(&mut *tx)
            .await?;
            let rows = sqlx::query(
                "WITH locked AS (
                    SELECT j.id, l.rack_id FROM jobs j
                    JOIN cards c ON c.id = j.card_id
                    JOIN slot_locations l ON l.chip_serial = c.chip_serial
                    WHERE j.state = 'awaiting_card' AND c.chip_serial = ANY($1)
                    ORDER BY j.id FOR UPDATE OF j
                 )
                 UPDATE jobs SET state = 'queued', rack_id = locked.rack_id, updated_at = now()
                 FROM locked WHERE jobs.id = locked.id
                 RETURNING jobs.id, jobs.card_id, jobs.batch_id, jobs.rack_id",
            )
            .bind(&serials)
            .fetch_all(&mut *tx)
            .await?;
            if !rows.is_empty() {
                let mut job_ids = Vec::with_capacity(rows.len());
                let mut job_racks = Vec::with_capacity(rows.len());
                let mut audit = AuditRows::default();
                for r in &rows {
                    let job_id: Uuid = r.try_get("id")?;
                    let rack: String = r.try_get("rack_id")?;
                    audit.push_job(
                        "job.card_located",
                        JobTransition {
                            job_id,
                            card_id: r.try_get("card_id")?,
                            batch_id: r.try_get("batch_id")?,
                            from: Some(JobState::AwaitingCard.as_str()),
                            to: JobState::Queued.as_str(),
                            card_state: None,
                        },
                        Some(serde_json::json!({ "rack_id": rack })),
                    );
                    job_ids.push(job_id);
                    job_racks.push(rack);
                }
                sqlx::query(
                    "INSERT INTO outbox (job_id, rack_id) SELECT * FROM UNNEST($1::uuid[], $2::text[])",
                )
                .bind(&job_ids)
                .bind(&job_racks)
                .execute(&mut *tx)
                .await?;
                audit.insert(&mut tx, actor).await?;
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(OUTBOX_CHANNEL)
                    .execute(&mut *tx)
                    .await?;
                queued = rows.len();
            }
        }
        tx.commit().await?;
        Ok(queued)
    }

    /// Asks the rack's worker to put a quarantined slot back into service.
    pub async fn release_slot(&self, rack_id: &str, slot: u16, actor: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
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
        let message =
            cardfleet_schemas::ControlMessage::ReleaseSlot(cardfleet_schemas::ReleaseSlot {
                meta: cardfleet_schemas::Meta::now(),
                rack_id: rack_id.to_owned(),
                slot,
            });
        sqlx::query("INSERT INTO control_outbox (payload) VALUES ($1)")
            .bind(sqlx::types::Json(&message))
            .execute(&mut *tx)
            .await?;
        let mut audit = AuditRows::default();
        audit.push_admin(
            "slot.release_requested",
            serde_json::json!({ "rack_id": rack_id, "slot": slot }),
        );
        audit.insert(&mut tx, actor).await?;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(OUTBOX_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn list_racks(&self) -> Result<Vec<RackView>> {
        let racks = sqlx::query(
            "SELECT rack_id, worker_id, last_heartbeat, in_flight FROM racks ORDER BY rack_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let slots = sqlx::query(
            "SELECT rack_id, slot, state, chip_serial, reason, updated_at FROM slots ORDER BY rack_id, slot",
        )
        .fetch_all(&self.pool)
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

    pub async fn list_dead_letters(&self, limit: i64, offset: i64) -> Result<Vec<DeadLetterView>> {
        let rows = sqlx::query(
            "SELECT id, received_at, source, reason, message_id, payload FROM dead_letters
             ORDER BY id DESC LIMIT $1 OFFSET $2",
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
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
                })
            })
            .collect()
    }

    pub async fn batch_status(
        &self,
        batch_id: Uuid,
        limit: i64,
        offset: i64,
    ) -> Result<BatchStatus> {
        let batch =
            sqlx::query("SELECT created_at, requested, accepted FROM batches WHERE id = $1")
                .bind(batch_id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound)?;
        let counted: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM jobs WHERE batch_id = $1 GROUP BY state")
                .bind(batch_id)
                .fetch_all(&self.pool)
                .await?;
        let mut counts: HashMap<String, i64> = JobState::ALL
            .iter()
            .map(|s| (s.as_str().to_owned(), 0))
            .collect();
        counts.extend(counted);
        let finished = JobState::ALL
            .iter()
            .filter(|s| !s.is_terminal())
            .all(|s| counts.get(s.as_str()).copied().unwrap_or(0) == 0);
        let cards = sqlx::query(
            "SELECT card_id, id, state, rack_id, reason FROM jobs WHERE batch_id = $1
             ORDER BY card_id LIMIT $2 OFFSET $3",
        )
        .bind(batch_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| {
            Ok(BatchCard {
                card_id: r.try_get("card_id")?,
                job_id: r.try_get("id")?,
                state: r.try_get("state")?,
                rack_id: r.try_get("rack_id")?,
                reason: r.try_get("reason")?,
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
            cards,
        })
    }

    /// Job transitions of a batch after audit sequence `after`, oldest first.
    pub async fn batch_transitions(
        &self,
        batch_id: Uuid,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Transition>> {
        let rows = sqlx::query(
            "SELECT id, at, job_id, card_id, from_state, to_state, card_state FROM audit
             WHERE batch_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(batch_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Transition {
                    seq: r.try_get("id")?,
                    at: r.try_get("at")?,
                    job_id: r.try_get::<Option<Uuid>, _>("job_id")?.unwrap_or_default(),
                    card_id: r.try_get::<Option<Uuid>, _>("card_id")?.unwrap_or_default(),
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
