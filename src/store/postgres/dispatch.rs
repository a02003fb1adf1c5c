//! Outbox claims on PostgreSQL: `FOR UPDATE SKIP LOCKED` lets several
//! dispatchers share the outbox; the claim's transaction holds the row locks
//! until `finish`.

use std::collections::HashSet;

use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::PgStore;
use crate::credentials::Sealed;
use crate::store::Result;
use crate::store::dispatch::{
    Claim, ClaimHold, ControlClaim, OutboxJob, decode_control, dispatched_audit, sort_claimed,
};

impl PgStore {
    pub(in crate::store) async fn claim_outbox(&self, limit: i64) -> Result<Claim> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT o.id AS outbox_id, o.rack_id, j.id AS job_id, j.batch_id, j.state,
                    c.id AS card_id, c.card_number, c.chip_serial, c.profile, c.management_key_kdf,
                    cr.key_id, cr.pin_nonce, cr.pin_ct, cr.puk_nonce, cr.puk_ct
             FROM outbox o
             JOIN jobs j ON j.id = o.job_id
             JOIN cards c ON c.id = j.card_id
             JOIN credentials cr ON cr.job_id = j.id
             ORDER BY o.id LIMIT $1
             FOR UPDATE OF o SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let rows = rows
            .iter()
            .map(|r| {
                let job = OutboxJob {
                    outbox_id: r.try_get("outbox_id")?,
                    rack_id: r.try_get("rack_id")?,
                    job_id: r.try_get("job_id")?,
                    batch_id: r.try_get("batch_id")?,
                    card_id: r.try_get("card_id")?,
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
            hold: ClaimHold::Postgres(tx),
            jobs,
            stale,
        })
    }

    pub(in crate::store) async fn claim_control_outbox(&self, limit: i64) -> Result<ControlClaim> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(i64, serde_json::Value)> = sqlx::query_as(
            "SELECT id, payload FROM control_outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let (messages, undecodable) = decode_control(
            rows.into_iter()
                .map(|(id, payload)| (id, serde_json::from_value(payload)))
                .collect(),
        );
        Ok(ControlClaim {
            hold: ClaimHold::Postgres(tx),
            messages,
            undecodable,
        })
    }
}

pub(in crate::store) async fn finish_claim(
    mut tx: Transaction<'static, Postgres>,
    outbox_ids: &[i64],
    job_ids: &[Uuid],
    jobs: &[OutboxJob],
    actor: &str,
) -> Result<()> {
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(outbox_ids)
        .execute(&mut *tx)
        .await?;
    // A job a fast worker already reported on keeps its newer state.
    // Rows are locked in id order, as the ledger locks them, so the two
    // never deadlock over jobs a fast worker already reported on.
    let moved: Vec<Uuid> = sqlx::query_scalar(
        "WITH locked AS (
            SELECT id FROM jobs WHERE id = ANY($1) AND state = 'queued' ORDER BY id FOR UPDATE
         )
         UPDATE jobs SET state = 'dispatched', updated_at = now()
         FROM locked WHERE jobs.id = locked.id RETURNING jobs.id",
    )
    .bind(job_ids)
    .fetch_all(&mut *tx)
    .await?;
    let moved: HashSet<Uuid> = moved.into_iter().collect();
    dispatched_audit(jobs, &moved)
        .insert_pg(&mut tx, actor)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub(in crate::store) async fn finish_control_claim(
    mut tx: Transaction<'static, Postgres>,
    ids: &[i64],
) -> Result<()> {
    sqlx::query("DELETE FROM control_outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
