//! One job delivery, from decoding to ack: find the card's slot, encode
//! with retries, publish the result with a confirm, then ack.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cardfleet_schemas::bus::{Confirm, Delivery, Props, Publisher};
use cardfleet_schemas::codes::Code;
use cardfleet_schemas::rack_identity::RackSigner;
use cardfleet_schemas::sealing::{self, RackSecretKey, SECRETS_UNOPENABLE, SealError};
use cardfleet_schemas::{
    self as wire, CardSecrets, EncodeResult, Failure, InitializeJob, JobStarted, Meta, Outcome,
    ResultMessage, SlotEventKind,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Shared, SlotVerdict};
use crate::engine::EncodeReport;
use crate::metrics::code_label;
use crate::rack::{SlotCommand, SlotJob};

pub(super) async fn handle(
    shared: Arc<Shared>,
    publisher: Publisher,
    delivery: Delivery,
    shutdown: CancellationToken,
) {
    let rack = shared.config.rack_id.clone();
    if let Err(e) = process(&shared, &publisher, &delivery, &shutdown).await {
        // Not acked: the broker delivers the job again (to us or after a restart).
        tracing::warn!(error = %e, "job left unacknowledged");
    }
    shared.metrics.in_flight.with_label_values(&[&rack]).dec();
}

enum Verdict {
    Ack,
    Requeue,
    /// Refused for good: the broker dead-letters it.
    Reject,
}

async fn process(
    shared: &Arc<Shared>,
    publisher: &Publisher,
    delivery: &Delivery,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let verdict = run_job(shared, publisher, delivery, shutdown).await?;
    match verdict {
        Verdict::Ack => {
            delivery.ack().await?;
        }
        Verdict::Requeue => {
            delivery.requeue().await?;
        }
        Verdict::Reject => {
            delivery.reject().await?;
        }
    }
    Ok(())
}

fn decode(data: &[u8]) -> Result<InitializeJob, String> {
    let job: InitializeJob = serde_json::from_slice(data).map_err(|e| {
        format!(
            "{}: job {:?} error at line {} column {}",
            Code::Undecodable,
            e.classify(),
            e.line(),
            e.column()
        )
    })?;
    if job.meta.schema_version != wire::SCHEMA_VERSION {
        return Err(format!(
            "{}: {}",
            Code::UnsupportedSchemaVersion,
            job.meta.schema_version
        ));
    }
    Ok(job)
}

/// Opens the job's sealed secrets with the rack key. The error names what
/// went wrong (another key, tampered) and never any key material.
fn open_secrets(key: &RackSecretKey, job: &InitializeJob) -> Result<CardSecrets, SealError> {
    sealing::open(key, &job.rack_id, job.job_id, &job.secrets)
}

async fn run_job(
    shared: &Arc<Shared>,
    publisher: &Publisher,
    delivery: &Delivery,
    shutdown: &CancellationToken,
) -> anyhow::Result<Verdict> {
    let config = &shared.config;
    let job = match decode(delivery.data()) {
        Ok(job) => job,
        Err(reason) => {
            return Ok(dead_letter(publisher, delivery, &config.rack_id, &reason).await);
        }
    };
    let span = tracing::info_span!("job", job.id = %job.job_id, batch.id = %job.batch_id, rack.id = %config.rack_id);
    run_decoded(shared, publisher, delivery, shutdown, job)
        .instrument(span)
        .await
}

async fn run_decoded(
    shared: &Arc<Shared>,
    publisher: &Publisher,
    delivery: &Delivery,
    shutdown: &CancellationToken,
    job: InitializeJob,
) -> anyhow::Result<Verdict> {
    let config = &shared.config;
    if job.rack_id != config.rack_id {
        return Ok(dead_letter(
            publisher,
            delivery,
            &config.rack_id,
            &format!("{}: the job is for another rack", Code::WrongRack),
        )
        .await);
    }
    let first_time = shared
        .taken
        .lock()
        .map(|mut t| t.insert(job.job_id))
        .unwrap_or(true);
    let answered = shared
        .answered
        .lock()
        .map(|a| a.contains(&job.job_id))
        .unwrap_or(false);
    if let Some(reason) = already_handled(first_time, delivery.redelivered(), answered) {
        tracing::debug!(reason, "job delivery acknowledged without running it");
        return Ok(Verdict::Ack);
    }
    let started_at = chrono::Utc::now();
    let clock = Instant::now();
    let secrets = match open_secrets(&config.rack_key, &job) {
        Ok(s) => s,
        Err(e) => {
            // Sealed for another rack or tampered with: nothing here can
            // ever open it, so it goes to the dead letters (whose ledger
            // returns the card to produced) and the card is not touched.
            tracing::error!(error = %e, "job secrets cannot be opened with this rack's key");
            return Ok(dead_letter(
                publisher,
                delivery,
                &config.rack_id,
                &format!("{SECRETS_UNOPENABLE}: {e}"),
            )
            .await);
        }
    };
    // Asked at take time: a cancellation broadcast while this worker was
    // away never reached it. A job no worker has started is answered at
    // once without touching the card; one that may have been started (a
    // redelivery) goes to the engine with its flag set, which stops it only
    // if the card's journal shows nothing written.
    let check = shared.check_at_take(job.job_id).await;
    if is_cancelled(shared, &job) && !delivery.redelivered() && !check.started {
        publish_result(shared, publisher, &job, None, cancelled(), 0, started_at).await?;
        return Ok(Verdict::Ack);
    }
    let Some(slot) = wait_for_card(shared, &job, shutdown).await else {
        if is_cancelled(shared, &job) {
            publish_result(shared, publisher, &job, None, cancelled(), 0, started_at).await?;
            return Ok(Verdict::Ack);
        }
        tracing::info!(chip = %job.chip_serial, "card not in any slot; handing the job back");
        return Ok(Verdict::Requeue);
    };
    if shared.with_directory(|d| d.is_quarantined(slot)) == Some(true) {
        let report = failure(
            Code::SlotQuarantined.as_str(),
            "the card sits in a quarantined slot; move it to another slot",
            false,
        );
        publish_result(shared, publisher, &job, Some(slot), report, 0, started_at).await?;
        return Ok(Verdict::Ack);
    }
    // Sent now, confirmed before the ack: the card need not wait for it.
    let started = start_publish(
        publisher,
        &shared.signer,
        &ResultMessage::JobStarted(JobStarted {
            meta: Meta::now(),
            job_id: job.job_id,
            rack_id: config.rack_id.clone(),
            slot,
            worker_id: config.worker_id.clone(),
        }),
    )
    .await?;
    shared.with_directory(|d| d.encoding(slot));

    let _attribution = shared
        .metrics
        .attribute_status_words(&config.rack_id, job.job_id);
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(is_cancelled(
        shared, &job,
    )));
    if let Ok(mut flags) = shared.encoding.lock() {
        flags.insert(job.job_id, flag.clone());
    }
    let mut attempts = 0;
    let mut slot = slot;
    let report = loop {
        attempts += 1;
        let report = encode_in_slot(shared, slot, &job, &secrets, &flag).await;
        for step in &report.steps {
            shared
                .metrics
                .step_seconds
                .with_label_values(&[&config.rack_id, code_label(&step.step)])
                .observe(step.duration_ms / 1000.0);
        }
        let done = report.outcome == Outcome::Succeeded
            || !report.retryable
            || attempts >= config.max_attempts;
        if done {
            break report;
        }
        // A safe point: between attempts.
        let backoff = config.retry_backoff.saturating_mul(1 << attempts.min(6));
        tracing::info!(
            attempt = attempts,
            code = report.failure.as_ref().map(|f| f.code.as_str()),
            "retrying the card"
        );
        tokio::time::sleep(backoff).await;
        if is_cancelled(shared, &job) {
            break cancelled();
        }
        match wait_for_card(shared, &job, shutdown).await {
            Some(s) => slot = s,
            None => break report,
        }
    };
    if let Ok(mut flags) = shared.encoding.lock() {
        flags.remove(&job.job_id);
    }
    if attempts > 1 {
        shared
            .metrics
            .cards_retried
            .with_label_values(&[&config.rack_id])
            .inc();
    }
    shared
        .metrics
        .encode_seconds
        .with_label_values(&[&config.rack_id])
        .observe(clock.elapsed().as_secs_f64());
    let failed = report.outcome == Outcome::Failed;
    let code = report.failure.as_ref().map(|f| f.code.clone());
    publish_result(
        shared,
        publisher,
        &job,
        Some(slot),
        report,
        attempts,
        started_at,
    )
    .await?;
    confirmed(started).await?;
    let verdict = shared.with_directory(|d| d.finished(slot, failed));
    if verdict == Some(SlotVerdict::Quarantined) {
        tracing::warn!(slot, "slot quarantined after failing cards in a row");
        shared
            .metrics
            .quarantines
            .with_label_values(&[&config.rack_id])
            .inc();
        let reason = format!(
            "{} failed cards in a row, last: {}",
            config.quarantine_after,
            code.as_deref().unwrap_or("unknown")
        );
        shared.slot_event(
            slot,
            SlotEventKind::Quarantined,
            Some(job.chip_serial.clone()),
            Some(reason),
        );
    }
    shared.update_slot_gauges();
    // The card's job is over: it may leave the slot.
    if let Some(tx) = shared.slots.get(usize::from(slot)) {
        let _ = tx.send(SlotCommand::Done {
            chip_serial: job.chip_serial.clone(),
        });
    }
    Ok(Verdict::Ack)
}

/// Why a delivery of a job this worker has seen before needs no run, if
/// it needs none. A redelivery of a job still unanswered runs again: the
/// copy that held it was lost with a connection, and the card's journal
/// makes running it again safe.
fn already_handled(first_time: bool, redelivered: bool, answered: bool) -> Option<&'static str> {
    if answered {
        Some("its result was confirmed before")
    } else if !first_time && !redelivered {
        Some("a duplicate of a job held now; the first copy answers")
    } else {
        None
    }
}

fn is_cancelled(shared: &Shared, job: &InitializeJob) -> bool {
    shared
        .cancelled
        .lock()
        .map(|c| c.contains(&job.job_id))
        .unwrap_or(false)
}

/// Waits until the job's chip is in a slot, the wait runs out, the job is
/// cancelled or the worker shuts down.
async fn wait_for_card(
    shared: &Shared,
    job: &InitializeJob,
    shutdown: &CancellationToken,
) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + shared.config.card_wait;
    loop {
        let notified = shared.changed.notified();
        if let Some(slot) = shared
            .with_directory(|d| d.find(&job.chip_serial))
            .flatten()
        {
            return Some(slot);
        }
        if is_cancelled(shared, job) || shutdown.is_cancelled() {
            return None;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => return None,
            _ = shutdown.cancelled() => return None,
            // Re-check now and then in case a notification raced the check.
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn encode_in_slot(
    shared: &Shared,
    slot: u16,
    job: &InitializeJob,
    secrets: &CardSecrets,
    cancelled: &Arc<std::sync::atomic::AtomicBool>,
) -> EncodeReport {
    let Some(tx) = shared.slots.get(usize::from(slot)) else {
        return crate::rack::card_absent();
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let command = SlotCommand::Encode {
        job: Box::new(SlotJob {
            job_id: job.job_id,
            chip_serial: job.chip_serial.clone(),
            profile: job.profile.clone(),
            secrets: secrets.clone(),
            cancelled: cancelled.clone(),
            journal_keeper: shared.config.journal_keeper.clone(),
        }),
        reply,
    };
    if tx.send(command).is_err() {
        return failure(
            Code::SlotUnavailable.as_str(),
            "the slot's reader thread has stopped",
            false,
        );
    }
    answer.await.unwrap_or_else(|_| {
        failure(
            Code::SlotUnavailable.as_str(),
            "the slot's reader thread has stopped",
            false,
        )
    })
}

fn failure(code: &str, message: &str, retryable: bool) -> EncodeReport {
    EncodeReport {
        outcome: Outcome::Failed,
        failure: Some(Failure {
            code: code.into(),
            message: message.into(),
            card_unusable: false,
        }),
        retryable,
        steps: Vec::new(),
        public_keys: Vec::new(),
    }
}

fn cancelled() -> EncodeReport {
    EncodeReport {
        outcome: Outcome::Cancelled,
        failure: None,
        retryable: false,
        steps: Vec::new(),
        public_keys: Vec::new(),
    }
}

async fn publish_result(
    shared: &Shared,
    publisher: &Publisher,
    job: &InitializeJob,
    slot: Option<u16>,
    report: EncodeReport,
    attempts: u32,
    started_at: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    let rack = &shared.config.rack_id;
    let outcome_label = match report.outcome {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "failed",
        Outcome::Cancelled => "cancelled",
    };
    let metrics = &shared.metrics;
    let slot_label = slot.map(|s| s.to_string());
    metrics
        .cards
        .with_label_values(&[rack, outcome_label])
        .inc();
    if let Some(s) = &slot_label {
        metrics
            .slot_cards
            .with_label_values(&[rack, s, outcome_label])
            .inc();
    }
    if let Some(f) = &report.failure {
        let reason = code_label(&f.code);
        metrics.failures.with_label_values(&[rack, reason]).inc();
        if let Some(s) = &slot_label {
            metrics
                .slot_failures
                .with_label_values(&[rack, s, reason])
                .inc();
        }
        tracing::warn!(code = %f.code, message = %f.message, "card failed");
    }
    let message = ResultMessage::EncodeResult(EncodeResult {
        meta: Meta::now(),
        job_id: job.job_id,
        batch_id: job.batch_id,
        card_id: job.card_id,
        rack_id: rack.clone(),
        slot,
        worker_id: shared.config.worker_id.clone(),
        outcome: report.outcome,
        failure: report.failure,
        steps: report.steps,
        attempts,
        started_at,
        finished_at: chrono::Utc::now(),
        public_keys: report.public_keys,
    });
    publish(publisher, &shared.signer, &message).await?;
    if let Ok(mut answered) = shared.answered.lock() {
        answered.insert(job.job_id);
    }
    Ok(())
}

async fn publish(
    publisher: &Publisher,
    signer: &RackSigner,
    message: &ResultMessage,
) -> anyhow::Result<()> {
    confirmed(start_publish(publisher, signer, message).await?).await
}

/// Sends a message to the results exchange; await [`confirmed`] on the
/// returned confirm before relying on it.
async fn start_publish(
    publisher: &Publisher,
    signer: &RackSigner,
    message: &ResultMessage,
) -> anyhow::Result<Confirm> {
    let payload = serde_json::to_vec(message)?;
    let kind = match message {
        ResultMessage::JobStarted(_) => "job_started",
        ResultMessage::EncodeResult(_) => "encode_result",
    };
    let props = super::signed_props(
        signer,
        &message.meta().message_id.to_string(),
        kind,
        &payload,
    );
    Ok(publisher
        .publish(
            wire::RESULTS_EXCHANGE,
            wire::RESULTS_QUEUE,
            &payload,
            &props,
            true,
        )
        .await?)
}

async fn confirmed(confirm: Confirm) -> anyhow::Result<()> {
    if !confirm.confirmed().await? {
        anyhow::bail!("broker did not confirm a result");
    }
    Ok(())
}

/// Publishes the message to the dead letters with a reason and acks it;
/// when that fails, rejects it so the broker dead-letters it instead. A
/// message that cannot be taken is never held: it would keep a slot of
/// the prefetch window, and enough of them would stop the consumer.
async fn dead_letter(
    publisher: &Publisher,
    delivery: &Delivery,
    rack: &str,
    reason: &str,
) -> Verdict {
    tracing::warn!(%reason, "dead-lettering a job message");
    let message_id = delivery.message_id();
    let props = Props::dead_letter(message_id.as_deref(), &wire::rack_queue(rack), reason);
    match publisher
        .publish_confirmed(wire::DEAD_EXCHANGE, "", delivery.data(), &props)
        .await
    {
        Ok(true) => Verdict::Ack,
        Ok(false) => {
            tracing::warn!("the broker did not confirm a dead letter; rejecting the message");
            Verdict::Reject
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot publish a dead letter; rejecting the message");
            Verdict::Reject
        }
    }
}

#[cfg(test)]
mod tests {
    use super::already_handled;

    #[test]
    fn a_job_answered_before_is_acked_whenever_it_comes_again() {
        for first_time in [true, false] {
            for redelivered in [true, false] {
                assert!(already_handled(first_time, redelivered, true).is_some());
            }
        }
    }

    #[test]
    fn an_unanswered_job_runs_unless_it_is_a_duplicate_of_one_held_now() {
        assert_eq!(already_handled(true, false, false), None);
        assert_eq!(already_handled(true, true, false), None);
        // Its holder's connection was lost: it runs again.
        assert_eq!(already_handled(false, true, false), None);
        assert!(already_handled(false, false, false).is_some());
    }
}
