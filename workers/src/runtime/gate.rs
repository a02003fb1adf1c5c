//! The take-time cancellation check: before a job starts, the worker asks
//! the control plane whether it still wants the job, because a cancellation
//! broadcast on the control exchange reaches only the workers connected at
//! the time. Over RabbitMQ it is a request/reply (direct reply-to) on
//! [`wire::JOB_GATE_QUEUE`]; in standalone mode the control plane in the
//! same process answers through a [`LocalJobGate`]. Either way the wait is
//! bounded: without an answer the job proceeds, its result wins, and a
//! cancel request is settled by that result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cardfleet_schemas::bus::Connection;
use cardfleet_schemas::{self as wire, JobGateAnswer, JobGateQuery, Meta};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tokio::sync::oneshot;
use uuid::Uuid;

/// RabbitMQ's direct reply-to pseudo-queue.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Asks about (rack, jobs); `None` when it cannot tell (the store is unavailable).
pub type AskLocally =
    dyn Fn(String, Vec<Uuid>) -> BoxFuture<'static, Option<JobGateAnswer>> + Send + Sync;

/// The control plane's own answer, for a worker in its process.
#[derive(Clone)]
pub struct LocalJobGate(pub Arc<AskLocally>);

impl std::fmt::Debug for LocalJobGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalJobGate")
    }
}

/// What the control plane said about one job at take time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct GateVerdict {
    /// Its cancellation was requested.
    pub cancelled: bool,
    /// A worker already reported it started: only the card's journal can
    /// tell whether stopping is still safe.
    pub started: bool,
}

impl GateVerdict {
    fn of(answer: &JobGateAnswer, job_id: Uuid) -> Self {
        Self {
            cancelled: answer.cancelled.contains(&job_id),
            started: answer.started.contains(&job_id),
        }
    }
}

/// One session's way of asking.
#[derive(Debug)]
pub(super) enum Gate {
    /// Nobody to ask: every job proceeds.
    Open,
    Local(LocalJobGate),
    Amqp(AmqpGate),
}

impl Gate {
    /// The gate of a session on `conn`: the local one when configured, else
    /// request/reply over RabbitMQ. A broker that refuses direct reply-to
    /// leaves the gate open (the broadcast and the result still hold).
    pub(super) async fn open(conn: &Connection, local: Option<&LocalJobGate>) -> Self {
        if let Some(local) = local {
            return Gate::Local(local.clone());
        }
        let Connection::Amqp(conn) = conn else {
            return Gate::Open;
        };
        match AmqpGate::open(conn).await {
            Ok(gate) => Gate::Amqp(gate),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the take-time cancellation check; relying on broadcasts");
                Gate::Open
            }
        }
    }

    /// Asks about one job; `None` when no answer came within `timeout`.
    pub(super) async fn ask(
        &self,
        rack_id: &str,
        job_id: Uuid,
        timeout: Duration,
    ) -> Option<GateVerdict> {
        let answer = match self {
            Gate::Open => return None,
            Gate::Local(local) => {
                tokio::time::timeout(timeout, (local.0)(rack_id.to_owned(), vec![job_id]))
                    .await
                    .ok()
                    .flatten()
            }
            Gate::Amqp(gate) => gate.ask(rack_id, job_id, timeout).await,
        }?;
        Some(GateVerdict::of(&answer, job_id))
    }
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<JobGateAnswer>>>>;

/// Request/reply over one channel: replies come back on the direct reply-to
/// pseudo-queue and are matched to their question by correlation id.
#[derive(Debug)]
pub(super) struct AmqpGate {
    channel: Channel,
    pending: Pending,
    replies: tokio::task::JoinHandle<()>,
}

impl Drop for AmqpGate {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

impl AmqpGate {
    async fn open(conn: &lapin::Connection) -> Result<Self, lapin::Error> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                REPLY_TO.into(),
                "job-gate".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let pending: Pending = Arc::default();
        let waiting = pending.clone();
        let replies = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let Some(id) = delivery.properties.correlation_id().as_ref() else {
                    continue;
                };
                let Ok(answer) = serde_json::from_slice::<JobGateAnswer>(&delivery.data) else {
                    tracing::warn!("ignoring an undecodable take-time check answer");
                    continue;
                };
                let sender = waiting.lock().ok().and_then(|mut p| p.remove(id.as_str()));
                if let Some(sender) = sender {
                    let _ = sender.send(answer);
                }
            }
        });
        Ok(Self {
            channel,
            pending,
            replies,
        })
    }

    async fn ask(&self, rack_id: &str, job_id: Uuid, timeout: Duration) -> Option<JobGateAnswer> {
        let query = JobGateQuery {
            meta: Meta::now(),
            rack_id: rack_id.to_owned(),
            job_ids: vec![job_id],
        };
        let id = query.meta.message_id.to_string();
        let payload = serde_json::to_vec(&query).ok()?;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().ok()?.insert(id.clone(), tx);
        let answer = tokio::time::timeout(timeout, async {
            let props = BasicProperties::default()
                .with_message_id(id.as_str().into())
                .with_type("job_gate_query".into())
                .with_content_type("application/json".into())
                .with_correlation_id(id.as_str().into())
                .with_reply_to(REPLY_TO.into())
                // A question nobody took in time is worth nothing.
                .with_expiration(timeout.as_millis().to_string().as_str().into());
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    wire::JOB_GATE_QUEUE.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &payload,
                    props,
                )
                .await
                .ok()?;
            let confirmation = confirm.await.ok()?;
            if !confirmation.is_ack() || confirmation.take_message().is_some() {
                // No control plane has declared the queue: nobody to ask.
                return None;
            }
            rx.await.ok()
        })
        .await
        .ok()
        .flatten();
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
        answer
    }
}
