//! The worker runtime: consumes its rack's queue with manual acks and a
//! prefetch sized to its slots, routes each job to the slot holding its
//! chip, publishes results with confirms before acking, reports slot events
//! and heartbeats, honours cancellations and slot releases, reconnects to
//! RabbitMQ on its own and drains in-flight cards on shutdown.

mod directory;
mod gate;
mod job;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cardfleet_schemas::amqp as broker;
use cardfleet_schemas::bus::{Bus, Props, Publisher};
use cardfleet_schemas::rack_identity::RackSigner;
use cardfleet_schemas::sealing::RackSecretKey;
use cardfleet_schemas::{
    self as wire, ControlMessage, EventMessage, Meta, SlotEvent, SlotEventKind, WorkerHeartbeat,
};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use directory::{Directory, SlotVerdict};
pub use gate::LocalJobGate;

use crate::metrics::{SlotStateGauges, WorkerMetrics};
use crate::rack::{Rack, RackEvent, SlotCommand};

/// Timing and limits of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub rack_id: String,
    pub worker_id: String,
    /// RabbitMQ, or the in-process bus of standalone mode.
    pub bus: Bus,
    pub delivery_limit: u32,
    pub max_attempts: u32,
    pub retry_backoff: Duration,
    pub quarantine_after: u32,
    pub card_wait: Duration,
    pub shutdown_grace: Duration,
    pub heartbeat_interval: Duration,
    pub reconnect_max: Duration,
    /// The rack's private key; opens the secrets of the rack's jobs.
    pub rack_key: Arc<RackSecretKey>,
    /// The journal of cards that refuse the journal object (`worker.journal_dir`).
    pub journal_keeper: Option<Arc<dyn crate::engine::JournalKeeper>>,
    /// Longest wait for the control plane's answer when a job is taken
    /// (`worker.take_check_timeout_ms`); without one the job proceeds.
    pub take_check_timeout: Duration,
    /// In standalone mode: the control plane in this process answers the
    /// take-time check; otherwise it is asked over RabbitMQ.
    pub local_gate: Option<LocalJobGate>,
}

/// Most job ids remembered (cancelled, or seen by this worker).
const REMEMBERED_JOBS: usize = 100_000;

/// A bounded set of job ids, oldest forgotten first.
#[derive(Debug, Default)]
struct JobSet {
    ids: HashSet<Uuid>,
    order: VecDeque<Uuid>,
}

impl JobSet {
    fn insert(&mut self, id: Uuid) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > REMEMBERED_JOBS
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        true
    }
    fn contains(&self, id: &Uuid) -> bool {
        self.ids.contains(id)
    }
}

/// State shared by the runtime's tasks.
#[derive(Debug)]
struct Shared {
    config: RuntimeConfig,
    slots: Vec<std::sync::mpsc::Sender<SlotCommand>>,
    directory: Mutex<Directory>,
    changed: Notify,
    cancelled: Mutex<JobSet>,
    /// Jobs this process has taken; a duplicate delivery of one is acked at once.
    taken: Mutex<JobSet>,
    /// Jobs whose final result the broker confirmed. A delivery of one
    /// again (its ack was lost with a connection) is acked at once: its card
    /// may have left the rack, and waiting for it would hold a place of the
    /// prefetch window for nothing.
    answered: Mutex<JobSet>,
    /// Cancellation flags of the jobs being encoded, read by the engine.
    encoding: Mutex<std::collections::HashMap<Uuid, Arc<std::sync::atomic::AtomicBool>>>,
    outgoing: mpsc::UnboundedSender<EventMessage>,
    metrics: WorkerMetrics,
    slot_gauges: SlotStateGauges,
    /// Signs every result and event with the rack's enrolled key.
    signer: RackSigner,
    /// How this session asks the control plane about a job it takes.
    gate: Mutex<Arc<gate::Gate>>,
}

impl Shared {
    fn with_directory<T>(&self, f: impl FnOnce(&mut Directory) -> T) -> Option<T> {
        self.directory.lock().ok().map(|mut d| f(&mut d))
    }

    fn slot_event(
        &self,
        slot: u16,
        kind: SlotEventKind,
        chip_serial: Option<String>,
        reason: Option<String>,
    ) {
        let _ = self.outgoing.send(EventMessage::SlotEvent(SlotEvent {
            meta: Meta::now(),
            rack_id: self.config.rack_id.clone(),
            worker_id: self.config.worker_id.clone(),
            slot,
            kind,
            chip_serial,
            reason,
        }));
    }

    fn heartbeat(&self, in_flight: u32) -> Option<EventMessage> {
        let slots = self.with_directory(|d| d.statuses())?;
        Some(EventMessage::WorkerHeartbeat(WorkerHeartbeat {
            meta: Meta::now(),
            rack_id: self.config.rack_id.clone(),
            worker_id: self.config.worker_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            interval_seconds: u32::try_from(self.config.heartbeat_interval.as_secs())
                .unwrap_or(u32::MAX),
            in_flight,
            slots,
        }))
    }

    /// Asks the control plane, when a job is taken, whether its
    /// cancellation was requested: a broadcast sent while this worker was
    /// away never reaches it. A cancelled answer joins the cancelled set.
    /// Without an answer in time the job proceeds (its result wins).
    async fn check_at_take(&self, job_id: Uuid) -> gate::GateVerdict {
        let gate = self.gate.lock().map(|g| g.clone()).ok();
        let verdict = match gate {
            Some(gate) => {
                gate.ask(&self.config.rack_id, job_id, self.config.take_check_timeout)
                    .await
            }
            None => None,
        };
        let answer = match verdict {
            None => "unanswered",
            Some(v) if v.cancelled => "cancelled",
            Some(_) => "proceed",
        };
        self.metrics
            .take_checks
            .with_label_values(&[&self.config.rack_id, answer])
            .inc();
        let verdict = verdict.unwrap_or_default();
        if verdict.cancelled
            && let Ok(mut set) = self.cancelled.lock()
        {
            set.insert(job_id);
        }
        verdict
    }

    fn update_slot_gauges(&self) {
        if let Some(states) = self.with_directory(|d| d.states()) {
            self.slot_gauges.set(&states);
        }
    }
}

/// Runs the worker until `shutdown`; returns after in-flight cards drained.
pub async fn run(
    config: RuntimeConfig,
    rack: Rack,
    metrics: WorkerMetrics,
    shutdown: CancellationToken,
) {
    let (outgoing, mut outgoing_rx) = mpsc::unbounded_channel();
    let slot_count = u16::try_from(rack.slots.len()).unwrap_or(u16::MAX);
    let slot_gauges = metrics.for_rack(&config.rack_id, slot_count);
    let signer = RackSigner::new(&config.rack_id, &config.rack_key);
    let shared = Arc::new(Shared {
        signer,
        directory: Mutex::new(Directory::new(slot_count, config.quarantine_after)),
        config,
        slots: rack.slots,
        changed: Notify::new(),
        cancelled: Mutex::new(JobSet::default()),
        taken: Mutex::new(JobSet::default()),
        answered: Mutex::new(JobSet::default()),
        encoding: Mutex::new(std::collections::HashMap::new()),
        outgoing,
        metrics,
        slot_gauges,
        gate: Mutex::new(Arc::new(gate::Gate::Open)),
    });
    shared.update_slot_gauges();
    tokio::spawn(follow_rack(shared.clone(), rack.events));
    let mut attempt = 0u32;
    while !shutdown.is_cancelled() {
        match session(&shared, &mut outgoing_rx, &shutdown, &mut attempt).await {
            Ok(()) => break,
            Err(e) => {
                shared
                    .metrics
                    .reconnects
                    .with_label_values(&[&shared.config.rack_id])
                    .inc();
                tracing::warn!(error = %e, attempt, "worker lost its broker connection; reconnecting");
                let delay = broker::backoff(attempt, shared.config.reconnect_max);
                attempt += 1;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    tracing::info!("worker stopped");
}

/// Applies the rack's insertions and removals to the directory and reports them.
async fn follow_rack(shared: Arc<Shared>, mut events: mpsc::UnboundedReceiver<RackEvent>) {
    while let Some(event) = events.recv().await {
        match event {
            RackEvent::Inserted { slot, chip_serial } => {
                shared.with_directory(|d| d.inserted(slot, &chip_serial));
                shared.slot_event(slot, SlotEventKind::Inserted, Some(chip_serial), None);
            }
            RackEvent::Removed { slot } => {
                shared.with_directory(|d| d.removed(slot));
                shared.slot_event(slot, SlotEventKind::Removed, None, None);
            }
            RackEvent::Faulted { slot, reason } => {
                shared.with_directory(|d| d.faulted(slot));
                shared.slot_event(slot, SlotEventKind::Faulted, None, Some(reason));
            }
        }
        shared.update_slot_gauges();
        shared.changed.notify_waiters();
    }
}

async fn session(
    shared: &Arc<Shared>,
    outgoing: &mut mpsc::UnboundedReceiver<EventMessage>,
    shutdown: &CancellationToken,
    attempt: &mut u32,
) -> anyhow::Result<()> {
    let config = &shared.config;
    let conn = config
        .bus
        .connect(&format!("cardfleet-worker-{}", config.worker_id))
        .await?;
    let publisher = conn.publisher().await?;
    publisher.declare_topology().await?;
    publisher
        .declare_rack_queue(&config.rack_id, config.delivery_limit)
        .await?;

    // Cancellations and releases: an exclusive queue of our own on the fanout.
    let mut control_consumer = conn.subscribe(wire::CONTROL_EXCHANGE, "control").await?;
    // What the fanout cannot give a worker that was away: a check per job taken.
    let session_gate = Arc::new(gate::Gate::open(&conn, config.local_gate.as_ref()).await);
    if let Ok(mut g) = shared.gate.lock() {
        *g = session_gate;
    }

    let prefetch = u16::try_from(shared.slots.len().max(1)).unwrap_or(u16::MAX);
    let consumer_tag = format!("worker-{}", config.worker_id);
    let mut jobs = conn
        .consume(&wire::rack_queue(&config.rack_id), prefetch, &consumer_tag)
        .await?;
    *attempt = 0;
    tracing::info!(rack.id = %config.rack_id, slots = shared.slots.len(), "worker connected");

    // Resynchronise the control plane with a heartbeat straight away.
    if let Some(hb) = shared.heartbeat(0) {
        publish_event(&publisher, &shared.signer, &hb).await?;
    }
    let mut tasks = tokio::task::JoinSet::new();
    let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            delivery = jobs.next() => {
                let Some(delivery) = delivery else { break Err(anyhow::anyhow!("job consumer closed")) };
                let delivery = match delivery { Ok(d) => d, Err(e) => break Err(e.into()) };
                shared.metrics.in_flight.with_label_values(&[&config.rack_id]).inc();
                tasks.spawn(job::handle(shared.clone(), publisher.clone(), delivery, shutdown.clone()));
            }
            message = control_consumer.next() => {
                match message {
                    Some(Ok(d)) => on_control(shared, d.data()),
                    Some(Err(e)) => break Err(e.into()),
                    None => break Err(anyhow::anyhow!("control consumer closed")),
                }
            }
            Some(event) = outgoing.recv() => {
                // Everything pending goes out together, confirms awaited once:
                // a busy rack produces two events per card.
                let mut events = vec![event];
                while events.len() < 1000 {
                    match outgoing.try_recv() {
                        Ok(e) => events.push(e),
                        Err(_) => break,
                    }
                }
                if let Err(e) = publish_events(&publisher, &shared.signer, &events).await {
                    // Lost events are repaired by the next heartbeat's slot list.
                    break Err(e);
                }
            }
            _ = heartbeat.tick() => {
                if let Some(hb) = shared.heartbeat(u32::try_from(tasks.len()).unwrap_or(u32::MAX)) {
                    publish_event(&publisher, &shared.signer, &hb).await?;
                    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
                    shared.metrics.heartbeat.with_label_values(&[&config.rack_id]).set(now);
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    };

    // Stop taking jobs; let the cards being encoded finish within the bound.
    jobs.cancel().await;
    if !tasks.is_empty() {
        tracing::info!(in_flight = tasks.len(), "waiting for in-flight cards");
        let drained = tokio::time::timeout(config.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = tasks.len(),
                "in-flight cards did not finish in time; their jobs stay unacked"
            );
            tasks.abort_all();
        }
    }
    while let Ok(event) = outgoing.try_recv() {
        if publish_event(&publisher, &shared.signer, &event)
            .await
            .is_err()
        {
            break;
        }
    }
    // In-flight deliveries settled; dropping the consumer hands back the rest.
    drop(jobs);
    if let Ok(mut g) = shared.gate.lock() {
        *g = Arc::new(gate::Gate::Open);
    }
    conn.close().await;
    stop
}

async fn publish_event(
    channel: &Publisher,
    signer: &RackSigner,
    event: &EventMessage,
) -> anyhow::Result<()> {
    publish_events(channel, signer, std::slice::from_ref(event)).await
}

/// Publishes events in order with every publish in flight, then awaits the
/// broker's confirms.
async fn publish_events(
    channel: &Publisher,
    signer: &RackSigner,
    events: &[EventMessage],
) -> anyhow::Result<()> {
    let mut confirms = Vec::with_capacity(events.len());
    for event in events {
        let (key, kind) = match event {
            EventMessage::SlotEvent(e) => (format!("slot.{}", e.kind.as_str()), "slot_event"),
            EventMessage::WorkerHeartbeat(_) => ("heartbeat".to_owned(), "heartbeat"),
        };
        let payload = serde_json::to_vec(event)?;
        let props = signed_props(signer, &event.meta().message_id.to_string(), kind, &payload);
        let confirm = channel
            .publish(wire::EVENTS_EXCHANGE, &key, &payload, &props, true)
            .await?;
        confirms.push(confirm.confirmed());
    }
    for confirmed in futures_util::future::join_all(confirms).await {
        if !confirmed? {
            anyhow::bail!("broker did not confirm an event");
        }
    }
    Ok(())
}

/// Properties of a message the rack publishes, with its signature headers.
fn signed_props(signer: &RackSigner, message_id: &str, kind: &str, payload: &[u8]) -> Props {
    let mut props = Props::new(message_id, kind);
    for (name, value) in signer.headers(payload) {
        props.set_header(name, &value);
    }
    props
}

fn on_control(shared: &Arc<Shared>, data: &[u8]) {
    match serde_json::from_slice::<ControlMessage>(data) {
        Ok(ControlMessage::Cancellation(c)) => {
            if let Ok(flags) = shared.encoding.lock() {
                for id in &c.job_ids {
                    if let Some(flag) = flags.get(id) {
                        flag.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            if let Ok(mut set) = shared.cancelled.lock() {
                for id in c.job_ids {
                    set.insert(id);
                }
            }
            shared.changed.notify_waiters();
        }
        Ok(ControlMessage::ReleaseSlot(r)) if r.rack_id == shared.config.rack_id => {
            if shared.with_directory(|d| d.release(r.slot)) == Some(true) {
                tracing::info!(slot = r.slot, "slot released from quarantine");
                let chip = shared.with_directory(|d| d.chip_in(r.slot)).flatten();
                shared.slot_event(r.slot, SlotEventKind::Released, chip, None);
                shared.update_slot_gauges();
            }
        }
        Ok(ControlMessage::ReleaseSlot(_)) => {}
        Err(e) => tracing::warn!(error = %e, "ignoring an undecodable control message"),
    }
}
