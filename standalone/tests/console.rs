//! The operator console in a real browser: Debian's headless Chromium,
//! driven through chromedriver (WebDriver), against standalone mode (API,
//! dispatcher, ledger and a simulated rack in this process, on SQLite).
//! Screenshots of the search, batch and fleet views are saved under
//! `target/console-screenshots/`.
//!
//! Without `chromium` and `chromedriver` on the PATH these tests say so and
//! pass without running; `scripts/test` installs both, so CI runs them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cardfleet::settings::Settings;
use cardfleet::store::Store;
use cardfleet::store::tokens::{NewToken, Role};
use cardfleet_standalone::{self as standalone, Standalone};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(90);

// ---- standalone mode with a simulated rack --------------------------------

struct Console {
    base: String,
    operator: String,
    admin: String,
    officer: String,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

async fn token(store: &Store, name: &str, roles: &[Role]) -> String {
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
        .unwrap()
        .expose()
        .to_owned()
}

/// Standalone mode on a fresh data directory with a simulated rack of
/// `slots` slots whose APDUs take `latency_ms`; `worker` overrides more.
async fn start(slots: u16, latency_ms: u64, worker: &[(&str, String)]) -> Console {
    let dir = tempfile::tempdir().unwrap();
    let defaults = standalone::data_dir_defaults(dir.path()).unwrap();
    let mut overrides: Vec<(&str, String)> = defaults
        .iter()
        .filter(|(k, _)| k.starts_with("database.") || k.starts_with("credentials."))
        .cloned()
        .collect();
    overrides.extend([
        ("http.listen", "127.0.0.1:0".to_owned()),
        ("metrics.listen", "127.0.0.1:0".to_owned()),
        ("dispatcher.poll_interval_ms", "50".to_owned()),
    ]);
    let settings = Settings::load_layered(None, &defaults, &overrides).unwrap();
    let mut worker_overrides = vec![
        ("reader.type", "simulated".to_owned()),
        ("reader.slots", slots.to_string()),
        ("simulated.latency_ms", latency_ms.to_string()),
        ("simulated.keygen_latency_ms", (latency_ms * 25).to_string()),
        ("simulated.removal_rate", "0".to_owned()),
        ("worker.retry_backoff_ms", "10".to_owned()),
        ("worker.heartbeat_interval_seconds", "1".to_owned()),
        ("metrics.listen", "127.0.0.1:0".to_owned()),
    ];
    worker_overrides.extend(worker.iter().cloned());
    let worker = standalone::worker_settings(None, dir.path(), &worker_overrides).unwrap();
    let app = Standalone::build(&settings, &worker).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port().unwrap());
    let store = app.store().clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    Console {
        base,
        operator: token(&store, "desk-operator", &[Role::Operator]).await,
        admin: token(&store, "desk-admin", &[Role::Admin]).await,
        officer: token(&store, "desk-officer", &[Role::Officer, Role::Auditor]).await,
        shutdown,
        task: Some(task),
        _dir: dir,
    }
}

impl Console {
    async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Imports `n` produced temporary cards (decimal chip serials, as the
    /// simulated rack needs) numbered `{prefix}-0001`…; enables the process.
    async fn stock(&self, prefix: &str, first_serial: u32, n: u32) {
        let cards: Vec<Value> = (0..n)
            .map(|i| {
                json!({
                    "card_number": format!("{prefix}-{:04}", i + 1),
                    "chip_serial": (first_serial + i).to_string(),
                    "card_type": "temporary",
                    "profile": "temporary-piv"
                })
            })
            .collect();
        let (status, body) = self
            .call(
                &self.operator,
                reqwest::Method::POST,
                "/v1/cards/import",
                Some(json!({ "cards": cards })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["imported"], n, "{body}");
        let (status, body) = self
            .call(
                &self.admin,
                reqwest::Method::PUT,
                "/v1/processes/initialize-temporary-card",
                Some(json!({ "enabled": true })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    async fn cards(&self, query: &str) -> Vec<Value> {
        let (status, body) = self
            .call(
                &self.operator,
                reqwest::Method::GET,
                &format!("/v1/cards?limit=1000&{query}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body.as_array().unwrap().clone()
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("standalone stops within a minute")
                .unwrap()
                .unwrap();
        }
    }
}

// ---- the browser ------------------------------------------------------------

/// A program on the PATH.
fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

struct Browser {
    client: Option<Client>,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver runs in its own process group with the browsers it
        // started: end the whole group, so no browser outlives a failed test.
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Headless Chromium at 1280×800 through a chromedriver of its own, or
/// `None` (with a message) when this machine has no Chromium.
async fn browser(test: &str) -> Option<Browser> {
    let chromium = which(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = which(&["chromedriver"]);
    let (Some(chromium), Some(driver)) = (chromium, driver) else {
        eprintln!(
            "SKIPPED {test}: chromium and chromedriver are not installed \
             (apt-get install chromium chromium-driver; scripts/test does this)"
        );
        return None;
    };
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut command = Command::new(driver);
    command
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let driver = command.spawn().expect("chromedriver starts");
    let mut browser = Browser {
        client: None,
        driver,
    };
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,800", "--no-first-run", "--disable-extensions"]
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        let attempt = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        match attempt {
            Ok(client) => break client,
            Err(e) if Instant::now() > deadline => panic!("no WebDriver session within 30 s: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    client.set_window_size(1280, 800).await.unwrap();
    browser.client = Some(client);
    Some(browser)
}

impl Browser {
    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    async fn open(&self, base: &str) {
        self.c().goto(&format!("{base}/console/")).await.unwrap();
        self.until(
            "the console has loaded",
            "return document.readyState === 'complete' && !!document.getElementById('token')",
        )
        .await;
    }

    /// Signs in by typing the token and pressing Enter, as a person would.
    async fn sign_in(&self, token: &str) {
        let field = self.c().find(Locator::Id("token")).await.unwrap();
        field.send_keys(&format!("{token}\u{E007}")).await.unwrap();
        self.until("signed in", "return !document.getElementById('who').hidden")
            .await;
    }

    async fn sign_out(&self) {
        self.click("sign-out").await;
        self.until(
            "signed out",
            "return !document.getElementById('view-signin').hidden",
        )
        .await;
        let stored = self
            .js("return sessionStorage.getItem('cardfleet.token')")
            .await;
        assert_eq!(stored, Value::Null, "sign-out forgets the token");
    }

    async fn click(&self, id: &str) {
        self.c()
            .find(Locator::Id(id))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    /// Clicks the element `css` selects; tries again (boundedly) when a
    /// live view replaced it between finding and clicking.
    async fn click_css(&self, css: &str) {
        let mut last = None;
        for _ in 0..20 {
            let clicked = match self.c().find(Locator::Css(css)).await {
                Ok(element) => element.click().await,
                Err(e) => Err(e),
            };
            match clicked {
                Ok(()) => return,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cannot click {css}: {last:?}");
    }

    async fn type_into(&self, id: &str, text: &str) {
        self.c()
            .find(Locator::Id(id))
            .await
            .unwrap()
            .send_keys(text)
            .await
            .unwrap();
    }

    async fn js(&self, script: &str) -> Value {
        self.c().execute(script, vec![]).await.unwrap()
    }

    /// The element's rendered text, read in one script: live views rebuild
    /// their elements every second, so a found element may go stale.
    async fn text(&self, id: &str) -> String {
        let text = self
            .c()
            .execute(
                "const e = document.getElementById(arguments[0]); return e ? e.innerText : null",
                vec![json!(id)],
            )
            .await
            .unwrap();
        text.as_str()
            .unwrap_or_else(|| panic!("no element #{id}"))
            .to_owned()
    }

    async fn displayed(&self, id: &str) -> bool {
        self.c()
            .find(Locator::Id(id))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap()
    }

    /// Waits (at most [`WAIT`]) until `script` returns true in the page.
    async fn until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.js(script).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let message = self
                    .js("return document.getElementById('message').textContent")
                    .await;
                panic!("not within {WAIT:?}: {what} (console message: {message})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        self.js("window.scrollTo(0, 0); return true").await;
        let png = self.c().screenshot().await.unwrap();
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

fn count_is(id: &str, n: usize) -> String {
    format!("const e = document.getElementById('{id}'); return !!e && e.textContent === '{n}'")
}

// ---- the operator's flows ------------------------------------------------

#[tokio::test]
async fn an_operator_selects_twenty_produced_cards_initializes_them_and_watches_them_reach_unassigned()
 {
    let Some(b) = browser("twenty cards").await else {
        return;
    };
    let app = start(16, 1, &[]).await;
    app.stock("TWENTY", 500_000, 25).await;

    b.open(&app.base).await;
    b.sign_in(&app.operator).await;
    assert_eq!(b.text("whoami").await, "desk-operator (operator)");
    assert!(
        !b.displayed("tab-admin").await,
        "an operator sees no administration"
    );
    assert!(
        !b.displayed("tab-officer").await,
        "an operator sees no PUK control"
    );
    // Search opens with Temporary card and Produced chosen.
    b.until(
        "25 produced cards listed",
        "return document.querySelectorAll('#results tbody tr').length === 25",
    )
    .await;
    assert_eq!(
        b.js("return document.getElementById('f-state').value")
            .await,
        "produced"
    );
    assert_eq!(
        b.js("return document.getElementById('f-type').value").await,
        "temporary"
    );

    let boxes = b
        .c()
        .find_all(Locator::Css("#results .pick"))
        .await
        .unwrap();
    for pick in &boxes[..20] {
        pick.click().await.unwrap();
    }
    assert_eq!(b.text("selected-count").await, "20 selected");
    b.screenshot("search").await;

    b.click("initialize").await;
    b.until(
        "confirmation shown",
        "return !document.getElementById('confirm').hidden",
    )
    .await;
    let confirm = b.text("confirm-text").await;
    assert!(
        confirm.contains("20 cards") && confirm.contains("temporary-piv"),
        "{confirm}"
    );
    b.screenshot("confirm").await;
    b.click("confirm-next").await;

    b.until(
        "the batch view is open",
        "return !document.getElementById('view-batch').hidden",
    )
    .await;
    b.until(
        "20 cards unassigned",
        &count_is("card-counts-unassigned", 20),
    )
    .await;
    b.until(
        "batch finished",
        "return document.getElementById('batch-state').textContent === 'finished'",
    )
    .await;
    assert_eq!(b.text("batch-counts-succeeded").await, "20");
    b.screenshot("batch").await;

    // The API agrees: the 20 selected are unassigned, the other 5 untouched.
    assert_eq!(app.cards("state=unassigned").await.len(), 20);
    assert_eq!(app.cards("state=produced").await.len(), 5);

    b.click("tab-fleet").await;
    b.until(
        "the local rack is shown",
        "return document.querySelectorAll('.rack[data-rack=\"local\"] .slot').length === 16",
    )
    .await;
    b.screenshot("fleet").await;

    // On a tablet the search view still works.
    b.c().set_window_size(820, 1180).await.unwrap();
    b.click("tab-search").await;
    b.until(
        "5 produced cards listed",
        "return document.querySelectorAll('#results tbody tr').length === 5",
    )
    .await;
    b.screenshot("search-tablet").await;

    b.sign_out().await;
    b.close().await;
    app.stop().await;
}

#[tokio::test]
async fn cancel_on_the_confirmation_step_changes_nothing_and_a_running_batch_can_be_cancelled() {
    let Some(b) = browser("cancel").await else {
        return;
    };
    // One slow slot: the batch is still running when it is cancelled.
    let app = start(1, 40, &[]).await;
    app.stock("CANCEL", 600_000, 10).await;

    b.open(&app.base).await;
    b.sign_in(&app.operator).await;
    b.until(
        "10 cards listed",
        "return document.querySelectorAll('#results tbody tr').length === 10",
    )
    .await;
    b.click("select-matching").await;
    b.until(
        "all matching selected",
        "return document.getElementById('selected-count').textContent === '10 selected'",
    )
    .await;
    b.click("initialize").await;
    b.until(
        "confirmation shown",
        "return !document.getElementById('confirm').hidden",
    )
    .await;
    b.click("confirm-cancel").await;
    b.until(
        "confirmation closed",
        "return document.getElementById('confirm').hidden",
    )
    .await;
    assert!(!b.displayed("view-batch").await);
    assert_eq!(
        app.cards("state=produced").await.len(),
        10,
        "Cancel submitted nothing"
    );
    assert!(app.cards("state=initializing").await.is_empty());

    b.click("initialize").await;
    b.until(
        "confirmation shown",
        "return !document.getElementById('confirm').hidden",
    )
    .await;
    b.click("confirm-next").await;
    b.until(
        "the batch view is open",
        "return !document.getElementById('view-batch').hidden",
    )
    .await;
    b.until(
        "batch running",
        "return document.getElementById('batch-state').textContent === 'running'",
    )
    .await;
    b.click("batch-cancel").await;
    b.until(
        "batch finished",
        "return document.getElementById('batch-state').textContent === 'finished'",
    )
    .await;
    b.until(
        "cancelled cards shown",
        "const e = document.getElementById('batch-counts-cancelled'); return !!e && Number(e.textContent) > 0",
    )
    .await;
    let count = |state: &str| {
        format!(
            "const e = document.getElementById('batch-counts-{state}'); return e ? Number(e.textContent) : 0"
        )
    };
    let cancelled = b.js(&count("cancelled")).await.as_u64().unwrap() as usize;
    let succeeded = b.js(&count("succeeded")).await.as_u64().unwrap() as usize;
    assert_eq!(
        cancelled + succeeded,
        10,
        "every card is cancelled or finished"
    );
    assert!(
        cancelled >= 5,
        "most of a one-slot batch was still waiting: {cancelled}"
    );
    // Cancelled cards are back in stock; the retry button offers them again.
    assert_eq!(app.cards("state=produced").await.len(), cancelled);
    b.until(
        "retry offered",
        "return !document.getElementById('batch-retry').disabled",
    )
    .await;
    b.screenshot("batch-cancelled").await;

    b.close().await;
    app.stop().await;
}

#[tokio::test]
async fn an_admin_disables_the_process_and_the_operators_initialize_is_refused_with_the_reason() {
    let Some(b) = browser("process").await else {
        return;
    };
    let app = start(4, 1, &[]).await;
    app.stock("PROC", 700_000, 3).await;

    b.open(&app.base).await;
    b.sign_in(&app.admin).await;
    assert!(
        !b.displayed("tab-search").await,
        "an admin alone does not search cards"
    );
    b.click("tab-admin").await;
    b.until(
        "enabled shown",
        "return document.getElementById('process-state').textContent === 'enabled'",
    )
    .await;
    b.click("process-disable").await;
    b.until(
        "disabled shown",
        "return document.getElementById('process-state').textContent === 'disabled'",
    )
    .await;
    b.sign_out().await;

    b.sign_in(&app.operator).await;
    b.until(
        "3 cards listed",
        "return document.querySelectorAll('#results tbody tr').length === 3",
    )
    .await;
    b.click_css("#results .pick").await;
    b.click("initialize").await;
    b.until(
        "confirmation shown",
        "return !document.getElementById('confirm').hidden",
    )
    .await;
    b.click("confirm-next").await;
    b.until(
        "the refusal is shown with its reason",
        "const m = document.getElementById('message'); return !m.hidden && m.textContent.includes('process_disabled')",
    )
    .await;
    assert!(!b.displayed("view-batch").await);
    b.screenshot("refused").await;
    assert_eq!(
        app.cards("state=produced").await.len(),
        3,
        "nothing was initialized"
    );
    b.sign_out().await;

    b.sign_in(&app.admin).await;
    b.click("tab-admin").await;
    b.until(
        "disabled shown",
        "return document.getElementById('process-state').textContent === 'disabled'",
    )
    .await;
    b.click("process-enable").await;
    b.until(
        "enabled shown",
        "return document.getElementById('process-state').textContent === 'enabled'",
    )
    .await;
    // Tokens: one made here works until it is revoked here.
    b.type_into("new-token-name", "night-auditor").await;
    b.click_css("#token-form input[value=\"auditor\"]").await;
    b.click("token-create").await;
    b.until(
        "the secret is shown once",
        "return !document.getElementById('new-token').hidden",
    )
    .await;
    let shown = b.text("new-token").await;
    let secret = shown.rsplit(' ').next().unwrap().to_owned();
    let (status, me) = app
        .call(&secret, reqwest::Method::GET, "/v1/me", None)
        .await;
    assert_eq!(
        (status, me["roles"].clone()),
        (200, json!(["auditor"])),
        "{me}"
    );
    b.until(
        "the token is listed",
        "return !!document.querySelector('#tokens tr[data-token=\"night-auditor\"] button')",
    )
    .await;
    b.click_css("#tokens tr[data-token=\"night-auditor\"] button")
        .await;
    b.until(
        "the token is revoked",
        "const r = document.querySelector('#tokens tr[data-token=\"night-auditor\"]'); return !!r && r.textContent.includes('revoked')",
    )
    .await;
    let (status, _) = app
        .call(&secret, reqwest::Method::GET, "/v1/me", None)
        .await;
    assert_eq!(status, 401, "a revoked token is refused");
    // A rack enrolment token, shown once.
    b.type_into("enroll-rack", "rack-7").await;
    b.click("enroll-create").await;
    b.until(
        "the enrolment token is shown",
        "return !document.getElementById('enroll-token').hidden",
    )
    .await;
    assert!(b.text("enroll-token").await.contains("rack rack-7"));
    // Listing the tokens again (with the expiring enrolment token) worked.
    b.until(
        "the enrolment token is listed",
        "return !!document.querySelector('#tokens tr[data-token^=\"enroll-rack-7-\"]')",
    )
    .await;
    assert_eq!(
        b.js("return document.getElementById('message').className")
            .await,
        "info",
        "no error was shown: {}",
        b.text("message").await
    );
    b.screenshot("admin").await;
    b.sign_out().await;

    b.sign_in(&app.operator).await;
    b.until(
        "3 cards listed",
        "return document.querySelectorAll('#results tbody tr').length === 3",
    )
    .await;
    b.click_css("#results .pick").await;
    b.click("initialize").await;
    b.until(
        "confirmation shown",
        "return !document.getElementById('confirm').hidden",
    )
    .await;
    b.click("confirm-next").await;
    b.until(
        "the batch view is open",
        "return !document.getElementById('view-batch').hidden",
    )
    .await;
    b.until(
        "the card is unassigned",
        &count_is("card-counts-unassigned", 1),
    )
    .await;

    b.close().await;
    app.stop().await;
}

#[tokio::test]
async fn an_officer_reads_a_puk_with_a_reason_and_the_audit_shows_it() {
    let Some(b) = browser("puk").await else {
        return;
    };
    let app = start(2, 1, &[]).await;
    app.stock("PUK", 800_000, 1).await;
    let card = app.cards("").await[0]["card_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = app
        .call(
            &app.operator,
            reqwest::Method::POST,
            "/v1/initializations",
            Some(json!({ "card_ids": [card] })),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let batch = body["batch_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + WAIT;
    while app.cards("state=unassigned").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the card was not initialized in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    b.open(&app.base).await;
    b.sign_in(&app.officer).await;
    b.click("tab-officer").await;
    b.type_into("puk-card", &card).await;
    b.type_into("puk-reason", "cardholder locked the PIN at the desk")
        .await;
    b.click("puk-read").await;
    b.until(
        "the PUK is shown",
        "return !document.getElementById('puk-value').hidden",
    )
    .await;
    let shown = b.text("puk-value").await;
    let puk = shown.rsplit(' ').next().unwrap();
    assert!(
        puk.len() >= 6 && puk.chars().all(|c| c.is_ascii_digit()),
        "{shown}"
    );
    // PIN mailers are released once; a second release is refused.
    b.type_into("mailers-batch", &batch).await;
    b.click("mailers-release").await;
    b.until(
        "the release is confirmed",
        "return document.getElementById('message').textContent.startsWith('Released 1 PIN letters')",
    )
    .await;
    b.click("mailers-release").await;
    b.until(
        "the second release is refused",
        "return document.getElementById('message').textContent.includes('mailers_already_released')",
    )
    .await;
    // Shown once: leaving the view forgets it.
    b.click("tab-audit").await;
    assert_eq!(
        b.js("return document.getElementById('puk-value').textContent")
            .await,
        ""
    );
    b.type_into("audit-action", "credential.puk_read").await;
    b.click("audit-search").await;
    b.until(
        "the audit shows the read with its reason",
        "return [...document.querySelectorAll('#audit tbody tr[data-action=\"credential.puk_read\"]')]\
         .some(r => r.textContent.includes('desk-officer') && r.textContent.includes('locked the PIN'))",
    )
    .await;
    assert!(
        !b.js("return document.body.innerText")
            .await
            .as_str()
            .unwrap()
            .contains(puk)
    );
    b.screenshot("audit").await;
    b.sign_out().await;

    // An operator sees no PUK control at all.
    b.sign_in(&app.operator).await;
    assert!(!b.displayed("tab-officer").await);
    assert!(!b.displayed("puk-read").await);
    assert!(!b.displayed("view-officer").await);

    b.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_quarantined_slot_appears_in_the_fleet_view_and_is_released_from_it() {
    let Some(b) = browser("quarantine").await else {
        return;
    };
    // Every chip is mute and one failure quarantines the slot.
    let app = start(
        1,
        1,
        &[
            ("simulated.mute_rate", "1".to_owned()),
            ("worker.quarantine_after", "1".to_owned()),
        ],
    )
    .await;
    app.stock("QUAR", 900_000, 1).await;
    let (status, body) = app
        .call(
            &app.operator,
            reqwest::Method::POST,
            "/v1/initializations",
            Some(json!({ "filter": { "type": "temporary", "state": "produced", "limit": 1 } })),
        )
        .await;
    assert_eq!(status, 202, "{body}");

    b.open(&app.base).await;
    b.sign_in(&app.operator).await;
    b.click("tab-fleet").await;
    b.until(
        "the quarantined slot is shown",
        "return !!document.querySelector('.rack[data-rack=\"local\"] .slot[data-state=\"quarantined\"] .release')",
    )
    .await;
    let age = b
        .js("return document.querySelector('.rack .heartbeat').textContent")
        .await;
    assert!(age.as_str().unwrap().contains("s ago"), "{age}");
    b.screenshot("fleet-quarantined").await;
    b.click_css(".slot[data-state=\"quarantined\"] .release")
        .await;
    b.until(
        "the slot is back in service",
        "const s = document.querySelector('.rack[data-rack=\"local\"] .slot[data-slot=\"0\"]'); \
         return !!s && s.dataset.state !== 'quarantined'",
    )
    .await;
    b.screenshot("fleet-released").await;

    b.close().await;
    app.stop().await;
}
