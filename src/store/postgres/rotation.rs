//! Credential key rotation on PostgreSQL: `FOR UPDATE` row locks and an
//! UNNEST update conditioned on the old key id.

use sqlx::Row;

use super::PgStore;
use crate::credentials::{CredentialCipher, Sealed};
use crate::store::Result;
use crate::store::rotation::{StoredRow, reseal_rows, rotation_audit};

impl PgStore {
    pub(in crate::store) async fn rotate_credentials(
        &self,
        cipher: &CredentialCipher,
        previous: &[String],
        limit: i64,
        actor: &str,
    ) -> Result<usize> {
        let mut tx = self.pool().begin().await?;
        let rows = sqlx::query(
            "SELECT job_id, key_id, pin_nonce, pin_ct, puk_nonce, puk_ct FROM credentials
             WHERE key_id = ANY($1) ORDER BY job_id LIMIT $2 FOR UPDATE",
        )
        .bind(previous)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let rows = rows
            .iter()
            .map(|r| {
                Ok(StoredRow {
                    job_id: r.try_get("job_id")?,
                    key_id: r.try_get("key_id")?,
                    pin: Sealed {
                        nonce: r.try_get("pin_nonce")?,
                        ciphertext: r.try_get("pin_ct")?,
                    },
                    puk: Sealed {
                        nonce: r.try_get("puk_nonce")?,
                        ciphertext: r.try_get("puk_ct")?,
                    },
                })
            })
            .collect::<sqlx::Result<Vec<_>>>()?;
        let resealed = reseal_rows(cipher, rows)?;
        let ids: Vec<_> = resealed.iter().map(|r| r.job_id).collect();
        let old: Vec<&str> = resealed.iter().map(|r| r.old_key_id.as_str()).collect();
        let pin_nonce: Vec<&[u8]> = resealed.iter().map(|r| r.pin.nonce.as_slice()).collect();
        let pin_ct: Vec<&[u8]> = resealed
            .iter()
            .map(|r| r.pin.ciphertext.as_slice())
            .collect();
        let puk_nonce: Vec<&[u8]> = resealed.iter().map(|r| r.puk.nonce.as_slice()).collect();
        let puk_ct: Vec<&[u8]> = resealed
            .iter()
            .map(|r| r.puk.ciphertext.as_slice())
            .collect();
        let changed = sqlx::query(
            "UPDATE credentials c
             SET key_id = $1, pin_nonce = u.pin_nonce, pin_ct = u.pin_ct,
                 puk_nonce = u.puk_nonce, puk_ct = u.puk_ct, updated_at = now()
             FROM UNNEST($2::uuid[], $3::text[], $4::bytea[], $5::bytea[], $6::bytea[], $7::bytea[])
                  AS u(job_id, old_key_id, pin_nonce, pin_ct, puk_nonce, puk_ct)
             WHERE c.job_id = u.job_id AND c.key_id = u.old_key_id",
        )
        .bind(cipher.key_id())
        .bind(&ids)
        .bind(&old)
        .bind(&pin_nonce)
        .bind(&pin_ct)
        .bind(&puk_nonce)
        .bind(&puk_ct)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        rotation_audit(cipher, &resealed)
            .insert_pg(&mut tx, actor)
            .await?;
        tx.commit().await?;
        Ok(usize::try_from(changed).unwrap_or(usize::MAX))
    }

    pub(in crate::store) async fn credential_key_counts(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT key_id, count(*) FROM credentials GROUP BY key_id ORDER BY key_id",
        )
        .fetch_all(self.pool())
        .await?)
    }
}
