//! `cardfleet-chaos`: an N-card batch (default 10,000) through a real
//! control plane, RabbitMQ, PostgreSQL and simulated racks while workers
//! are SIGKILLed, the broker and the database are restarted, cards are
//! pulled mid-step, poison and duplicate messages land on every queue,
//! cards are cancelled as their jobs race dispatch and a thousand API
//! clients read along; then every card and every chip is checked and a
//! report printed. Exits non-zero on any card lost, stuck or whose chip
//! does not take its escrowed PIN, and on any plaintext secret found.
//!
//! By default the run starts its own PostgreSQL cluster and RabbitMQ node
//! (other ports, data in the run's directory) and restarts those, so it can
//! run beside other users of the machine's services. See the README.
//!
//! A separate binary rather than a `cardfleet` subcommand: it starts and
//! kills databases, brokers and workers, checks chips through the worker
//! crate's virtual card, and has no place in the production binary.

mod check;
mod faults;
mod fleet;
mod services;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rand::{Rng, RngCore};
use serde_json::{Value, json};
use uuid::Uuid;

use fleet::{ControlPlane, FleetConfig, Worker};
use services::{External, PrivatePostgres, PrivateRabbit, Restartable};

/// Chaos run: a batch under faults, then every card and chip checked.
#[derive(Debug, Parser)]
#[command(name = "cardfleet-chaos", version)]
struct Args {
    /// Cards in the batch.
    #[arg(long, default_value_t = 10_000)]
    cards: u32,
    /// Simulated racks, one worker process each.
    #[arg(long, default_value_t = 4)]
    racks: u16,
    /// Slots per rack.
    #[arg(long, default_value_t = 16)]
    slots: u16,
    /// Worker processes SIGKILLed (and started again) during the batch.
    #[arg(long, default_value_t = 5)]
    kills: u32,
    /// Cards pulled out of their slot mid-step (and put back).
    #[arg(long, default_value_t = 100)]
    pulls: u32,
    /// Cards cancelled while their jobs race dispatch.
    #[arg(long, default_value_t = 500)]
    cancels: u32,
    /// Concurrent API clients during the batch.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Mean pause of each API client between requests, in milliseconds
    /// (1,000 clients at 20 s make about 50 requests a second).
    #[arg(long, default_value_t = 20_000)]
    client_think_ms: u64,
    /// Rounds of poison and duplicate messages on every queue.
    #[arg(long, default_value_t = 3)]
    injections: u32,
    /// Exact copies of real messages per exchange and round.
    #[arg(long, default_value_t = 20)]
    duplicates: usize,
    /// Longest the batch may take before its unfinished cards count as stuck.
    #[arg(long, default_value_t = 60)]
    timeout_minutes: u64,
    /// Directory of the run (logs, chips, services' data); default a new
    /// one under the system's temporary directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the run's directory even when the run passes.
    #[arg(long)]
    keep: bool,
    /// A given fleet's PostgreSQL (a database the run may fill) instead of a
    /// private one; needs --postgres-restart.
    #[arg(long, requires = "postgres_restart")]
    database_url: Option<String>,
    /// Shell command restarting that PostgreSQL.
    #[arg(long, requires = "database_url")]
    postgres_restart: Option<String>,
    /// A given fleet's RabbitMQ (a vhost the run may fill) instead of a
    /// private node; needs --rabbitmq-restart.
    #[arg(long, requires = "rabbitmq_restart")]
    amqp_url: Option<String>,
    /// Shell command restarting that RabbitMQ.
    #[arg(long, requires = "amqp_url")]
    rabbitmq_restart: Option<String>,
}

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The run's own processes: this program re-executed as the control
    // plane's command line or as a worker.
    let result = match argv.get(1).map(String::as_str) {
        Some("cardfleet") => {
            let cli = <cardfleet_standalone::cli::Cli as Parser>::parse_from(
                std::iter::once("cardfleet".to_owned()).chain(argv[2..].iter().cloned()),
            );
            runtime
                .block_on(cardfleet_standalone::cli::run(cli))
                .map(|()| true)
        }
        Some("worker") => runtime.block_on(run_worker()).map(|()| true),
        _ => runtime.block_on(chaos(Args::parse())),
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_worker() -> anyhow::Result<()> {
    let settings = cardfleet_worker::settings::WorkerSettings::load(None, &[])?;
    cardfleet::cli::init_tracing(&settings.log.filter, settings.log.format == "json");
    cardfleet_worker::app::run(settings, cardfleet_worker::app::cancel_on_signal()).await
}

/// Random 32 bytes in hex, for the run's credential keys.
fn random_hex_key() -> String {
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    hex::encode(key)
}

/// A fault fired during the batch, with the share of jobs finished then.
#[derive(Debug)]
struct Fired {
    what: String,
    at_finished: i64,
    took: Duration,
}

/// Faults in the order they fire, each at a share (in %) of jobs finished.
#[derive(Debug, Clone, PartialEq)]
enum Fault {
    KillWorker(usize),
    RestartRabbit,
    RestartPostgres,
    Inject(usize),
}

fn schedule(args: &Args) -> Vec<(u32, Fault)> {
    let mut plan = Vec::new();
    let kill_points = [8, 22, 45, 62, 78];
    for k in 0..args.kills as usize {
        let at = kill_points.get(k).copied().unwrap_or(80 + k as u32);
        plan.push((at.min(90), Fault::KillWorker(k)));
    }
    plan.push((30, Fault::RestartRabbit));
    plan.push((52, Fault::RestartPostgres));
    let inject_points = [15, 40, 70];
    for r in 0..args.injections as usize {
        let at = inject_points.get(r).copied().unwrap_or(72 + r as u32);
        plan.push((at.min(90), Fault::Inject(r)));
    }
    plan.sort_by_key(|(at, _)| *at);
    plan
}

async fn chaos(args: Args) -> anyhow::Result<bool> {
    if args.cards == 0 || args.racks == 0 || args.slots == 0 {
        bail!("--cards, --racks and --slots must be at least 1");
    }
    let started = Instant::now();
    let run_dir = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("cardfleet-chaos-{}", Uuid::new_v4().simple())),
    };
    std::fs::create_dir_all(run_dir.join("logs"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        // The services' own users must reach their directories below.
        std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o755))?;
    }
    fleet::pin_own_executable(&run_dir)?;
    println!("chaos run in {}", run_dir.display());

    // Services: private ones unless a fleet's were given.
    let mut private_pg = None;
    let mut private_rabbit = None;
    let (database_url, mut pg_restart): (String, Box<dyn Restartable + Send>) =
        match (&args.database_url, &args.postgres_restart) {
            (Some(url), Some(cmd)) => (
                url.clone(),
                Box::new(External {
                    what: "PostgreSQL",
                    command: cmd.clone(),
                }),
            ),
            _ => {
                let pg = PrivatePostgres::start(&run_dir)?;
                let url = pg.url("cardfleet");
                private_pg = Some(pg.port);
                (url, Box::new(pg))
            }
        };
    let (amqp_url, mut rabbit_restart): (String, Box<dyn Restartable + Send>) =
        match (&args.amqp_url, &args.rabbitmq_restart) {
            (Some(url), Some(cmd)) => (
                url.clone(),
                Box::new(External {
                    what: "RabbitMQ",
                    command: cmd.clone(),
                }),
            ),
            _ => {
                let node = PrivateRabbit::start(&run_dir)?;
                private_rabbit = Some(node.name.clone());
                (node.url(), Box::new(node))
            }
        };
    println!(
        "services: {}; {}",
        pg_restart.describe(),
        rabbit_restart.describe()
    );

    let config = FleetConfig {
        run_dir: run_dir.clone(),
        database_url: database_url.clone(),
        amqp_url: amqp_url.clone(),
        api_port: services::free_port()?,
        encryption_key: random_hex_key(),
        master_key: random_hex_key(),
        slots: args.slots,
    };
    let mut control_plane = ControlPlane::start(&config)?;
    let base = format!("http://127.0.0.1:{}", config.api_port);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    wait_for(
        Duration::from_secs(180),
        "the control plane's /healthz",
        || {
            let http = http.clone();
            let url = format!("{base}/healthz");
            async move {
                http.get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        },
    )
    .await?;
    let admin = fleet::cardfleet_cli(
        &config,
        &[
            "tokens", "create", "--name", "chaos", "--role", "admin", "--role", "operator",
            "--role", "officer", "--role", "auditor",
        ],
    )?
    .lines()
    .rev()
    .find(|l| l.trim().starts_with("cf_"))
    .map(|l| l.trim().to_owned())
    .context("tokens create printed no token")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&database_url)
        .await
        .context("connecting to the run's database")?;

    // Stock: chip serials are the virtual cards' decimal 32-bit serials.
    let n = args.cards as usize;
    let serials: Vec<String> = (0..args.cards)
        .map(|i| (3_500_000_000u32 + i).to_string())
        .collect();
    for chunk in serials.chunks(5000) {
        let cards: Vec<Value> = chunk
            .iter()
            .map(|s| json!({ "card_number": format!("TC-{s}"), "chip_serial": s, "card_type": "temporary", "profile": "temporary-piv" }))
            .collect();
        let r = http
            .post(format!("{base}/v1/cards/import"))
            .bearer_auth(&admin)
            .json(&json!({ "cards": cards }))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("import refused: {} {}", r.status(), r.text().await?);
        }
    }
    let r = http
        .put(format!("{base}/v1/processes/initialize-temporary-card"))
        .bearer_auth(&admin)
        .json(&json!({ "enabled": true }))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("enabling the process: {}", r.status());
    }
    let ids: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, chip_serial FROM cards")
        .fetch_all(&pool)
        .await?;
    let id_of: BTreeMap<String, Uuid> = ids.into_iter().map(|(id, s)| (s, id)).collect();
    let card_ids: Arc<Vec<Uuid>> = Arc::new(
        serials
            .iter()
            .filter_map(|s| id_of.get(s).copied())
            .collect(),
    );
    if card_ids.len() != n {
        bail!("imported {} of {n} cards", card_ids.len());
    }

    // Which cards are pulled and which cancelled: spread over the batch.
    let mut rng = rand::thread_rng();
    let pull_every = (n / args.pulls.max(1) as usize).max(1);
    let cancel_every = (n / args.cancels.max(1) as usize).max(1);
    let pulled: Vec<usize> = (0..n)
        .filter(|i| args.pulls > 0 && i % pull_every == pull_every / 3)
        .take(args.pulls as usize)
        .collect();
    let to_cancel: Vec<usize> = (0..n)
        .filter(|i| args.cancels > 0 && i % cancel_every == cancel_every / 2)
        .take(args.cancels as usize)
        .collect();
    let pulled_set: HashSet<usize> = pulled.iter().copied().collect();

    // Racks: card i goes to rack i % racks, in order.
    let racks: Vec<String> = (1..=args.racks)
        .map(|r| format!("chaos-rack-{r}"))
        .collect();
    let mut workers = Vec::new();
    for (r, rack) in racks.iter().enumerate() {
        let mut csv = String::from("card_number,chip_serial,card_type,profile,pull_after_apdus\n");
        for (i, s) in serials.iter().enumerate() {
            if i % racks.len() != r {
                continue;
            }
            let pull = if pulled_set.contains(&i) {
                rng.gen_range(4..40).to_string()
            } else {
                String::new()
            };
            let _ = writeln!(csv, "TC-{s},{s},temporary,temporary-piv,{pull}");
        }
        let path = run_dir.join(format!("{rack}.csv"));
        std::fs::write(&path, csv)?;
        let token = fleet::cardfleet_cli(&config, &["racks", "enroll-token", rack])?
            .trim()
            .to_owned();
        let mut worker = Worker::new(&config, rack, path, token)?;
        worker.start(&config)?;
        workers.push(worker);
    }
    let state_dir = run_dir.join("chips");
    let loaded = (usize::from(args.racks) * usize::from(args.slots)).min(n) as i64;
    wait_for(Duration::from_secs(180), "every slot loaded", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM slot_locations")
                .fetch_one(&pool)
                .await
                .is_ok_and(|c| c >= loaded)
        }
    })
    .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let tap = faults::Tap::default();
    tap.spawn(amqp_url.clone(), racks.clone(), stop.clone());
    wait_for(Duration::from_secs(30), "the broker tap", || {
        let tap = tap.clone();
        async move { tap.count() > 0 }
    })
    .await
    .ok();

    // The batch.
    let r = http
        .post(format!("{base}/v1/initializations"))
        .bearer_auth(&admin)
        .json(&json!({ "filter": { "type": "temporary", "state": "produced", "limit": n } }))
        .send()
        .await?;
    if r.status().as_u16() != 202 {
        bail!("submit refused: {} {}", r.status(), r.text().await?);
    }
    let body: Value = r.json().await?;
    let batch: Uuid = body["batch_id"]
        .as_str()
        .and_then(|b| b.parse().ok())
        .context("no batch id")?;
    let accepted = body["accepted"].as_array().map_or(0, Vec::len);
    let batch_started = Instant::now();
    println!("batch {batch}: {accepted} of {n} cards accepted");

    let client_stats = Arc::new(faults::ClientStats::default());
    let clients = faults::spawn_clients(
        base.clone(),
        admin.clone(),
        batch.to_string(),
        card_ids.clone(),
        args.clients,
        Duration::from_millis(args.client_think_ms),
        stop.clone(),
        client_stats.clone(),
    );

    // Cancels race dispatch: those in slots now at once, then each as its
    // card comes up to the slots (its job is being dispatched or about to be).
    let window = usize::from(args.racks) * usize::from(args.slots);
    let mut cancel_answers: BTreeMap<u16, u64> = BTreeMap::new();
    let mut next_cancel = 0;
    let mut taken_out = HashSet::new();
    let mut removals = 0;
    let mut fired: Vec<Fired> = Vec::new();
    let mut plan = schedule(&args);
    let mut injected = faults::Injected::default();
    let mut kills_done = 0u32;
    let mut worker_restarts_unasked = 0u32;
    let deadline = batch_started + Duration::from_secs(args.timeout_minutes * 60);
    let mut finished = 0i64;
    let mut last_print = Instant::now();
    let mut last_removal = Instant::now();
    loop {
        if let Ok(f) = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM jobs WHERE batch_id = $1 AND state IN ('succeeded', 'failed', 'cancelled')",
        )
        .bind(batch)
        .fetch_one(&pool)
        .await
        {
            finished = f;
        }
        // Cancels whose cards are within reach of the slots.
        let reach = finished as usize + 2 * window;
        let due: Vec<Uuid> = to_cancel[next_cancel..]
            .iter()
            .take_while(|i| **i < reach)
            .map(|i| card_ids[*i])
            .collect();
        if !due.is_empty() {
            next_cancel += due.len();
            for (code, count) in
                faults::cancel_cards(&base, &admin, &batch.to_string(), &due, 32).await
            {
                *cancel_answers.entry(code).or_default() += count;
            }
        }
        if last_removal.elapsed() > Duration::from_secs(1) {
            removals += faults::take_out_cancelled_cards(&pool, &state_dir, &mut taken_out).await;
            last_removal = Instant::now();
        }
        // Processes that died on their own come back (and are counted).
        if control_plane.ensure_running(&config)? {
            println!("control plane had exited; started again");
        }
        for w in &mut workers {
            if w.ensure_running(&config)? {
                worker_restarts_unasked += 1;
            }
        }
        let share = (finished * 100 / n as i64) as u32;
        while let Some((at, _)) = plan.first() {
            if *at > share {
                break;
            }
            let (_, fault) = plan.remove(0);
            let t = Instant::now();
            let what = match fault {
                Fault::KillWorker(k) => {
                    let count = workers.len();
                    let w = &mut workers[k % count];
                    w.kill();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    w.start(&config)?;
                    kills_done += 1;
                    format!("SIGKILL worker of {} (started again 1 s later)", w.rack)
                }
                Fault::RestartRabbit => {
                    let d = rabbit_restart.describe();
                    tokio::task::block_in_place(|| rabbit_restart.restart())?;
                    format!("restart {d}")
                }
                Fault::RestartPostgres => {
                    let d = pg_restart.describe();
                    tokio::task::block_in_place(|| pg_restart.restart())?;
                    format!("restart {d}")
                }
                Fault::Inject(round) => {
                    let got =
                        faults::inject(&amqp_url, &racks, &tap, args.duplicates, round).await?;
                    let p: u64 = got.poison.values().sum();
                    let d: u64 = got.duplicates.values().sum();
                    injected.add(&got);
                    format!(
                        "inject {p} poison messages on {} queues and {d} duplicates",
                        got.poison.len()
                    )
                }
            };
            println!("  [{finished}/{n} finished] {what}");
            fired.push(Fired {
                what,
                at_finished: finished,
                took: t.elapsed(),
            });
        }
        let all_cancels_sent = next_cancel >= to_cancel.len();
        if finished as usize >= accepted && plan.is_empty() && all_cancels_sent {
            break;
        }
        if Instant::now() > deadline {
            println!("timed out after {} minutes", args.timeout_minutes);
            break;
        }
        if last_print.elapsed() > Duration::from_secs(15) {
            println!(
                "  [{finished}/{n} finished after {:.0?}] API requests so far: {}",
                batch_started.elapsed(),
                client_stats.requests.load(Ordering::Relaxed)
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let batch_time = batch_started.elapsed();
    // Cancelled cards still in slots leave them; then everything stops.
    removals += faults::take_out_cancelled_cards(&pool, &state_dir, &mut taken_out).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for w in &mut workers {
        w.stop();
    }
    let cp_restarts = control_plane.restarts;
    control_plane.stop();

    // Verdict.
    let escrow = check::read_escrow(&pool, &config.encryption_key, &config.master_key).await?;
    let verdicts = check::check_cards(&pool, batch, &serials, &escrow, &state_dir).await?;
    let mut roots: Vec<(&str, String)> = vec![
        (
            "the credential encryption key",
            config.encryption_key.clone(),
        ),
        ("the management-key master key", config.master_key.clone()),
        ("the admin API token", admin.clone()),
    ];
    for w in &workers {
        roots.push(("an enrollment token", w.enrollment_token().to_owned()));
    }
    let scanner = check::Scanner::new(&escrow, &roots);
    let mut leaks = check::Leaks::default();
    let mut log_files = check::files_under(&run_dir.join("logs"));
    log_files.extend(check::files_under(&run_dir.join("rabbitmq").join("log")));
    log_files.push(run_dir.join("postgres").join("postgres.log"));
    check::scan_files(&scanner, &mut leaks, "logs", &log_files);
    let captured = tap.captured.lock().map(|v| v.clone()).unwrap_or_default();
    {
        let mut bytes = 0u64;
        for c in &captured {
            bytes += c.data.len() as u64;
            for what in scanner.scan(&String::from_utf8_lossy(&c.data)) {
                leaks
                    .found
                    .entry("broker messages")
                    .or_default()
                    .push(format!("{} message: {what}", c.exchange));
            }
        }
        leaks
            .scanned
            .insert("broker messages", (captured.len() as u64, bytes));
    }
    // Pulls the workers saw: each pulled attempt is retried with card_removed.
    let pulls_seen = workers
        .iter()
        .filter_map(|w| std::fs::read_to_string(&w.log).ok())
        .map(|log| log.matches("code=\"card_removed\"").count())
        .sum::<usize>();
    let dump = run_dir.join("database.sql");
    pg_dump(&database_url, private_pg, &dump)?;
    check::scan_files(&scanner, &mut leaks, "database", &[dump]);

    let report = render_report(&Report {
        args: &args,
        batch,
        accepted,
        batch_time,
        total_time: started.elapsed(),
        verdicts: &verdicts,
        leaks: &leaks,
        fired: &fired,
        kills_done,
        worker_restarts_unasked,
        cp_restarts,
        pulled: pulled.len(),
        pulls_seen,
        cancel_answers: &cancel_answers,
        cancels_sent: next_cancel,
        removals,
        injected: &injected,
        client_stats: &client_stats,
        services: format!(
            "{}; {}",
            private_pg.map_or("a given PostgreSQL".to_owned(), |p| format!(
                "private PostgreSQL on port {p}"
            )),
            private_rabbit.map_or("a given RabbitMQ".to_owned(), |n| format!(
                "private RabbitMQ node {n}"
            ))
        ),
    });
    println!("{report}");
    std::fs::write(run_dir.join("report.txt"), &report)?;
    let passed = verdicts.lost.is_empty()
        && verdicts.stuck.is_empty()
        && verdicts.unfinished_jobs == 0
        && verdicts.pin_mismatch.is_empty()
        && verdicts.found == n
        && leaks.total() == 0;
    drop(pool);
    drop(workers);
    drop(pg_restart);
    drop(rabbit_restart);
    if passed && !args.keep {
        let _ = std::fs::remove_dir_all(&run_dir);
    } else {
        println!("run directory kept: {}", run_dir.display());
    }
    Ok(passed)
}

/// `pg_dump` of the run's database as plain SQL into `out` (the private
/// cluster's own pg_dump over TCP, or the one on PATH).
fn pg_dump(url: &str, _private_port: Option<u16>, out: &std::path::Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(out)?;
    let status = std::process::Command::new("pg_dump")
        .args(["--data-only", "--no-owner", "-d", url])
        .stdout(file)
        .status()
        .context("running pg_dump")?;
    if !status.success() {
        bail!("pg_dump failed: {status}");
    }
    Ok(())
}

async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

struct Report<'a> {
    args: &'a Args,
    batch: Uuid,
    accepted: usize,
    batch_time: Duration,
    total_time: Duration,
    verdicts: &'a check::CardVerdicts,
    leaks: &'a check::Leaks,
    fired: &'a [Fired],
    kills_done: u32,
    worker_restarts_unasked: u32,
    cp_restarts: u32,
    pulled: usize,
    pulls_seen: usize,
    cancel_answers: &'a BTreeMap<u16, u64>,
    cancels_sent: usize,
    removals: usize,
    injected: &'a faults::Injected,
    client_stats: &'a faults::ClientStats,
    services: String,
}

fn render_report(r: &Report) -> String {
    let v = r.verdicts;
    let n = r.args.cards;
    let mut s = String::new();
    let _ = writeln!(s, "\n=== cardfleet chaos report ===");
    let _ = writeln!(
        s,
        "batch {}: {n} cards, {} accepted; {} racks x {} simulated slots; {}",
        r.batch, r.accepted, r.args.racks, r.args.slots, r.services
    );
    let _ = writeln!(
        s,
        "batch finished in {:.0?} (whole run {:.0?})",
        r.batch_time, r.total_time
    );
    let _ = writeln!(s, "\nfaults (at jobs finished of {n}):");
    for f in r.fired {
        let _ = writeln!(s, "  {:>6}  {} ({:.1?})", f.at_finished, f.what, f.took);
    }
    let _ = writeln!(
        s,
        "  worker SIGKILLs: {}; workers found exited and started again: {}; control plane restarts needed: {}",
        r.kills_done, r.worker_restarts_unasked, r.cp_restarts
    );
    let _ = writeln!(
        s,
        "  cards pulled out mid-step and put back: {} ({} attempts retried after card_removed in the worker logs)",
        r.pulled, r.pulls_seen
    );
    let answers: Vec<String> = r
        .cancel_answers
        .iter()
        .map(|(code, count)| {
            format!(
                "{count} x {}",
                if *code == 0 {
                    "no answer".to_owned()
                } else {
                    code.to_string()
                }
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "  cancels racing dispatch: {} cards, answers {}; cancelled cards taken out of their slots: {}",
        r.cancels_sent,
        answers.join(", "),
        r.removals
    );
    let poison: u64 = r.injected.poison.values().sum();
    let _ = writeln!(
        s,
        "  poison messages: {poison} on {} queues ({})",
        r.injected.poison.len(),
        r.injected
            .poison
            .iter()
            .map(|(q, c)| format!("{q}: {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "  duplicate messages: {} ({})",
        r.injected.duplicates.values().sum::<u64>(),
        r.injected
            .duplicates
            .iter()
            .map(|(q, c)| format!("{q}: {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let c = r.client_stats;
    let mut lat = c.latencies_ms.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let _ = writeln!(
        s,
        "  API clients: {} concurrent, {} requests: {} 2xx, {} 4xx, {} 5xx, {} without answer; latency p50 {} ms, p99 {} ms",
        r.args.clients,
        c.requests.load(Ordering::Relaxed),
        c.ok.load(Ordering::Relaxed),
        c.client_errors.load(Ordering::Relaxed),
        c.server_errors.load(Ordering::Relaxed),
        c.transport_errors.load(Ordering::Relaxed),
        pct(0.5),
        pct(0.99)
    );
    let _ = writeln!(s, "\ncards:");
    let states: Vec<String> = v.by_state.iter().map(|(k, c)| format!("{k} {c}")).collect();
    let jobs: Vec<String> = v
        .by_job_state
        .iter()
        .map(|(k, c)| format!("{k} {c}"))
        .collect();
    let _ = writeln!(s, "  in each state: {}", states.join(", "));
    let _ = writeln!(s, "  their jobs:    {}", jobs.join(", "));
    let _ = writeln!(
        s,
        "  cancels: {} cards back in produced with an untouched chip, {} finished on the rack first (result won, unassigned), \
         {} had succeeded before their cancel arrived",
        v.cancelled_untouched,
        v.cancel_result_won,
        r.cancels_sent
            .saturating_sub((v.cancelled_untouched + v.cancel_result_won) as usize)
    );
    let _ = writeln!(s, "  dead letters stored: {}", v.dead_letters);
    let _ = writeln!(
        s,
        "  chips checked: {} of {n} ({} take their escrowed PIN, {} still take the factory PIN)",
        v.chips_checked, v.chips_with_escrowed_pin, v.chips_untouched
    );
    let _ = writeln!(
        s,
        "\nleak scan (plaintext PINs, PUKs, management keys, root keys, tokens):"
    );
    for (place, (items, bytes)) in &r.leaks.scanned {
        let unit = if *place == "broker messages" {
            "messages"
        } else {
            "lines"
        };
        let _ = writeln!(
            s,
            "  {place}: {items} {unit}, {:.1} MiB scanned, {} found",
            *bytes as f64 / 1_048_576.0,
            r.leaks.found.get(place).map_or(0, Vec::len)
        );
    }
    let _ = writeln!(
        s,
        "\n  LOST                 {}",
        v.lost.len() + (n as usize - v.found)
    );
    let _ = writeln!(
        s,
        "  STUCK                {}",
        v.stuck.len().max(v.unfinished_jobs as usize)
    );
    let _ = writeln!(s, "  PIN MISMATCH         {}", v.pin_mismatch.len());
    let _ = writeln!(s, "  SECRETS LEAKED       {}", r.leaks.total());
    for (title, list) in [
        ("lost", &v.lost),
        ("stuck", &v.stuck),
        ("PIN mismatch", &v.pin_mismatch),
    ] {
        for line in list.iter().take(20) {
            let _ = writeln!(s, "  {title}: {line}");
        }
    }
    for (place, list) in &r.leaks.found {
        for line in list.iter().take(20) {
            let _ = writeln!(s, "  leak in {place}: {line}");
        }
    }
    let ok = v.lost.is_empty()
        && v.stuck.is_empty()
        && v.unfinished_jobs == 0
        && v.pin_mismatch.is_empty()
        && r.leaks.total() == 0;
    let _ = writeln!(s, "\nverdict: {}", if ok { "PASS" } else { "FAIL" });
    s
}
