//! PUK escrow and PIN mailers on PostgreSQL: the batch row is locked for a
//! release, so two officers cannot both release the same mailers.

use sqlx::Row;
use uuid::Uuid;

use super::PgStore;
use crate::credentials::{CredentialError, Sealed, Secret};
use crate::store::escrow::{
    MailerRelease, MailerState, StoredPin, StoredPuk, check_release, plan_release,
};
use crate::store::{AuditRows, Result, StoreError};

type OpenPuk<'a> = &'a (dyn Fn(&StoredPuk) -> std::result::Result<Secret, CredentialError> + Sync);
type OpenPin<'a> =
    &'a (dyn Fn(&StoredPin, &Sealed) -> std::result::Result<Secret, CredentialError> + Sync);

impl PgStore {
    pub(in crate::store) async fn read_puk(
        &self,
        card_id: Uuid,
        open: OpenPuk<'_>,
        audit: &(dyn Fn(Uuid) -> AuditRows + Sync),
        actor: &str,
    ) -> Result<(Uuid, Secret)> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT job_id, key_id, puk_nonce, puk_ct FROM credentials
             WHERE card_id = $1
               AND (status = 'active'
                    OR (status = 'pending'
                        AND (SELECT state FROM cards WHERE id = $1) = 'in_doubt'))
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(card_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let stored = StoredPuk {
            job_id: row.try_get("job_id")?,
            key_id: row.try_get("key_id")?,
            puk: Sealed {
                nonce: row.try_get("puk_nonce")?,
                ciphertext: row.try_get("puk_ct")?,
            },
        };
        let puk = open(&stored)?;
        audit(stored.job_id).insert_pg(&mut tx, actor).await?;
        tx.commit().await?;
        Ok((stored.job_id, puk))
    }

    async fn mailer_state(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        batch_id: Uuid,
    ) -> Result<(MailerState, i32)> {
        let locked: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM batches WHERE id = $1 FOR UPDATE")
                .bind(batch_id)
                .fetch_optional(&mut **tx)
                .await?;
        if locked.is_none() {
            return Err(StoreError::NotFound);
        }
        let row: Option<(i32, bool)> = sqlx::query_as(
            "SELECT releases, reopened FROM mailer_releases WHERE batch_id = $1 FOR UPDATE",
        )
        .bind(batch_id)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(match row {
            None => (MailerState::Unreleased, 0),
            Some((n, false)) => (MailerState::Released, n),
            Some((n, true)) => (MailerState::Reopened, n),
        })
    }

    pub(in crate::store) async fn release_mailers(
        &self,
        batch_id: Uuid,
        keeps: &(dyn Fn(&str) -> bool + Sync),
        open: OpenPin<'_>,
        actor: &str,
        format: &str,
    ) -> Result<MailerRelease> {
        let mut tx = self.pool.begin().await?;
        let (state, releases) = Self::mailer_state(&mut tx, batch_id).await?;
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE batch_id = $1
               AND state IN ('queued', 'awaiting_card', 'dispatched', 'encoding')",
        )
        .bind(batch_id)
        .fetch_one(&mut *tx)
        .await?;
        check_release(live, state)?;
        let rows = sqlx::query(
            "SELECT j.id AS job_id, c.card_number, c.chip_serial, c.profile,
                    cr.key_id, cr.pin_nonce, cr.pin_ct, cr.pin_destroyed_at IS NOT NULL AS destroyed
             FROM jobs j JOIN cards c ON c.id = j.card_id JOIN credentials cr ON cr.job_id = j.id
             WHERE j.batch_id = $1 AND j.state = 'succeeded'
             FOR UPDATE OF cr",
        )
        .bind(batch_id)
        .fetch_all(&mut *tx)
        .await?;
        let stored = rows
            .iter()
            .map(|r| {
                let destroyed: bool = r.try_get("destroyed")?;
                Ok(StoredPin {
                    job_id: r.try_get("job_id")?,
                    card_number: r.try_get("card_number")?,
                    chip_serial: r.try_get("chip_serial")?,
                    profile: r.try_get("profile")?,
                    key_id: r.try_get("key_id")?,
                    pin: if destroyed {
                        None
                    } else {
                        Some(Sealed {
                            nonce: r.try_get("pin_nonce")?,
                            ciphertext: r.try_get("pin_ct")?,
                        })
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (release, destroy, audit) =
            plan_release(batch_id, &stored, keeps, open, format, releases + 1)?;
        if !destroy.is_empty() {
            sqlx::query(
                "UPDATE credentials SET pin_nonce = '', pin_ct = '', pin_destroyed_at = now(),
                        updated_at = now()
                 WHERE job_id = ANY($1)",
            )
            .bind(&destroy)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO mailer_releases (batch_id, releases, last_released_by)
             VALUES ($1, 1, $2)
             ON CONFLICT (batch_id) DO UPDATE SET releases = mailer_releases.releases + 1,
                 last_released_at = now(), last_released_by = $2, reopened = false",
        )
        .bind(batch_id)
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        audit.insert_pg(&mut tx, actor).await?;
        tx.commit().await?;
        Ok(release)
    }

    pub(in crate::store) async fn reopen_mailers(
        &self,
        batch_id: Uuid,
        audit: AuditRows,
        actor: &str,
    ) -> Result<(usize, usize)> {
        let mut tx = self.pool.begin().await?;
        let (state, _) = Self::mailer_state(&mut tx, batch_id).await?;
        if state == MailerState::Unreleased {
            return Err(StoreError::Conflict {
                code: "mailers_not_released",
                message:
                    "the PIN mailers of this batch were never released; there is nothing to reopen"
                        .into(),
            });
        }
        if state == MailerState::Released {
            sqlx::query("UPDATE mailer_releases SET reopened = true WHERE batch_id = $1")
                .bind(batch_id)
                .execute(&mut *tx)
                .await?;
            audit.insert_pg(&mut tx, actor).await?;
        }
        let (left, destroyed): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE cr.pin_destroyed_at IS NULL),
                    count(*) FILTER (WHERE cr.pin_destroyed_at IS NOT NULL)
             FROM jobs j JOIN credentials cr ON cr.job_id = j.id
             WHERE j.batch_id = $1 AND j.state = 'succeeded'",
        )
        .bind(batch_id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((left as usize, destroyed as usize))
    }
}
