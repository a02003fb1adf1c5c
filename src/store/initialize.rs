//! Initialize requests: per card, state and enablement checks, credential
//! generation and storage, the job and its outbox row, in one transaction.
//! Also cancellation, which undoes exactly that for jobs not yet encoding.

use std::collections::{BTreeMap, HashMap, HashSet};

use cardfleet_schemas::{Cancellation, CardProfile, ControlMessage, Meta};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::audit::JobTransition;
use super::{AuditRows, Result, Store, StoreError, on_backend};
use crate::credentials::{self, CredentialCipher};
use crate::domain::planning::{
    CancelDisposition, Refusal, admit, cancel_disposition, initial_job_state,
};
use crate::domain::{CardState, JobState};

/// Which cards a request names.
#[derive(Debug, Clone)]
pub enum Selection {
    Ids(Vec<Uuid>),
    Filter { card_type: String, limit: i64 },
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CardRejection {
    pub card_id: Uuid,
    /// `unknown_card`, `wrong_state` or `unknown_profile`.
    pub code: &'static str,
    pub message: String,
    /// The card's current state, for `wrong_state`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<CardState>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InitializeOutcome {
    pub batch_id: Uuid,
    pub accepted: Vec<Uuid>,
    pub rejected: Vec<CardRejection>,
    /// How many accepted jobs were queued at once (their chip had been seen
    /// in a slot); the others wait for their card. For metrics only.
    #[serde(skip)]
    pub queued: usize,
}

/// Context the AAD of a stored credential is bound to.
pub fn credential_context(job_id: Uuid, field: &str) -> Vec<u8> {
    let mut ctx = job_id.as_bytes().to_vec();
    ctx.extend_from_slice(field.as_bytes());
    ctx
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CancelOutcome {
    /// Jobs cancelled at once; their cards are back in `produced`.
    pub cancelled: Vec<Uuid>,
    /// Jobs already encoding; workers stop them at the next safe point.
    pub stopping: Vec<Uuid>,
    /// Jobs of the selection that had already finished.
    pub finished: usize,
}

impl Store {
    pub async fn initialize(
        &self,
        selection: Selection,
        profiles: &BTreeMap<String, CardProfile>,
        cipher: &CredentialCipher,
        actor: &str,
    ) -> Result<InitializeOutcome> {
        on_backend!(self, s => s.initialize(selection, profiles, cipher, actor).await)
    }

    /// Cancels the live jobs of a batch, or of one card in it. Jobs not yet
    /// encoding are cancelled at once; all live jobs are broadcast to the
    /// workers through the control outbox.
    pub async fn cancel(
        &self,
        batch_id: Uuid,
        card_id: Option<Uuid>,
        actor: &str,
    ) -> Result<CancelOutcome> {
        on_backend!(self, s => s.cancel(batch_id, card_id, actor).await)
    }
}

/// The ids of a request, first occurrence kept.
pub(super) fn unique_ids(ids: &[Uuid]) -> Vec<Uuid> {
    let mut seen = HashSet::new();
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

/// A requested card as read (and, on PostgreSQL, locked) in the request's
/// transaction.
#[derive(Debug)]
pub(super) struct FoundCard {
    pub state: String,
    pub profile: String,
    pub chip_serial: String,
}

/// What an initialize request does, decided before anything is written.
#[derive(Debug)]
pub(super) struct Plan {
    pub batch_id: Uuid,
    pub requested: i32,
    pub accepted: Vec<Uuid>,
    pub rejected: Vec<CardRejection>,
    pub jobs: JobColumns,
}

/// Decides per requested card: refuse it (unknown, wrong state, profile not
/// loaded) or create its job with freshly generated, sealed credentials. A
/// job is queued for the rack where its chip was last seen (`locations`:
/// chip serial to rack), or waits for its card.
pub(super) fn plan_initialize(
    requested: &[Uuid],
    found: &HashMap<Uuid, FoundCard>,
    locations: &HashMap<String, String>,
    profiles: &BTreeMap<String, CardProfile>,
    cipher: &CredentialCipher,
) -> Plan {
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    let mut jobs = JobColumns::default();
    let mut rng = rand::thread_rng();
    for card_id in requested {
        let card = found.get(card_id);
        let state = card.map(|c| CardState::parse(&c.state).unwrap_or(CardState::Failed));
        let profile = card.and_then(|c| profiles.get(&c.profile));
        if let Err(refusal) = admit(state, profile.is_some()) {
            let message = match (refusal, card) {
                (Refusal::WrongState(state), _) => {
                    format!("card is {state}; only produced cards can be initialized")
                }
                (Refusal::UnknownProfile, Some(card)) => {
                    format!("the card's profile '{}' is not loaded", card.profile)
                }
                _ => "no card with this id is in stock".into(),
            };
            rejected.push(CardRejection {
                card_id: *card_id,
                code: refusal.code(),
                message,
                state,
            });
            continue;
        }
        // An admitted card was found and its profile is loaded.
        let (Some(card), Some(profile)) = (card, profile) else {
            continue;
        };
        let job_id = Uuid::now_v7();
        let pin = credentials::generate_with(&profile.pin, &mut rng);
        let puk = credentials::generate_with(&profile.puk, &mut rng);
        let pin = cipher.seal(&pin, &credential_context(job_id, "pin"));
        let puk = cipher.seal(&puk, &credential_context(job_id, "puk"));
        let rack = locations.get(&card.chip_serial).cloned();
        jobs.push(job_id, *card_id, rack, pin, puk);
        accepted.push(*card_id);
    }
    Plan {
        batch_id: Uuid::now_v7(),
        requested: i32::try_from(requested.len()).unwrap_or(i32::MAX),
        accepted,
        rejected,
        jobs,
    }
}

impl Plan {
    pub fn accepted_count(&self) -> i32 {
        i32::try_from(self.accepted.len()).unwrap_or(i32::MAX)
    }

    pub fn audit(&self) -> AuditRows {
        let mut audit = AuditRows::default();
        for i in 0..self.jobs.job_id.len() {
            audit.push_job(
                "initialize.requested",
                JobTransition {
                    job_id: self.jobs.job_id[i],
                    card_id: self.jobs.card_id[i],
                    batch_id: self.batch_id,
                    from: None,
                    to: self.jobs.state[i],
                    card_state: Some(CardState::Initializing.as_str()),
                },
                None,
            );
        }
        audit
    }

    pub fn outcome(self) -> InitializeOutcome {
        let queued = self
            .jobs
            .state
            .iter()
            .filter(|s| **s == JobState::Queued.as_str())
            .count();
        InitializeOutcome {
            batch_id: self.batch_id,
            accepted: self.accepted,
            rejected: self.rejected,
            queued,
        }
    }
}

/// What a cancellation does, decided from the selected jobs.
#[derive(Debug)]
pub(super) struct CancelPlan {
    pub outcome: CancelOutcome,
    /// Cards of the cancelled jobs, back to produced.
    pub cards: Vec<Uuid>,
    pub audit: AuditRows,
    /// The broadcast to workers, when any job was live.
    pub message: Option<ControlMessage>,
}

/// Sorts the selected jobs (id, card id, state) into cancelled at once
/// (queued, awaiting a card), stopping and already finished. A job that
/// has left for a rack (dispatched, encoding) is only asked to stop: the
/// worker's answer decides, and a result that arrives wins, because it is a
/// fact about the chip.
/// `in_flight`: queued jobs that may be on the broker already (a claim
/// holds their outbox row); they are asked to stop rather than cancelled.
pub(super) fn plan_cancel(
    batch_id: Uuid,
    jobs: Vec<(Uuid, Uuid, String)>,
    in_flight: &HashSet<Uuid>,
) -> CancelPlan {
    let mut outcome = CancelOutcome {
        cancelled: vec![],
        stopping: vec![],
        finished: 0,
    };
    let mut cards = Vec::new();
    let mut audit = AuditRows::default();
    for (job_id, card, state) in jobs {
        let state = JobState::parse(&state);
        let disposition = if in_flight.contains(&job_id) {
            CancelDisposition::Stopping
        } else {
            cancel_disposition(state)
        };
        match (disposition, state) {
            (CancelDisposition::Stopping, Some(s)) => {
                outcome.stopping.push(job_id);
                audit.push_job(
                    "job.cancel_requested",
                    JobTransition {
                        job_id,
                        card_id: card,
                        batch_id,
                        from: Some(s.as_str()),
                        to: s.as_str(),
                        card_state: None,
                    },
                    None,
                );
            }
            (CancelDisposition::Immediate, Some(s)) => {
                outcome.cancelled.push(job_id);
                cards.push(card);
                audit.push_job(
                    "job.cancelled",
                    JobTransition {
                        job_id,
                        card_id: card,
                        batch_id,
                        from: Some(s.as_str()),
                        to: JobState::Cancelled.as_str(),
                        card_state: Some(CardState::Produced.as_str()),
                    },
                    None,
                );
            }
            _ => outcome.finished += 1,
        }
    }
    let broadcast: Vec<Uuid> = outcome
        .cancelled
        .iter()
        .chain(&outcome.stopping)
        .copied()
        .collect();
    let message = (!broadcast.is_empty()).then(|| {
        ControlMessage::Cancellation(Cancellation {
            meta: Meta::now(),
            job_ids: broadcast,
            batch_id: Some(batch_id),
            reason: "cancelled by operator".into(),
        })
    });
    CancelPlan {
        outcome,
        cards,
        audit,
        message,
    }
}

/// New jobs of one request, as column arrays.
#[derive(Debug, Default)]
pub(super) struct JobColumns {
    pub job_id: Vec<Uuid>,
    pub card_id: Vec<Uuid>,
    pub state: Vec<&'static str>,
    pub rack_id: Vec<Option<String>>,
    pub pin_nonce: Vec<Vec<u8>>,
    pub pin_ct: Vec<Vec<u8>>,
    pub puk_nonce: Vec<Vec<u8>>,
    pub puk_ct: Vec<Vec<u8>>,
}

impl JobColumns {
    fn push(
        &mut self,
        job_id: Uuid,
        card_id: Uuid,
        rack: Option<String>,
        pin: credentials::Sealed,
        puk: credentials::Sealed,
    ) {
        self.job_id.push(job_id);
        self.card_id.push(card_id);
        self.state.push(initial_job_state(rack.is_some()).as_str());
        self.rack_id.push(rack);
        self.pin_nonce.push(pin.nonce);
        self.pin_ct.push(pin.ciphertext);
        self.puk_nonce.push(puk.nonce);
        self.puk_ct.push(puk.ciphertext);
    }
}

super::dialect::for_each_dialect! {
    impl Db {
        pub(in crate::store) async fn initialize(
            &self,
            selection: Selection,
            profiles: &BTreeMap<String, CardProfile>,
            cipher: &CredentialCipher,
            actor: &str,
        ) -> Result<InitializeOutcome> {
            let mut tx = self.write().await?;
            // FOR SHARE: a concurrent disable waits for this request to finish.
            let enabled: Option<bool> = sqlx::query_scalar(concat!(
                "SELECT enabled FROM process_settings WHERE name = $1",
                d::for_share!()
            ))
            .bind(crate::store::INITIALIZE_PROCESS)
            .fetch_optional(&mut *tx)
            .await?;
            if enabled != Some(true) {
                return Err(StoreError::ProcessDisabled(crate::store::INITIALIZE_PROCESS.into()));
            }

            let (requested, rows) = match &selection {
                Selection::Ids(ids) => {
                    let unique = unique_ids(ids);
                    let rows = sqlx::query(concat!(
                        "SELECT id, state, profile, chip_serial FROM cards WHERE id ",
                        d::in_list!("$1"),
                        " ORDER BY id",
                        d::for_update!()
                    ))
                    .bind(d::ids(&unique))
                    .fetch_all(&mut *tx)
                    .await?;
                    (unique, rows)
                }
                Selection::Filter { card_type, limit } => {
                    let rows = sqlx::query(concat!(
                        "SELECT id, state, profile, chip_serial FROM cards
                         WHERE card_type = $1 AND state = 'produced'
                         ORDER BY id LIMIT $2",
                        d::for_update_skip_locked!()
                    ))
                    .bind(card_type)
                    .bind(*limit)
                    .fetch_all(&mut *tx)
                    .await?;
                    let ids = rows
                        .iter()
                        .map(|r| r.uuid("id"))
                        .collect::<sqlx::Result<Vec<Uuid>>>()?;
                    (ids, rows)
                }
            };

            let mut found: HashMap<Uuid, FoundCard> = HashMap::with_capacity(rows.len());
            for r in &rows {
                found.insert(
                    r.uuid("id")?,
                    FoundCard {
                        state: r.try_get("state")?,
                        profile: r.try_get("profile")?,
                        chip_serial: r.try_get("chip_serial")?,
                    },
                );
            }
            let serials: Vec<&str> = found.values().map(|c| c.chip_serial.as_str()).collect();
            let locations: HashMap<String, String> = sqlx::query_as(concat!(
                "SELECT chip_serial, rack_id FROM slot_locations WHERE chip_serial ",
                d::in_list!("$1")
            ))
            .bind(d::texts(&serials))
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();

            let plan = plan_initialize(&requested, &found, &locations, profiles, cipher);
            sqlx::query("INSERT INTO batches (id, requested, accepted) VALUES ($1, $2, $3)")
                .bind(d::id(plan.batch_id))
                .bind(plan.requested)
                .bind(plan.accepted_count())
                .execute(&mut *tx)
                .await?;
            if plan.accepted.is_empty() {
                tx.commit().await?;
            } else {
                d::insert_jobs(&mut tx, &plan.jobs, plan.batch_id, cipher.key_id()).await?;
                d::insert_audit(&mut tx, plan.audit(), actor).await?;
                self.commit_waking(tx).await?;
            }
            Ok(plan.outcome())
        }

        pub(in crate::store) async fn cancel(
            &self,
            batch_id: Uuid,
            card_id: Option<Uuid>,
            actor: &str,
        ) -> Result<CancelOutcome> {
            let mut tx = self.write().await?;
            let batch_exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM batches WHERE id = $1)")
                    .bind(d::id(batch_id))
                    .fetch_one(&mut *tx)
                    .await?;
            if !batch_exists {
                return Err(StoreError::NotFound);
            }
            if d::ROW_LOCKS {
                // One lock order for every transaction that touches both:
                // outbox rows first, then jobs, as the dispatcher's claim
                // takes them. A claim being published holds its outbox rows;
                // this waits for it and then sees its jobs dispatched.
                sqlx::query(concat!(
                    "SELECT o.id FROM outbox o JOIN jobs j ON j.id = o.job_id
                     WHERE j.batch_id = $1 AND ($2 IS NULL OR j.card_id = $2)
                     ORDER BY o.id",
                    d::for_update_of!("o")
                ))
                .bind(d::id(batch_id))
                .bind(d::opt_id(card_id))
                .execute(&mut *tx)
                .await?;
            }
            let rows = sqlx::query(concat!(
                "SELECT id, card_id, state FROM jobs
                 WHERE batch_id = $1 AND ($2 IS NULL OR card_id = $2)
                 ORDER BY id",
                d::for_update!()
            ))
            .bind(d::id(batch_id))
            .bind(d::opt_id(card_id))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok((r.uuid("id")?, r.uuid("card_id")?, r.try_get("state")?)))
            .collect::<sqlx::Result<Vec<(Uuid, Uuid, String)>>>()?;
            if card_id.is_some() && rows.is_empty() {
                return Err(StoreError::NotFound);
            }
            // A queued job whose outbox row a dispatcher's claim holds (its
            // row became queued after the lock above) may be on the broker
            // already: it is only asked to stop, as a dispatched one. Never
            // waits, so it cannot deadlock with that claim, which locks
            // these jobs next.
            let mut in_flight = HashSet::new();
            if d::ROW_LOCKS {
                let queued: Vec<Uuid> = rows
                    .iter()
                    .filter(|(_, _, state)| state == JobState::Queued.as_str())
                    .map(|(id, _, _)| *id)
                    .collect();
                if !queued.is_empty() {
                    let free = sqlx::query(concat!(
                        "SELECT job_id FROM outbox WHERE job_id ",
                        d::in_list!("$1"),
                        d::for_update_skip_locked!()
                    ))
                    .bind(d::ids(&queued))
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| r.uuid("job_id"))
                    .collect::<sqlx::Result<HashSet<Uuid>>>()?;
                    in_flight.extend(queued.into_iter().filter(|id| !free.contains(id)));
                }
            }
            let plan = plan_cancel(batch_id, rows, &in_flight);
            if !plan.outcome.cancelled.is_empty() {
                sqlx::query(concat!(
                    "UPDATE jobs SET state = 'cancelled', reason = 'cancelled by operator', updated_at = ",
                    d::now!(),
                    " WHERE id ",
                    d::in_list!("$1")
                ))
                .bind(d::ids(&plan.outcome.cancelled))
                .execute(&mut *tx)
                .await?;
                sqlx::query(concat!(
                    "UPDATE cards SET state = 'produced', state_reason = 'initialization cancelled', updated_at = ",
                    d::now!(),
                    " WHERE id ",
                    d::in_list!("$1"),
                    " AND state = 'initializing'"
                ))
                .bind(d::ids(&plan.cards))
                .execute(&mut *tx)
                .await?;
                sqlx::query(concat!(
                    "UPDATE credentials SET status = 'revoked', updated_at = ",
                    d::now!(),
                    " WHERE job_id ",
                    d::in_list!("$1")
                ))
                .bind(d::ids(&plan.outcome.cancelled))
                .execute(&mut *tx)
                .await?;
                sqlx::query(concat!("DELETE FROM outbox WHERE job_id ", d::in_list!("$1")))
                    .bind(d::ids(&plan.outcome.cancelled))
                    .execute(&mut *tx)
                    .await?;
            }
            if !plan.outcome.stopping.is_empty() {
                sqlx::query(concat!(
                    "UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, ",
                    d::now!(),
                    "), updated_at = ",
                    d::now!(),
                    " WHERE id ",
                    d::in_list!("$1")
                ))
                .bind(d::ids(&plan.outcome.stopping))
                .execute(&mut *tx)
                .await?;
            }
            if let Some(message) = &plan.message {
                sqlx::query("INSERT INTO control_outbox (payload) VALUES ($1)")
                    .bind(sqlx::types::Json(message))
                    .execute(&mut *tx)
                    .await?;
            }
            d::insert_audit(&mut tx, plan.audit, actor).await?;
            if plan.message.is_some() {
                self.commit_waking(tx).await?;
            } else {
                tx.commit().await?;
            }
            Ok(plan.outcome)
        }
    }
}
