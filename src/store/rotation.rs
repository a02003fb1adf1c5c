//! Key rotation of credentials at rest: rows encrypted under a previous key
//! of the keyring are re-encrypted under the current key, a batch per
//! transaction. Rows are locked (PostgreSQL) or written under SQLite's one
//! write lock, and every update is conditioned on the old key id, so a
//! concurrent change is never overwritten; running it again finds nothing.

use uuid::Uuid;

use super::{AuditRows, Result, Store, on_backend};
use crate::credentials::{CredentialCipher, Sealed};
use crate::store::initialize::credential_context;

/// Audit action of one re-encrypted batch.
pub const ROTATED: &str = "credentials.rotated";

/// A stored credential row as read for re-encryption.
#[derive(Debug)]
pub(super) struct StoredRow {
    pub job_id: Uuid,
    pub key_id: String,
    pub pin: Sealed,
    pub puk: Sealed,
}

/// A row re-encrypted under the current key, with the key it was under.
#[derive(Debug)]
pub(crate) struct Resealed {
    pub job_id: Uuid,
    pub old_key_id: String,
    pub pin: Sealed,
    pub puk: Sealed,
}

/// A PIN destroyed after its mailer was released is stored empty: there is
/// nothing to re-encrypt.
fn reseal_field(
    cipher: &CredentialCipher,
    key_id: &str,
    sealed: &Sealed,
    context: &[u8],
) -> Result<Sealed> {
    if sealed.nonce.is_empty() && sealed.ciphertext.is_empty() {
        return Ok(sealed.clone());
    }
    Ok(cipher.reseal(key_id, sealed, context)?)
}

/// Re-encrypts `rows` under the current key; fails (changing nothing) if
/// any row does not decrypt.
pub(super) fn reseal_rows(
    cipher: &CredentialCipher,
    rows: Vec<StoredRow>,
) -> Result<Vec<Resealed>> {
    rows.into_iter()
        .map(|r| {
            let pin = reseal_field(
                cipher,
                &r.key_id,
                &r.pin,
                &credential_context(r.job_id, "pin"),
            )?;
            let puk = reseal_field(
                cipher,
                &r.key_id,
                &r.puk,
                &credential_context(r.job_id, "puk"),
            )?;
            Ok(Resealed {
                job_id: r.job_id,
                old_key_id: r.key_id,
                pin,
                puk,
            })
        })
        .collect()
}

/// The audit row of one batch: how many rows moved from which key to which.
pub(super) fn rotation_audit(cipher: &CredentialCipher, rows: &[Resealed]) -> AuditRows {
    let mut from: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for r in rows {
        *from.entry(r.old_key_id.as_str()).or_default() += 1;
    }
    let mut audit = AuditRows::default();
    audit.push_admin(
        ROTATED,
        serde_json::json!({ "to_key_id": cipher.key_id(), "from_key_ids": from, "rows": rows.len() }),
    );
    audit
}

impl Store {
    /// Re-encrypts up to `limit` credential rows stored under a previous key
    /// of `cipher` under its current key, in one transaction; returns how
    /// many rows changed (0 when none is left).
    pub async fn rotate_credentials(
        &self,
        cipher: &CredentialCipher,
        limit: i64,
        actor: &str,
    ) -> Result<usize> {
        let previous = cipher.previous_key_ids();
        if previous.is_empty() {
            return Ok(0);
        }
        on_backend!(self, s => s.rotate_credentials(cipher, &previous, limit, actor).await)
    }

    /// How many credential rows each key id encrypts, by key id.
    pub async fn credential_key_counts(&self) -> Result<Vec<(String, i64)>> {
        on_backend!(self, s => s.credential_key_counts().await)
    }
}

super::dialect::for_each_dialect! {
    impl Db {
        pub(in crate::store) async fn rotate_credentials(
            &self,
            cipher: &CredentialCipher,
            previous: &[String],
            limit: i64,
            actor: &str,
        ) -> Result<usize> {
            let mut tx = self.write().await?;
            let rows = sqlx::query(concat!(
                "SELECT job_id, key_id, pin_nonce, pin_ct, puk_nonce, puk_ct FROM credentials
                 WHERE key_id ",
                d::in_list!("$1"),
                " ORDER BY job_id LIMIT $2",
                d::for_update!()
            ))
            .bind(d::texts(previous))
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
            let changed = d::reseal_credentials(&mut tx, cipher.key_id(), &resealed).await?;
            d::insert_audit(&mut tx, rotation_audit(cipher, &resealed), actor).await?;
            tx.commit().await?;
            Ok(usize::try_from(changed).unwrap_or(usize::MAX))
        }

        pub(in crate::store) async fn credential_key_counts(&self) -> Result<Vec<(String, i64)>> {
            Ok(sqlx::query_as(
                "SELECT key_id, count(*) FROM credentials GROUP BY key_id ORDER BY key_id",
            )
            .fetch_all(self.reader())
            .await?)
        }
    }
}
