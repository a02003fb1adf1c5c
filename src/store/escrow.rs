//! Secret access under audit: PUK escrow (an officer reads the PUK of a
//! card's active credentials, with a reason) and PIN mailers (a finished
//! batch's PINs released once, then destroyed unless the profile keeps them;
//! an admin may reopen a release). Every access writes its audit row in the
//! transaction that reads the secret.

use std::collections::BTreeMap;

use cardfleet_schemas::CardProfile;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AuditRows, Result, Store, StoreError, on_backend};
use crate::credentials::{CredentialCipher, CredentialError, Sealed, Secret};
use crate::store::initialize::credential_context;

/// The escrowed PUK of a card.
#[derive(Debug)]
pub struct EscrowedPuk {
    pub card_id: Uuid,
    pub job_id: Uuid,
    pub puk: Secret,
}

/// The active credentials of a card, as read for escrow.
#[derive(Debug)]
pub(super) struct StoredPuk {
    pub job_id: Uuid,
    pub key_id: String,
    pub puk: Sealed,
}

/// One PIN letter.
#[derive(Debug)]
pub struct MailerLetter {
    pub card_number: String,
    pub chip_serial: String,
    pub pin: Secret,
}

/// What a PIN mailer release hands out.
#[derive(Debug)]
pub struct MailerRelease {
    pub letters: Vec<MailerLetter>,
    /// Succeeded cards whose PIN was destroyed by an earlier release.
    pub pins_destroyed_before: usize,
    /// PINs destroyed by this release (the profile does not keep them).
    pub pins_destroyed_now: usize,
    /// The how-manieth release this is.
    pub release: i32,
}

/// A succeeded card of a batch with its stored PIN, as read for a release.
#[derive(Debug)]
pub(super) struct StoredPin {
    pub job_id: Uuid,
    pub card_number: String,
    pub chip_serial: String,
    pub profile: String,
    pub key_id: String,
    /// `None` when the PIN was destroyed.
    pub pin: Option<Sealed>,
}

/// The answer to a reopen.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MailerReopen {
    pub batch_id: Uuid,
    /// PINs a next release can still hand out.
    pub pins_left: usize,
    /// PINs destroyed after an earlier release: no release can hand them out again.
    pub pins_destroyed: usize,
    pub message: String,
}

/// How a release or reopen is refused, before anything is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MailerState {
    /// Never released.
    Unreleased,
    /// Released, and not reopened since.
    Released,
    /// Released, then reopened by an admin.
    Reopened,
}

/// Longest reason accepted for a PUK read.
pub const MAX_REASON_CHARS: usize = 500;

impl Store {
    /// Reads the PUK of the card's active credentials and audits the read as
    /// `credential.puk_read` (actor, card, job, reason) in the same
    /// transaction. `NotFound` when the card has no active credentials. An
    /// `in_doubt` card's escrowed (pending) credentials are readable too, so
    /// an operator can reset the chip.
    pub async fn read_puk(
        &self,
        card_id: Uuid,
        reason: &str,
        cipher: &CredentialCipher,
        actor: &str,
    ) -> Result<EscrowedPuk> {
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
            return Err(StoreError::Invalid(format!(
                "a reason of 1 to {MAX_REASON_CHARS} characters is required"
            )));
        }
        let open = |stored: &StoredPuk| {
            cipher.open(
                &stored.key_id,
                &stored.puk,
                &credential_context(stored.job_id, "puk"),
            )
        };
        let audit = |job_id: Uuid| {
            let mut audit = AuditRows::default();
            audit.push_access(
                "credential.puk_read",
                (Some(card_id), Some(job_id), None),
                serde_json::json!({ "reason": reason }),
            );
            audit
        };
        let (job_id, puk) =
            on_backend!(self, s => s.read_puk(card_id, &open, &audit, actor).await)?;
        Ok(EscrowedPuk {
            card_id,
            job_id,
            puk,
        })
    }

    /// Releases the PIN letters of a finished batch's succeeded cards: once,
    /// or again after an admin reopened the release. Destroys the released
    /// PINs unless the card's profile keeps them. Audited as
    /// `mailers.released` with the format and counts.
    pub async fn release_mailers(
        &self,
        batch_id: Uuid,
        format: &str,
        profiles: &BTreeMap<String, CardProfile>,
        cipher: &CredentialCipher,
        actor: &str,
    ) -> Result<MailerRelease> {
        let keeps = |profile: &str| {
            profiles
                .get(profile)
                .is_some_and(|p| p.keep_pins_after_mailer)
        };
        let open = |stored: &StoredPin, sealed: &Sealed| {
            cipher.open(
                &stored.key_id,
                sealed,
                &credential_context(stored.job_id, "pin"),
            )
        };
        let mut release = on_backend!(self, s => s.release_mailers(batch_id, &keeps, &open, actor, format).await)?;
        release
            .letters
            .sort_by(|a, b| a.card_number.cmp(&b.card_number));
        Ok(release)
    }

    /// Lets the batch's PIN mailers be released once more (admin), audited
    /// as `mailers.reopened`. Destroyed PINs stay destroyed.
    pub async fn reopen_mailers(&self, batch_id: Uuid, actor: &str) -> Result<MailerReopen> {
        let mut audit = AuditRows::default();
        audit.push_access(
            "mailers.reopened",
            (None, None, Some(batch_id)),
            serde_json::json!({}),
        );
        let (left, destroyed) =
            on_backend!(self, s => s.reopen_mailers(batch_id, audit, actor).await)?;
        let message = if destroyed > 0 {
            format!(
                "reopened: the next release can hand out {left} PINs; {destroyed} PINs were destroyed after the earlier release and cannot be released again"
            )
        } else {
            format!("reopened: the next release can hand out {left} PINs")
        };
        Ok(MailerReopen {
            batch_id,
            pins_left: left,
            pins_destroyed: destroyed,
            message,
        })
    }
}

/// Checks a release may happen: the batch is finished and its mailers were
/// not released since the last reopen.
pub(super) fn check_release(live_jobs: i64, state: MailerState) -> Result<()> {
    if live_jobs > 0 {
        return Err(StoreError::Conflict {
            code: "batch_not_finished",
            message: format!(
                "the batch still has {live_jobs} unfinished jobs; PIN mailers are released for finished batches only"
            ),
        });
    }
    if state == MailerState::Released {
        return Err(StoreError::Conflict {
            code: "mailers_already_released",
            message: "the PIN mailers of this batch were released already; an admin must reopen them for another release".into(),
        });
    }
    Ok(())
}

/// Decrypts what is left, decides what to destroy, and builds the audit row.
pub(super) fn plan_release(
    batch_id: Uuid,
    stored: &[StoredPin],
    keeps: &(dyn Fn(&str) -> bool + Sync),
    open: &(
         dyn Fn(
        &StoredPin,
        &Sealed,
    ) -> std::result::Result<Secret, crate::credentials::CredentialError>
             + Sync
     ),
    format: &str,
    release: i32,
) -> Result<(MailerRelease, Vec<Uuid>, AuditRows)> {
    let mut letters = Vec::with_capacity(stored.len());
    let mut destroy = Vec::new();
    let mut destroyed_before = 0;
    for s in stored {
        let Some(sealed) = &s.pin else {
            destroyed_before += 1;
            continue;
        };
        letters.push(MailerLetter {
            card_number: s.card_number.clone(),
            chip_serial: s.chip_serial.clone(),
            pin: open(s, sealed)?,
        });
        if !keeps(&s.profile) {
            destroy.push(s.job_id);
        }
    }
    if letters.is_empty() && destroyed_before > 0 {
        return Err(StoreError::Conflict {
            code: "pins_destroyed",
            message: format!(
                "all {destroyed_before} PINs of this batch were destroyed after an earlier release; nothing is left to release"
            ),
        });
    }
    let mut audit = AuditRows::default();
    audit.push_access(
        "mailers.released",
        (None, None, Some(batch_id)),
        serde_json::json!({
            "format": format,
            "letters": letters.len(),
            "pins_destroyed_before": destroyed_before,
            "pins_destroyed_now": destroy.len(),
            "release": release,
        }),
    );
    Ok((
        MailerRelease {
            letters,
            pins_destroyed_before: destroyed_before,
            pins_destroyed_now: destroy.len(),
            release,
        },
        destroy,
        audit,
    ))
}

type OpenPuk<'a> = &'a (dyn Fn(&StoredPuk) -> std::result::Result<Secret, CredentialError> + Sync);
type OpenPin<'a> =
    &'a (dyn Fn(&StoredPin, &Sealed) -> std::result::Result<Secret, CredentialError> + Sync);

super::dialect::for_each_dialect! {
    impl Db {
        pub(in crate::store) async fn read_puk(
            &self,
            card_id: Uuid,
            open: OpenPuk<'_>,
            audit: &(dyn Fn(Uuid) -> AuditRows + Sync),
            actor: &str,
        ) -> Result<(Uuid, Secret)> {
            let mut tx = self.write().await?;
            let row = sqlx::query(
                "SELECT job_id, key_id, puk_nonce, puk_ct FROM credentials
                 WHERE card_id = $1
                   AND (status = 'active'
                        OR (status = 'pending'
                            AND (SELECT state FROM cards WHERE id = $1) = 'in_doubt'))
                 ORDER BY created_at DESC LIMIT 1",
            )
            .bind(d::id(card_id))
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
            let stored = StoredPuk {
                job_id: row.uuid("job_id")?,
                key_id: row.try_get("key_id")?,
                puk: Sealed {
                    nonce: row.try_get("puk_nonce")?,
                    ciphertext: row.try_get("puk_ct")?,
                },
            };
            let puk = open(&stored)?;
            d::insert_audit(&mut tx, audit(stored.job_id), actor).await?;
            tx.commit().await?;
            Ok((stored.job_id, puk))
        }

        async fn mailer_state(
            tx: &mut d::Tx,
            batch_id: Uuid,
        ) -> Result<(MailerState, i32)> {
            let locked: Option<i32> =
                sqlx::query_scalar(concat!("SELECT 1 FROM batches WHERE id = $1", d::for_update!()))
                    .bind(d::id(batch_id))
                    .fetch_optional(&mut **tx)
                    .await?;
            if locked.is_none() {
                return Err(StoreError::NotFound);
            }
            let row: Option<(i32, bool)> = sqlx::query_as(concat!(
                "SELECT releases, reopened FROM mailer_releases WHERE batch_id = $1",
                d::for_update!()
            ))
            .bind(d::id(batch_id))
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
            let mut tx = self.write().await?;
            let (state, releases) = Self::mailer_state(&mut tx, batch_id).await?;
            let live: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE batch_id = $1
                   AND state IN ('queued', 'awaiting_card', 'dispatched', 'encoding')",
            )
            .bind(d::id(batch_id))
            .fetch_one(&mut *tx)
            .await?;
            check_release(live, state)?;
            let rows = sqlx::query(concat!(
                "SELECT j.id AS job_id, c.card_number, c.chip_serial, c.profile,
                        cr.key_id, cr.pin_nonce, cr.pin_ct, cr.pin_destroyed_at IS NOT NULL AS destroyed
                 FROM jobs j JOIN cards c ON c.id = j.card_id JOIN credentials cr ON cr.job_id = j.id
                 WHERE j.batch_id = $1 AND j.state = 'succeeded'",
                d::for_update_of!("cr")
            ))
            .bind(d::id(batch_id))
            .fetch_all(&mut *tx)
            .await?;
            let stored = rows
                .iter()
                .map(|r| {
                    let destroyed: bool = r.try_get("destroyed")?;
                    Ok(StoredPin {
                        job_id: r.uuid("job_id")?,
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
                sqlx::query(concat!(
                    "UPDATE credentials SET pin_nonce = ",
                    d::empty_bytes!(),
                    ", pin_ct = ",
                    d::empty_bytes!(),
                    ", pin_destroyed_at = ",
                    d::now!(),
                    ", updated_at = ",
                    d::now!(),
                    " WHERE job_id ",
                    d::in_list!("$1")
                ))
                .bind(d::ids(&destroy))
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(concat!(
                "INSERT INTO mailer_releases (batch_id, releases, last_released_by)
                 VALUES ($1, 1, $2)
                 ON CONFLICT (batch_id) DO UPDATE SET releases = mailer_releases.releases + 1,
                     last_released_at = ",
                d::now!(),
                ", last_released_by = $2, reopened = false"
            ))
            .bind(d::id(batch_id))
            .bind(actor)
            .execute(&mut *tx)
            .await?;
            d::insert_audit(&mut tx, audit, actor).await?;
            tx.commit().await?;
            Ok(release)
        }

        pub(in crate::store) async fn reopen_mailers(
            &self,
            batch_id: Uuid,
            audit: AuditRows,
            actor: &str,
        ) -> Result<(usize, usize)> {
            let mut tx = self.write().await?;
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
                    .bind(d::id(batch_id))
                    .execute(&mut *tx)
                    .await?;
                d::insert_audit(&mut tx, audit, actor).await?;
            }
            let (left, destroyed): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE cr.pin_destroyed_at IS NULL),
                        count(*) FILTER (WHERE cr.pin_destroyed_at IS NOT NULL)
                 FROM jobs j JOIN credentials cr ON cr.job_id = j.id
                 WHERE j.batch_id = $1 AND j.state = 'succeeded'",
            )
            .bind(d::id(batch_id))
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok((left as usize, destroyed as usize))
        }
    }
}
