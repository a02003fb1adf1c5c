//! The public keys generated on cards (`card_public_keys`): saved from a
//! successful encoding result, shown with the card as PEM per slot.

use base64::Engine as _;
use cardfleet_schemas::{GeneratedPublicKey, Outcome, ResultMessage};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Result, Store, on_backend};

/// A key pair's public part as stored for a card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CardPublicKey {
    /// PIV key slot (`9a`, `9c`, `9d`, `9e`).
    pub slot: String,
    /// `p256`, `p384` or `rsa2048`.
    pub algorithm: String,
    /// SubjectPublicKeyInfo as a PEM `PUBLIC KEY` block.
    pub public_key_pem: String,
    /// The job whose result reported the key.
    pub job_id: Uuid,
}

/// One key to save, decoded from a result.
#[derive(Debug)]
pub(super) struct NewPublicKey {
    pub job_id: Uuid,
    pub slot: String,
    pub algorithm: String,
    pub spki_der: Vec<u8>,
}

/// A SubjectPublicKeyInfo (DER) as a PEM `PUBLIC KEY` block.
pub fn spki_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

/// The keys of the successful results among `messages`. A key whose
/// base64 does not decode is left out (the worker's encoder never makes one).
pub(super) fn keys_of_successes(messages: &[ResultMessage]) -> Vec<NewPublicKey> {
    let mut keys = Vec::new();
    for message in messages {
        let ResultMessage::EncodeResult(r) = message else {
            continue;
        };
        if r.outcome != Outcome::Succeeded {
            continue;
        }
        for GeneratedPublicKey {
            slot,
            algorithm,
            spki_der_base64,
        } in &r.public_keys
        {
            if let Ok(spki_der) = base64::engine::general_purpose::STANDARD.decode(spki_der_base64)
            {
                keys.push(NewPublicKey {
                    job_id: r.job_id,
                    slot: slot.clone(),
                    algorithm: algorithm.clone(),
                    spki_der,
                });
            }
        }
    }
    keys
}

impl Store {
    /// Saves the public keys of the successful encoding results among
    /// `messages`, per card and slot (a later success replaces them). Keys of
    /// a job the store does not know are not saved. Idempotent: a redelivered
    /// result saves the same rows again.
    pub async fn save_public_keys(&self, messages: &[ResultMessage]) -> Result<()> {
        let keys = keys_of_successes(messages);
        if keys.is_empty() {
            return Ok(());
        }
        on_backend!(self, s => s.save_public_keys(&keys).await)
    }

    /// The public keys stored for a card, by slot.
    pub async fn card_public_keys(&self, card_id: Uuid) -> Result<Vec<CardPublicKey>> {
        on_backend!(self, s => s.card_public_keys(card_id).await)
    }
}

super::dialect::for_each_dialect! {
    impl Db {
        pub(in crate::store) async fn save_public_keys(&self, keys: &[NewPublicKey]) -> Result<()> {
            let mut tx = self.write().await?;
            for key in keys {
                sqlx::query(concat!(
                    "INSERT INTO card_public_keys (card_id, slot, algorithm, spki_der, job_id)
                     SELECT card_id, $2, $3, $4, id FROM jobs WHERE id = $1
                     ON CONFLICT (card_id, slot) DO UPDATE
                     SET algorithm = excluded.algorithm, spki_der = excluded.spki_der,
                         job_id = excluded.job_id, recorded_at = ",
                    d::now!()
                ))
                .bind(d::id(key.job_id))
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
            .bind(d::id(card_id))
            .fetch_all(self.reader())
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
}
