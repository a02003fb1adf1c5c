//! Answers workers' take-time checks (fleet mode): a worker that takes a
//! job asks on `cardfleet.job-gate` whether the job was cancelled, because
//! the cancellation broadcast reaches only workers connected at the time.
//! Queries arrive with a direct reply-to address; the answer comes from the
//! store. The queue is transient and a query expires with the worker's
//! timeout: a query nobody answers in time is worth nothing, the worker
//! goes on, and its result settles the cancel request.

use std::time::Duration;

use cardfleet_schemas::amqp as rabbit;
use cardfleet_schemas::{self as wire, JobGateAnswer, JobGateQuery, Meta};
use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use tokio_util::sync::CancellationToken;

use crate::broker;
use crate::metrics::Metrics;
use crate::store::Store;

/// Queries answered together at most (one store read).
const BATCH: usize = 256;
/// Longest a query may wait in the queue whatever its own expiration.
const QUERY_TTL_MS: i32 = 30_000;

#[derive(Debug, Clone)]
pub struct JobGate {
    pub store: Store,
    pub endpoint: rabbit::Endpoint,
    pub reconnect_max: Duration,
    pub metrics: Metrics,
}

/// One query waiting for its answer: (reply-to, correlation id, query).
type Asked = (String, String, JobGateQuery);

impl JobGate {
    pub async fn run(self, shutdown: CancellationToken) {
        broker::run_reconnecting(
            "job-gate",
            &self.metrics,
            self.reconnect_max,
            &shutdown,
            || self.session(&shutdown),
        )
        .await;
    }

    async fn session(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let conn = rabbit::connect_endpoint(&self.endpoint, "cardfleet-job-gate").await?;
        let channel = conn.create_channel().await?;
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(QUERY_TTL_MS));
        channel
            .queue_declare(
                wire::JOB_GATE_QUEUE.into(),
                QueueDeclareOptions::default(),
                args,
            )
            .await?;
        let prefetch = u16::try_from(BATCH * 2).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        // No acks: a query lost with this connection times out at its worker.
        let mut consumer = channel
            .basic_consume(
                wire::JOB_GATE_QUEUE.into(),
                "cardfleet-job-gate".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        tracing::info!("answering workers' take-time checks");
        let result = loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                d = consumer.next() => d,
            };
            let Some(first) = first else {
                break Err(anyhow::anyhow!("the take-time check consumer was closed"));
            };
            let mut asked: Vec<Asked> = Vec::new();
            collect(first?, &mut asked);
            // Whatever else is already here joins the same store read.
            while asked.len() < BATCH {
                match tokio::time::timeout(Duration::from_millis(1), consumer.next()).await {
                    Ok(Some(Ok(d))) => collect(d, &mut asked),
                    Ok(Some(Err(e))) => return Err(e.into()),
                    Ok(None) | Err(_) => break,
                }
            }
            if let Err(e) = self.answer(&channel, asked).await {
                break Err(e);
            }
        };
        let _ = conn.close(200, "shutdown".into()).await;
        result
    }

    /// Answers each query from the store. A store error leaves them
    /// unanswered (the workers go on) and keeps the session.
    async fn answer(&self, channel: &lapin::Channel, asked: Vec<Asked>) -> anyhow::Result<()> {
        for (reply_to, correlation_id, query) in asked {
            let facts = match self
                .store
                .job_gate_facts(&query.rack_id, &query.job_ids)
                .await
            {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot answer a take-time check");
                    continue;
                }
            };
            let answer = JobGateAnswer {
                meta: Meta::now(),
                cancelled: facts.cancelled,
                started: facts.started,
            };
            let payload = serde_json::to_vec(&answer)?;
            let props = BasicProperties::default()
                .with_message_id(answer.meta.message_id.to_string().as_str().into())
                .with_type("job_gate_answer".into())
                .with_content_type("application/json".into())
                .with_correlation_id(correlation_id.as_str().into());
            // A worker gone since it asked makes this unroutable: nothing to do.
            channel
                .basic_publish(
                    "".into(),
                    reply_to.as_str().into(),
                    BasicPublishOptions::default(),
                    &payload,
                    props,
                )
                .await?;
            self.metrics.take_checks_answered.inc();
        }
        Ok(())
    }
}

/// Keeps a decodable query with somewhere to answer; drops anything else
/// (the queue is not acked, so nothing can stop it).
fn collect(delivery: lapin::message::Delivery, asked: &mut Vec<Asked>) {
    let props = &delivery.properties;
    let (Some(reply_to), Some(correlation_id)) = (props.reply_to(), props.correlation_id()) else {
        tracing::debug!("ignoring a take-time check without reply-to or correlation id");
        return;
    };
    match serde_json::from_slice::<JobGateQuery>(&delivery.data) {
        Ok(query) if query.job_ids.len() <= BATCH => asked.push((
            reply_to.as_str().to_owned(),
            correlation_id.as_str().to_owned(),
            query,
        )),
        Ok(_) => tracing::debug!("ignoring a take-time check naming too many jobs"),
        Err(e) => tracing::debug!(error = %e, "ignoring an undecodable take-time check"),
    }
}
