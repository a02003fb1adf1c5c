//! Rack reports, slot releases and the read models of racks, batches and
//! dead letters on SQLite.

use std::collections::HashMap;

use sqlx::Row;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::{RowExt, SqliteStore, json_list, now};
use crate::store::racks::{
    BatchCard, BatchStatus, DeadLetterView, EventFold, RackView, SlotView, Transition,
    batch_counts, located_audit, release_request,
};
use crate::store::{Result, StoreError};

impl SqliteStore {
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
        let mut tx = self.write().await?;
        if !racks.is_empty() {
            let rows: Vec<_> = racks
                .iter()
                .map(|(id, (worker, in_flight, version))| (id, worker, in_flight, version))
                .collect();
            // `WHERE true` tells SQLite's parser the ON CONFLICT belongs to the INSERT.
            sqlx::query(concat!(
                "INSERT INTO racks (rack_id, worker_id, last_heartbeat, in_flight, version)
                 SELECT value->>0, value->>1, ",
                now!(),
                ", value->>2, value->>3 FROM json_each($1) WHERE true
                 ON CONFLICT (rack_id) DO UPDATE SET worker_id = excluded.worker_id,
                    last_heartbeat = excluded.last_heartbeat, in_flight = excluded.in_flight,
                    version = excluded.version"
            ))
            .bind(json_list(&rows))
            .execute(&mut *tx)
            .await?;
        }
        if !slots.is_empty() {
            let rows: Vec<_> = slots
                .iter()
                .map(|((rack, slot), (state, serial, reason))| (rack, slot, state, serial, reason))
                .collect();
            let rows = json_list(&rows);
            sqlx::query(
                "INSERT INTO racks (rack_id) SELECT DISTINCT value->>0 FROM json_each($1) WHERE true
                 ON CONFLICT (rack_id) DO NOTHING",
            )
            .bind(rows)
            .execute(&mut *tx)
            .await?;
            sqlx::query(concat!(
                "INSERT INTO slots (rack_id, slot, state, chip_serial, reason)
                 SELECT value->>0, value->>1, value->>2, value->>3, value->>4 FROM json_each($1) WHERE true
                 ON CONFLICT (rack_id, slot) DO UPDATE SET state = excluded.state,
                    chip_serial = excluded.chip_serial, reason = excluded.reason, updated_at = ",
                now!()
            ))
            .bind(rows)
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
            let rows: Vec<_> = located
                .iter()
                .map(|(serial, (rack, slot))| (serial, rack, slot))
                .collect();
            sqlx::query(concat!(
                "INSERT INTO slot_locations (chip_serial, rack_id, slot)
                 SELECT value->>0, value->>1, value->>2 FROM json_each($1) WHERE true
                 ON CONFLICT (chip_serial) DO UPDATE SET rack_id = excluded.rack_id,
                    slot = excluded.slot, seen_at = ",
                now!()
            ))
            .bind(json_list(&rows))
            .execute(&mut *tx)
            .await?;
            let serials: Vec<&String> = located.keys().collect();
            let found: Vec<(Hyphenated, Hyphenated, Hyphenated, String)> = sqlx::query_as(
                "SELECT j.id, j.card_id, j.batch_id, l.rack_id FROM jobs j
                 JOIN cards c ON c.id = j.card_id
                 JOIN slot_locations l ON l.chip_serial = c.chip_serial
                 WHERE j.state = 'awaiting_card'
                   AND c.chip_serial IN (SELECT value FROM json_each($1))
                 ORDER BY j.id",
            )
            .bind(json_list(&serials))
            .fetch_all(&mut *tx)
            .await?;
            if !found.is_empty() {
                let moved: Vec<(Uuid, Uuid, Uuid, String)> = found
                    .into_iter()
                    .map(|(job, card, batch, rack)| {
                        (job.into_uuid(), card.into_uuid(), batch.into_uuid(), rack)
                    })
                    .collect();
                let rows: Vec<_> = moved.iter().map(|m| (m.0, &m.3)).collect();
                let rows = json_list(&rows);
                sqlx::query(concat!(
                    "UPDATE jobs SET state = 'queued', rack_id = u.value->>1, updated_at = ",
                    now!(),
                    " FROM json_each($1) AS u WHERE jobs.id = u.value->>0"
                ))
                .bind(rows)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO outbox (job_id, rack_id)
                     SELECT value->>0, value->>1 FROM json_each($1) ORDER BY key",
                )
                .bind(rows)
                .execute(&mut *tx)
                .await?;
                located_audit(&moved).insert_sqlite(&mut tx, actor).await?;
                queued = moved.len();
            }
        }
        tx.commit().await?;
        if queued > 0 {
            self.wake_dispatchers();
        }
        Ok(queued)
    }

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
        audit.insert_sqlite(&mut tx, actor).await?;
        tx.commit().await?;
        self.wake_dispatchers();
        Ok(())
    }

    pub(in crate::store) async fn list_racks(&self) -> Result<Vec<RackView>> {
        let racks = sqlx::query(
            "SELECT rack_id, worker_id, last_heartbeat, in_flight FROM racks ORDER BY rack_id",
        )
        .fetch_all(&self.reader)
        .await?;
        let slots = sqlx::query(
            "SELECT rack_id, slot, state, chip_serial, reason, updated_at FROM slots ORDER BY rack_id, slot",
        )
        .fetch_all(&self.reader)
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
        .fetch_all(&self.reader)
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
                .bind(batch_id.hyphenated())
                .fetch_optional(&self.reader)
                .await?
                .ok_or(StoreError::NotFound)?;
        let counted: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM jobs WHERE batch_id = $1 GROUP BY state")
                .bind(batch_id.hyphenated())
                .fetch_all(&self.reader)
                .await?;
        let (counts, finished) = batch_counts(counted);
        let cards = sqlx::query(
            "SELECT card_id, id, state, rack_id, reason FROM jobs WHERE batch_id = $1
             ORDER BY card_id LIMIT $2 OFFSET $3",
        )
        .bind(batch_id.hyphenated())
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.reader)
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
        .bind(batch_id.hyphenated())
        .bind(after)
        .bind(limit)
        .fetch_all(&self.reader)
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
