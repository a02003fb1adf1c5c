//! Builds a worker from settings: the rack backend, the metrics endpoint and
//! the runtime, and runs them until shutdown.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use cardfleet_schemas::sealing::RackSecretKey;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::metrics::WorkerMetrics;
use crate::rack::Rack;
use crate::rack::simulated::{self, CardFeed, Latency, OutputTray, SimCard, SimConfig, SimFaults};
use crate::rack_key;
use crate::runtime::{self, RuntimeConfig};
use crate::settings::{ReaderKind, WorkerSettings};

/// The runtime's configuration from settings and the rack's key.
pub fn runtime_config(settings: &WorkerSettings, rack_key: Arc<RackSecretKey>) -> RuntimeConfig {
    RuntimeConfig {
        rack_key,
        rack_id: settings.worker.rack_id.clone(),
        worker_id: settings.worker_id(),
        bus: cardfleet_schemas::bus::Bus::Amqp(settings.amqp.endpoint()),
        delivery_limit: settings.amqp.delivery_limit,
        max_attempts: settings.worker.max_attempts,
        retry_backoff: Duration::from_millis(settings.worker.retry_backoff_ms),
        quarantine_after: settings.worker.quarantine_after,
        card_wait: Duration::from_secs(settings.worker.card_wait_seconds),
        shutdown_grace: Duration::from_secs(settings.worker.shutdown_grace_seconds),
        heartbeat_interval: Duration::from_secs(settings.worker.heartbeat_interval_seconds.max(1)),
        reconnect_max: Duration::from_secs(settings.amqp.reconnect_max_seconds.max(1)),
        journal_keeper: journal_keeper(settings),
        take_check_timeout: Duration::from_millis(settings.worker.take_check_timeout_ms),
        local_gate: None,
    }
}

/// The worker's journal for cards that keep none: files in `worker.journal_dir`; without
/// it, a simulated rack keeps journals in memory (its cards live no longer than the
/// process) and a PC/SC rack keeps none, so such cards fail with `journal_unsupported`.
pub fn journal_keeper(settings: &WorkerSettings) -> Option<Arc<dyn crate::engine::JournalKeeper>> {
    match (&settings.worker.journal_dir, &settings.reader.kind) {
        (Some(dir), _) => Some(Arc::new(crate::engine::DirJournalKeeper::new(dir))),
        (None, ReaderKind::Simulated) => {
            Some(Arc::new(crate::engine::MemoryJournalKeeper::default()))
        }
        (None, _) => None,
    }
}

/// Reads a production CSV (`card_number,chip_serial,card_type,profile`) into
/// simulated cards; chip serials must be decimal 32-bit numbers, as virtual
/// cards report them. Faults are drawn per card at the configured rates; an
/// optional fifth column `pull_after_apdus` pulls that card once mid-step.
pub fn cards_from_csv(path: &Path, settings: &WorkerSettings) -> anyhow::Result<Vec<SimCard>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rng = rand::thread_rng();
    let mut cards = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: row {}", path.display(), i + 1))?;
        let serial: u32 = record
            .get(1)
            .and_then(|s| s.trim().parse().ok())
            .with_context(|| {
                format!(
                    "{}: row {}: chip_serial must be a decimal 32-bit number",
                    path.display(),
                    i + 1
                )
            })?;
        let mut card = SimCard::new(serial);
        card.options.vendor_objects = settings.simulated.vendor_objects;
        card.options.extensions = settings.simulated.extensions;
        card.faults = draw_faults(&mut rng, settings);
        // An optional fifth column schedules a pull: the card is taken out
        // after that many APDUs of its first attempt and put back (chaos runs).
        if let Some(pull) = record.get(4).map(str::trim).filter(|s| !s.is_empty()) {
            let after: usize = pull.parse().with_context(|| {
                format!(
                    "{}: row {}: pull_after_apdus must be a number of APDUs",
                    path.display(),
                    i + 1
                )
            })?;
            card.faults.pull_after_apdus = Some(after);
        }
        cards.push(card);
    }
    Ok(cards)
}

/// Faults for one simulated card, drawn at the configured rates.
pub fn draw_faults(rng: &mut impl Rng, settings: &WorkerSettings) -> SimFaults {
    let mut faults = SimFaults::default();
    if rng.gen_bool(settings.simulated.removal_rate) {
        faults.pull_after_apdus = Some(rng.gen_range(3..30));
    }
    if rng.gen_bool(settings.simulated.mute_rate) {
        faults.mute = true;
    }
    faults
}

/// A simulated rack per the settings, fed from `feed`.
pub fn simulated_rack(settings: &WorkerSettings, feed: CardFeed, tray: OutputTray) -> Rack {
    let config = SimConfig {
        slots: settings.reader.slots,
        latency: Latency {
            per_command: Duration::from_millis(settings.simulated.latency_ms),
            key_generation: Duration::from_millis(settings.simulated.keygen_latency_ms),
        },
        reinsert: Duration::from_millis(settings.simulated.reinsert_ms),
        state_dir: settings.simulated.state_dir.clone(),
    };
    simulated::start(config, feed, tray)
}

/// Serves `/metrics` until shutdown.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: WorkerMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let router = Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
        }),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("metrics server failed")
}

/// Loads (or on first start creates) the rack key from `worker.key_file`,
/// and enrols it when `worker.api_url` and `worker.enrollment_token` are set
/// and this key has not been enrolled for this rack yet.
pub async fn rack_key(settings: &WorkerSettings) -> anyhow::Result<RackSecretKey> {
    let path = &settings.worker.key_file;
    let rack_id = &settings.worker.rack_id;
    let (key, _) = rack_key::load_or_create(path)?;
    if let Some(done) = rack_key::recorded_enrolment(path, rack_id, &key) {
        tracing::info!(key_id = %done.key_id, enrolled_at = %done.enrolled_at, "rack key enrolled");
        return Ok(key);
    }
    match (&settings.worker.api_url, &settings.worker.enrollment_token) {
        (Some(api), Some(token)) => {
            let tls = settings.worker.api_tls();
            let done = rack_key::enroll(api, &tls, token.expose(), rack_id, &key, path)
                .await
                .context("enrolling the rack key (worker.api_url, worker.enrollment_token)")?;
            tracing::info!(key_id = %done.key_id, "rack key enrolled");
        }
        _ => tracing::warn!(
            key_id = %key.public_key().key_id(),
            "no enrolment of this rack key is recorded; until it is enrolled the control \
             plane fails this rack's jobs with rack_not_enrolled (cardfleet-worker enroll)"
        ),
    }
    Ok(key)
}

/// Runs a worker per `settings` until `shutdown`.
pub async fn run(settings: WorkerSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let key = Arc::new(rack_key(&settings).await?);
    let metrics = WorkerMetrics::new();
    let rack = match settings.reader.kind {
        ReaderKind::Simulated => {
            let feed = match &settings.reader.load_from {
                Some(path) => CardFeed::new(cards_from_csv(path, &settings)?),
                None => CardFeed::default(),
            };
            simulated_rack(&settings, feed, OutputTray::default())
        }
        ReaderKind::Pcsc => crate::rack::pcsc_rack(&settings.reader.name_patterns)?,
    };
    if let Some(addr) = settings.metrics.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (metrics.listen)"))?;
        tokio::spawn(serve_metrics(listener, metrics.clone(), shutdown.clone()));
    }
    runtime::run(runtime_config(&settings, key), rack, metrics, shutdown).await;
    Ok(())
}

/// A token cancelled on SIGTERM or Ctrl-C (call inside the runtime).
pub fn cancel_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; finishing in-flight cards");
        cancel.cancel();
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_fifth_csv_column_schedules_a_pull_and_a_bad_one_names_its_row() {
        let settings = WorkerSettings::load(None, &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("cards.csv");
        std::fs::write(
            &csv,
            "card_number,chip_serial,card_type,profile,pull_after_apdus\n\
             TC-1,1,temporary,temporary-piv,12\n\
             TC-2,2,temporary,temporary-piv,\n",
        )
        .unwrap();
        let cards = cards_from_csv(&csv, &settings).unwrap();
        let pulls: Vec<_> = cards.iter().map(|c| c.faults.pull_after_apdus).collect();
        assert_eq!(pulls, [Some(12), None]);
        std::fs::write(
            &csv,
            "card_number,chip_serial,card_type,profile,pull_after_apdus\nTC-1,1,temporary,temporary-piv,soon\n",
        )
        .unwrap();
        let err = format!("{:#}", cards_from_csv(&csv, &settings).unwrap_err());
        assert!(
            err.contains("row 1") && err.contains("pull_after_apdus"),
            "{err}"
        );
    }
}
