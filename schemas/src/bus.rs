//! The message bus both sides talk through: RabbitMQ in fleet mode, the
//! in-process [`MemoryBus`] in standalone mode. Either way the contract is
//! the same: the topology of DESIGN.md, confirmed publishes (unroutable
//! mandatory ones refused), manual acks with a prefetch, redelivery of what
//! a consumer held when it failed, dead letters with a reason.

mod memory;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};

pub use memory::{MemoryBus, MemoryConsumer, MemoryDelivery};

use crate::amqp as rabbit;

/// Why a bus operation failed. Every failure means: reconnect and try again.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("{0}")]
    Tls(String),
    #[error("bus refused: {0}")]
    Refused(String),
    #[error("bus closed: {0}")]
    Closed(String),
}

impl From<rabbit::ConnectError> for BusError {
    fn from(e: rabbit::ConnectError) -> Self {
        match e {
            rabbit::ConnectError::Amqp(e) => BusError::Amqp(e),
            rabbit::ConnectError::Tls(t) => BusError::Tls(t),
            other @ (rabbit::ConnectError::Url(_) | rabbit::ConnectError::Timeout { .. }) => {
                BusError::Closed(other.to_string())
            }
        }
    }
}

/// How long a channel operation that awaits the broker's answer
/// (opening a channel, declaring, consuming, cancelling) may take before
/// the connection counts as lost.
pub const RPC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `operation` bounded by [`RPC_TIMEOUT`].
async fn bounded<T, E: Into<BusError>>(
    what: &str,
    operation: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BusError> {
    match tokio::time::timeout(RPC_TIMEOUT, operation).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(BusError::Closed(format!(
            "{what}: no answer from the broker within {} s",
            RPC_TIMEOUT.as_secs()
        ))),
    }
}

/// Message properties cardfleet uses: id, type and text headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props {
    pub message_id: Option<String>,
    pub kind: Option<String>,
    pub headers: Vec<(String, String)>,
}

impl Props {
    /// Properties of every cardfleet message: an id and a type.
    pub fn new(message_id: &str, kind: &str) -> Self {
        Self {
            message_id: Some(message_id.to_owned()),
            kind: Some(kind.to_owned()),
            headers: Vec::new(),
        }
    }

    /// A dead letter: the original's id plus why and whence.
    pub fn dead_letter(message_id: Option<&str>, source: &str, reason: &str) -> Self {
        let mut props = Self::new(message_id.unwrap_or(""), "dead_letter");
        props.set_header(rabbit::REASON_HEADER, reason);
        props.set_header(rabbit::SOURCE_HEADER, source);
        props
    }

    pub fn set_header(&mut self, name: &str, value: &str) {
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.to_owned(), value.to_owned()));
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn to_amqp(&self) -> lapin::BasicProperties {
        let mut props = rabbit::properties(
            self.message_id.as_deref().unwrap_or(""),
            self.kind.as_deref().unwrap_or(""),
        );
        if !self.headers.is_empty() {
            let mut table = FieldTable::default();
            for (name, value) in &self.headers {
                table.insert(
                    name.as_str().into(),
                    AMQPValue::LongString(value.as_str().into()),
                );
            }
            props = props.with_headers(table);
        }
        props
    }
}

/// Where to find the bus.
#[derive(Debug, Clone)]
pub enum Bus {
    /// RabbitMQ at an `amqp://` or `amqps://` URL.
    Amqp(rabbit::Endpoint),
    /// The in-process bus of standalone mode.
    Memory(MemoryBus),
}

impl Bus {
    pub async fn connect(&self, name: &str) -> Result<Connection, BusError> {
        match self {
            Bus::Amqp(endpoint) => Ok(Connection::Amqp(Box::new(
                rabbit::connect_endpoint(endpoint, name).await?,
            ))),
            Bus::Memory(bus) => Ok(Connection::Memory(bus.clone())),
        }
    }

    /// Whether the bus can be reached (the readiness probe).
    pub async fn ping(&self) -> Result<(), BusError> {
        if let Bus::Amqp(endpoint) = self {
            let conn = rabbit::connect_endpoint(endpoint, "cardfleet-readiness").await?;
            let _ = conn.close(200, "probe".into()).await;
        }
        Ok(())
    }

    pub fn is_memory(&self) -> bool {
        matches!(self, Bus::Memory(_))
    }
}

/// A connection; closing (or losing) it hands back what its consumers held.
#[derive(Debug)]
pub enum Connection {
    Amqp(Box<lapin::Connection>),
    Memory(MemoryBus),
}

impl Connection {
    /// A publisher whose publishes are confirmed.
    pub async fn publisher(&self) -> Result<Publisher, BusError> {
        match self {
            Connection::Amqp(conn) => Ok(Publisher::Amqp(
                bounded("open a publisher channel", rabbit::confirm_channel(conn)).await?,
            )),
            Connection::Memory(bus) => Ok(Publisher::Memory(bus.clone())),
        }
    }

    /// Consumes `queue` with manual acks and at most `prefetch` unsettled.
    pub async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<Consumer, BusError> {
        match self {
            Connection::Amqp(conn) => {
                let channel = bounded("open a channel", conn.create_channel()).await?;
                bounded(
                    "set the prefetch",
                    channel.basic_qos(prefetch, BasicQosOptions::default()),
                )
                .await?;
                let consumer = bounded(
                    "consume",
                    channel.basic_consume(
                        queue.into(),
                        tag.into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    ),
                )
                .await?;
                Ok(Consumer::Amqp(Box::new(AmqpConsumer {
                    channel,
                    consumer,
                    tag: tag.to_owned(),
                })))
            }
            Connection::Memory(bus) => Ok(Consumer::Memory(bus.consume(queue, prefetch)?)),
        }
    }

    /// Every broadcast on a fanout `exchange` from now on, without acks,
    /// through an exclusive queue that goes away with the subscriber.
    pub async fn subscribe(&self, exchange: &str, tag: &str) -> Result<Consumer, BusError> {
        match self {
            Connection::Amqp(conn) => {
                let channel = bounded("open a channel", conn.create_channel()).await?;
                let queue = bounded(
                    "declare a subscriber queue",
                    channel.queue_declare(
                        "".into(),
                        QueueDeclareOptions {
                            exclusive: true,
                            auto_delete: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    ),
                )
                .await?;
                bounded(
                    "bind a subscriber queue",
                    channel.queue_bind(
                        queue.name().clone(),
                        exchange.into(),
                        "".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    ),
                )
                .await?;
                let consumer = bounded(
                    "subscribe",
                    channel.basic_consume(
                        queue.name().clone(),
                        tag.into(),
                        BasicConsumeOptions {
                            no_ack: true,
                            ..BasicConsumeOptions::default()
                        },
                        FieldTable::default(),
                    ),
                )
                .await?;
                Ok(Consumer::Amqp(Box::new(AmqpConsumer {
                    channel,
                    consumer,
                    tag: tag.to_owned(),
                })))
            }
            Connection::Memory(bus) => Ok(Consumer::Memory(bus.subscribe(exchange)?)),
        }
    }

    pub async fn close(&self) {
        if let Connection::Amqp(conn) = self {
            let _ = bounded("close", conn.close(200, "shutdown".into())).await;
        }
    }

    /// Messages ready in each of `queues`; queues that do not exist (yet)
    /// are left out. On RabbitMQ these are passive declarations; the broker
    /// closes the channel on a queue it does not have, so another is opened.
    pub async fn queue_depths(&self, queues: &[String]) -> Result<Vec<(String, u64)>, BusError> {
        let mut depths = Vec::with_capacity(queues.len());
        match self {
            Connection::Amqp(conn) => {
                let mut channel = conn.create_channel().await?;
                for queue in queues {
                    let declared = channel
                        .queue_declare(
                            queue.as_str().into(),
                            QueueDeclareOptions {
                                passive: true,
                                ..QueueDeclareOptions::default()
                            },
                            FieldTable::default(),
                        )
                        .await;
                    match declared {
                        Ok(q) => depths.push((queue.clone(), u64::from(q.message_count()))),
                        Err(_) if conn.status().connected() => {
                            channel = conn.create_channel().await?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                let _ = channel.close(200, "done".into()).await;
            }
            Connection::Memory(bus) => {
                for queue in queues {
                    if let Some(n) = bus.queue_depth(queue)? {
                        depths.push((queue.clone(), u64::try_from(n).unwrap_or(u64::MAX)));
                    }
                }
            }
        }
        Ok(depths)
    }

    /// Whether the connection is still up (the in-process bus always is).
    pub fn is_connected(&self) -> bool {
        match self {
            Connection::Amqp(conn) => conn.status().connected(),
            Connection::Memory(_) => true,
        }
    }
}

/// Publishes with confirms.
#[derive(Debug, Clone)]
pub enum Publisher {
    Amqp(lapin::Channel),
    Memory(MemoryBus),
}

impl Publisher {
    /// Declares exchanges and the fixed queues; idempotent.
    pub async fn declare_topology(&self) -> Result<(), BusError> {
        match self {
            Publisher::Amqp(channel) => {
                bounded("declare the topology", rabbit::declare_topology(channel)).await
            }
            Publisher::Memory(bus) => bus.declare_topology(),
        }
    }

    /// Declares and binds the queue of one rack.
    pub async fn declare_rack_queue(
        &self,
        rack_id: &str,
        delivery_limit: u32,
    ) -> Result<(), BusError> {
        match self {
            Publisher::Amqp(channel) => {
                bounded(
                    "declare a rack queue",
                    rabbit::declare_rack_queue(channel, rack_id, delivery_limit),
                )
                .await
            }
            Publisher::Memory(bus) => bus.declare_rack_queue(rack_id, delivery_limit),
        }
    }

    /// Sends a message; await [`Confirm::confirmed`] before relying on it.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        props: &Props,
        mandatory: bool,
    ) -> Result<Confirm, BusError> {
        match self {
            Publisher::Amqp(channel) => {
                let confirm = channel
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        BasicPublishOptions {
                            mandatory,
                            ..BasicPublishOptions::default()
                        },
                        payload,
                        props.to_amqp(),
                    )
                    .await?;
                Ok(Confirm::Amqp(confirm))
            }
            Publisher::Memory(bus) => Ok(Confirm::Done(bus.publish(
                exchange,
                routing_key,
                payload,
                props,
                mandatory,
            )?)),
        }
    }

    /// Publishes and waits for the confirm; `Ok(false)` when refused or unroutable.
    pub async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        props: &Props,
    ) -> Result<bool, BusError> {
        self.publish(exchange, routing_key, payload, props, true)
            .await?
            .confirmed()
            .await
    }
}

/// A pending publisher confirm.
#[derive(Debug)]
pub enum Confirm {
    Amqp(lapin::PublisherConfirm),
    Done(bool),
}

/// How long a publisher waits for the broker's confirm. A broker that
/// neither confirms nor closes the channel in this time (a queue still
/// recovering after a restart, a half-open connection) counts as a lost
/// connection: the caller reconnects and publishes again, and the
/// receivers ignore the duplicate.
pub const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Confirm {
    /// True when the bus took the message and (if mandatory) routed it;
    /// an error when the confirm did not come within [`CONFIRM_TIMEOUT`].
    pub async fn confirmed(self) -> Result<bool, BusError> {
        match self {
            Confirm::Amqp(confirm) => {
                let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
                    .await
                    .map_err(|_| {
                        BusError::Closed(format!(
                            "no publisher confirm within {} s",
                            CONFIRM_TIMEOUT.as_secs()
                        ))
                    })??;
                Ok(confirmation.is_ack() && confirmation.take_message().is_none())
            }
            Confirm::Done(ok) => Ok(ok),
        }
    }
}

/// A RabbitMQ consumer and the channel it acks on.
#[derive(Debug)]
pub struct AmqpConsumer {
    channel: lapin::Channel,
    consumer: lapin::Consumer,
    tag: String,
}

/// A stream of deliveries from one queue.
#[derive(Debug)]
pub enum Consumer {
    Amqp(Box<AmqpConsumer>),
    Memory(MemoryConsumer),
}

impl Consumer {
    /// The next delivery; `None` when the consumer was closed.
    pub async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        match self {
            Consumer::Amqp(c) => Some(
                c.consumer
                    .next()
                    .await?
                    .map(|d| Delivery::Amqp(Box::new(d)))
                    .map_err(BusError::from),
            ),
            Consumer::Memory(c) => Some(c.next().await.map(Delivery::Memory)),
        }
    }

    /// Acks `last` and everything delivered before it on this consumer.
    pub async fn ack_through(&self, last: &Delivery) -> Result<(), BusError> {
        match (self, last) {
            (Consumer::Amqp(c), Delivery::Amqp(d)) => Ok(c
                .channel
                .basic_ack(d.delivery_tag, BasicAckOptions { multiple: true })
                .await?),
            (_, Delivery::Memory(d)) => d.ack_through(),
            (Consumer::Memory(_), Delivery::Amqp(_)) => Err(BusError::Refused(
                "a delivery acked through another bus".into(),
            )),
        }
    }

    /// Stops deliveries; unsettled ones may still be acked.
    pub async fn cancel(&self) {
        if let Consumer::Amqp(c) = self {
            let _ = bounded(
                "cancel a consumer",
                c.channel
                    .basic_cancel(c.tag.as_str().into(), BasicCancelOptions::default()),
            )
            .await;
        }
    }
}

/// One delivered message.
#[derive(Debug)]
pub enum Delivery {
    Amqp(Box<lapin::message::Delivery>),
    Memory(MemoryDelivery),
}

impl Delivery {
    pub fn data(&self) -> &[u8] {
        match self {
            Delivery::Amqp(d) => &d.data,
            Delivery::Memory(d) => &d.data,
        }
    }

    /// Whether the message was delivered before and not acked.
    pub fn redelivered(&self) -> bool {
        match self {
            Delivery::Amqp(d) => d.redelivered,
            Delivery::Memory(d) => d.redelivered,
        }
    }

    pub fn message_id(&self) -> Option<String> {
        match self {
            Delivery::Amqp(d) => d.properties.message_id().as_ref().map(|s| s.to_string()),
            Delivery::Memory(d) => d.props.message_id.clone(),
        }
    }

    /// A header's value as text, if present.
    pub fn header_text(&self, name: &str) -> Option<String> {
        match self {
            Delivery::Amqp(d) => rabbit::header_text(&d.properties, name),
            Delivery::Memory(d) => d.props.header(name).map(str::to_owned),
        }
    }

    /// Why the bus itself dead-lettered the message (e.g. `delivery_limit`)
    /// and from which queue.
    pub fn bus_death(&self) -> Option<(String, String)> {
        let reason = self.header_text("x-first-death-reason")?;
        let queue = self.header_text("x-first-death-queue").unwrap_or_default();
        Some((reason, queue))
    }

    pub async fn ack(&self) -> Result<(), BusError> {
        match self {
            Delivery::Amqp(d) => {
                d.ack(BasicAckOptions::default()).await?;
                Ok(())
            }
            Delivery::Memory(d) => d.ack(),
        }
    }

    /// Refuses the message for good: the broker dead-letters it (through
    /// the queue's dead-letter exchange) instead of delivering it again.
    pub async fn reject(&self) -> Result<(), BusError> {
        match self {
            Delivery::Amqp(d) => {
                d.nack(BasicNackOptions {
                    requeue: false,
                    ..BasicNackOptions::default()
                })
                .await?;
                Ok(())
            }
            Delivery::Memory(d) => d.nack(false),
        }
    }

    /// Hands the message back to its queue for another delivery.
    pub async fn requeue(&self) -> Result<(), BusError> {
        match self {
            Delivery::Amqp(d) => {
                d.nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await?;
                Ok(())
            }
            Delivery::Memory(d) => d.nack(true),
        }
    }
}
