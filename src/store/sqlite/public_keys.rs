//! Card public keys on SQLite.

use sqlx::Row;
use uuid::Uuid;

use super::{RowExt, SqliteStore, now};
use crate::store::Result;
use crate::store::public_keys::{CardPublicKey, NewPublicKey, spki_pem};

impl SqliteStore {
    pub(in crate::store) async fn save_public_keys(&self, keys: &[NewPublicKey]) -> Result<()> {
        let mut tx = self.write().await?;
        for key in keys {
            sqlx::query(concat!(
                "INSERT INTO card_public_keys (card_id, slot, algorithm, spki_der, job_id)
                 SELECT card_id, $2, $3, $4, id FROM jobs WHERE id = $1
                 ON CONFLICT (card_id, slot) DO UPDATE
                 SET algorithm = excluded.algorithm, spki_der = excluded.spki_der,
                     job_id = excluded.job_id, recorded_at = ",
                now!()
            ))
            .bind(key.job_id.hyphenated())
            .bind(&key.slot)
            .bind(&key.algorithm)
            .bind(&key.spki_der)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(in crate::store) async fn card_public_keys(
        &self,
        card_id: Uuid,
    ) -> Result<Vec<CardPublicKey>> {
        let rows = sqlx::query(
            "SELECT slot, algorithm, spki_der, job_id FROM card_public_keys
             WHERE card_id = $1 ORDER BY slot",
        )
        .bind(card_id.hyphenated())
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let der: Vec<u8> = r.try_get("spki_der")?;
                Ok(CardPublicKey {
                    slot: r.try_get("slot")?,
                    algorithm: r.try_get("algorithm")?,
                    public_key_pem: spki_pem(&der),
                    job_id: r.uuid("job_id")?,
                })
            })
            .collect()
    }
}
