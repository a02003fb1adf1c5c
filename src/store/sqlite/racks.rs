//! Rack reports, slot releases and the read models of racks, batches and
//! dead letters on SQLite.

use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::{SqliteStore, json_list, now};
use crate::store::Result;
use crate::store::racks::{EventFold, located_audit};

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
}
