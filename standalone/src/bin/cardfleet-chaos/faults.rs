//! The faults a chaos run injects besides kills and restarts: a tap on
//! every exchange (copies of what flows, for duplicates and the leak scan),
//! poison messages on every queue, duplicates of real messages, concurrent
//! API clients, cancels racing dispatch, and an operator taking cancelled
//! cards out of their slots.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cardfleet_schemas as wire;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use rand::Rng;
use serde_json::json;
use uuid::Uuid;

/// A message seen on an exchange.
#[derive(Debug, Clone)]
pub struct Captured {
    pub exchange: &'static str,
    pub routing_key: String,
    pub data: Vec<u8>,
    pub properties: BasicProperties,
}

/// Copies of what flows through every cardfleet exchange, taken by
/// exclusive queues of the run's own (re-made after a broker restart).
#[derive(Debug, Clone, Default)]
pub struct Tap {
    pub captured: Arc<Mutex<Vec<Captured>>>,
    pub reconnects: Arc<AtomicU64>,
}

const TAPPED: &[(&str, ExchangeKind, &str)] = &[
    (wire::JOBS_EXCHANGE, ExchangeKind::Direct, ""),
    (
        wire::RESULTS_EXCHANGE,
        ExchangeKind::Direct,
        wire::RESULTS_QUEUE,
    ),
    (wire::EVENTS_EXCHANGE, ExchangeKind::Topic, "#"),
    (wire::CONTROL_EXCHANGE, ExchangeKind::Fanout, ""),
    (wire::DEAD_EXCHANGE, ExchangeKind::Fanout, ""),
];

impl Tap {
    /// Keeps a tap running until `stop`, reconnecting as the broker comes and goes.
    pub fn spawn(&self, url: String, racks: Vec<String>, stop: Arc<AtomicBool>) {
        let tap = self.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = tap.session(&url, &racks, &stop).await {
                    tracing::debug!(error = %e, "tap session ended");
                }
                tap.reconnects.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    async fn session(&self, url: &str, racks: &[String], stop: &AtomicBool) -> anyhow::Result<()> {
        let conn = cardfleet::broker::connect(url, "chaos-tap").await?;
        let channel = conn.create_channel().await?;
        cardfleet::broker::declare_topology(&channel).await?;
        let mut streams = Vec::new();
        for (exchange, _, key) in TAPPED {
            let queue = channel
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let keys: Vec<String> = if *exchange == wire::JOBS_EXCHANGE {
                racks.to_vec()
            } else {
                vec![(*key).to_owned()]
            };
            for key in keys {
                channel
                    .queue_bind(
                        queue.name().as_str().into(),
                        (*exchange).into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
            let consumer = channel
                .basic_consume(
                    queue.name().as_str().into(),
                    format!("tap-{exchange}").as_str().into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            streams.push(consumer.map(move |d| (*exchange, d)));
        }
        let mut all = futures_util::stream::select_all(streams);
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let next = tokio::time::timeout(Duration::from_millis(500), all.next()).await;
            match next {
                Err(_) => {}
                Ok(None) => anyhow::bail!("tap consumer closed"),
                Ok(Some((exchange, Ok(d)))) => {
                    if let Ok(mut v) = self.captured.lock() {
                        v.push(Captured {
                            exchange,
                            routing_key: d.routing_key.to_string(),
                            data: d.data,
                            properties: d.properties,
                        });
                    }
                }
                Ok(Some((_, Err(e)))) => return Err(e.into()),
            }
        }
    }

    pub fn count(&self) -> usize {
        self.captured.lock().map(|v| v.len()).unwrap_or(0)
    }
}

/// What one injection round put on the broker.
#[derive(Debug, Default, Clone)]
pub struct Injected {
    /// Poison messages per queue (or exchange, for the workers' control queues).
    pub poison: BTreeMap<String, u64>,
    /// Exact copies of real messages per exchange.
    pub duplicates: BTreeMap<String, u64>,
}

impl Injected {
    pub fn add(&mut self, other: &Injected) {
        for (k, v) in &other.poison {
            *self.poison.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.duplicates {
            *self.duplicates.entry(k.clone()).or_default() += v;
        }
    }
}

/// Payloads no consumer can take: bytes that are not UTF-8 and carry a
/// NUL, empty JSON, a truncated message, an unknown type and version, a
/// body of 64 KiB of noise.
fn poison_payloads() -> Vec<Vec<u8>> {
    let mut noise = vec![0u8; 64 * 1024];
    rand::thread_rng().fill(&mut noise[..]);
    vec![
        b"\x00\xff\xfe chaos poison \x00".to_vec(),
        b"{}".to_vec(),
        br#"{"type":"encode_result","schema_version":1,"job_id":"#.to_vec(),
        serde_json::to_vec(&json!({
            "type": "no_such_message", "schema_version": 999,
            "message_id": Uuid::new_v4(), "sent_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap_or_default(),
        noise,
    ]
}

/// Poison on every queue: each rack queue, results, slot events and dead
/// letters through the default exchange, and the workers' exclusive
/// control queues through their fanout exchange. Then `duplicates` exact
/// copies (same body, id and signature headers) of real messages seen on
/// each exchange.
pub async fn inject(
    url: &str,
    racks: &[String],
    tap: &Tap,
    duplicates: usize,
    round: usize,
) -> anyhow::Result<Injected> {
    let conn = cardfleet::broker::connect(url, "chaos-injector").await?;
    let channel = cardfleet::broker::confirm_channel(&conn).await?;
    let mut injected = Injected::default();
    let mut targets: Vec<(String, &str, String)> = racks
        .iter()
        .map(|r| (wire::rack_queue(r), "", wire::rack_queue(r)))
        .collect();
    for queue in [
        wire::RESULTS_QUEUE,
        wire::SLOT_EVENTS_QUEUE,
        wire::DEAD_QUEUE,
    ] {
        targets.push((queue.to_owned(), "", queue.to_owned()));
    }
    targets.push((
        format!("{} (every worker's control queue)", wire::CONTROL_EXCHANGE),
        wire::CONTROL_EXCHANGE,
        String::new(),
    ));
    for (label, exchange, key) in &targets {
        for (i, payload) in poison_payloads().into_iter().enumerate() {
            // One in five has no message id at all.
            let props = if i == 0 {
                BasicProperties::default().with_delivery_mode(2)
            } else {
                cardfleet::broker::properties(&Uuid::new_v4().to_string(), "chaos-poison")
            };
            let ok = cardfleet::broker::publish_confirmed(&channel, exchange, key, &payload, props)
                .await?;
            if ok {
                *injected.poison.entry(label.clone()).or_default() += 1;
            }
        }
    }
    // Copies of real messages, a different slice of them each round.
    let seen: Vec<Captured> = tap.captured.lock().map(|v| v.clone()).unwrap_or_default();
    for (exchange, _, _) in TAPPED {
        let of_exchange: Vec<&Captured> = seen.iter().filter(|c| c.exchange == *exchange).collect();
        let start = (round * duplicates).min(of_exchange.len());
        for c in of_exchange.iter().skip(start).take(duplicates) {
            let ok = cardfleet::broker::publish_confirmed(
                &channel,
                c.exchange,
                &c.routing_key,
                &c.data,
                c.properties.clone(),
            )
            .await?;
            if ok {
                *injected
                    .duplicates
                    .entry((*exchange).to_owned())
                    .or_default() += 1;
            }
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(injected)
}

/// Answers the API clients got.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub requests: AtomicU64,
    pub ok: AtomicU64,
    pub client_errors: AtomicU64,
    pub server_errors: AtomicU64,
    pub transport_errors: AtomicU64,
    pub latencies_ms: Mutex<Vec<u32>>,
}

/// `clients` concurrent API clients, each with its own connection, reading
/// batches, cards, racks and dead letters with a think time between
/// requests, until `stop`.
#[allow(clippy::too_many_arguments)]
pub fn spawn_clients(
    base: String,
    token: String,
    batch: String,
    card_ids: Arc<Vec<Uuid>>,
    clients: usize,
    think: Duration,
    stop: Arc<AtomicBool>,
    stats: Arc<ClientStats>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let (base, token, batch, card_ids, stop, stats) = (
                base.clone(),
                token.clone(),
                batch.clone(),
                card_ids.clone(),
                stop.clone(),
                stats.clone(),
            );
            tokio::spawn(async move {
                let Ok(http) = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .timeout(Duration::from_secs(60))
                    .build()
                else {
                    return;
                };
                while !stop.load(Ordering::Relaxed) {
                    let (path, pause) = {
                        let mut rng = rand::thread_rng();
                        let card = card_ids[rng.gen_range(0..card_ids.len().max(1))];
                        let path = match rng.gen_range(0..6) {
                            0 => format!("/v1/initializations/{batch}?limit=20"),
                            1 => format!(
                                "/v1/cards?type=temporary&limit=20&offset={}",
                                rng.gen_range(0..card_ids.len().max(1))
                            ),
                            2 | 3 => format!("/v1/cards/{card}"),
                            4 => "/v1/racks".to_owned(),
                            _ => "/v1/dead-letters?limit=10".to_owned(),
                        };
                        let pause = think.mul_f64(rng.gen_range(0.5..1.5));
                        (path, pause)
                    };
                    let started = Instant::now();
                    let answer = http
                        .get(format!("{base}{path}"))
                        .bearer_auth(&token)
                        .send()
                        .await;
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                    match answer {
                        Ok(r) => {
                            let status = r.status();
                            let _ = r.bytes().await;
                            let counter = if status.is_success() {
                                &stats.ok
                            } else if status.is_client_error() {
                                &stats.client_errors
                            } else {
                                &stats.server_errors
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut l) = stats.latencies_ms.lock() {
                                l.push(
                                    started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32
                                );
                            }
                        }
                        Err(_) => {
                            stats.transport_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
            })
        })
        .collect()
}

/// Cancels `cards` one by one over the API, `parallel` at a time; returns
/// the answers' status codes (every attempt's) and how many of each.
pub async fn cancel_cards(
    base: &str,
    token: &str,
    batch: &str,
    cards: &[Uuid],
    parallel: usize,
) -> BTreeMap<u16, u64> {
    let http = reqwest::Client::new();
    let answers = futures_util::stream::iter(cards.iter().copied())
        .map(|card| {
            let http = http.clone();
            let url = format!("{base}/v1/initializations/{batch}/cards/{card}/cancel");
            let token = token.to_owned();
            async move {
                // As an operator would: again after a server error, up to
                // five times; every answer is counted.
                let mut answers = Vec::new();
                for attempt in 0..5u32 {
                    let code = match http.post(&url).bearer_auth(&token).send().await {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    answers.push(code);
                    if code != 0 && code < 500 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
                }
                answers
            }
        })
        .buffer_unordered(parallel)
        .collect::<Vec<Vec<u16>>>()
        .await;
    let mut counts = BTreeMap::new();
    for a in answers.into_iter().flatten() {
        *counts.entry(a).or_default() += 1;
    }
    counts
}

/// The operator's hand: cards whose job ended cancelled are taken out of
/// their slots (their job will never come), so they do not hold a slot.
/// Returns how many removals it asked for.
pub async fn take_out_cancelled_cards(
    pool: &sqlx::PgPool,
    state_dir: &std::path::Path,
    done: &mut HashSet<String>,
) -> usize {
    let serials: Vec<String> = sqlx::query_scalar(
        "SELECT c.chip_serial FROM cards c JOIN jobs j ON j.card_id = c.id
         WHERE j.state = 'cancelled' AND c.state = 'produced'",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let mut asked = 0;
    for serial in serials {
        if done.contains(&serial) {
            continue;
        }
        let dir: PathBuf = state_dir.join(&serial);
        if std::fs::create_dir_all(&dir).is_ok()
            && std::fs::write(
                dir.join(cardfleet_worker::rack::simulated::REMOVE_REQUEST),
                b"",
            )
            .is_ok()
        {
            asked += 1;
            done.insert(serial);
        }
    }
    asked
}
