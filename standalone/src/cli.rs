//! The `cardfleet` command line: the control plane's commands
//! (`cardfleet::cli`) plus `demo` and `standalone`, which run a worker in the
//! same process.

use std::path::PathBuf;

use anyhow::bail;
use cardfleet::cli::{GlobalArgs, init_tracing, wait_for_signal};
use cardfleet::settings::Settings;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "cardfleet",
    version,
    about = "Initialize temporary smart cards at production scale"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a standalone batch on embedded defaults: no services needed.
    Demo(crate::demo::DemoOptions),
    /// Run API, dispatcher, ledger and one worker in one process, on a
    /// SQLite file and an in-process bus (no RabbitMQ or PostgreSQL).
    Standalone {
        /// Where the SQLite database, its keys and simulated cards' state live.
        #[arg(long, env = "CARDFLEET_DATA_DIR", default_value = "cardfleet-data")]
        data_dir: PathBuf,
    },
    #[command(flatten)]
    ControlPlane(cardfleet::cli::Command),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(options) => {
            init_tracing("warn", false);
            let summary = crate::demo::run(&options).await?;
            if !summary.all_unassigned() {
                bail!("not every card ended unassigned");
            }
            Ok(())
        }
        Command::Standalone { data_dir } => standalone(cli.global, data_dir).await,
        Command::ControlPlane(command) => cardfleet::cli::run(cli.global, command).await,
    }
}

async fn standalone(global: GlobalArgs, data_dir: PathBuf) -> anyhow::Result<()> {
    let file = global
        .config
        .clone()
        .or_else(|| Some(PathBuf::from("cardfleet.toml")).filter(|p| p.exists()));
    let defaults = crate::data_dir_defaults(&data_dir)?;
    let settings = Settings::load_layered(file.as_deref(), &defaults, &[])?;
    init_tracing(&settings.log.filter, settings.log.format == "json");
    let worker = crate::worker_settings(file.as_deref(), &data_dir, &[])?;
    let app = crate::Standalone::build(&settings, &worker).await?;
    if let Some(path) = crate::ensure_admin_token(app.store(), &data_dir).await? {
        tracing::info!(
            path = %path.display(),
            "created the first API token (roles admin and operator); its secret is in this file"
        );
    }
    tracing::info!(
        port = app.port(),
        data_dir = %data_dir.display(),
        rack = app.rack_id(),
        reader = ?worker.reader.kind,
        slots = worker.reader.slots,
        "cardfleet standalone listening"
    );
    if let Some(port) = app.port() {
        let host = match settings.http.listen.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        tracing::info!(url = %format!("http://{host}:{port}/console/"), "operator console");
    }
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; finishing in-flight cards");
        token.cancel();
    });
    app.run_until_stopped(shutdown).await
}
