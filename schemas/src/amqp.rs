//! RabbitMQ side of the contract (feature `amqp`): connections, the
//! topology of DESIGN.md (declared by every service at start and
//! exported as `deploy/rabbitmq/definitions.json`), and confirmed publishing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate as wire;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

pub use lapin::Error as AmqpError;

/// Header naming why a message was dead-lettered by cardfleet.
pub const REASON_HEADER: &str = "x-cardfleet-reason";
/// Header naming the queue a dead-lettered message came from.
pub const SOURCE_HEADER: &str = "x-cardfleet-source";

pub async fn connect(url: &str, name: &str) -> Result<Connection, AmqpError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties).await
}

/// Files for TLS to RabbitMQ (`amqps://` URLs): the CA that signed the
/// broker's certificate (trusted besides the system's CA store), and a
/// client certificate and its key (PEM) for brokers that require one.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl TlsFiles {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// What is wrong with the combination, if anything. `url` may list
    /// several endpoints separated by commas (see [`endpoint_urls`]).
    pub fn problem(&self, url: &str) -> Option<&'static str> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Some("a client certificate and its key go together");
        }
        if !self.is_empty() && !endpoint_urls(url).all(|u| u.starts_with("amqps://")) {
            return Some("TLS files are set but a URL is not amqps://");
        }
        None
    }
}

/// The endpoints of an `amqp.url` setting: one URL, or several separated by
/// commas (the nodes of a RabbitMQ cluster), tried in order at each
/// connect. Blanks around the commas and empty entries are ignored.
pub fn endpoint_urls(url: &str) -> impl Iterator<Item = &str> {
    url.split(',').map(str::trim).filter(|u| !u.is_empty())
}

/// What is wrong with an `amqp.url` setting, if anything: no endpoint, or
/// one that is not an `amqp://` or `amqps://` URL.
pub fn url_problem(url: &str) -> Option<&'static str> {
    if endpoint_urls(url).next().is_none() {
        return Some("names no endpoint");
    }
    if !endpoint_urls(url).all(|u| u.starts_with("amqp://") || u.starts_with("amqps://")) {
        return Some("every endpoint must start with amqp:// or amqps://");
    }
    None
}

/// How long one endpoint may take to accept a connection before the next
/// one is tried (an unreachable host may never answer).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// RabbitMQ: where, and with which TLS files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    pub tls: TlsFiles,
}

impl Endpoint {
    /// An endpoint without TLS files.
    pub fn plain(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tls: TlsFiles::default(),
        }
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("TLS to RabbitMQ: {0}")]
    Tls(String),
    /// `amqp.url` names no endpoint, or one is not an AMQP URL.
    #[error("amqp.url {0}")]
    Url(&'static str),
    /// Endpoint number `index` (from 1) did not connect in time.
    #[error("RabbitMQ endpoint {index} did not accept a connection within {seconds} s")]
    Timeout { index: usize, seconds: u64 },
}

fn read_tls_file(path: &Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path)
        .map_err(|e| ConnectError::Tls(format!("cannot read {}: {e}", path.display())))
}

/// Connects to the first of the endpoint's URLs that accepts a connection,
/// trying them in order (with TLS for `amqps://` URLs). Each attempt is
/// bounded by [`CONNECT_TIMEOUT`]; when every one fails, the last error is
/// returned. Errors never carry a URL, which may hold a password.
pub async fn connect_endpoint(endpoint: &Endpoint, name: &str) -> Result<Connection, ConnectError> {
    connect_endpoint_within(endpoint, name, CONNECT_TIMEOUT).await
}

/// As [`connect_endpoint`], with each attempt bounded by `timeout`.
pub async fn connect_endpoint_within(
    endpoint: &Endpoint,
    name: &str,
    timeout: Duration,
) -> Result<Connection, ConnectError> {
    if let Some(problem) = url_problem(&endpoint.url) {
        return Err(ConnectError::Url(problem));
    }
    if let Some(problem) = endpoint.tls.problem(&endpoint.url) {
        return Err(ConnectError::Tls(problem.into()));
    }
    let mut last = ConnectError::Url("names no endpoint");
    for (index, url) in endpoint_urls(&endpoint.url).enumerate() {
        match tokio::time::timeout(timeout, connect_one(url, &endpoint.tls, name)).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = ConnectError::Timeout {
                    index: index + 1,
                    seconds: timeout.as_secs(),
                }
            }
        }
    }
    Err(last)
}

async fn connect_one(url: &str, tls: &TlsFiles, name: &str) -> Result<Connection, ConnectError> {
    if tls.is_empty() {
        return Ok(connect(url, name).await?);
    }
    let cert_chain = match &tls.ca_file {
        Some(path) => Some(
            String::from_utf8(read_tls_file(path)?)
                .map_err(|_| ConnectError::Tls(format!("{} is not PEM text", path.display())))?,
        ),
        None => None,
    };
    let identity = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(lapin::tcp::OwnedIdentity::PKCS8 {
            pem: read_tls_file(cert)?,
            key: read_tls_file(key)?,
        }),
        _ => None,
    };
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime()?;
    Ok(Connection::connect_with_config(
        url,
        properties,
        lapin::tcp::OwnedTLSConfig {
            identity,
            cert_chain,
        },
        runtime,
    )
    .await?)
}

/// A channel in confirm mode.
pub async fn confirm_channel(conn: &Connection) -> Result<Channel, AmqpError> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

fn quorum_args(dead_letter_exchange: Option<&str>, delivery_limit: Option<u32>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if let Some(exchange) = dead_letter_exchange {
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(exchange.into()),
        );
    }
    if let Some(limit) = delivery_limit {
        args.insert("x-delivery-limit".into(), AMQPValue::LongInt(limit as i32));
    }
    args
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// The exchanges of the topology: (name, type).
pub(crate) const EXCHANGES: &[(&str, &str)] = &[
    (wire::JOBS_EXCHANGE, "direct"),
    (wire::RESULTS_EXCHANGE, "direct"),
    (wire::EVENTS_EXCHANGE, "topic"),
    (wire::CONTROL_EXCHANGE, "fanout"),
    (wire::DEAD_EXCHANGE, "fanout"),
    (wire::PARKED_EXCHANGE, "fanout"),
];

/// A fixed queue of the topology.
pub(crate) struct FixedQueue {
    pub name: &'static str,
    pub exchange: &'static str,
    pub routing_key: &'static str,
    /// Where a message goes past the delivery limit (and when rejected).
    pub dead_letter_exchange: Option<&'static str>,
    pub delivery_limit: Option<u32>,
}

/// Fixed queues. Consumed queues have a delivery limit: a message no
/// consumer can take goes to the dead letters, a dead letter the ledger
/// cannot record is parked, and nothing is redelivered forever.
pub(crate) const QUEUES: &[FixedQueue] = &[
    FixedQueue {
        name: wire::RESULTS_QUEUE,
        exchange: wire::RESULTS_EXCHANGE,
        routing_key: wire::RESULTS_QUEUE,
        dead_letter_exchange: Some(wire::DEAD_EXCHANGE),
        delivery_limit: Some(wire::FIXED_QUEUE_DELIVERY_LIMIT),
    },
    FixedQueue {
        name: wire::SLOT_EVENTS_QUEUE,
        exchange: wire::EVENTS_EXCHANGE,
        routing_key: "#",
        dead_letter_exchange: Some(wire::DEAD_EXCHANGE),
        delivery_limit: Some(wire::FIXED_QUEUE_DELIVERY_LIMIT),
    },
    FixedQueue {
        name: wire::DEAD_QUEUE,
        exchange: wire::DEAD_EXCHANGE,
        routing_key: "",
        dead_letter_exchange: Some(wire::PARKED_EXCHANGE),
        delivery_limit: Some(wire::FIXED_QUEUE_DELIVERY_LIMIT),
    },
    // Not consumed: a message stays until an operator takes it.
    FixedQueue {
        name: wire::PARKED_QUEUE,
        exchange: wire::PARKED_EXCHANGE,
        routing_key: "",
        dead_letter_exchange: None,
        delivery_limit: None,
    },
];

fn kind(name: &str) -> ExchangeKind {
    match name {
        "direct" => ExchangeKind::Direct,
        "topic" => ExchangeKind::Topic,
        _ => ExchangeKind::Fanout,
    }
}

/// Declares exchanges and the fixed queues; idempotent.
pub async fn declare_topology(channel: &Channel) -> Result<(), AmqpError> {
    for (name, ty) in EXCHANGES {
        channel
            .exchange_declare(
                (*name).into(),
                kind(ty),
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    for q in QUEUES {
        channel
            .queue_declare(
                q.name.into(),
                durable(),
                quorum_args(q.dead_letter_exchange, q.delivery_limit),
            )
            .await?;
        channel
            .queue_bind(
                q.name.into(),
                q.exchange.into(),
                q.routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Declares and binds the queue of one rack.
pub async fn declare_rack_queue(
    channel: &Channel,
    rack_id: &str,
    delivery_limit: u32,
) -> Result<(), AmqpError> {
    let queue = wire::rack_queue(rack_id);
    channel
        .queue_declare(
            queue.as_str().into(),
            durable(),
            quorum_args(Some(wire::DEAD_EXCHANGE), Some(delivery_limit)),
        )
        .await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            wire::JOBS_EXCHANGE.into(),
            rack_id.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Properties of every cardfleet message: persistent JSON with ids.
pub fn properties(message_id: &str, kind: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message_id.into())
        .with_type(kind.into())
}

/// Properties for a dead letter: the original's id plus why and whence.
pub fn dead_letter_properties(
    message_id: Option<&str>,
    source: &str,
    reason: &str,
) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
    headers.insert(SOURCE_HEADER.into(), AMQPValue::LongString(source.into()));
    properties(message_id.unwrap_or(""), "dead_letter").with_headers(headers)
}

/// Publishes and waits for the broker's confirm. Unroutable counts as failure.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<bool, AmqpError> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            payload,
            properties,
        )
        .await?;
    let confirmation = confirm.await?;
    Ok(confirmation.is_ack() && confirmation.take_message().is_none())
}

/// A header's value as text, if present.
pub fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(name))? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Why RabbitMQ itself dead-lettered a message (`x-first-death-reason`,
/// e.g. `delivery_limit`) and from which queue.
pub fn broker_death(properties: &BasicProperties) -> Option<(String, String)> {
    let reason = header_text(properties, "x-first-death-reason")?;
    let queue = header_text(properties, "x-first-death-queue").unwrap_or_default();
    Some((reason, queue))
}

/// Backoff for reconnect loops: doubling up to `max`.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << attempt.min(10));
    Duration::from_millis(ms).min(max)
}

/// The topology as RabbitMQ definitions (for `rabbitmqctl import_definitions`).
pub fn definitions(vhost: &str, delivery_limit: u32) -> serde_json::Value {
    let exchanges: Vec<_> = EXCHANGES
        .iter()
        .map(|(name, ty)| {
            serde_json::json!({
                "name": name, "vhost": vhost, "type": ty, "durable": true,
                "auto_delete": false, "internal": false, "arguments": {}
            })
        })
        .collect();
    let queues: Vec<_> = QUEUES
        .iter()
        .map(|q| {
            let mut arguments = serde_json::json!({ "x-queue-type": "quorum" });
            if let Some(exchange) = q.dead_letter_exchange {
                arguments["x-dead-letter-exchange"] = exchange.into();
            }
            if let Some(limit) = q.delivery_limit {
                arguments["x-delivery-limit"] = limit.into();
            }
            serde_json::json!({
                "name": q.name, "vhost": vhost, "durable": true, "auto_delete": false,
                "arguments": arguments
            })
        })
        .collect();
    let bindings: Vec<_> = QUEUES
        .iter()
        .map(|q| {
            serde_json::json!({
                "source": q.exchange, "vhost": vhost, "destination": q.name,
                "destination_type": "queue", "routing_key": q.routing_key, "arguments": {}
            })
        })
        .collect();
    serde_json::json!({
        "vhosts": [{ "name": vhost }],
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
        "policies": [{
            "vhost": vhost,
            "name": "cardfleet-rack-queues",
            "pattern": "^cardfleet\\.rack\\.",
            "apply-to": "queues",
            "priority": 0,
            "definition": {
                "delivery-limit": delivery_limit,
                "dead-letter-exchange": wire::DEAD_EXCHANGE
            }
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_list_splits_on_commas_and_ignores_blanks() {
        let urls: Vec<_> =
            endpoint_urls(" amqp://a:1/%2f, ,amqp://b:2/%2f,amqps://c:3/v ,").collect();
        assert_eq!(urls, ["amqp://a:1/%2f", "amqp://b:2/%2f", "amqps://c:3/v"]);
        assert_eq!(endpoint_urls("amqp://a/%2f").count(), 1);
    }

    #[test]
    fn a_url_list_without_endpoints_or_with_a_foreign_scheme_is_refused() {
        assert_eq!(url_problem(" , "), Some("names no endpoint"));
        assert!(url_problem("amqp://a/%2f,http://b/").is_some());
        assert_eq!(url_problem("amqp://a/%2f,amqps://b/%2f"), None);
    }

    #[test]
    fn tls_files_need_every_endpoint_to_be_amqps() {
        let tls = TlsFiles {
            ca_file: Some("ca.pem".into()),
            ..TlsFiles::default()
        };
        assert_eq!(tls.problem("amqps://a/%2f,amqps://b/%2f"), None);
        assert!(tls.problem("amqps://a/%2f,amqp://b/%2f").is_some());
    }
}
