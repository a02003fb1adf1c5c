//! Message types carried between the control plane and the workers.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::SCHEMA_VERSION;
use crate::profile::CardProfile;

/// Exchange that carries initialize jobs, routed by rack id.
pub const JOBS_EXCHANGE: &str = "cardfleet.jobs";
/// Exchange (and queue) that carries job progress and encode results.
pub const RESULTS_EXCHANGE: &str = "cardfleet.results";
/// Queue bound to [`RESULTS_EXCHANGE`].
pub const RESULTS_QUEUE: &str = "cardfleet.results";
/// Topic exchange for slot events and worker heartbeats.
pub const EVENTS_EXCHANGE: &str = "cardfleet.events";
/// Queue bound to [`EVENTS_EXCHANGE`] with `#`.
pub const SLOT_EVENTS_QUEUE: &str = "cardfleet.slot-events";
/// Fanout exchange for cancellations; each worker binds its own exclusive queue.
pub const CONTROL_EXCHANGE: &str = "cardfleet.control";
/// Fanout exchange and queue for poison and exhausted messages.
pub const DEAD_EXCHANGE: &str = "cardfleet.dead";
/// Queue bound to [`DEAD_EXCHANGE`].
pub const DEAD_QUEUE: &str = "cardfleet.dead";

/// Fanout exchange and queue for dead letters the ledger could not take
/// within [`FIXED_QUEUE_DELIVERY_LIMIT`] deliveries. Nothing consumes it;
/// operators inspect it (`rabbitmqctl`, management UI).
pub const PARKED_EXCHANGE: &str = "cardfleet.parked";
/// Queue bound to [`PARKED_EXCHANGE`].
pub const PARKED_QUEUE: &str = "cardfleet.parked";
/// Delivery limit of the fixed queues (results, slot events, dead letters):
/// a message that keeps failing is dead-lettered (or parked) instead of
/// being redelivered forever.
pub const FIXED_QUEUE_DELIVERY_LIMIT: u32 = 20;

/// The queue of one rack: `cardfleet.rack.<rack-id>`.
pub fn rack_queue(rack_id: &str) -> String {
    format!("cardfleet.rack.{rack_id}")
}

/// Fields every message carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Meta {
    /// Contract version the sender wrote; see [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Unique per message; a redelivered message keeps its id.
    pub message_id: Uuid,
    /// When the sender produced the message.
    pub sent_at: DateTime<Utc>,
}

impl Meta {
    /// Metadata for a message being sent now.
    pub fn now() -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            message_id: Uuid::now_v7(),
            sent_at: Utc::now(),
        }
    }
}

/// Job to initialize one card, published to `cardfleet.jobs` with the rack
/// id as routing key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InitializeJob {
    #[serde(flatten)]
    pub meta: Meta,
    pub job_id: Uuid,
    pub batch_id: Uuid,
    pub card_id: Uuid,
    pub card_number: String,
    /// The chip the job is for; the worker refuses to write to any other.
    pub chip_serial: String,
    pub rack_id: String,
    /// The profile, embedded so worker and control plane never disagree on it.
    pub profile: CardProfile,
    /// New PIN, PUK and management key for this card.
    pub secrets: JobSecrets,
}

/// The job's secrets as they travel on the broker: sealed to the rack's
/// public key with HPKE (see the `sealing` module).
///
/// `scheme` names how they are protected so that the receiving side can
/// refuse a scheme it does not accept.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSecrets {
    pub scheme: SecretScheme,
    /// Id of the rack key the secrets are sealed to: hex of the first 16
    /// bytes of SHA-256 of the public key.
    pub key_id: String,
    /// Base64 of the HPKE encapsulated key (32 bytes for X25519).
    pub enc: String,
    /// Base64 of the HPKE ciphertext (with its tag) of the JSON of
    /// [`CardSecrets`].
    pub ciphertext: String,
}

impl std::fmt::Debug for JobSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSecrets")
            .field("scheme", &self.scheme)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// How a job's secrets are protected. There is deliberately no plaintext
/// scheme: secrets never cross the broker unsealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecretScheme {
    /// HPKE (RFC 9180) base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
    /// ChaCha20-Poly1305; `info` binds the rack id and the AEAD's associated
    /// data the job id.
    Hpke,
}

/// The per-card secrets a worker writes onto the chip; they travel only
/// sealed, as [`JobSecrets`], and are zeroized on drop.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct CardSecrets {
    pub pin: String,
    pub puk: String,
    /// Hex of the per-card management key.
    pub management_key: String,
    #[zeroize(skip)]
    pub management_key_algorithm: crate::profile::ManagementKeyAlgorithm,
}

impl std::fmt::Debug for CardSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CardSecrets(<redacted>)")
    }
}

/// Messages on `cardfleet.results`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResultMessage {
    /// A worker has begun writing to the card; cancel can no longer be instant.
    JobStarted(JobStarted),
    /// The job has finished on the worker, one way or the other.
    EncodeResult(EncodeResult),
}

impl ResultMessage {
    pub fn job_id(&self) -> Uuid {
        match self {
            ResultMessage::JobStarted(m) => m.job_id,
            ResultMessage::EncodeResult(m) => m.job_id,
        }
    }
    pub fn meta(&self) -> &Meta {
        match self {
            ResultMessage::JobStarted(m) => &m.meta,
            ResultMessage::EncodeResult(m) => &m.meta,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobStarted {
    #[serde(flatten)]
    pub meta: Meta,
    pub job_id: Uuid,
    pub rack_id: String,
    pub slot: u16,
    pub worker_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EncodeResult {
    #[serde(flatten)]
    pub meta: Meta,
    pub job_id: Uuid,
    pub batch_id: Uuid,
    pub card_id: Uuid,
    pub rack_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u16>,
    pub worker_id: String,
    pub outcome: Outcome,
    /// Why the job did not succeed; absent on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Every step the engine considered, in order.
    #[serde(default)]
    pub steps: Vec<StepReport>,
    /// How many times the worker tried the card for this delivery.
    pub attempts: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// The public part of each key pair the card holds for the profile, for certificate
    /// issuance; absent for keys the card generated but cannot show again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_keys: Vec<GeneratedPublicKey>,
}

/// The public key of a key pair generated on the card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GeneratedPublicKey {
    /// PIV key slot: `9a`, `9c`, `9d` or `9e`.
    pub slot: String,
    /// `p256`, `p384` or `rsa2048`.
    pub algorithm: String,
    /// SubjectPublicKeyInfo (RFC 5280), DER, in standard base64.
    pub spki_der_base64: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    /// Stopped at a safe point after a cancellation.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Failure {
    /// Stable machine-readable reason, e.g. `chip_serial_mismatch`, `card_mute`.
    pub code: String,
    /// Human-readable explanation; never contains a secret.
    pub message: String,
    /// The chip can never be initialized (terminal `failed`); otherwise the
    /// card goes back to `produced` and may be submitted again.
    pub card_unusable: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepReport {
    pub step: String,
    pub status: StepStatus,
    pub duration_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// The step changed the card.
    Done,
    /// The card was already in the wanted state (a redelivered job).
    AlreadyDone,
    /// Optional step the card does not support; reported, not silently skipped.
    Unsupported,
    /// The profile does not ask for the step.
    NotRequested,
    Failed,
}

/// Messages on `cardfleet.events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventMessage {
    SlotEvent(SlotEvent),
    WorkerHeartbeat(WorkerHeartbeat),
}

impl EventMessage {
    pub fn meta(&self) -> &Meta {
        match self {
            EventMessage::SlotEvent(e) => &e.meta,
            EventMessage::WorkerHeartbeat(h) => &h.meta,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SlotEvent {
    #[serde(flatten)]
    pub meta: Meta,
    pub rack_id: String,
    pub worker_id: String,
    pub slot: u16,
    pub kind: SlotEventKind,
    /// Chip serial of the card in the slot (present for `inserted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chip_serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SlotEventKind {
    Inserted,
    Removed,
    Faulted,
    Quarantined,
    Released,
}

impl SlotEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SlotEventKind::Inserted => "inserted",
            SlotEventKind::Removed => "removed",
            SlotEventKind::Faulted => "faulted",
            SlotEventKind::Quarantined => "quarantined",
            SlotEventKind::Released => "released",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerHeartbeat {
    #[serde(flatten)]
    pub meta: Meta,
    pub rack_id: String,
    pub worker_id: String,
    pub version: String,
    pub interval_seconds: u32,
    pub in_flight: u32,
    pub slots: Vec<SlotStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SlotStatus {
    pub slot: u16,
    pub state: SlotState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chip_serial: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    Empty,
    Present,
    Encoding,
    Faulted,
    Quarantined,
}

/// Messages broadcast on `cardfleet.control` to every worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    Cancellation(Cancellation),
    ReleaseSlot(ReleaseSlot),
}

impl ControlMessage {
    pub fn meta(&self) -> &Meta {
        match self {
            ControlMessage::Cancellation(m) => &m.meta,
            ControlMessage::ReleaseSlot(m) => &m.meta,
        }
    }
}

/// Put a quarantined slot back into service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReleaseSlot {
    #[serde(flatten)]
    pub meta: Meta,
    pub rack_id: String,
    pub slot: u16,
}

/// Stop or skip these jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Cancellation {
    #[serde(flatten)]
    pub meta: Meta,
    pub job_ids: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<Uuid>,
    pub reason: String,
}

/// Queue on the default exchange where workers ask, when they take a job,
/// whether the control plane still wants it started (see [`JobGateQuery`]).
/// The control plane declares it (transient: a query is worth nothing after
/// its timeout); a worker publishes to it `mandatory` with the direct
/// reply-to pseudo-queue as `reply_to`, so a control plane that is down or
/// has not declared it answers at once with "unroutable".
pub const JOB_GATE_QUEUE: &str = "cardfleet.job-gate";

/// A worker's question when it takes jobs: may they start? Sent because a
/// cancellation broadcast reaches only the workers connected at the time.
/// It carries no secret; the answer only names jobs of the asking rack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobGateQuery {
    #[serde(flatten)]
    pub meta: Meta,
    pub rack_id: String,
    pub job_ids: Vec<Uuid>,
}

/// The control plane's answer to a [`JobGateQuery`], read from its store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobGateAnswer {
    #[serde(flatten)]
    pub meta: Meta,
    /// Jobs whose cancellation was requested (or that are cancelled).
    pub cancelled: Vec<Uuid>,
    /// Jobs a worker already reported started (or finished): a card may
    /// hold what that attempt wrote, so only the engine, reading the card's
    /// journal, can tell whether cancelling is still safe.
    #[serde(default)]
    pub started: Vec<Uuid>,
}
