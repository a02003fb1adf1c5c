//! Ledger: consumes results, slot events and dead letters, applies each
//! batch of messages in one database transaction and acks only after the
//! commit. Undecodable messages and results for unknown jobs are
//! dead-lettered with a reason; nothing here crashes on bad input.

use std::time::Duration;

use cardfleet_schemas::bus::{Bus, Consumer, Delivery, Props, Publisher};
use cardfleet_schemas::sealing::SECRETS_UNOPENABLE;
use cardfleet_schemas::{
    self as wire, EncodeResult, EventMessage, Failure, InitializeJob, Meta, Outcome, ResultMessage,
};
use tokio_util::sync::CancellationToken;

use crate::broker;
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

/// Largest payload kept in a dead-letter row.
const DEAD_PAYLOAD_MAX: usize = 64 * 1024;

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
            loops.push(self.consume(source, consumer, &publisher, shutdown));
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
        publisher: &Publisher,
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
            // Applying is idempotent, so a transient database error is
            // simply tried again on the same batch.
            let mut tries = 0;
            loop {
                let applied = match source {
                    Source::Results => self.apply_results(&batch, publisher).await,
                    Source::Events => self.apply_events(&batch, publisher).await,
                    Source::Dead => self.record_dead(&batch).await,
                };
                match applied {
                    Ok(()) => break,
                    Err(e) if tries < 5 && is_transient(&e) => {
                        tries += 1;
                        tracing::info!(error = %e, tries, "retrying a batch after a transient database error");
                        tokio::time::sleep(Duration::from_millis(20 << tries)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            // Everything up to the last delivery of this consumer is in `batch`.
            if let Some(last) = batch.last() {
                consumer.ack_through(last).await?;
            }
        }
    }

    async fn dead_letter(
        &self,
        publisher: &Publisher,
        delivery: &Delivery,
        source: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        let message_id = delivery.message_id();
        tracing::warn!(%source, %reason, "dead-lettering a message");
        let props = Props::dead_letter(message_id.as_deref(), source, reason);
        if !publisher
            .publish_confirmed(wire::DEAD_EXCHANGE, "", delivery.data(), &props)
            .await?
        {
            anyhow::bail!("broker did not confirm a dead letter");
        }
        Ok(())
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

    async fn apply_results(&self, batch: &[Delivery], publisher: &Publisher) -> anyhow::Result<()> {
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
                    self.dead_letter(publisher, delivery, wire::RESULTS_QUEUE, &reason)
                        .await?;
                }
            }
        }
        if messages.is_empty() {
            return Ok(());
        }
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
                self.dead_letter(publisher, delivery, wire::RESULTS_QUEUE, "unknown_job")
                    .await?;
            }
        }
        Ok(())
    }

    async fn apply_events(&self, batch: &[Delivery], publisher: &Publisher) -> anyhow::Result<()> {
        let mut events = Vec::with_capacity(batch.len());
        for delivery in batch {
            let decoded = decode(delivery.data(), EventMessage::meta).and_then(valid_event);
            match self.authentic(delivery, decoded).await? {
                Ok(e) => events.push(e),
                Err(reason) => {
                    self.dead_letter(publisher, delivery, wire::SLOT_EVENTS_QUEUE, &reason)
                        .await?;
                }
            }
        }
        if !events.is_empty() {
            self.store.apply_events(&events, "ledger").await?;
            self.metrics.events_applied.inc_by(events.len() as u64);
        }
        Ok(())
    }

    /// Records dead letters; a job that RabbitMQ gave up on (delivery limit)
    /// fails with that reason so its card goes back to stock.
    async fn record_dead(&self, batch: &[Delivery]) -> anyhow::Result<()> {
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
                    .unwrap_or_else(|| ("unknown".into(), "unknown".into())),
            };
            let source_label = if source.starts_with("cardfleet.rack.") {
                "rack"
            } else {
                match source.as_str() {
                    wire::RESULTS_QUEUE | wire::SLOT_EVENTS_QUEUE => source.as_str(),
                    _ => "other",
                }
            };
            self.metrics
                .dead_letters
                .with_label_values(&[source_label])
                .inc();
            if let Ok(job) = serde_json::from_slice::<InitializeJob>(delivery.data()) {
                // A worker that cannot open the job's secrets says so; the
                // card was not touched and goes back to produced either way.
                let code = if reason.starts_with(SECRETS_UNOPENABLE) {
                    SECRETS_UNOPENABLE
                } else {
                    "dead_lettered"
                };
                exhausted.push(ResultMessage::EncodeResult(EncodeResult {
                    meta: Meta::now(),
                    job_id: job.job_id,
                    batch_id: job.batch_id,
                    card_id: job.card_id,
                    rack_id: job.rack_id,
                    slot: None,
                    worker_id: "broker".into(),
                    outcome: Outcome::Failed,
                    failure: Some(Failure {
                        code: code.into(),
                        message: format!("the broker dead-lettered the job ({reason})"),
                        card_unusable: false,
                    }),
                    steps: vec![],
                    attempts: 0,
                    started_at: job.meta.sent_at,
                    finished_at: chrono::Utc::now(),
                }));
            }
            letters.push(DeadLetter {
                source,
                reason,
                message_id: delivery.message_id(),
                payload: redacted_payload(delivery.data()),
            });
        }
        if !exhausted.is_empty() {
            let applied = self.store.apply_results(&exhausted, "ledger").await?;
            self.count_finished(&exhausted, &applied);
        }
        self.store.record_dead_letters(&letters).await?;
        Ok(())
    }
}

fn is_transient(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::store::StoreError>()
        .is_some_and(crate::store::StoreError::is_transient)
}

/// Decodes a message and checks its contract version.
fn decode<T: serde::de::DeserializeOwned>(data: &[u8], meta: fn(&T) -> &Meta) -> Result<T, String> {
    let message: T =
        serde_json::from_slice(data).map_err(|e| format!("undecodable: {}", e.classify_str()))?;
    let version = meta(&message).schema_version;
    if version != wire::SCHEMA_VERSION {
        return Err(format!("unsupported schema_version {version}"));
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

/// The payload as stored and listed: secrets removed, size bounded.
fn redacted_payload(data: &[u8]) -> String {
    let text = match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(mut value) => {
            if let Some(obj) = value.as_object_mut()
                && obj.contains_key("secrets")
            {
                obj.insert("secrets".into(), "<redacted>".into());
            }
            value.to_string()
        }
        Err(_) => String::from_utf8_lossy(data).into_owned(),
    };
    if text.len() > DEAD_PAYLOAD_MAX {
        let mut end = DEAD_PAYLOAD_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…(truncated)", &text[..end])
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_never_keep_job_secrets() {
        let payload = br#"{"job_id":"x","secrets":{"scheme":"plain","payload":"c2VjcmV0"}}"#;
        let stored = redacted_payload(payload);
        assert!(!stored.contains("c2VjcmV0"), "{stored}");
        assert!(stored.contains("<redacted>"));
    }

    #[test]
    fn garbage_is_kept_lossily_and_bounded() {
        let garbage = vec![0xffu8; DEAD_PAYLOAD_MAX + 10];
        let stored = redacted_payload(&garbage);
        assert!(stored.ends_with("(truncated)"));
    }

    #[test]
    fn a_future_schema_version_is_refused() {
        let text = br#"{"type":"job_started","schema_version":2,"message_id":"0191e0a4-7a1b-7000-8000-000000000000","sent_at":"2026-01-01T00:00:00Z","job_id":"0191e0a4-7a1b-7000-8000-000000000000","rack_id":"r","slot":1,"worker_id":"w"}"#;
        let err = decode::<ResultMessage>(text, ResultMessage::meta).unwrap_err();
        assert!(err.contains("schema_version 2"), "{err}");
    }
}
