//! Rack enrolment keys on SQLite.

use super::{SqliteStore, now};
use crate::store::Result;
use crate::store::rack_keys::{enroll_audit, stored_key};

impl SqliteStore {
    pub(in crate::store) async fn enroll_rack(
        &self,
        rack_id: &str,
        public_key: &[u8; 32],
        signing_key: &[u8; 32],
        actor: &str,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let before: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT public_key FROM rack_keys WHERE rack_id = $1")
                .bind(rack_id)
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query(concat!(
            "INSERT INTO rack_keys (rack_id, public_key, signing_key, enrolled_by) VALUES ($1, $2, $3, $4)
             ON CONFLICT (rack_id) DO UPDATE
             SET public_key = excluded.public_key, signing_key = excluded.signing_key, enrolled_by = excluded.enrolled_by,
                 enrolled_at = ",
            now!()
        ))
        .bind(rack_id)
        .bind(public_key.as_slice())
        .bind(signing_key.as_slice())
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        enroll_audit(rack_id, public_key, signing_key, before.as_deref())
            .insert_sqlite(&mut tx, actor)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(in crate::store) async fn rack_public_key(
        &self,
        rack_id: &str,
    ) -> Result<Option<[u8; 32]>> {
        let key: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT public_key FROM rack_keys WHERE rack_id = $1")
                .bind(rack_id)
                .fetch_optional(&self.reader)
                .await?;
        Ok(stored_key(key))
    }

    pub(in crate::store) async fn rack_signing_key(
        &self,
        rack_id: &str,
    ) -> Result<Option<[u8; 32]>> {
        let key: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT signing_key FROM rack_keys WHERE rack_id = $1")
                .bind(rack_id)
                .fetch_optional(&self.reader)
                .await?;
        Ok(stored_key(key.flatten()))
    }
}
