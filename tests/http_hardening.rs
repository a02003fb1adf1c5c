//! The limits every API request lives under: a time limit for slow
//! requests and slow headers, a per-token rate limit, one access-log line
//! per request without secrets, and `/metrics` on its own listener only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cardfleet::app::Component;
use cardfleet::store::tokens::Role;
use reqwest::Method;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on every wait of these tests; the server's limits are far below it.
const BOUND: Duration = Duration::from_secs(30);

/// Reads what the server sends until it closes the connection, `until`
/// appears, or `BOUND` passes.
async fn read_answer(stream: &mut TcpStream, until: &str) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(BOUND, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
            if String::from_utf8_lossy(&answer).contains(until) {
                return;
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server neither answered nor closed within {BOUND:?}"
    );
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_request_whose_body_never_arrives_gets_408_request_timeout() {
    let app = spawn_app_with(
        &[Component::Api],
        &[("http.request_timeout_seconds", "1".into())],
    )
    .await;
    let before = app.table_counts().await;
    let port = app.base.rsplit(':').next().unwrap();
    let mut stream = TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    // Promises 100 bytes, sends 10, then waits.
    let head = format!(
        "POST /v1/initializations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"card_ids",
        app.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_answer(&mut stream, "request_timeout").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert_eq!(
        app.table_counts().await,
        before,
        "the timed-out request changed data"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = spawn_app_with(
        &[Component::Api],
        &[("http.header_timeout_seconds", "1".into())],
    )
    .await;
    let port = app.base.rsplit(':').next().unwrap();
    let mut stream = TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut stream, "\r\n\r\n").await;
    assert!(!answer.contains("200 OK"), "{answer}");
    // The server still serves others.
    assert_eq!(app.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn a_token_over_its_rate_gets_429_and_other_tokens_are_not_slowed() {
    let app = spawn_app_with(
        &[Component::Api],
        &[
            ("http.rate_limit.per_second", "1".into()),
            ("http.rate_limit.burst", "3".into()),
        ],
    )
    .await;
    let busy = create_token(&app.store, "busy", &[Role::Operator]).await;
    let calm = create_token(&app.store, "calm", &[Role::Operator]).await;
    let mut limited = None;
    for _ in 0..50 {
        let r = client_with(Some(&busy))
            .get(app.url("/v1/cards?limit=1"))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let limited = limited.expect("50 requests at once never hit a limit of 1/s, burst 3");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    let r = app
        .call_as(Some(&calm), Method::GET, "/v1/cards?limit=1", None)
        .await;
    assert_eq!(r.status, 200, "another token shares the busy one's bucket");
}

#[tokio::test]
async fn a_rate_of_zero_turns_limiting_off() {
    let app = spawn_app_with(
        &[Component::Api],
        &[
            ("http.rate_limit.per_second", "0".into()),
            ("http.rate_limit.burst", "1".into()),
        ],
    )
    .await;
    for _ in 0..20 {
        assert_eq!(app.get("/v1/cards?limit=1").await.status, 200);
    }
}

#[tokio::test]
async fn metrics_are_served_on_the_metrics_listener_and_not_on_the_api() {
    let app = spawn_app_with(&[Component::Api], &[]).await;
    assert_eq!(app.get("/metrics").await.status, 404);
    assert_eq!(
        app.call_as(None, Method::GET, "/metrics", None)
            .await
            .status,
        401
    );
    let port = app.metrics_port.unwrap();
    let page = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("cardfleet_"));
}

/// Log output of this test binary, captured once for all its tests.
fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("cardfleet::access=info")
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .try_init();
        log
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn each_request_writes_one_access_line_with_route_status_and_actor_but_no_secret() {
    let log = captured_log();
    let app = spawn_app_with(&[Component::Api], &[]).await;
    let officer = create_token(&app.store, "access-officer", &[Role::Officer]).await;
    let card = app.import_cards("AL", 1).await[0];
    let r = app
        .call_as(
            Some(&officer),
            Method::GET,
            &format!("/v1/cards/{card}/puk?reason=query-text-stays-out"),
            None,
        )
        .await;
    assert!(r.status < 500, "{}", r.body);
    let wanted = format!("/v1/cards/{card}/puk");
    let mut line = None;
    for _ in 0..300 {
        let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
        line = text
            .lines()
            .find(|l| l.contains(&wanted) && l.contains("status="))
            .map(str::to_owned);
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = line.expect("no access-log line for the request within 30 s");
    assert!(line.contains("route=/v1/cards/{card_id}/puk"), "{line}");
    assert!(line.contains(&format!("status={}", r.status)), "{line}");
    assert!(line.contains("actor=access-officer"), "{line}");
    assert!(line.contains("method=GET"), "{line}");
    let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    assert!(!text.contains(&officer[3..]), "a token reached the log");
    assert!(!text.contains(&app.token[3..]), "a token reached the log");
    assert!(
        !text.contains("query-text-stays-out"),
        "the query reached the log"
    );
}
