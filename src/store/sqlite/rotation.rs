//! Credential key rotation on SQLite: the batch is read and rewritten under
//! the one write lock, each update conditioned on the old key id.

use sqlx::Row;

use super::{RowExt, SqliteStore, json_list, now};
use crate::credentials::{CredentialCipher, Sealed};
use crate::store::Result;
use crate::store::rotation::{StoredRow, reseal_rows, rotation_audit};

impl SqliteStore {
    pub(in crate::store) async fn rotate_credentials(
        &self,
        cipher: &CredentialCipher,
        previous: &[String],
        limit: i64,
        actor: &str,
    ) -> Result<usize> {
        let mut tx = self.write().await?;
        let rows = sqlx::query(
            "SELECT job_id, key_id, pin_nonce, pin_ct, puk_nonce, puk_ct FROM credentials
             WHERE key_id IN (SELECT value FROM json_each($1)) ORDER BY job_id LIMIT $2",
        )
        .bind(json_list(previous))
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
                    job_id: r.uuid("job_id")?,
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
        let mut changed = 0u64;
        // One writer holds the lock; row-at-a-time updates cost little here.
        for r in &resealed {
            changed += sqlx::query(concat!(
                "UPDATE credentials SET key_id = $1, pin_nonce = $2, pin_ct = $3,
                        puk_nonce = $4, puk_ct = $5, updated_at = ",
                now!(),
                " WHERE job_id = $6 AND key_id = $7"
            ))
            .bind(cipher.key_id())
            .bind(r.pin.nonce.as_slice())
            .bind(r.pin.ciphertext.as_slice())
            .bind(r.puk.nonce.as_slice())
            .bind(r.puk.ciphertext.as_slice())
            .bind(r.job_id.hyphenated())
            .bind(&r.old_key_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        rotation_audit(cipher, &resealed)
            .insert_sqlite(&mut tx, actor)
            .await?;
        tx.commit().await?;
        Ok(usize::try_from(changed).unwrap_or(usize::MAX))
    }

    pub(in crate::store) async fn credential_key_counts(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT key_id, count(*) FROM credentials GROUP BY key_id ORDER BY key_id",
        )
        .fetch_all(&self.reader)
        .await?)
    }
}
