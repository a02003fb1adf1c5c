//! Dispatcher: moves the transactional outbox onto RabbitMQ with publisher
//! confirms, many publishes in flight, and deletes outbox rows only after the
//! broker confirmed them. A crash in between republishes; consumers
//! deduplicate by job id.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use cardfleet_schemas::bus::{Bus, Props, Publisher};
use cardfleet_schemas::{self as wire, CardProfile, CardSecrets, InitializeJob, JobSecrets, Meta};
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::broker;
use crate::credentials::{CredentialCipher, MasterKey};
use crate::metrics::Metrics;
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
        let mut pending = Vec::with_capacity(claim.jobs.len());
        for (i, job) in claim.jobs.iter().enumerate() {
            let message = match self.job_message(job) {
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
        if failed > 0 {
            self.metrics.publish_failures.inc_by(failed as u64);
            // Unroutable usually means a queue vanished: declare again next round.
            declared.clear();
            if let Some(e) = first_error {
                return Err(e.into());
            }
        }
        Ok(true)
    }

    fn job_message(&self, job: &OutboxJob) -> Result<InitializeJob, String> {
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
        let management_key = self
            .master_key
            .derive_management_key(&job.chip_serial, algorithm);
        self.metrics.credentials_opened.inc_by(2);
        self.metrics.management_keys_derived.inc();
        let secrets = CardSecrets {
            pin: pin.expose().to_owned(),
            puk: puk.expose().to_owned(),
            management_key: management_key.expose().to_owned(),
            management_key_algorithm: algorithm,
        };
        let plain = serde_json::to_vec(&secrets).map_err(|e| e.to_string())?;
        Ok(InitializeJob {
            meta: Meta::now(),
            job_id: job.job_id,
            batch_id: job.batch_id,
            card_id: job.card_id,
            card_number: job.card_number.clone(),
            chip_serial: job.chip_serial.clone(),
            rack_id: job.rack_id.clone(),
            profile: profile.clone(),
            secrets: JobSecrets {
                scheme: wire::SecretScheme::Plain,
                key_id: None,
                payload: base64::engine::general_purpose::STANDARD.encode(plain),
            },
        })
    }
}
