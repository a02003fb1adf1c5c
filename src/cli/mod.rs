//! The control plane's command line: the parser (global options and the
//! commands), server commands, and the dispatch to the admin commands that
//! open the store (`admin.rs`) and the client commands over the API
//! (`client.rs`).

mod admin;
mod client;

use std::path::PathBuf;

use clap::Subcommand;
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
            let (store, settings) = admin::direct_store(cli.config.as_deref(), &database).await?;
            admin::tokens_command(&store, &settings.tokens, command).await
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
            let (store, _) = admin::direct_store(cli.config.as_deref(), &database).await?;
            admin::racks_command(&store, command).await
        }
        command => {
            let api = ApiClient::with_ca(&cli.api, cli.token.as_deref(), cli.ca_file.as_deref())?;
            client::client_command(&api, command).await
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
