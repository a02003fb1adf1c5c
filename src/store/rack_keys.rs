//! The public keys racks enrolled with: the dispatcher seals each job's
//! secrets to its rack's X25519 key, and the ledger checks the rack's
//! Ed25519 signature on every result and event (see `crate::rack_identity`). Enrolment (and re-enrolment, which replaces
//! the key) is audited with a fingerprint of the key, never the key itself.

use sha2::{Digest, Sha256};

use super::{AuditRows, Result, Store, on_backend};

/// Audit action of an enrolment.
pub const ENROLLED: &str = "rack.enrolled";

/// Hex of the first 16 bytes of SHA-256 of a public key: enough to tell
/// keys apart in the audit trail and in logs.
pub fn fingerprint(public_key: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(public_key)[..16])
}

/// The audit row of an enrolment.
pub(super) fn enroll_audit(
    rack_id: &str,
    public_key: &[u8; 32],
    signing_key: &[u8; 32],
    replaced: Option<&[u8]>,
) -> AuditRows {
    let mut audit = AuditRows::default();
    let previous = replaced.and_then(|k| <&[u8; 32]>::try_from(k).ok().map(fingerprint));
    audit.push_admin(
        ENROLLED,
        serde_json::json!({
            "rack_id": rack_id,
            "key_fingerprint": fingerprint(public_key),
            "signing_key_fingerprint": fingerprint(signing_key),
            "replaced_key_fingerprint": previous,
        }),
    );
    audit
}

impl Store {
    /// Records `public_key` (sealing) and `signing_key` (Ed25519) as the
    /// keys of `rack_id`, replacing any earlier ones, with an audit row
    /// `rack.enrolled` in the same transaction.
    pub async fn enroll_rack(
        &self,
        rack_id: &str,
        public_key: &[u8; 32],
        signing_key: &[u8; 32],
        actor: &str,
    ) -> Result<()> {
        on_backend!(self, s => s.enroll_rack(rack_id, public_key, signing_key, actor).await)
    }

    /// The Ed25519 key `rack_id` signs its messages with, if it enrolled one.
    pub async fn rack_signing_key(&self, rack_id: &str) -> Result<Option<[u8; 32]>> {
        on_backend!(self, s => s.rack_signing_key(rack_id).await)
    }

    /// The key `rack_id` enrolled with, if it has.
    pub async fn rack_public_key(&self, rack_id: &str) -> Result<Option<[u8; 32]>> {
        on_backend!(self, s => s.rack_public_key(rack_id).await)
    }
}

/// A stored key as 32 bytes; the migrations' CHECK makes any other length
/// impossible, so anything else reads as "not enrolled".
pub(super) fn stored_key(bytes: Option<Vec<u8>>) -> Option<[u8; 32]> {
    bytes.and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
}

super::dialect::for_each_dialect! {
    impl Db {
        pub(in crate::store) async fn enroll_rack(
            &self,
            rack_id: &str,
            public_key: &[u8; 32],
            signing_key: &[u8; 32],
            actor: &str,
        ) -> Result<()> {
            let mut tx = self.write().await?;
            let before: Option<Vec<u8>> = sqlx::query_scalar(concat!(
                "SELECT public_key FROM rack_keys WHERE rack_id = $1",
                d::for_update!()
            ))
            .bind(rack_id)
            .fetch_optional(&mut *tx)
            .await?;
            sqlx::query(concat!(
                "INSERT INTO rack_keys (rack_id, public_key, signing_key, enrolled_by) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (rack_id) DO UPDATE
                 SET public_key = excluded.public_key, signing_key = excluded.signing_key, enrolled_by = excluded.enrolled_by,
                     enrolled_at = ",
                d::now!()
            ))
            .bind(rack_id)
            .bind(public_key.as_slice())
            .bind(signing_key.as_slice())
            .bind(actor)
            .execute(&mut *tx)
            .await?;
            let audit = enroll_audit(rack_id, public_key, signing_key, before.as_deref());
            d::insert_audit(&mut tx, audit, actor).await?;
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
                    .fetch_optional(self.reader())
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
                    .fetch_optional(self.reader())
                    .await?;
            Ok(stored_key(key.flatten()))
        }
    }
}
