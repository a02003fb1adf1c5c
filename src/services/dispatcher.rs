//! Dispatcher: moves the transactional outbox onto RabbitMQ with publisher
//! confirms, many publishes in flight, and deletes outbox rows only after the
//! broker confirmed them. A crash in between republishes; consumers
//! deduplicate by job id.
//!
//! Each job's PIN, PUK and management key are sealed to its rack's enrolled
//! public key (`cardfleet_schemas::sealing`); a job whose rack has no key is
//! failed with `rack_not_enrolled` instead of being published.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cardfleet_schemas::bus::{Bus, Props, Publisher};
use cardfleet_schemas::sealing::{self, RackPublicKey};
use cardfleet_schemas::{
    self as wire, CardProfile, CardSecrets, InitializeJob, Meta, ResultMessage,
};
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::broker;
use crate::credentials::{CredentialCipher, ManagementKeyKdf, MasterKey};
use crate::domain::failures::{FailedJob, failed_result};
use crate::metrics::{Metrics, RACK_NOT_ENROLLED};
use crate::store::Store;
use crate::store::dispatch::OutboxJob;
use crate::store::initialize::credential_context;

#[derive(Debug, Clone)]
pub struct Dispatcher {
    pub store: Store,
    pub bus: Bus,
    pub delivery_limit: u32,
    pub batch_size: i64,
    pub poll_interval: Duration,
    pub reconnect_max: Duration,
    pub cipher: CredentialCipher,
    pub master_key: MasterKey,
    pub profiles: Arc<BTreeMap<String, CardProfile>>,
    pub metrics: Metrics,
}

impl Dispatcher {
    /// Runs until `shutdown`, reconnecting to RabbitMQ and PostgreSQL as needed.
    pub async fn run(self, shutdown: CancellationToken) {
        broker::run_reconnecting(
            "dispatcher",
            &self.metrics,
            self.reconnect_max,
            &shutdown,
            || self.session(&shutdown),
        )
        .await;
    }

    async fn session(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let conn = self.bus.connect("cardfleet-dispatcher").await?;
        let channel = conn.publisher().await?;
        channel.declare_topology().await?;
        let mut listener = self.store.outbox_listener().await?;
        tracing::info!("dispatcher connected");
        let mut declared: HashSet<String> = HashSet::new();
        loop {
            let mut busy = self.publish_cancellations(&channel).await?;
            busy |= self.publish_jobs(&channel, &mut declared).await?;
            if busy {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    conn.close().await;
                    return Ok(());
                }
                n = listener.recv() => { n?; }
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }

    async fn publish_cancellations(&self, channel: &Publisher) -> anyhow::Result<bool> {
        let claim = self.store.claim_control_outbox(100).await?;
        if claim.is_empty() {
            return Ok(false);
        }
        for (_, message) in &claim.messages {
            let payload = serde_json::to_vec(message)?;
            let props = Props::new(&message.meta().message_id.to_string(), "control");
            // A fanout exchange with no worker bound is not an error.
            let confirmed = channel
                .publish(wire::CONTROL_EXCHANGE, "", &payload, &props, false)
                .await?
                .confirmed()
                .await?;
            if !confirmed {
                anyhow::bail!("broker refused a control message");
            }
            self.metrics.cancellations_published.inc();
        }
        claim.finish().await?;
        Ok(true)
    }

    async fn publish_jobs(
        &self,
        channel: &Publisher,
        declared: &mut HashSet<String>,
    ) -> anyhow::Result<bool> {
        let claim = self.store.claim_outbox(self.batch_size).await?;
        if claim.is_empty() {
            return Ok(false);
        }
        for job in &claim.jobs {
            if !declared.contains(&job.rack_id) {
                channel
                    .declare_rack_queue(&job.rack_id, self.delivery_limit)
                    .await?;
                declared.insert(job.rack_id.clone());
            }
        }
        // One key lookup per rack per round.
        let mut keys: HashMap<&str, Option<RackPublicKey>> = HashMap::new();
        for job in &claim.jobs {
            if !keys.contains_key(job.rack_id.as_str()) {
                let key = self.store.rack_public_key(&job.rack_id).await?;
                keys.insert(&job.rack_id, key.map(RackPublicKey::from_bytes));
            }
        }
        let mut unenrolled = Vec::new();
        let mut pending = Vec::with_capacity(claim.jobs.len());
        for (i, job) in claim.jobs.iter().enumerate() {
            let Some(Some(rack_key)) = keys.get(job.rack_id.as_str()) else {
                unenrolled.push(not_enrolled(job));
                continue;
            };
            let message = match self.job_message(job, rack_key) {
                Ok(m) => m,
                Err(reason) => {
                    // Stays in the outbox; logged each round until an operator acts.
                    tracing::error!(job.id = %job.job_id, %reason, "job cannot be dispatched");
                    continue;
                }
            };
            let payload = serde_json::to_vec(&message)?;
            let props = Props::new(&job.job_id.to_string(), "initialize_job");
            let confirm = channel
                .publish(wire::JOBS_EXCHANGE, &job.rack_id, &payload, &props, true)
                .await?;
            pending.push((i, confirm.confirmed()));
        }
        let (indexes, confirms): (Vec<usize>, Vec<_>) = pending.into_iter().unzip();
        let mut published = Vec::with_capacity(indexes.len());
        let mut failed = 0usize;
        let mut first_error = None;
        for (i, result) in indexes.into_iter().zip(join_all(confirms).await) {
            match result {
                Ok(true) => published.push(i),
                Ok(false) => failed += 1,
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        let n = claim.finish(&published, "dispatcher").await?;
        self.metrics.jobs_published.inc_by(n as u64);
        // After the claim is finished, so its locks are gone; the jobs'
        // outbox rows are then stale and go with the next claim.
        self.fail_unenrolled(unenrolled).await?;
        if failed > 0 {
            self.metrics.publish_failures.inc_by(failed as u64);
            // Unroutable usually means a queue vanished: declare again next round.
            declared.clear();
            if let Some(e) = first_error {
                return Err(e.into());
            }
            // Start over on a fresh connection: after a quorum queue's
            // leader node died, a channel can keep having its publishes
            // refused while a new one is served by the new leader.
            anyhow::bail!("the broker refused or returned {failed} publishes");
        }
        Ok(true)
    }

    /// Fails jobs whose rack has no enrolled key: their cards go back to
    /// `produced`, as for any failure that leaves the card unharmed.
    async fn fail_unenrolled(&self, failed: Vec<ResultMessage>) -> anyhow::Result<()> {
        if failed.is_empty() {
            return Ok(());
        }
        let mut racks: BTreeMap<&str, usize> = BTreeMap::new();
        for m in &failed {
            if let ResultMessage::EncodeResult(r) = m {
                *racks.entry(r.rack_id.as_str()).or_default() += 1;
            }
        }
        for (rack, jobs) in &racks {
            tracing::warn!(
                rack.id = %rack,
                jobs,
                "rack has no enrolled key; failing its jobs with rack_not_enrolled"
            );
        }
        self.store.apply_results(&failed, "dispatcher").await?;
        self.metrics
            .jobs_undispatchable
            .with_label_values(&[RACK_NOT_ENROLLED])
            .inc_by(failed.len() as u64);
        Ok(())
    }

    fn job_message(
        &self,
        job: &OutboxJob,
        rack_key: &RackPublicKey,
    ) -> Result<InitializeJob, String> {
        let profile = self
            .profiles
            .get(&job.profile)
            .ok_or_else(|| format!("profile '{}' is not loaded", job.profile))?;
        let pin = self
            .cipher
            .open(
                &job.key_id,
                &job.pin,
                &credential_context(job.job_id, "pin"),
            )
            .map_err(|e| e.to_string())?;
        let puk = self
            .cipher
            .open(
                &job.key_id,
                &job.puk,
                &credential_context(job.job_id, "puk"),
            )
            .map_err(|e| e.to_string())?;
        let algorithm = profile.management_key.algorithm;
        // The card's own KDF version: a card keeps the key its chip holds.
        let kdf = ManagementKeyKdf::from_number(job.management_key_kdf.into())
            .ok_or_else(|| format!("unknown management-key KDF {}", job.management_key_kdf))?;
        let management_key =
            self.master_key
                .derive_management_key_with(kdf, &job.chip_serial, algorithm);
        self.metrics.credentials_opened.inc_by(2);
        self.metrics.management_keys_derived.inc();
        // CardSecrets zeroizes its strings on drop; `seal` zeroizes the JSON.
        let secrets = CardSecrets {
            pin: pin.expose().to_owned(),
            puk: puk.expose().to_owned(),
            management_key: management_key.expose().to_owned(),
            management_key_algorithm: algorithm,
        };
        let sealed = sealing::seal(rack_key, &job.rack_id, job.job_id, &secrets)
            .map_err(|e| e.to_string())?;
        Ok(InitializeJob {
            meta: Meta::now(),
            job_id: job.job_id,
            batch_id: job.batch_id,
            card_id: job.card_id,
            card_number: job.card_number.clone(),
            chip_serial: job.chip_serial.clone(),
            rack_id: job.rack_id.clone(),
            profile: profile.clone(),
            secrets: sealed,
        })
    }
}

/// The failed result of a job whose rack has no key to seal its secrets to.
fn not_enrolled(job: &OutboxJob) -> ResultMessage {
    failed_result(
        FailedJob {
            job_id: job.job_id,
            batch_id: job.batch_id,
            card_id: job.card_id,
            rack_id: job.rack_id.clone(),
            started_at: chrono::Utc::now(),
        },
        "dispatcher",
        RACK_NOT_ENROLLED,
        format!(
            "rack '{}' has no enrolled key to seal the job's secrets to; enroll it \
             (cardfleet racks enroll-token) and submit the card again",
            job.rack_id
        ),
    )
}
