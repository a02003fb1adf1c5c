//! Standalone mode: the API, dispatcher, ledger and one worker in one
//! process, on a SQLite file and the in-process bus. The domain code, the
//! state machine and the worker runtime are the fleet's own; only the store
//! backend and the bus differ.
//!
//! The in-process bus lives in memory. A restart on the same database
//! therefore puts every job the previous run had on the bus back into the
//! outbox, and the simulated rack's hopper reloads every card still
//! initializing: the engine's on-card journal makes a card whose work was
//! done answer at once with the same credentials.
//!
//! This crate is the one part that joins the control plane (`cardfleet`)
//! and the worker (`cardfleet-worker`): standalone mode, the demo and the
//! `cardfleet` binary, whose command line is the control plane's plus
//! `demo` and `standalone`.

pub mod cli;
pub mod demo;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cardfleet_schemas::bus::{Bus, MemoryBus};
use cardfleet_worker::metrics::WorkerMetrics;
use cardfleet_worker::rack::Rack;
use cardfleet_worker::rack::simulated::{CardFeed, OutputTray, SimCard};
use cardfleet_worker::runtime::{self, RuntimeConfig};
use cardfleet_worker::settings::{ReaderKind, WorkerSettings};
use tokio_util::sync::CancellationToken;

use cardfleet::app::{Application, Component};
use cardfleet::domain::CardState;
use cardfleet::settings::Settings;
use cardfleet::store::Store;
use cardfleet::store::cards::CardFilter;

pub use cardfleet::data_dir::{
    ADMIN_TOKEN_FILE, ADMIN_TOKEN_NAME, DATABASE_FILE, KEYS_FILE, data_dir_defaults,
    default_data_dir, ensure_admin_token,
};

/// Saved chip states of the simulated rack inside the data directory.
pub const CARDS_DIR: &str = "cards";
/// The rack id of the local rack unless `worker.rack_id` says otherwise.
pub const LOCAL_RACK: &str = "local";
/// The local rack's private key inside the data directory (mode 0600).
pub const RACK_KEY_FILE: &str = "rack.key";

/// How long a clean stop waits for the ledger to apply what the worker sent.
const SETTLE: Duration = Duration::from_secs(10);

/// The worker side of standalone mode as settings give it.
pub fn worker_settings(
    file: Option<&Path>,
    data_dir: &Path,
    overrides: &[(&str, String)],
) -> anyhow::Result<WorkerSettings> {
    let mut all = vec![
        ("worker.rack_id", LOCAL_RACK.to_owned()),
        (
            "worker.key_file",
            data_dir.join(RACK_KEY_FILE).display().to_string(),
        ),
    ];
    all.extend(overrides.iter().cloned());
    let mut settings = WorkerSettings::load_layered(file, &all[..2], &all[2..])?;
    if settings.simulated.state_dir.is_none() {
        settings.simulated.state_dir = Some(data_dir.join(CARDS_DIR));
    }
    Ok(settings)
}

/// Standalone mode, built and ready to run.
pub struct Standalone {
    app: Application,
    bus: MemoryBus,
    worker: RuntimeConfig,
    rack: Rack,
    worker_metrics: WorkerMetrics,
    hopper: Option<Hopper>,
    redispatched: usize,
}

impl std::fmt::Debug for Standalone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standalone")
            .field("rack_id", &self.worker.rack_id)
            .finish_non_exhaustive()
    }
}

impl Standalone {
    /// Opens the store (SQLite unless configured otherwise), recovers what a
    /// previous run left on the bus, and starts the local rack.
    pub async fn build(settings: &Settings, worker: &WorkerSettings) -> anyhow::Result<Self> {
        let bus = MemoryBus::new();
        let worker_metrics = WorkerMetrics::new();
        let page = worker_metrics.clone();
        let app = Application::build_on(
            settings,
            &Component::ALL,
            Bus::Memory(bus.clone()),
            Some(Arc::new(move || page.render())),
        )
        .await?;
        let redispatched = app
            .store()
            .redispatch_in_flight("standalone")
            .await
            .context("re-dispatching the jobs of the previous run")?;
        if redispatched > 0 {
            tracing::info!(
                jobs = redispatched,
                "re-dispatching jobs the previous run had in flight"
            );
        }
        let (rack, hopper) = match worker.reader.kind {
            ReaderKind::Simulated => {
                let feed = CardFeed::default();
                let rack = cardfleet_worker::app::simulated_rack(
                    worker,
                    feed.clone(),
                    OutputTray::default(),
                );
                let hopper = Hopper {
                    feed,
                    settings: worker.clone(),
                    fed: HashSet::new(),
                    refused: HashSet::new(),
                };
                (rack, Some(hopper))
            }
            ReaderKind::Pcsc => (
                cardfleet_worker::rack::pcsc_rack(&worker.reader.name_patterns)?,
                None,
            ),
        };
        // The same sealing as a fleet: the local rack's key is enrolled
        // directly in the store (no token needed inside one process).
        let (key, _) = cardfleet_worker::rack_key::load_or_create(&worker.worker.key_file)?;
        let public = *key.public_key().as_bytes();
        let signing = cardfleet_schemas::rack_identity::verifying_key(&key);
        let store = app.store();
        let rack_id = &worker.worker.rack_id;
        if store.rack_public_key(rack_id).await? != Some(public)
            || store.rack_signing_key(rack_id).await? != Some(signing)
        {
            store
                .enroll_rack(rack_id, &public, &signing, "standalone")
                .await
                .context("enrolling the local rack's key")?;
        }
        let mut config = cardfleet_worker::app::runtime_config(worker, Arc::new(key));
        config.bus = Bus::Memory(bus.clone());
        config.local_gate = Some(local_gate(store.clone()));
        Ok(Self {
            app,
            bus,
            worker: config,
            rack,
            worker_metrics,
            hopper,
            redispatched,
        })
    }

    pub fn port(&self) -> Option<u16> {
        self.app.port()
    }

    pub fn metrics_port(&self) -> Option<u16> {
        self.app.metrics_port()
    }

    pub fn store(&self) -> &Store {
        self.app.store()
    }

    pub fn rack_id(&self) -> &str {
        &self.worker.rack_id
    }

    /// The worker's metrics (also on the metrics page).
    pub fn worker_metrics(&self) -> &WorkerMetrics {
        &self.worker_metrics
    }

    /// Jobs put back into the outbox at start because a previous run had
    /// them on the bus when it stopped.
    pub fn redispatched(&self) -> usize {
        self.redispatched
    }

    /// Runs until `shutdown`; then the worker finishes its cards, the ledger
    /// applies their results, and the control plane stops.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            app,
            bus,
            worker,
            rack,
            worker_metrics,
            hopper,
            ..
        } = self;
        let store = app.store().clone();
        let app_stop = CancellationToken::new();
        let mut app_task = tokio::spawn(app.run_until_stopped(app_stop.clone()));
        let worker_task =
            tokio::spawn(runtime::run(worker, rack, worker_metrics, shutdown.clone()));
        if let Some(hopper) = hopper {
            tokio::spawn(hopper.run(store, shutdown.clone()));
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            ended = &mut app_task => {
                // The control plane failed on its own: stop the worker too.
                shutdown.cancel();
                let _ = worker_task.await;
                return ended.context("the control plane task failed")?;
            }
        }
        let _ = worker_task.await;
        settle(&bus).await;
        app_stop.cancel();
        app_task.await.context("the control plane task failed")?
    }
}

/// Waits (boundedly) until the ledger has applied what the worker sent.
async fn settle(bus: &MemoryBus) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    while tokio::time::Instant::now() < deadline {
        let left: usize = [
            cardfleet_schemas::RESULTS_QUEUE,
            cardfleet_schemas::SLOT_EVENTS_QUEUE,
            cardfleet_schemas::DEAD_QUEUE,
        ]
        .iter()
        .map(|q| bus.outstanding(q).ok().flatten().unwrap_or(0))
        .sum();
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!(
        "stopping with results not yet applied; the next start re-dispatches their jobs"
    );
}

/// The simulated rack's input: every card the store shows as initializing
/// is put in, once, as an operator loads the cards of submitted batches.
struct Hopper {
    feed: CardFeed,
    settings: WorkerSettings,
    fed: HashSet<String>,
    /// Chip serials a simulated card cannot have (not a decimal 32-bit number).
    refused: HashSet<String>,
}

impl Hopper {
    const PAGE: i64 = 1000;

    async fn run(mut self, store: Store, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(e) = self.fill(&store).await {
                        tracing::warn!(error = %e, "cannot read the cards to load into the simulated rack");
                    }
                }
            }
        }
    }

    async fn fill(&mut self, store: &Store) -> anyhow::Result<()> {
        let mut initializing = HashSet::new();
        let mut offset = 0;
        loop {
            let page = store
                .list_cards(&CardFilter {
                    card_type: None,
                    state: Some(CardState::Initializing),
                    limit: Self::PAGE,
                    offset,
                    ..CardFilter::default()
                })
                .await?;
            let n = page.len();
            for card in page {
                initializing.insert(card.chip_serial.clone());
                if self.fed.contains(&card.chip_serial) || self.refused.contains(&card.chip_serial)
                {
                    continue;
                }
                let Ok(serial) = card.chip_serial.parse::<u32>() else {
                    tracing::warn!(
                        chip = %card.chip_serial,
                        "a simulated card needs a decimal 32-bit chip serial; not loading it"
                    );
                    self.refused.insert(card.chip_serial);
                    continue;
                };
                let mut sim = SimCard::new(serial);
                sim.faults =
                    cardfleet_worker::app::draw_faults(&mut rand::thread_rng(), &self.settings);
                sim.reload = true;
                self.feed.push(sim);
                self.fed.insert(card.chip_serial);
            }
            if n < Self::PAGE as usize {
                break;
            }
            offset += Self::PAGE;
        }
        // A card that is no longer initializing may come back in a new batch.
        self.fed.retain(|s| initializing.contains(s));
        Ok(())
    }
}

/// The take-time check answered by this process's store: the worker asks,
/// as a fleet worker asks the control plane over RabbitMQ, whether a job it
/// takes was cancelled (a job put back on the in-process bus after a
/// restart never saw the cancellation broadcast).
fn local_gate(store: Store) -> cardfleet_worker::runtime::LocalJobGate {
    cardfleet_worker::runtime::LocalJobGate(Arc::new(move |rack_id: String, job_ids| {
        let store = store.clone();
        Box::pin(async move {
            let facts = store.job_gate_facts(&rack_id, &job_ids).await.ok()?;
            Some(cardfleet_schemas::JobGateAnswer {
                meta: cardfleet_schemas::Meta::now(),
                cancelled: facts.cancelled,
                started: facts.started,
            })
        })
    }))
}
