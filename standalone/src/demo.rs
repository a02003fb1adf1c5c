//! `cardfleet demo`: a standalone batch on embedded defaults. A fresh SQLite
//! file in a temporary directory, produced temporary cards imported and
//! submitted through the HTTP API, encoded on a simulated rack whose cards
//! answer with realistic relative timings, then a summary. Exits non-zero
//! unless every card ended `unassigned`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{self as standalone, Standalone};
use cardfleet::client::ApiClient;
use cardfleet::domain::CardState;
use cardfleet::settings::Settings;
use cardfleet::store::cards::CardFilter;

/// What `cardfleet demo` runs.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Produced temporary cards to import and initialize.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub cards: u32,
    /// Slots of the simulated rack.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub slots: u16,
    /// Milliseconds one APDU takes on a simulated card; on-card key
    /// generation takes 25 times as long and putting a pulled card back 100
    /// times, as on real cards and racks. 0 runs at full speed.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub card_latency: u64,
    /// Share of cards (0 to 1) pulled out of their slot in the middle of a
    /// step and put back; the engine must resume them.
    #[arg(long, default_value_t = 0.0)]
    pub faults: f64,
    /// Keep the database in DIR (must not hold one yet) and say how to inspect it.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// After the batch, keep the API and the console at /console/ running
    /// (printing an operator token to sign in with) until Ctrl-C.
    #[arg(long)]
    pub stay: bool,
}

/// Key generation and re-insertion, in APDUs, as on real cards and racks.
const KEYGEN_FACTOR: u64 = 25;
const REINSERT_FACTOR: u64 = 100;

/// Figures of a finished demo.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoSummary {
    pub cards: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub retried: u64,
    pub unassigned: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub elapsed: Duration,
}

impl DemoSummary {
    pub fn cards_per_second(&self) -> f64 {
        self.cards as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn all_unassigned(&self) -> bool {
        self.unassigned == self.cards && self.succeeded == self.cards
    }
}

/// Where the demo keeps its files; removed at the end unless kept.
struct DataDir {
    path: PathBuf,
    keep: bool,
}

impl DataDir {
    fn new(keep: Option<&Path>) -> anyhow::Result<Self> {
        match keep {
            Some(dir) => {
                if dir.join(standalone::DATABASE_FILE).exists() {
                    bail!(
                        "{} already holds a cardfleet database; give --keep an empty or new directory",
                        dir.display()
                    );
                }
                Ok(Self {
                    path: dir.to_owned(),
                    keep: true,
                })
            }
            None => Ok(Self {
                path: std::env::temp_dir().join(format!("cardfleet-demo-{}", Uuid::new_v4())),
                keep: false,
            }),
        }
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Runs the demo and prints its progress and summary.
pub async fn run(options: &DemoOptions) -> anyhow::Result<DemoSummary> {
    if !(0.0..=1.0).contains(&options.faults) {
        bail!("--faults must be between 0 and 1");
    }
    let dir = DataDir::new(options.keep.as_deref())?;
    let defaults = standalone::data_dir_defaults(&dir.path)?;
    // Embedded defaults: a configuration file or environment of a fleet
    // installation must not point the demo at its database or ports.
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
    let settings = Settings::load_layered(None, &defaults, &overrides)?;
    let latency = options.card_latency;
    let worker = standalone::worker_settings(
        None,
        &dir.path,
        &[
            ("worker.rack_id", standalone::LOCAL_RACK.to_owned()),
            ("reader.type", "simulated".to_owned()),
            ("reader.slots", options.slots.to_string()),
            ("simulated.latency_ms", latency.to_string()),
            (
                "simulated.keygen_latency_ms",
                (latency * KEYGEN_FACTOR).to_string(),
            ),
            ("simulated.removal_rate", options.faults.to_string()),
            ("simulated.mute_rate", "0".to_owned()),
            (
                "simulated.reinsert_ms",
                (latency * REINSERT_FACTOR).max(10).to_string(),
            ),
            ("worker.retry_backoff_ms", "10".to_owned()),
            ("worker.heartbeat_interval_seconds", "1".to_owned()),
            ("metrics.listen", "127.0.0.1:0".to_owned()),
        ],
    )?;

    let app = Standalone::build(&settings, &worker).await?;
    let port = app.port().context("the API did not start")?;
    let store = app.store().clone();
    let rack = app.rack_id().to_owned();
    let worker_metrics = app.worker_metrics().clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    println!(
        "cardfleet demo: {} cards, {}-slot simulated rack, {} ms per APDU, faults {}",
        options.cards, options.slots, latency, options.faults
    );
    println!(
        "  standalone API on http://127.0.0.1:{port}  (SQLite in {})",
        dir.path.display()
    );
    println!("  console on http://127.0.0.1:{port}/console/");
    let tokens = demo_tokens(&store).await;
    let outcome = match &tokens {
        Ok(tokens) => {
            println!(
                "  admin token (roles admin; shown once): {}",
                tokens.admin.expose()
            );
            drive(options, &format!("http://127.0.0.1:{port}"), &store, tokens).await
        }
        Err(e) => Err(anyhow::anyhow!("cannot create the demo tokens: {e}")),
    };
    // With --stay, the summary comes first and the API keeps running.
    let mut stayed = None;
    if let (true, Ok((batch, elapsed)), Ok(tokens)) = (options.stay, &outcome, &tokens) {
        let summary = summarize(
            &store,
            *batch,
            options.cards,
            *elapsed,
            &worker_metrics,
            &rack,
        )
        .await?;
        print_summary(&summary);
        println!("\nThe console stays up: open http://127.0.0.1:{port}/console/ and sign in with");
        println!(
            "  operator token (roles operator; shown once): {}",
            tokens.operator.expose()
        );
        println!("  or the admin token above. Press Ctrl-C to stop.");
        cardfleet::cli::wait_for_signal().await;
        stayed = Some(summary);
    }
    shutdown.cancel();
    let stopped = running.await;
    let (batch, elapsed) = outcome?;
    stopped.context("standalone mode failed")??;

    let summary = match stayed {
        Some(summary) => summary,
        None => {
            let summary = summarize(
                &store,
                batch,
                options.cards,
                elapsed,
                &worker_metrics,
                &rack,
            )
            .await?;
            print_summary(&summary);
            summary
        }
    };
    if dir.keep {
        let db = dir.path.join(standalone::DATABASE_FILE);
        println!(
            "\nThe database is kept in {}. Inspect it with:",
            dir.path.display()
        );
        println!(
            "  sqlite3 {} \"SELECT state, count(*) FROM cards GROUP BY state\"",
            db.display()
        );
        println!(
            "  cardfleet standalone --data-dir {}   # then the API on http://127.0.0.1:8080",
            dir.path.display()
        );
    }
    Ok(summary)
}

/// The demo's API tokens, made through the store as an administrator would
/// with `cardfleet tokens create`.
struct DemoTokens {
    admin: cardfleet::store::tokens::TokenSecret,
    operator: cardfleet::store::tokens::TokenSecret,
}

async fn demo_tokens(store: &cardfleet::store::Store) -> anyhow::Result<DemoTokens> {
    use cardfleet::store::tokens::{NewToken, Role};
    let token = |name: &str, role: Role| NewToken {
        name: name.to_owned(),
        roles: vec![role],
        rack_id: None,
        single_use: false,
        expires_at: None,
    };
    Ok(DemoTokens {
        admin: store
            .create_token(&token("demo-admin", Role::Admin), "demo")
            .await?,
        operator: store
            .create_token(&token("demo-operator", Role::Operator), "demo")
            .await?,
    })
}

/// Imports, enables, submits and follows the batch; returns it and its time.
/// The operator token imports and submits; the admin token enables the process.
async fn drive(
    options: &DemoOptions,
    api: &str,
    store: &cardfleet::store::Store,
    tokens: &DemoTokens,
) -> anyhow::Result<(Uuid, Duration)> {
    let client = ApiClient::new(api, Some(tokens.operator.expose()))?;
    let admin = ApiClient::new(api, Some(tokens.admin.expose()))?;
    let base = 100_000_000u32 + rand::random::<u32>() % 1_000_000_000;
    let mut imported = 0u64;
    for start in (0..options.cards).step_by(20_000) {
        let end = options.cards.min(start + 20_000);
        let cards: Vec<Value> = (start..end)
            .map(|i| {
                json!({
                    "card_number": format!("DEMO-{:06}", i + 1),
                    "chip_serial": (base + i).to_string(),
                    "card_type": "temporary",
                    "profile": "temporary-piv"
                })
            })
            .collect();
        let outcome: Value = client
            .post_json("/v1/cards/import", &json!({ "cards": cards }))
            .await?;
        imported += outcome["imported"].as_u64().unwrap_or(0);
    }
    if imported != u64::from(options.cards) {
        bail!("imported {imported} of {} cards", options.cards);
    }
    admin
        .put_json::<Value>(
            "/v1/processes/initialize-temporary-card",
            &json!({ "enabled": true }),
        )
        .await?;
    let started = Instant::now();
    let outcome: Value = client
        .post_json(
            "/v1/initializations",
            &json!({ "filter": { "type": "temporary", "state": "produced", "limit": options.cards } }),
        )
        .await?;
    let batch: Uuid = outcome["batch_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("the API returned no batch id")?;
    let accepted = outcome["accepted"].as_array().map_or(0, Vec::len) as u64;
    println!(
        "  imported {imported} produced cards, process enabled, batch {batch}: {accepted} accepted"
    );

    let bar = indicatif::ProgressBar::new(accepted);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "  {bar:40} {pos}/{len} cards  {per_sec}  elapsed {elapsed}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    loop {
        let status = store.batch_status(batch, 1, 0).await?;
        let n = |k: &str| status.counts.get(k).copied().unwrap_or(0).max(0) as u64;
        bar.set_position(n("succeeded") + n("failed") + n("cancelled"));
        bar.set_message(format!(
            "encoding {}  failed {}",
            n("encoding"),
            n("failed")
        ));
        if status.finished {
            bar.finish();
            return Ok((batch, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn summarize(
    store: &cardfleet::store::Store,
    batch: Uuid,
    cards: u32,
    elapsed: Duration,
    worker_metrics: &cardfleet_worker::metrics::WorkerMetrics,
    rack: &str,
) -> anyhow::Result<DemoSummary> {
    let status = store.batch_status(batch, 1, 0).await?;
    let n = |k: &str| status.counts.get(k).copied().unwrap_or(0).max(0) as u64;
    // Time per card: from the job's start on the rack to its result.
    let mut began: HashMap<Uuid, chrono::DateTime<chrono::Utc>> = HashMap::new();
    let mut times = Vec::with_capacity(cards as usize);
    let mut after = 0;
    loop {
        let page = store.batch_transitions(batch, after, 5000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for t in &page {
            match t.to.as_str() {
                "encoding" => {
                    began.entry(t.job_id).or_insert(t.at);
                }
                "succeeded" | "failed" => {
                    if let Some(start) = began.get(&t.job_id) {
                        times.push((t.at - *start).to_std().unwrap_or_default());
                    }
                }
                _ => {}
            }
        }
    }
    times.sort();
    let pick = |q: f64| {
        if times.is_empty() {
            return Duration::ZERO;
        }
        let i = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1;
        times[i]
    };
    let unassigned = count_state(store, CardState::Unassigned).await?;
    Ok(DemoSummary {
        cards: u64::from(cards),
        succeeded: n("succeeded"),
        failed: n("failed"),
        cancelled: n("cancelled"),
        retried: worker_metrics
            .cards_retried
            .with_label_values(&[rack])
            .get(),
        unassigned,
        p50: pick(0.50),
        p99: pick(0.99),
        elapsed,
    })
}

async fn count_state(store: &cardfleet::store::Store, state: CardState) -> anyhow::Result<u64> {
    let mut total = 0u64;
    let mut offset = 0;
    loop {
        let page = store
            .list_cards(&CardFilter {
                card_type: None,
                state: Some(state),
                limit: 1000,
                offset,
                ..CardFilter::default()
            })
            .await?;
        total += page.len() as u64;
        if page.len() < 1000 {
            return Ok(total);
        }
        offset += 1000;
    }
}

fn print_summary(s: &DemoSummary) {
    println!();
    println!("  succeeded   {}", s.succeeded);
    println!("  failed      {}", s.failed);
    println!("  cancelled   {}", s.cancelled);
    println!(
        "  retried     {} (cards that needed another attempt)",
        s.retried
    );
    println!(
        "  time/card   p50 {:.0} ms, p99 {:.0} ms",
        ms(s.p50),
        ms(s.p99)
    );
    println!(
        "  throughput  {:.1} cards/s ({} cards in {:.1} s)",
        s.cards_per_second(),
        s.cards,
        s.elapsed.as_secs_f64()
    );
    if s.all_unassigned() {
        println!("  every card is now unassigned");
    } else {
        println!(
            "  {} of {} cards are unassigned: the demo failed",
            s.unassigned, s.cards
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
