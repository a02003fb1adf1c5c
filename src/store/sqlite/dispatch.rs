//! Outbox claims on SQLite. Rather than holding the one write lock while
//! the bus confirms, a claim holds an in-process lock that keeps other
//! dispatchers of this store off the outbox; `finish` then deletes the rows
//! and moves the jobs in one short write transaction.

use std::collections::HashSet;

use sqlx::Row;
use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

use super::{RowExt, SqliteStore, json_list, now};
use crate::credentials::Sealed;
use crate::store::Result;
use crate::store::dispatch::{
    Claim, ClaimHold, ControlClaim, OutboxJob, decode_control, dispatched_audit, sort_claimed,
};

/// Keeps a claim's rows to its dispatcher until finished or dropped.
#[derive(Debug)]
pub(in crate::store) struct ClaimLock {
    store: SqliteStore,
    _guard: OwnedMutexGuard<()>,
}

impl SqliteStore {
    pub(in crate::store) async fn claim_outbox(&self, limit: i64) -> Result<Claim> {
        let guard = self.outbox_claim.clone().lock_owned().await;
        let rows = sqlx::query(
            "SELECT o.id AS outbox_id, o.rack_id, j.id AS job_id, j.batch_id, j.state,
                    c.id AS card_id, c.card_number, c.chip_serial, c.profile, c.management_key_kdf,
                    cr.key_id, cr.pin_nonce, cr.pin_ct, cr.puk_nonce, cr.puk_ct
             FROM outbox o
             JOIN jobs j ON j.id = o.job_id
             JOIN cards c ON c.id = j.card_id
             JOIN credentials cr ON cr.job_id = j.id
             ORDER BY o.id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        let rows = rows
            .iter()
            .map(|r| {
                let job = OutboxJob {
                    outbox_id: r.try_get("outbox_id")?,
                    rack_id: r.try_get("rack_id")?,
                    job_id: r.uuid("job_id")?,
                    batch_id: r.uuid("batch_id")?,
                    card_id: r.uuid("card_id")?,
                    card_number: r.try_get("card_number")?,
                    chip_serial: r.try_get("chip_serial")?,
                    profile: r.try_get("profile")?,
                    management_key_kdf: r.try_get("management_key_kdf")?,
                    key_id: r.try_get("key_id")?,
                    pin: Sealed {
                        nonce: r.try_get("pin_nonce")?,
                        ciphertext: r.try_get("pin_ct")?,
                    },
                    puk: Sealed {
                        nonce: r.try_get("puk_nonce")?,
                        ciphertext: r.try_get("puk_ct")?,
                    },
                };
                Ok((job, r.try_get("state")?))
            })
            .collect::<Result<Vec<_>>>()?;
        let (jobs, stale) = sort_claimed(rows);
        Ok(Claim {
            hold: ClaimHold::Sqlite(ClaimLock {
                store: self.clone(),
                _guard: guard,
            }),
            jobs,
            stale,
        })
    }

    pub(in crate::store) async fn claim_control_outbox(&self, limit: i64) -> Result<ControlClaim> {
        let guard = self.control_claim.clone().lock_owned().await;
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, payload FROM control_outbox ORDER BY id LIMIT $1")
                .bind(limit)
                .fetch_all(&self.reader)
                .await?;
        let (messages, undecodable) = decode_control(
            rows.into_iter()
                .map(|(id, payload)| (id, serde_json::from_str(&payload)))
                .collect(),
        );
        Ok(ControlClaim {
            hold: ClaimHold::Sqlite(ClaimLock {
                store: self.clone(),
                _guard: guard,
            }),
            messages,
            undecodable,
        })
    }
}

impl ClaimLock {
    pub(in crate::store) async fn finish_claim(
        self,
        outbox_ids: &[i64],
        job_ids: &[Uuid],
        jobs: &[OutboxJob],
        actor: &str,
    ) -> Result<()> {
        let mut tx = self.store.write().await?;
        sqlx::query("DELETE FROM outbox WHERE id IN (SELECT value FROM json_each($1))")
            .bind(json_list(outbox_ids))
            .execute(&mut *tx)
            .await?;
        // A job a fast worker already reported on keeps its newer state.
        let moved: Vec<uuid::fmt::Hyphenated> = sqlx::query_scalar(concat!(
            "UPDATE jobs SET state = 'dispatched', updated_at = ",
            now!(),
            " WHERE id IN (SELECT value FROM json_each($1)) AND state = 'queued'
             RETURNING id"
        ))
        .bind(json_list(job_ids))
        .fetch_all(&mut *tx)
        .await?;
        let moved: HashSet<Uuid> = moved.into_iter().map(|id| id.into_uuid()).collect();
        dispatched_audit(jobs, &moved)
            .insert_sqlite(&mut tx, actor)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(in crate::store) async fn finish_control_claim(self, ids: &[i64]) -> Result<()> {
        sqlx::query("DELETE FROM control_outbox WHERE id IN (SELECT value FROM json_each($1))")
            .bind(json_list(ids))
            .execute(&self.store.writer)
            .await?;
        Ok(())
    }
}
