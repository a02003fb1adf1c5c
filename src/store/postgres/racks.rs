//! Rack reports, slot releases and the read models of racks, batches and
//! dead letters on PostgreSQL.

use std::collections::HashMap;

use sqlx::Row;
use uuid::Uuid;

use super::PgStore;
use crate::store::racks::{
    BatchCard, BatchStatus, DeadLetterView, EventFold, RackView, SlotView, Transition,
    batch_counts, located_audit, release_request,
};
use crate::store::{OUTBOX_CHANNEL, Result, StoreError};

impl PgStore {
    pub(in crate::store) async fn apply_events(
        &self,
        fold: EventFold,
        actor: &str,
    ) -> Result<usize> {
        let EventFold {
            slots,
            located,
            vacated,
            racks,
        } = fold;
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
            let moved: Vec<(Uuid, Uuid, Uuid, String)> = sqlx::query_as(
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
            if !moved.is_empty() {
                let job_ids: Vec<Uuid> = moved.iter().map(|m| m.0).collect();
                let job_racks: Vec<&str> = moved.iter().map(|m| m.3.as_str()).collect();
                sqlx::query(
                    "INSERT INTO outbox (job_id, rack_id) SELECT * FROM UNNEST($1::uuid[], $2::text[])",
                )
                .bind(&job_ids)
                .bind(&job_racks)
                .execute(&mut *tx)
                .await?;
                located_audit(&moved).insert_pg(&mut tx, actor).await?;
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(OUTBOX_CHANNEL)
                    .execute(&mut *tx)
                    .await?;
                queued = moved.len();
            }
        }
        tx.commit().await?;
        Ok(queued)
    }

    pub(in crate::store) async fn release_slot(
        &self,
        rack_id: &str,
        slot: u16,
        actor: &str,
    ) -> Result<()> {
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
        let (message, audit) = release_request(rack_id, slot);
        sqlx::query("INSERT INTO control_outbox (payload) VALUES ($1)")
            .bind(sqlx::types::Json(&message))
            .execute(&mut *tx)
            .await?;
        audit.insert_pg(&mut tx, actor).await?;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(OUTBOX_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(in crate::store) async fn list_racks(&self) -> Result<Vec<RackView>> {
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
                .bind(batch_id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound)?;
        let counted: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM jobs WHERE batch_id = $1 GROUP BY state")
                .bind(batch_id)
                .fetch_all(&self.pool)
                .await?;
        let (counts, finished) = batch_counts(counted);
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
