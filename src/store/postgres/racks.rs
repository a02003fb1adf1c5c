//! Rack reports, slot releases and the read models of racks, batches and
//! dead letters on PostgreSQL.

use uuid::Uuid;

use super::PgStore;
use crate::store::racks::{EventFold, located_audit};
use crate::store::{OUTBOX_CHANNEL, Result};

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
}
