//! Test harness: a control plane on port 0 against a fresh PostgreSQL
//! database and a fresh RabbitMQ vhost, plus a stand-in for workers that
//! speaks the wire contract.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod prometheus;
pub mod workers;

use std::process::Command;
use std::time::{Duration, Instant};

use cardfleet::app::{Application, Component};
use cardfleet::settings::Settings;
use cardfleet::store::Store;
use cardfleet::store::tokens::{NewToken, Role};
use cardfleet_schemas::{self as wire, EventMessage, Meta, SlotEvent, SlotEventKind};
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const ENCRYPTION_KEY: &str = "4242424242424242424242424242424242424242424242424242424242424242";
pub const MASTER_KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";

pub fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn psql(sql: &str) {
    let _ = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-qc",
            sql,
        ])
        .output();
}

/// Runs `sql` on database `db`, which must succeed.
pub fn psql_on(db: &str, sql: &str) {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-qc", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh vhost, deleted on drop.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    pub fn new() -> Self {
        let name = format!("cardfleet-test-{}", Uuid::new_v4().simple());
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Self { name }
    }
    /// On the broker at 127.0.0.1:5672, or at the port in
    /// `CARDFLEET_TEST_AMQP_PORT` (with `RABBITMQ_NODENAME` naming that
    /// node for rabbitmqctl): a private node for tests that restart it.
    pub fn url(&self) -> String {
        let port = std::env::var("CARDFLEET_TEST_AMQP_PORT").unwrap_or_else(|_| "5672".into());
        format!("amqp://guest:guest@127.0.0.1:{port}/{}", self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .output();
    }
}

pub struct TestApp {
    pub base: String,
    /// Sends `token` with every request.
    pub http: reqwest::Client,
    /// A token holding every role, made through the store at spawn.
    pub token: String,
    pub store: Store,
    pub db_name: String,
    pub vhost: Vhost,
    pub metrics_port: Option<u16>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub fn settings_for(db_name: &str, amqp_url: &str, extra: &[(&str, String)]) -> Settings {
    let mut overrides = vec![
        (
            "database.url",
            format!("postgres://postgres@127.0.0.1:5432/{db_name}"),
        ),
        ("database.max_connections", "8".to_string()),
        ("amqp.url", amqp_url.to_string()),
        ("amqp.reconnect_max_seconds", "1".to_string()),
        ("http.listen", "127.0.0.1:0".to_string()),
        ("metrics.listen", "127.0.0.1:0".to_string()),
        ("credentials.encryption_key", ENCRYPTION_KEY.to_string()),
        ("credentials.master_key", MASTER_KEY.to_string()),
        ("dispatcher.poll_interval_ms", "100".to_string()),
    ];
    overrides.extend(extra.iter().cloned());
    Settings::load_with(Some(&missing_file()), &overrides).expect("test settings load")
}

/// An empty config file, so a developer's cardfleet.toml never leaks into tests.
fn missing_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join("cardfleet-test-empty.toml");
    if !path.exists() {
        std::fs::write(&path, "").unwrap();
    }
    path
}

/// Creates a token with `roles` through the store; returns its secret.
pub async fn create_token(store: &Store, name: &str, roles: &[Role]) -> String {
    let new = NewToken {
        name: name.to_owned(),
        roles: roles.to_vec(),
        rack_id: None,
        single_use: false,
        expires_at: None,
    };
    store
        .create_token(&new, "test")
        .await
        .expect("token created")
        .expose()
        .to_owned()
}

/// An HTTP client that sends `token` as bearer with every request.
pub fn client_with(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&Component::ALL, &[]).await
}

pub async fn spawn_app_with(components: &[Component], extra: &[(&str, String)]) -> TestApp {
    let db_name = format!("cardfleet_test_{}", Uuid::new_v4().simple());
    let vhost = Vhost::new();
    let settings = settings_for(&db_name, &vhost.url(), extra);
    let app = Application::build(&settings, components)
        .await
        .expect("app builds");
    let port = app.port().unwrap_or(0);
    let metrics_port = app.metrics_port();
    let store = app.store().clone();
    let token = create_token(&store, "test-all-roles", &Role::ALL).await;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        base: format!("http://127.0.0.1:{port}"),
        http: client_with(Some(&token)),
        token,
        store,
        db_name,
        vhost,
        metrics_port,
        shutdown,
        task: Some(task),
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
        psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.db_name
        ));
    }
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request with `token` (or none) instead of the all-roles token.
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut request = client_with(token).request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        reply(request.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        reply(r).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        reply(r).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        let r = self
            .http
            .put(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        reply(r).await
    }

    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Reply {
        let r = self
            .http
            .request(method, self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        reply(r).await
    }

    /// Imports `n` produced temporary cards with serials `{prefix}-CHIP-i`; returns their ids.
    pub async fn import_cards(&self, prefix: &str, n: usize) -> Vec<Uuid> {
        // In chunks that stay under the default body limit.
        for start in (0..n).step_by(20_000) {
            let cards: Vec<Value> = (start..n.min(start + 20_000))
                .map(|i| {
                    json!({
                        "card_number": format!("{prefix}-TC-{i:06}"),
                        "chip_serial": format!("{prefix}-CHIP-{i:06}"),
                        "card_type": "temporary",
                        "profile": "temporary-piv"
                    })
                })
                .collect();
            let expected = cards.len();
            let r = self
                .post("/v1/cards/import", json!({ "cards": cards }))
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.body["imported"], expected, "{}", r.body);
        }
        let mut ids = Vec::with_capacity(n);
        let mut offset = 0;
        while ids.len() < n {
            let page = self
                .get(&format!(
                    "/v1/cards?type=temporary&limit=1000&offset={offset}"
                ))
                .await;
            let page = page.body.as_array().unwrap().clone();
            if page.is_empty() {
                break;
            }
            offset += page.len();
            for c in page {
                if c["card_number"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{prefix}-TC-"))
                {
                    ids.push(c["card_id"].as_str().unwrap().parse().unwrap());
                }
            }
        }
        ids
    }

    /// Submits every produced temporary card, up to `n`; returns the batch id.
    pub async fn submit_all(&self, n: usize) -> String {
        let r = self
            .post(
                "/v1/initializations",
                json!({ "filter": { "type": "temporary", "state": "produced", "limit": n } }),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        r.body["batch_id"].as_str().unwrap().to_owned()
    }

    pub async fn enable(&self) {
        let r = self
            .put(
                "/v1/processes/initialize-temporary-card",
                json!({ "enabled": true }),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    pub async fn card_state(&self, card_id: Uuid) -> String {
        let r = self.get(&format!("/v1/cards/{card_id}")).await;
        r.body["state"].as_str().unwrap_or_default().to_owned()
    }

    /// Row counts of every table, to show a request changed nothing.
    pub async fn table_counts(&self) -> Vec<(String, i64)> {
        let mut counts = Vec::new();
        for table in [
            "cards",
            "batches",
            "jobs",
            "credentials",
            "outbox",
            "slot_locations",
            "racks",
            "slots",
            "dead_letters",
            "audit",
            "control_outbox",
        ] {
            let n: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                    .fetch_one(self.store.postgres_pool().expect("PostgreSQL store"))
                    .await
                    .unwrap();
            counts.push((table.to_owned(), n));
        }
        let states: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM cards GROUP BY state ORDER BY state")
                .fetch_all(self.store.postgres_pool().expect("PostgreSQL store"))
                .await
                .unwrap();
        counts.extend(states);
        let enabled: bool = sqlx::query_scalar("SELECT enabled FROM process_settings")
            .fetch_one(self.store.postgres_pool().expect("PostgreSQL store"))
            .await
            .unwrap();
        counts.push(("enabled".into(), i64::from(enabled)));
        counts
    }
}

async fn reply(r: reqwest::Response) -> Reply {
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    Reply { status, body }
}

/// Waits for `check` to hold, polling, up to `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A stand-in for workers: publishes slot events and results, reads rack queues.
pub struct FakeWorker {
    pub conn: lapin::Connection,
    pub channel: lapin::Channel,
}

impl FakeWorker {
    pub async fn connect(url: &str) -> Self {
        let conn = cardfleet::broker::connect(url, "test-worker")
            .await
            .unwrap();
        let channel = cardfleet::broker::confirm_channel(&conn).await.unwrap();
        cardfleet::broker::declare_topology(&channel).await.unwrap();
        Self { conn, channel }
    }

    /// Publishes `payload`, signed as the rack its `rack_id` names (with
    /// that rack's test key), as that rack's worker would; unsigned when it
    /// names none.
    pub async fn publish(&self, exchange: &str, key: &str, payload: &[u8]) {
        let rack = serde_json::from_slice::<Value>(payload)
            .ok()
            .and_then(|v| v["rack_id"].as_str().map(str::to_owned));
        let id = Uuid::new_v4().to_string();
        let props = match rack {
            Some(rack) => signed_properties(&rack, &id, "test", payload),
            None => cardfleet::broker::properties(&id, "test"),
        };
        let ok = cardfleet::broker::publish_confirmed(&self.channel, exchange, key, payload, props)
            .await
            .unwrap();
        assert!(ok, "broker did not confirm");
    }

    /// Reports `serials` as inserted into consecutive slots of `rack`.
    pub async fn insert_cards(&self, rack: &str, serials: &[String]) {
        let mut confirms = Vec::new();
        for (i, serial) in serials.iter().enumerate() {
            let event = EventMessage::SlotEvent(SlotEvent {
                meta: Meta::now(),
                rack_id: rack.into(),
                worker_id: format!("{rack}-worker"),
                slot: (i % 60000) as u16,
                kind: SlotEventKind::Inserted,
                chip_serial: Some(serial.clone()),
                reason: None,
            });
            let payload = serde_json::to_vec(&event).unwrap();
            let confirm = self
                .channel
                .basic_publish(
                    wire::EVENTS_EXCHANGE.into(),
                    "slot.inserted".into(),
                    BasicPublishOptions::default(),
                    &payload,
                    signed_properties(
                        rack,
                        &event.meta().message_id.to_string(),
                        "slot_event",
                        &payload,
                    ),
                )
                .await
                .unwrap();
            confirms.push(confirm);
        }
        for c in futures_util::future::join_all(confirms).await {
            assert!(c.unwrap().is_ack());
        }
    }

    pub async fn publish_result(&self, msg: &wire::ResultMessage) {
        self.publish(
            wire::RESULTS_EXCHANGE,
            wire::RESULTS_QUEUE,
            &serde_json::to_vec(msg).unwrap(),
        )
        .await;
    }

    /// Takes up to `n` job messages from a rack's queue (acking them), waiting up to `timeout`.
    pub async fn take_jobs(
        &self,
        rack: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<wire::InitializeJob> {
        cardfleet::broker::declare_rack_queue(&self.channel, rack, 5)
            .await
            .unwrap();
        let channel = self.conn.create_channel().await.unwrap();
        channel
            .basic_qos(1000, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                wire::rack_queue(rack).as_str().into(),
                format!("test-{}", Uuid::new_v4()).as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut jobs = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while jobs.len() < n {
            let next = tokio::time::timeout_at(deadline, consumer.next()).await;
            let Ok(Some(Ok(delivery))) = next else { break };
            jobs.push(serde_json::from_slice(&delivery.data).unwrap());
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        let _ = channel.close(200, "done".into()).await;
        jobs
    }
}

/// Message properties signed by `rack` with its [`workers::test_rack_key`].
pub fn signed_properties(
    rack: &str,
    message_id: &str,
    kind: &str,
    payload: &[u8],
) -> lapin::BasicProperties {
    let signer =
        cardfleet_schemas::rack_identity::RackSigner::new(rack, &workers::test_rack_key(rack));
    let mut headers = FieldTable::default();
    for (name, value) in signer.headers(payload) {
        headers.insert(
            name.into(),
            lapin::types::AMQPValue::LongString(value.as_str().into()),
        );
    }
    cardfleet::broker::properties(message_id, kind).with_headers(headers)
}

pub fn result_for(job: &wire::InitializeJob, outcome: wire::Outcome) -> wire::ResultMessage {
    wire::ResultMessage::EncodeResult(wire::EncodeResult {
        meta: Meta::now(),
        job_id: job.job_id,
        batch_id: job.batch_id,
        card_id: job.card_id,
        rack_id: job.rack_id.clone(),
        slot: Some(0),
        worker_id: "test-worker".into(),
        outcome,
        failure: None,
        steps: vec![wire::StepReport {
            step: "change_pin".into(),
            status: wire::StepStatus::Done,
            duration_ms: 1.0,
            detail: None,
        }],
        attempts: 1,
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
        public_keys: Vec::new(),
    })
}
