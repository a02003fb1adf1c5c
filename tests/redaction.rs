//! The redaction scan: a batch runs with tracing at TRACE level, PUK escrow
//! and PIN mailers are used, and then every generated PIN, PUK and
//! management key is searched for in all captured logs, every metrics page,
//! every message that crossed the broker (a capture queue bound to each
//! exchange), a full dump of the database and every API listing. The only
//! places a secret may appear are the two responses whose purpose is to hand
//! one to an officer (PUK escrow, PIN mailers), which are not scanned.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use cardfleet::credentials::{CredentialCipher, MasterKey};
use cardfleet_schemas::profile::ManagementKeyAlgorithm;
use cardfleet_worker::rack::simulated::SimCard;
use futures_util::StreamExt;
use serde_json::{Value, json};
use support::workers::*;
use support::*;

const CARDS: u32 = 24;
const RACK: &str = "rack-redact";

/// (chip serial, job id, key id, PIN nonce, PIN ciphertext, PUK nonce, PUK ciphertext)
type CredentialRow = (
    String,
    uuid::Uuid,
    String,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
);

/// Everything written by tracing, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A profile like the shipped one with 8-digit PINs, so that a PIN found in
/// a log is a leak and not a coincidence with a short number.
fn profile_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = include_str!("../profiles/temporary-piv.toml");
    let profile = shipped
        .replace("name = \"temporary-piv\"", "name = \"redaction-piv\"")
        .replacen("[pin]\nlength = 6", "[pin]\nlength = 8", 1);
    assert!(profile.contains("name = \"redaction-piv\""));
    assert!(
        profile.contains("[pin]\nlength = 8"),
        "the shipped profile changed shape"
    );
    std::fs::write(dir.path().join("redaction-piv.toml"), profile).unwrap();
    dir
}

/// Messages on every exchange of the test vhost, from now on.
async fn capture_broker(url: &str) -> Arc<Mutex<Vec<Vec<u8>>>> {
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let conn = cardfleet::broker::connect(url, "redaction-capture")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let topology = channel.clone();
    cardfleet::broker::declare_topology(&topology)
        .await
        .unwrap();
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let bindings = [
        (cardfleet_schemas::JOBS_EXCHANGE, RACK),
        (
            cardfleet_schemas::RESULTS_EXCHANGE,
            cardfleet_schemas::RESULTS_QUEUE,
        ),
        (cardfleet_schemas::EVENTS_EXCHANGE, "#"),
        (cardfleet_schemas::CONTROL_EXCHANGE, ""),
        (cardfleet_schemas::DEAD_EXCHANGE, ""),
    ];
    for (exchange, key) in bindings {
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "capture".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    tokio::spawn(async move {
        let _keep = conn;
        while let Some(Ok(d)) = consumer.next().await {
            let mut text = d.data.clone();
            // Headers too: dead letters carry reasons there.
            text.extend_from_slice(format!("{:?}", d.properties).as_bytes());
            sink.lock().unwrap().push(text);
        }
    });
    seen
}

/// A request with the all-roles token; the status and the body as text.
async fn text(app: &TestApp, method: reqwest::Method, path: &str) -> (u16, String) {
    let r = app
        .http
        .request(method, app.url(path))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// The base64-decoded bytes of every string in `value` that is base64.
fn decode_strings(value: &Value, out: &mut Vec<Vec<u8>>) {
    match value {
        Value::String(s) => {
            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(s) {
                out.push(bytes);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| decode_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| decode_strings(v, out)),
        _ => {}
    }
}

/// Every form in which a secret could leak.
fn forms(secret: &[u8]) -> Vec<String> {
    let mut forms = vec![
        hex::encode(secret),
        hex::encode_upper(secret),
        base64::engine::general_purpose::STANDARD.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
    ];
    if let Ok(text) = std::str::from_utf8(secret) {
        forms.push(text.to_owned());
        // A byte-array Debug rendering, e.g. [49, 50, 51, ...].
        forms.push(format!("{secret:?}"));
    }
    forms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pin_puk_or_management_key_appears_anywhere_it_should_not() {
    let logs = Captured::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .init();

    let profiles = profile_dir();
    let app = spawn_app_with(
        &cardfleet::app::Component::ALL,
        &[("profiles.dir", profiles.path().display().to_string())],
    )
    .await;
    let broker = capture_broker(&app.vhost.url()).await;

    let serials: Vec<u32> = (0..CARDS).map(|i| 730_000_000 + i).collect();
    let cards: Vec<Value> = serials
        .iter()
        .map(|s| json!({ "card_number": format!("RD-{s}"), "chip_serial": s.to_string(), "card_type": "temporary", "profile": "redaction-piv" }))
        .collect();
    let r = app
        .post("/v1/cards/import", json!({ "cards": cards }))
        .await;
    assert_eq!(r.body["imported"], CARDS, "{}", r.body);
    app.enable().await;
    let worker = TestWorker::start(
        &app,
        RACK,
        8,
        serials.iter().map(|s| SimCard::new(*s)).collect(),
        &[],
    );
    let batch = app.submit_all(CARDS as usize).await;
    let status = wait_finished(&app, &batch, Duration::from_secs(120)).await;
    assert_eq!(status["counts"]["succeeded"], CARDS, "{status}");

    // The secrets, read the way only this test can: decrypting the store.
    let pool = app.store.postgres_pool().unwrap().clone();
    let rows: Vec<CredentialRow> =
        sqlx::query_as(
            "SELECT c.chip_serial, cr.job_id, cr.key_id, cr.pin_nonce, cr.pin_ct, cr.puk_nonce, cr.puk_ct
             FROM credentials cr JOIN cards c ON c.id = cr.card_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), CARDS as usize);
    let cipher = CredentialCipher::from_hex("k1", ENCRYPTION_KEY).unwrap();
    let master = MasterKey::from_hex(MASTER_KEY).unwrap();
    let mut secrets: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (serial, job_id, key_id, pin_nonce, pin_ct, puk_nonce, puk_ct) in rows {
        for (field, nonce, ciphertext) in [("pin", pin_nonce, pin_ct), ("puk", puk_nonce, puk_ct)] {
            let context = cardfleet::store::initialize::credential_context(job_id, field);
            let value = cipher
                .open(
                    &key_id,
                    &cardfleet::credentials::Sealed { nonce, ciphertext },
                    &context,
                )
                .unwrap();
            assert_eq!(value.expose().len(), 8);
            secrets.insert(
                format!("{field} of {serial}"),
                value.expose().as_bytes().to_vec(),
            );
        }
        // 3DES and AES-192 keys are both 24 bytes of the same derivation.
        let key = master.derive_management_key(&serial, ManagementKeyAlgorithm::Aes192);
        secrets.insert(
            format!("management key of {serial}"),
            hex::decode(key.expose()).unwrap(),
        );
    }
    // The card's own PIN really is on the chip: the scan searches the real values.
    let tray = worker.stop().await;
    let cards_out = tray.take();
    assert_eq!(cards_out.len(), CARDS as usize);
    let mut first = cards_out.into_iter().next().unwrap();
    let serial = serial_of(&first);
    let pin = String::from_utf8(secrets[&format!("pin of {serial}")].clone()).unwrap();
    assert!(
        verify_pin(&mut first, &pin),
        "the PIN searched for is not the card's"
    );

    // The two places meant to reveal a secret, used so their side effects
    // (logs, audit rows) are scanned too.
    let card_id = app.get("/v1/cards?limit=1").await.body[0]["card_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, puk_text) = text(
        &app,
        reqwest::Method::GET,
        &format!("/v1/cards/{card_id}/puk?reason=redaction%20scan"),
    )
    .await;
    assert_eq!(status, 200, "{puk_text}");
    let (status, mailers) = text(
        &app,
        reqwest::Method::POST,
        &format!("/v1/initializations/{batch}/pin-mailers?format=csv"),
    )
    .await;
    assert_eq!(status, 200, "{mailers}");

    // Where secrets must never be.
    let mut haystacks: Vec<(String, String)> = Vec::new();
    for path in [
        "/v1/cards?limit=1000".to_owned(),
        format!("/v1/cards/{card_id}"),
        format!("/v1/initializations/{batch}?limit=1000"),
        "/v1/racks".to_owned(),
        "/v1/dead-letters".to_owned(),
        "/v1/audit?limit=1000".to_owned(),
        "/v1/tokens".to_owned(),
        "/v1/processes/initialize-temporary-card".to_owned(),
    ] {
        let (status, body) = text(&app, reqwest::Method::GET, &path).await;
        assert!(status < 400, "{path}: {status} {body}");
        haystacks.push((format!("API {path}"), body));
    }
    // The event stream of a finished batch replays its transitions and ends.
    let events = tokio::time::timeout(
        Duration::from_secs(30),
        text(
            &app,
            reqwest::Method::GET,
            &format!("/v1/initializations/{batch}/events"),
        ),
    )
    .await
    .expect("the event stream of a finished batch ends");
    assert!(events.1.contains("finished"), "{}", events.1);
    haystacks.push(("API events".into(), events.1));
    if let Some(port) = app.metrics_port {
        let page = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        haystacks.push(("control-plane metrics page".into(), page));
    }
    let dump = std::process::Command::new("pg_dump")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "--no-owner",
            &app.db_name,
        ])
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(
        dump.stdout.len() > 10_000,
        "the dump is too small to be real"
    );
    haystacks.push((
        "database dump".into(),
        String::from_utf8_lossy(&dump.stdout).into(),
    ));
    let messages = broker.lock().unwrap().clone();
    assert!(
        messages.len() >= CARDS as usize * 3,
        "the capture queue saw only {} messages",
        messages.len()
    );
    for (i, m) in messages.iter().enumerate() {
        let mut text: String = String::from_utf8_lossy(m).into();
        // Base64 inside a message hides text from a plain search: decode
        // every string field that is base64 and search that too.
        if let Ok(json) = serde_json::from_slice::<Value>(m) {
            let mut decoded = Vec::new();
            decode_strings(&json, &mut decoded);
            for d in decoded {
                text.push('\n');
                text.push_str(&String::from_utf8_lossy(&d));
            }
        }
        haystacks.push((format!("broker message {i}"), text));
    }
    let log_text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        log_text.contains("TRACE"),
        "tracing did not capture at trace level"
    );
    haystacks.push(("logs".into(), log_text));

    let mut hits = Vec::new();
    for (what, secret) in &secrets {
        for form in forms(secret) {
            for (place, text) in &haystacks {
                if text.contains(&form) {
                    hits.push(format!("{what} ({form}) in {place}"));
                }
            }
        }
    }
    assert!(hits.is_empty(), "secrets leaked:\n{}", hits.join("\n"));
    // Control: the same scan does find a secret where it is meant to be.
    assert!(
        secrets
            .values()
            .any(|s| puk_text.contains(std::str::from_utf8(s).unwrap_or("\u{0}"))),
        "the scan would not notice a leak"
    );
}
