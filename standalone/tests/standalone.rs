//! Standalone mode as a new user runs it: the `cardfleet demo` command, and
//! `cardfleet standalone` killed with SIGKILL in the middle of a batch and
//! started again on the same data directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cardfleet::credentials::{CredentialCipher, Sealed};
use cardfleet_worker::piv::{StateStore, VirtualPivCard};
use serde_json::{Value, json};
use sqlx::sqlite::SqlitePoolOptions;
use uuid::Uuid;

fn cardfleet() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cardfleet"));
    // A configuration of the machine must not leak in.
    for (key, _) in std::env::vars() {
        if key.starts_with("CARDFLEET") {
            command.env_remove(key);
        }
    }
    command
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn retried(stdout: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("retried"))
        .unwrap_or_else(|| panic!("no retried line in:\n{stdout}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn the_demo_encodes_every_card_and_recovers_from_pulled_cards() {
    let dir = tempdir();
    let kept = dir.path().join("kept");
    let out = cardfleet()
        .args([
            "demo",
            "--cards",
            "150",
            "--slots",
            "8",
            "--card-latency",
            "0",
        ])
        .args(["--faults", "0.2", "--keep"])
        .arg(&kept)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("succeeded   150"), "{stdout}");
    assert!(stdout.contains("every card is now unassigned"), "{stdout}");
    assert!(stdout.contains("cards/s"), "{stdout}");
    assert!(
        stdout.contains("admin token (roles admin; shown once): cf_"),
        "the demo prints the admin token it created: {stdout}"
    );
    // 150 cards at a 20% fault rate: none retried would mean no faults ran.
    assert!(retried(&stdout) > 0, "{stdout}");
    assert!(stdout.contains("sqlite3"), "says how to inspect: {stdout}");

    // The kept database agrees with the summary, independently of it.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let states: Vec<(String, i64)> = runtime.block_on(async {
        let pool = SqlitePoolOptions::new()
            .connect(&format!(
                "sqlite://{}",
                kept.join("cardfleet.sqlite").display()
            ))
            .await
            .unwrap();
        sqlx::query_as("SELECT state, count(*) FROM cards GROUP BY state")
            .fetch_all(&pool)
            .await
            .unwrap()
    });
    assert_eq!(states, vec![("unassigned".to_owned(), 150)]);

    // A kept directory is never reused: the demo starts fresh or not at all.
    let again = cardfleet()
        .args(["demo", "--cards", "1", "--keep"])
        .arg(&kept)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds a cardfleet database"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn the_demo_refuses_a_fault_rate_outside_0_to_1() {
    let out = cardfleet()
        .args(["demo", "--cards", "1", "--faults", "1.5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--faults must be between 0 and 1"),
        "{stderr}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_standalone(data_dir: &Path, port: u16, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    cardfleet()
        .args(["standalone", "--data-dir"])
        .arg(data_dir)
        .env("CARDFLEET__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("CARDFLEET__METRICS__LISTEN", "127.0.0.1:0")
        .env("CARDFLEET__READER__SLOTS", "16")
        .env("CARDFLEET__SIMULATED__LATENCY_MS", "1")
        .env("CARDFLEET__SIMULATED__KEYGEN_LATENCY_MS", "5")
        .env("CARDFLEET__LOG__FILTER", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

struct Api {
    base: String,
    http: reqwest::Client,
    /// `<data-dir>/admin-token`, written by standalone on first start.
    token_file: std::path::PathBuf,
}

impl Api {
    fn token(&self) -> String {
        std::fs::read_to_string(&self.token_file)
            .unwrap()
            .trim()
            .to_owned()
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let value: Value = response.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {value}");
        value
    }

    async fn wait_ready(&self, child: &mut Child) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("standalone exited early: {status}");
            }
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "standalone did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn counts(&self, batch: &str) -> (Value, bool) {
        let status = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/initializations/{batch}?limit=1"),
                None,
            )
            .await;
        (status["counts"].clone(), status["finished"] == true)
    }
}

const CRASH_CARDS: u32 = 2000;

/// Unfinished jobs a killed standalone run left in its SQLite file.
#[derive(Debug)]
struct Left {
    /// `dispatched` or `encoding`: on the bus that died with the process.
    in_flight: i64,
    /// `queued` with an outbox row: the dispatcher publishes them again.
    queued: i64,
    /// `queued` without an outbox row (must be none).
    queued_without_outbox: i64,
}

async fn left_by_the_kill(db: &str) -> Left {
    let pool = SqlitePoolOptions::new().connect(db).await.unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let left = Left {
        in_flight: count("SELECT count(*) FROM jobs WHERE state IN ('dispatched', 'encoding')")
            .await,
        queued: count(
            "SELECT count(*) FROM jobs j WHERE j.state = 'queued'
             AND EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = j.id)",
        )
        .await,
        queued_without_outbox: count(
            "SELECT count(*) FROM jobs j WHERE j.state = 'queued'
             AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = j.id)",
        )
        .await,
    };
    pool.close().await;
    left
}

/// (chip serial, job id, key id, PIN nonce, PIN ciphertext)
type CredentialRow = (String, String, String, Vec<u8>, Vec<u8>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_killed_mid_batch_finishes_it_after_a_restart_on_the_same_file() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let log = dir.path().join("standalone.log");
    let port = free_port();
    let api = Api {
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::new(),
        token_file: data.join("admin-token"),
    };
    let mut child = spawn_standalone(&data, port, &log);
    api.wait_ready(&mut child).await;
    // The first start made a token (admin and operator) only its owner can read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&api.token_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let first_token = api.token();
    let anonymous = api
        .http
        .get(format!("{}/v1/cards", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let base = 300_000_000u32;
    let cards: Vec<Value> = (0..CRASH_CARDS)
        .map(|i| {
            json!({
                "card_number": format!("CRASH-{i:05}"),
                "chip_serial": (base + i).to_string(),
                "card_type": "temporary",
                "profile": "temporary-piv"
            })
        })
        .collect();
    let imported = api
        .call(
            reqwest::Method::POST,
            "/v1/cards/import",
            Some(json!({ "cards": cards })),
        )
        .await;
    assert_eq!(imported["imported"], CRASH_CARDS);
    api.call(
        reqwest::Method::PUT,
        "/v1/processes/initialize-temporary-card",
        Some(json!({ "enabled": true })),
    )
    .await;
    let submitted = api
        .call(
            reqwest::Method::POST,
            "/v1/initializations",
            Some(json!({ "filter": { "type": "temporary", "state": "produced", "limit": CRASH_CARDS } })),
        )
        .await;
    let batch = submitted["batch_id"].as_str().unwrap().to_owned();
    assert_eq!(
        submitted["accepted"].as_array().unwrap().len(),
        CRASH_CARDS as usize
    );

    // Kill it in the middle: some cards done, many in slots or on the bus.
    let deadline = Instant::now() + Duration::from_secs(300);
    let done_before = loop {
        let (counts, finished) = api.counts(&batch).await;
        let done = counts["succeeded"].as_u64().unwrap();
        assert!(!finished, "the batch finished before the kill");
        if done >= u64::from(CRASH_CARDS) / 4 {
            break done;
        }
        assert!(Instant::now() < deadline, "no progress: {counts}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(done_before < u64::from(CRASH_CARDS));

    // What the killed run left, read from its file while nothing runs. A
    // job not finished is either still `queued` with its outbox row (the
    // dispatcher published it but had not yet committed marking it
    // dispatched: under load that commit waits for SQLite's one writer, and
    // with dispatcher.batch_size 2000 one round claims the whole batch), or
    // `dispatched`/`encoding`, which only the restart's re-dispatch can
    // bring back. Which of the two the kill finds depends on timing, so the
    // test counts both and demands each be recovered, not that the second
    // be non-empty.
    let db = format!("sqlite://{}", data.join("cardfleet.sqlite").display());
    let left = left_by_the_kill(&db).await;
    assert_eq!(
        left.queued_without_outbox, 0,
        "a queued job without an outbox row would never be published: {left:?}"
    );
    assert!(
        left.in_flight + left.queued > 0,
        "the kill left nothing to recover: {left:?}"
    );

    let mut child = spawn_standalone(&data, port, &log);
    api.wait_ready(&mut child).await;
    assert_eq!(api.token(), first_token, "a restart keeps the first token");
    let deadline = Instant::now() + Duration::from_secs(600);
    let counts = loop {
        let (counts, finished) = api.counts(&batch).await;
        if finished {
            break counts;
        }
        assert!(
            Instant::now() < deadline,
            "the batch did not finish: {counts}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stopped = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(stopped.success(), "clean stop failed: {stopped}\n{text}");
    assert_eq!(counts["succeeded"], CRASH_CARDS, "{counts}\n{text}");
    // The restart re-dispatched exactly the jobs the kill left on the bus
    // (one audit row each), and said so when there were any.
    let pool = SqlitePoolOptions::new().connect(&db).await.unwrap();
    let redispatched: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit WHERE action = 'job.redispatched'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        redispatched, left.in_flight,
        "the restart re-dispatched other jobs than the kill left in flight: {left:?}\n{text}"
    );
    assert_eq!(
        text.contains("re-dispatching jobs the previous run had in flight"),
        left.in_flight > 0,
        "{left:?}\n{text}"
    );

    // Every card unassigned, one job and one set of credentials each, and
    // the PIN on every chip is the stored one.
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM cards GROUP BY state")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        states,
        vec![("unassigned".to_owned(), i64::from(CRASH_CARDS))]
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        jobs,
        i64::from(CRASH_CARDS),
        "one job per card, none lost or added"
    );
    let keys: HashMap<String, String> =
        toml::from_str(&std::fs::read_to_string(data.join("keys.toml")).unwrap()).unwrap();
    let cipher = CredentialCipher::from_hex(&keys["key_id"], &keys["encryption_key"]).unwrap();
    let rows: Vec<CredentialRow> = sqlx::query_as(
        "SELECT c.chip_serial, cr.job_id, cr.key_id, cr.pin_nonce, cr.pin_ct
         FROM credentials cr JOIN cards c ON c.id = cr.card_id WHERE cr.status = 'active'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows.len(),
        CRASH_CARDS as usize,
        "one active credential set per card"
    );
    for (serial, job_id, key_id, nonce, ciphertext) in rows {
        let job_id: Uuid = job_id.parse().unwrap();
        let context = cardfleet::store::initialize::credential_context(job_id, "pin");
        let pin = cipher
            .open(&key_id, &Sealed { nonce, ciphertext }, &context)
            .unwrap();
        let state = StateStore::open(data.join("cards").join(&serial))
            .unwrap()
            .load()
            .unwrap()
            .unwrap_or_else(|| panic!("no saved chip for {serial}"));
        let mut card = VirtualPivCard::from_state(state);
        assert!(
            support::workers::verify_pin(&mut card, pin.expose()),
            "chip {serial} does not hold its stored PIN"
        );
    }
}

#[tokio::test]
async fn the_demo_stays_up_with_its_console_until_interrupted() {
    use std::io::BufRead;
    let mut child = cardfleet()
        .args(["demo", "--cards", "3", "--card-latency", "0", "--stay"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut console, mut operator) = (None, None);
    while console.is_none() || operator.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = seen
            .recv_timeout(left)
            .expect("the demo prints its console URL and an operator token");
        if let Some(url) = line.trim().strip_prefix("console on ") {
            console = Some(url.to_owned());
        }
        if let Some((_, token)) = line.split_once("operator token (roles operator; shown once): ") {
            operator = Some(token.trim().to_owned());
        }
    }
    let (console, operator) = (console.unwrap(), operator.unwrap());
    let page = reqwest::get(&console).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("cardfleet"));
    // The printed token signs in: the batch's cards are there, unassigned.
    let api = console.trim_end_matches("/console/");
    let cards: Value = reqwest::Client::new()
        .get(format!("{api}/v1/cards?state=unassigned"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cards.as_array().unwrap().len(), 3, "{cards}");

    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo did not stop on SIGINT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}
