//! The `cardfleet` command line: server commands and API client commands.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::app::{Application, Component};
use crate::client::ApiClient;
use crate::settings::Settings;

/// Options every command takes (`global`: before or after the command).
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Configuration file (default: ./cardfleet.toml if present).
    #[arg(long, global = true, env = "CARDFLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Base URL of the cardfleet API for client commands.
    #[arg(
        long,
        global = true,
        env = "CARDFLEET_API",
        default_value = "http://127.0.0.1:8080"
    )]
    pub api: String,
    /// API token for client commands (`cardfleet tokens create`).
    #[arg(long, global = true, env = "CARDFLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificates to trust for an https:// API (besides the
    /// system's), e.g. the bureau's own CA.
    #[arg(long, global = true, env = "CARDFLEET_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// The control plane's commands. The `cardfleet` binary (crate
/// `cardfleet-standalone`) adds `demo` and `standalone`, which also need the
/// worker.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane: API, dispatcher and ledger (or some of them).
    Serve {
        /// Run only these components (repeatable).
        #[arg(long, value_enum)]
        only: Vec<Component>,
    },
    /// Create the database if needed and apply migrations.
    Migrate,
    /// Card stock.
    Cards {
        #[command(subcommand)]
        command: CardsCommand,
    },
    /// Enable or disable the "initialize temporary card" process.
    Process {
        #[command(subcommand)]
        command: ProcessCommand,
    },
    /// Submit an initialize request.
    Submit {
        /// File of card ids, one per line.
        #[arg(
            long,
            conflicts_with = "all_produced",
            required_unless_present = "all_produced"
        )]
        cards: Option<PathBuf>,
        /// Every produced temporary card (up to --limit).
        #[arg(long)]
        all_produced: bool,
        #[arg(long, default_value_t = 100_000)]
        limit: i64,
        /// Show a progress bar until the batch finishes.
        #[arg(long)]
        wait: bool,
    },
    /// Show a batch's progress.
    Status { batch: String },
    /// Cancel a batch, or one card of it.
    Cancel {
        batch: String,
        #[arg(long)]
        card: Option<String>,
    },
    /// API tokens, directly on the database (no token needed: this is how
    /// the first admin token is made).
    Tokens {
        #[command(flatten)]
        database: DirectDatabase,
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Rack enrollment, directly on the database.
    Racks {
        #[command(flatten)]
        database: DirectDatabase,
        #[command(subcommand)]
        command: RacksCommand,
    },
    /// Key rotation and management keys, with the server's configuration
    /// directly on its database.
    Keys {
        #[command(subcommand)]
        command: crate::keys::KeysCommand,
    },
    /// Operator commands over the API (src/ops.rs).
    #[command(flatten)]
    Ops(crate::ops::OpsCommand),
    /// Configuration: `config check` validates it and prints it.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print the RabbitMQ topology as definitions for `rabbitmqctl import_definitions`.
    Topology {
        #[arg(long, default_value = "/")]
        vhost: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and validate the configuration (defaults, `--config` file or
    /// ./cardfleet.toml, environment) and print the effective settings with
    /// secrets redacted; exits non-zero naming the key when something is wrong.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum CardsCommand {
    /// Import produced cards from a production file (.csv or .json).
    Import { file: PathBuf },
    /// List cards.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long = "type", default_value = "temporary")]
        card_type: String,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long, default_value_t = 0)]
        offset: i64,
    },
    /// Show a card and its jobs.
    Show { card_id: String },
}

/// Where commands that work on the database directly find it.
#[derive(Debug, clap::Args)]
pub struct DirectDatabase {
    /// Use a standalone data directory's database (default: the server's
    /// configuration, as for `migrate`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token and print its secret (once: only a hash is stored).
    Create {
        /// admin, operator, officer or auditor (repeatable).
        #[arg(long = "role", required = true)]
        roles: Vec<crate::store::tokens::Role>,
        #[arg(long)]
        name: String,
        /// Days until the token expires (default: tokens.default_ttl_days;
        /// 0 there means never).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
        ttl_days: Option<u32>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token: it is refused from then on.
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum RacksCommand {
    /// Create a single-use enrollment token for a rack's worker and print it.
    EnrollToken {
        rack_id: String,
        /// Hours until the token expires.
        #[arg(long, default_value_t = 24)]
        ttl_hours: u32,
    },
    /// List racks, their heartbeat age and slots (over the API).
    List,
    /// Put a quarantined slot back into service (over the API).
    Release { rack_id: String, slot: u16 },
}

#[derive(Debug, Subcommand)]
pub enum ProcessCommand {
    Enable,
    Disable,
    Status,
}

pub fn init_tracing(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs one control-plane command.
pub async fn run(cli: GlobalArgs, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { only } => {
            let settings = Settings::load(cli.config.as_deref())?;
            init_tracing(&settings.log.filter, settings.log.format == "json");
            let components = if only.is_empty() {
                Component::ALL.to_vec()
            } else {
                only
            };
            let app = Application::build(&settings, &components).await?;
            if let Some(port) = app.port() {
                tracing::info!(port, ?components, "cardfleet control plane listening");
            }
            let shutdown = CancellationToken::new();
            let token = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutdown requested");
                token.cancel();
            });
            app.run_until_stopped(shutdown).await
        }
        Command::Migrate => {
            let settings = Settings::load(cli.config.as_deref())?;
            let store = crate::store::Store::connect(&settings.database.url, 2, true).await?;
            store.migrate().await?;
            println!("database is up to date");
            Ok(())
        }
        Command::Keys { command } => crate::keys::run(cli.config.as_deref(), command).await,
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let settings = Settings::load(cli.config.as_deref())?;
            let text = cardfleet_schemas::redact::to_redacted_toml(&settings)
                .map_err(|e| anyhow::anyhow!("cannot print the configuration: {e}"))?;
            println!("# cardfleet: effective configuration (secrets redacted)\n{text}");
            eprintln!("configuration ok");
            Ok(())
        }
        Command::Topology { vhost } => {
            let limit = Settings::load(cli.config.as_deref())
                .map(|s| s.amqp.delivery_limit)
                .unwrap_or(5);
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::broker::definitions(&vhost, limit))?
            );
            Ok(())
        }
        Command::Tokens { database, command } => {
            let (store, settings) = direct_store(cli.config.as_deref(), &database).await?;
            tokens_command(&store, &settings.tokens, command).await
        }
        Command::Racks {
            command: command @ (RacksCommand::List | RacksCommand::Release { .. }),
            ..
        } => {
            let api = ApiClient::new(&cli.api, cli.token.as_deref())?;
            match command {
                RacksCommand::Release { rack_id, slot } => {
                    crate::ops::release_slot(&api, &rack_id, slot).await
                }
                _ => crate::ops::list_racks(&api).await,
            }
        }
        Command::Racks { database, command } => {
            let (store, _) = direct_store(cli.config.as_deref(), &database).await?;
            racks_command(&store, command).await
        }
        command => {
            let api = ApiClient::with_ca(&cli.api, cli.token.as_deref(), cli.ca_file.as_deref())?;
            client_command(&api, command).await
        }
    }
}

/// The store of the server's configuration (or of a standalone data
/// directory), migrated when the configuration says the server would.
async fn direct_store(
    config: Option<&std::path::Path>,
    database: &DirectDatabase,
) -> anyhow::Result<(crate::store::Store, Settings)> {
    let settings = match &database.data_dir {
        Some(dir) => {
            let defaults = crate::data_dir::data_dir_defaults(dir)?;
            Settings::load_layered(config, &defaults, &[])?
        }
        None => Settings::load(config)?,
    };
    let migrate = settings.database.migrate_on_start;
    let store = crate::store::Store::connect(&settings.database.url, 2, migrate).await?;
    if migrate {
        store.migrate().await?;
    }
    Ok((store, settings))
}

/// The actor of audit rows written from the command line.
fn cli_actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

async fn tokens_command(
    store: &crate::store::Store,
    expiry: &crate::settings::TokenSettings,
    command: TokensCommand,
) -> anyhow::Result<()> {
    use crate::store::tokens::{NewToken, Role};
    match command {
        TokensCommand::Create {
            roles,
            name,
            ttl_days,
        } => {
            if roles.contains(&Role::Worker) {
                bail!(
                    "worker tokens are enrollment tokens: use `cardfleet racks enroll-token RACK_ID`"
                );
            }
            let new = NewToken {
                name,
                roles,
                rack_id: None,
                single_use: false,
                expires_at: expiry.expiry(ttl_days),
            };
            let secret = store.create_token(&new, &cli_actor()).await?;
            let roles: Vec<&str> = new.roles.iter().map(|r| r.as_str()).collect();
            let until = new.expires_at.map_or_else(
                || "never expires".to_owned(),
                |e| format!("expires {}", e.format("%Y-%m-%d %H:%M UTC")),
            );
            eprintln!(
                "created token '{}' with roles {} ({until}); its secret follows and is not shown again",
                new.name,
                roles.join(",")
            );
            println!("{}", secret.expose());
            Ok(())
        }
        TokensCommand::List => {
            println!(
                "{:<24} {:<36} {:<10} {:<25} STATE",
                "NAME", "ROLES", "RACK", "CREATED"
            );
            for t in store.list_tokens().await? {
                let roles: Vec<&str> = t.roles.iter().map(|r| r.as_str()).collect();
                let state = if t.revoked_at.is_some() {
                    "revoked"
                } else if t.used_at.is_some() && t.single_use {
                    "used"
                } else if t.expires_at.is_some_and(|e| e <= chrono::Utc::now()) {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{:<24} {:<36} {:<10} {:<25} {state}",
                    t.name,
                    roles.join(","),
                    t.rack_id.as_deref().unwrap_or("-"),
                    t.created_at.format("%Y-%m-%d %H:%M:%S UTC")
                );
            }
            Ok(())
        }
        TokensCommand::Revoke { name } => {
            match store.revoke_token(&name, &cli_actor()).await {
                Ok(()) => println!("token '{name}' is revoked"),
                Err(crate::store::StoreError::NotFound) => bail!("no token named '{name}'"),
                Err(e) => return Err(e.into()),
            }
            Ok(())
        }
    }
}

async fn racks_command(store: &crate::store::Store, command: RacksCommand) -> anyhow::Result<()> {
    use crate::store::tokens::{NewToken, Role};
    match command {
        RacksCommand::EnrollToken { rack_id, ttl_hours } => {
            let rack = crate::domain::RackId::parse(&rack_id)?;
            if ttl_hours == 0 {
                bail!("--ttl-hours must be at least 1");
            }
            let expires_at = chrono::Utc::now() + chrono::Duration::hours(i64::from(ttl_hours));
            let new = NewToken {
                name: format!(
                    "enroll-{}-{}",
                    rack.as_str(),
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                ),
                roles: vec![Role::Worker],
                rack_id: Some(rack.as_str().to_owned()),
                single_use: true,
                expires_at: Some(expires_at),
            };
            let secret = store.create_token(&new, &cli_actor()).await?;
            eprintln!(
                "enrollment token '{}' for rack {} (single use, expires {}); its secret follows and is not shown again",
                new.name,
                rack.as_str(),
                expires_at.format("%Y-%m-%d %H:%M UTC")
            );
            println!("{}", secret.expose());
            Ok(())
        }
        RacksCommand::List | RacksCommand::Release { .. } => {
            bail!("racks list and racks release work over the API")
        }
    }
}

pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

async fn client_command(api: &ApiClient, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Cards {
            command: CardsCommand::Import { file },
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let content_type = if file.extension().is_some_and(|e| e == "json") {
                "application/json"
            } else {
                "text/csv"
            };
            let outcome: Value = api
                .post_raw("/v1/cards/import", content_type, bytes)
                .await?;
            println!("imported {}", outcome["imported"]);
            for r in outcome["rejected"].as_array().into_iter().flatten() {
                println!(
                    "row {}: {}: {}",
                    r["row"],
                    r["code"].as_str().unwrap_or(""),
                    r["message"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Command::Cards {
            command:
                CardsCommand::List {
                    state,
                    card_type,
                    limit,
                    offset,
                },
        } => {
            let mut path = format!("/v1/cards?type={card_type}&limit={limit}&offset={offset}");
            if let Some(s) = state {
                path.push_str(&format!("&state={s}"));
            }
            let cards: Vec<Value> = api.get(&path).await?;
            println!(
                "{:<38} {:<16} {:<20} {:<13}",
                "CARD ID", "CARD NUMBER", "CHIP SERIAL", "STATE"
            );
            for c in cards {
                println!(
                    "{:<38} {:<16} {:<20} {:<13}",
                    c["card_id"].as_str().unwrap_or(""),
                    c["card_number"].as_str().unwrap_or(""),
                    c["chip_serial"].as_str().unwrap_or(""),
                    c["state"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Command::Cards {
            command: CardsCommand::Show { card_id },
        } => crate::ops::show_card(api, &card_id).await,
        Command::Ops(command) => crate::ops::run(api, command).await,
        Command::Process { command } => {
            let path = "/v1/processes/initialize-temporary-card";
            let setting: Value = match command {
                ProcessCommand::Enable => api.put_json(path, &json!({ "enabled": true })).await?,
                ProcessCommand::Disable => api.put_json(path, &json!({ "enabled": false })).await?,
                ProcessCommand::Status => api.get(path).await?,
            };
            let enabled = setting["enabled"].as_bool().unwrap_or(false);
            println!(
                "initialize-temporary-card is {}",
                if enabled { "enabled" } else { "disabled" }
            );
            Ok(())
        }
        Command::Submit {
            cards,
            all_produced,
            limit,
            wait,
        } => {
            let body = if all_produced {
                json!({ "filter": { "type": "temporary", "state": "produced", "limit": limit } })
            } else {
                let file = cards.context("give --cards FILE or --all-produced")?;
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let ids: Vec<&str> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect();
                json!({ "card_ids": ids })
            };
            let outcome: Value = api.post_json("/v1/initializations", &body).await?;
            let batch = outcome["batch_id"].as_str().unwrap_or_default().to_owned();
            let accepted = outcome["accepted"].as_array().map_or(0, Vec::len);
            println!("batch {batch}: {accepted} accepted");
            for r in outcome["rejected"].as_array().into_iter().flatten() {
                println!(
                    "  rejected {}: {}: {}",
                    r["card_id"].as_str().unwrap_or(""),
                    r["code"].as_str().unwrap_or(""),
                    r["message"].as_str().unwrap_or("")
                );
            }
            if wait && accepted > 0 {
                return wait_for_batch(api, &batch, accepted as u64).await;
            }
            Ok(())
        }
        Command::Status { batch } => {
            let status: Value = api
                .get(&format!("/v1/initializations/{batch}?limit=1"))
                .await?;
            print_counts(&status);
            Ok(())
        }
        Command::Cancel { batch, card } => {
            let path = match card {
                Some(card) => format!("/v1/initializations/{batch}/cards/{card}/cancel"),
                None => format!("/v1/initializations/{batch}/cancel"),
            };
            let outcome: Value = api.post_json(&path, &json!({})).await?;
            println!(
                "cancelled {}, stopping {}, already finished {}",
                outcome["cancelled"].as_array().map_or(0, Vec::len),
                outcome["stopping"].as_array().map_or(0, Vec::len),
                outcome["finished"]
            );
            Ok(())
        }
        Command::Serve { .. }
        | Command::Migrate
        | Command::Topology { .. }
        | Command::Config { .. }
        | Command::Keys { .. }
        | Command::Tokens { .. }
        | Command::Racks { .. } => Ok(()),
    }
}

fn print_counts(status: &Value) {
    let counts = &status["counts"];
    println!(
        "batch {}: {}",
        status["batch_id"].as_str().unwrap_or(""),
        if status["finished"].as_bool() == Some(true) {
            "finished"
        } else {
            "in progress"
        }
    );
    for state in [
        "queued",
        "awaiting_card",
        "dispatched",
        "encoding",
        "succeeded",
        "failed",
        "cancelled",
    ] {
        println!("  {state:<14} {}", counts[state]);
    }
}

async fn wait_for_batch(api: &ApiClient, batch: &str, total: u64) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} cards  {per_sec}  eta {eta}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    loop {
        let status: Value = api
            .get(&format!("/v1/initializations/{batch}?limit=1"))
            .await?;
        let c = &status["counts"];
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        bar.set_position(n("succeeded") + n("failed") + n("cancelled"));
        bar.set_message(format!(
            "failed {}  cancelled {}",
            n("failed"),
            n("cancelled")
        ));
        if status["finished"].as_bool() == Some(true) {
            bar.finish();
            print_counts(&status);
            if n("failed") + n("cancelled") > 0 {
                bail!("batch finished with failed or cancelled cards");
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
