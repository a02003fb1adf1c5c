//! Ledger: consumes results, slot events and dead letters, applies each
//! batch of messages in one database transaction and acks only after the
//! commit. Undecodable messages, results for unknown jobs and messages the
//! database refuses are recorded as dead letters (once each, after the
//! commit) and acked: no message can stop the ledger.

use std::time::Duration;

use cardfleet_schemas::bus::{Bus, Consumer, Delivery};
use cardfleet_schemas::codes::Code;
use cardfleet_schemas::sealing::SECRETS_UNOPENABLE;
use cardfleet_schemas::{self as wire, EventMessage, InitializeJob, Meta, Outcome, ResultMessage};
use tokio_util::sync::CancellationToken;

use crate::broker;
use crate::domain::failures::{DEAD_LETTERED, FailedJob, failed_result};
use crate::metrics::Metrics;
use crate::rack_identity::{Claimed, RackKeys};
use crate::store::Store;
use crate::store::ledger::{Applied, DeadLetter};

#[derive(Debug, Clone)]
pub struct Ledger {
    pub store: Store,
    pub bus: Bus,
    pub batch_size: usize,
    pub batch_wait: Duration,
    pub reconnect_max: Duration,
    pub metrics: Metrics,
    /// Racks' enrolled signing keys: results and events must be signed.
    pub rack_keys: RackKeys,
}

#[derive(Debug, Clone, Copy)]
enum Source {
    Results,
    Events,
    Dead,
}

impl Source {
    fn queue(self) -> &'static str {
        match self {
            Source::Results => wire::RESULTS_QUEUE,
            Source::Events => wire::SLOT_EVENTS_QUEUE,
            Source::Dead => wire::DEAD_QUEUE,
        }
    }
}

/// Tries of a batch whose database error is transient.
const TRANSIENT_TRIES: u32 = 5;

impl Ledger {
    pub async fn run(self, shutdown: CancellationToken) {
        broker::run_reconnecting(
            "ledger",
            &self.metrics,
            self.reconnect_max,
            &shutdown,
            || self.session(&shutdown),
        )
        .await;
    }

    async fn session(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let conn = self.bus.connect("cardfleet-ledger").await?;
        let publisher = conn.publisher().await?;
        publisher.declare_topology().await?;
        let mut loops = Vec::new();
        for source in [Source::Results, Source::Events, Source::Dead] {
            let prefetch = u16::try_from(self.batch_size * 2).unwrap_or(u16::MAX);
            let consumer = conn
                .consume(
                    source.queue(),
                    prefetch,
                    &format!("cardfleet-ledger-{}", source.queue()),
                )
                .await?;
            loops.push(self.consume(source, consumer, shutdown));
        }
        tracing::info!("ledger connected");
        // One consumer failing ends the session; closing the connection hands
        // its unacked messages back to the broker for the next session.
        let result = futures_util::future::try_join_all(loops).await;
        conn.close().await;
        result.map(|_| ())
    }

    async fn consume(
        &self,
        source: Source,
        mut consumer: Consumer,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                d = consumer.next() => d,
            };
            let Some(first) = first else {
                anyhow::bail!("consumer of {} was closed", source.queue());
            };
            let mut batch = vec![first?];
            // Wait at most `batch_wait` after the first message, however
            // steadily more arrive: the batch bounds latency, not just size.
            let deadline = tokio::time::Instant::now() + self.batch_wait;
            while batch.len() < self.batch_size {
                match tokio::time::timeout_at(deadline, consumer.next()).await {
                    Ok(Some(Ok(d))) => batch.push(d),
                    Ok(Some(Err(e))) => return Err(e.into()),
                    Ok(None) | Err(_) => break,
                }
            }
            let refs: Vec<&Delivery> = batch.iter().collect();
            let letters = self.apply_each_if_needed(source, &refs).await?;
            self.record_letters(letters).await?;
            // Everything up to the last delivery of this consumer is in `batch`.
            if let Some(last) = batch.last() {
                consumer.ack_through(last).await?;
            }
        }
    }

    /// Applies a batch; when the database refuses it because of what a
    /// message holds, applies its messages one by one so that only the
    /// message at fault becomes a dead letter. An error means the database
    /// is unavailable; the batch stays unacked.
    async fn apply_each_if_needed(
        &self,
        source: Source,
        batch: &[&Delivery],
    ) -> anyhow::Result<Vec<DeadLetter>> {
        let error = match self.apply_retrying(source, batch).await {
            Ok(letters) => return Ok(letters),
            Err(e) => e,
        };
        if message_fault(&error).is_none() {
            return Err(error);
        }
        tracing::warn!(error = %error, size = batch.len(), "the database refused a batch; applying its messages one by one");
        let mut letters = Vec::new();
        for delivery in batch {
            match self.apply_retrying(source, &[*delivery]).await {
                Ok(more) => letters.extend(more),
                Err(e) => match message_fault(&e) {
                    Some(code) => {
                        tracing::warn!(error = %e, "the database refused a message; dead-lettering it");
                        letters.push(letter(
                            delivery,
                            source.queue(),
                            &format!("{}: {code}", Code::Unapplicable),
                        ));
                    }
                    None => return Err(e),
                },
            }
        }
        Ok(letters)
    }

    /// Applies a batch, trying again after a transient database error:
    /// applying is idempotent.
    async fn apply_retrying(
        &self,
        source: Source,
        batch: &[&Delivery],
    ) -> anyhow::Result<Vec<DeadLetter>> {
        let mut tries = 0;
        loop {
            let applied = match source {
                Source::Results => self.apply_results(batch).await,
                Source::Events => self.apply_events(batch).await,
                Source::Dead => self.apply_dead(batch).await,
            };
            match applied {
                Err(e) if tries < TRANSIENT_TRIES && is_transient(&e) => {
                    tries += 1;
                    tracing::info!(error = %e, tries, "retrying a batch after a transient database error");
                    tokio::time::sleep(Duration::from_millis(20 << tries)).await;
                }
                other => return other,
            }
        }
    }

    /// Records dead letters after the commit of what they came with, each
    /// once; when the batch is refused, one by one, so one letter cannot
    /// keep the others (or the ledger) back.
    async fn record_letters(&self, letters: Vec<DeadLetter>) -> anyhow::Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let error = match self.record_retrying(&letters).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if message_fault(&error).is_none() {
            return Err(error);
        }
        for letter in &letters {
            if let Err(e) = self.record_retrying(std::slice::from_ref(letter)).await {
                if message_fault(&e).is_none() {
                    return Err(e);
                }
                // Not expected: every field is storable by construction.
                tracing::error!(error = %e, content_key = %letter.content_key, source = %letter.source, "a dead letter cannot be stored");
            }
        }
        Ok(())
    }

    async fn record_retrying(&self, letters: &[DeadLetter]) -> anyhow::Result<()> {
        let mut tries = 0;
        loop {
            match self.store.record_dead_letters(letters).await {
                Ok(inserted) => {
                    for source in inserted {
                        self.metrics
                            .dead_letters
                            .with_label_values(&[source_label(&source)])
                            .inc();
                    }
                    return Ok(());
                }
                Err(e) if tries < TRANSIENT_TRIES && e.is_transient() => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20 << tries)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A decoded result or event counts only when the rack it speaks for
    /// signed it (see `crate::rack_identity`); otherwise the dead-letter reason.
    async fn authentic<T: Claimed>(
        &self,
        delivery: &Delivery,
        decoded: Result<T, String>,
    ) -> anyhow::Result<Result<T, String>> {
        let Ok(message) = decoded else {
            return Ok(decoded);
        };
        let verdict = self
            .rack_keys
            .check(&self.store, delivery, &message)
            .await?;
        Ok(verdict.map(|()| message).map_err(str::to_owned))
    }

    /// Counts the results that ended a job.
    fn count_finished(&self, messages: &[ResultMessage], applied: &[Applied]) {
        for (message, effect) in messages.iter().zip(applied) {
            if let (ResultMessage::EncodeResult(r), Applied::Changed) = (message, effect) {
                let outcome = match r.outcome {
                    Outcome::Succeeded => "succeeded",
                    Outcome::Failed => "failed",
                    Outcome::Cancelled => "cancelled",
                };
                self.metrics
                    .jobs_finished
                    .with_label_values(&[outcome])
                    .inc();
            }
        }
    }

    /// Applies results in one transaction; returns the dead letters to
    /// record after its commit.
    async fn apply_results(&self, batch: &[&Delivery]) -> anyhow::Result<Vec<DeadLetter>> {
        let mut letters = Vec::new();
        let mut messages = Vec::with_capacity(batch.len());
        let mut origin = Vec::with_capacity(batch.len());
        for delivery in batch {
            match self
                .authentic(delivery, decode(delivery.data(), ResultMessage::meta))
                .await?
            {
                Ok(m) => {
                    messages.push(m);
                    origin.push(delivery);
                }
                Err(reason) => {
                    self.metrics
                        .results_applied
                        .with_label_values(&["undecodable"])
                        .inc();
                    letters.push(letter(delivery, wire::RESULTS_QUEUE, &reason));
                }
            }
        }
        if messages.is_empty() {
            return Ok(letters);
        }
        // Public keys first: saving is idempotent and keyed by card and slot,
        // so a crash before the results commit loses nothing on redelivery.
        self.store.save_public_keys(&messages).await?;
        let applied = self.store.apply_results(&messages, "ledger").await?;
        self.count_finished(&messages, &applied);
        for (effect, delivery) in applied.iter().zip(origin) {
            let label = match effect {
                Applied::Changed => "changed",
                Applied::Unchanged => "unchanged",
                Applied::UnknownJob => "unknown_job",
            };
            self.metrics
                .results_applied
                .with_label_values(&[label])
                .inc();
            if *effect == Applied::UnknownJob {
                letters.push(letter(
                    delivery,
                    wire::RESULTS_QUEUE,
                    Code::UnknownJob.as_str(),
                ));
            }
        }
        Ok(letters)
    }

    /// Applies slot events and heartbeats in one transaction; returns the
    /// dead letters to record after its commit.
    async fn apply_events(&self, batch: &[&Delivery]) -> anyhow::Result<Vec<DeadLetter>> {
        let mut letters = Vec::new();
        let mut events = Vec::with_capacity(batch.len());
        for delivery in batch {
            let decoded = decode(delivery.data(), EventMessage::meta).and_then(valid_event);
            match self.authentic(delivery, decoded).await? {
                Ok(e) => events.push(e),
                Err(reason) => {
                    letters.push(letter(delivery, wire::SLOT_EVENTS_QUEUE, &reason));
                }
            }
        }
        if !events.is_empty() {
            self.store.apply_events(&events, "ledger").await?;
            self.metrics.events_applied.inc_by(events.len() as u64);
        }
        Ok(letters)
    }

    /// Takes messages from the dead-letter queue: a job that RabbitMQ gave
    /// up on (delivery limit) fails with that reason so its card goes back
    /// to stock; every message is returned as a dead letter to record.
    async fn apply_dead(&self, batch: &[&Delivery]) -> anyhow::Result<Vec<DeadLetter>> {
        let mut letters = Vec::with_capacity(batch.len());
        let mut exhausted = Vec::new();
        for delivery in batch {
            let (reason, source) = match delivery.header_text(broker::REASON_HEADER) {
                Some(reason) => (
                    reason,
                    delivery
                        .header_text(broker::SOURCE_HEADER)
                        .unwrap_or_default(),
                ),
                None => delivery
                    .bus_death()
                    .unwrap_or_else(|| (Code::Unknown.as_str().into(), "unknown".into())),
            };
            if let Ok(job) = serde_json::from_slice::<InitializeJob>(delivery.data()) {
                // A worker that cannot open the job's secrets says so; the
                // card was not touched and goes back to produced either way.
                let code = if reason.starts_with(SECRETS_UNOPENABLE) {
                    SECRETS_UNOPENABLE
                } else {
                    DEAD_LETTERED
                };
                exhausted.push(failed_result(
                    FailedJob {
                        job_id: job.job_id,
                        batch_id: job.batch_id,
                        card_id: job.card_id,
                        rack_id: job.rack_id,
                        started_at: job.meta.sent_at,
                    },
                    "broker",
                    code,
                    format!("the broker dead-lettered the job ({reason})"),
                ));
            }
            letters.push(letter(delivery, &source, &reason));
        }
        if !exhausted.is_empty() {
            let applied = self.store.apply_results(&exhausted, "ledger").await?;
            self.count_finished(&exhausted, &applied);
        }
        Ok(letters)
    }
}

fn letter(delivery: &Delivery, source: &str, reason: &str) -> DeadLetter {
    tracing::warn!(%source, %reason, "dead-lettering a message");
    DeadLetter::new(
        source,
        reason,
        delivery.message_id().as_deref(),
        delivery.data(),
    )
}

/// The label of `cardfleet_dead_letters_total` for a source queue.
fn source_label(source: &str) -> &str {
    if source.starts_with("cardfleet.rack.") {
        "rack"
    } else {
        match source {
            wire::RESULTS_QUEUE | wire::SLOT_EVENTS_QUEUE => source,
            _ => "other",
        }
    }
}

/// When the database refused a write because of what a message holds (a
/// data exception or a broken constraint, e.g. a NUL in a text field), a
/// stable code for it; `None` when the database itself is the problem.
fn message_fault(e: &anyhow::Error) -> Option<String> {
    use crate::store::StoreError;
    let store = e.downcast_ref::<StoreError>()?;
    let StoreError::Database(sqlx::Error::Database(db)) = store else {
        return match store {
            StoreError::Invalid(_) => Some("store_refused".into()),
            _ => None,
        };
    };
    let code = db.code()?;
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // SQLITE_TOOBIG (18), SQLITE_CONSTRAINT (19), SQLITE_MISMATCH (20).
        let primary = code.parse::<i32>().ok()? & 0xff;
        return matches!(primary, 18..=20).then(|| format!("sqlite {primary}"));
    }
    // Class 22: data exception; class 23: integrity constraint violation.
    (code.starts_with("22") || code.starts_with("23")).then(|| format!("sqlstate {code}"))
}

fn is_transient(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::store::StoreError>()
        .is_some_and(crate::store::StoreError::is_transient)
}

/// Decodes a message and checks its contract version.
fn decode<T: serde::de::DeserializeOwned>(data: &[u8], meta: fn(&T) -> &Meta) -> Result<T, String> {
    let message: T = serde_json::from_slice(data)
        .map_err(|e| format!("{}: {}", Code::Undecodable, e.classify_str()))?;
    let version = meta(&message).schema_version;
    if version != wire::SCHEMA_VERSION {
        return Err(format!("{}: {version}", Code::UnsupportedSchemaVersion));
    }
    Ok(message)
}

trait ClassifyStr {
    fn classify_str(&self) -> String;
}

impl ClassifyStr for serde_json::Error {
    /// The error's category and position, never the offending value.
    fn classify_str(&self) -> String {
        format!(
            "{:?} error at line {} column {}",
            self.classify(),
            self.line(),
            self.column()
        )
    }
}

fn valid_event(event: EventMessage) -> Result<EventMessage, String> {
    let rack = match &event {
        EventMessage::SlotEvent(e) => &e.rack_id,
        EventMessage::WorkerHeartbeat(h) => &h.rack_id,
    };
    crate::domain::RackId::parse(rack).map_err(|e| e.to_string())?;
    if let EventMessage::SlotEvent(e) = &event
        && let Some(serial) = &e.chip_serial
    {
        crate::domain::ChipSerial::parse(serial).map_err(|e| e.to_string())?;
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_future_schema_version_is_refused() {
        let text = br#"{"type":"job_started","schema_version":2,"message_id":"0191e0a4-7a1b-7000-8000-000000000000","sent_at":"2026-01-01T00:00:00Z","job_id":"0191e0a4-7a1b-7000-8000-000000000000","rack_id":"r","slot":1,"worker_id":"w"}"#;
        let err = decode::<ResultMessage>(text, ResultMessage::meta).unwrap_err();
        assert_eq!(err, "unsupported_schema_version: 2");
    }
}
