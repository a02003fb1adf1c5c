//! `cardfleet-worker`: parses the command line, starts tracing and runs one subcommand.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use cardfleet_worker::piv::MgmtKeyAlgorithm;
use cardfleet_worker::settings::{ReaderKind, WorkerSettings};
use cardfleet_worker::vpcd::{VirtualCardConfig, run_virtual_card};
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// cardfleet encoding worker.
#[derive(Debug, Parser)]
#[command(name = "cardfleet-worker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the worker: consume the rack's queue and encode cards in its slots.
    Run(RunArgs),
    /// Attach a virtual PIV card to vsmartcard's vpcd reader driver (runs until killed).
    VirtualCard(VirtualCardArgs),
    /// Enrol this rack's key (worker.key_file, created if missing) with the control plane.
    Enroll(EnrollArgs),
    /// Configuration: `config check` validates it and prints it.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Load and validate the configuration (defaults, file, environment)
    /// and print the effective settings with secrets redacted; exits
    /// non-zero naming the key when something is wrong.
    Check {
        /// Configuration file (default: ./cardfleet-worker.toml if present).
        #[arg(long, env = "CARDFLEET_WORKER_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct EnrollArgs {
    /// Configuration file (default: ./cardfleet-worker.toml if present).
    #[arg(long, env = "CARDFLEET_WORKER_CONFIG")]
    config: Option<PathBuf>,
    /// The rack to enrol (worker.rack_id).
    #[arg(long)]
    rack_id: Option<String>,
    /// The control plane's API, e.g. http://cp:8080 (worker.api_url).
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// The one-time token from `cardfleet racks enroll-token RACK_ID`
    /// (worker.enrollment_token); prefer the environment variable to the
    /// command line, which other users may see.
    #[arg(long, env = "CARDFLEET_ENROLLMENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificates to trust for an https:// API (worker.api_ca_file).
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Allow a plain http:// API, where a man in the middle could swap the
    /// rack key (worker.api_insecure).
    #[arg(long)]
    insecure: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Configuration file (default: ./cardfleet-worker.toml if present).
    #[arg(long, env = "CARDFLEET_WORKER_CONFIG")]
    config: Option<PathBuf>,
    /// The rack this worker owns (worker.rack_id).
    #[arg(long)]
    rack_id: Option<String>,
    /// Reader backend (reader.type).
    #[arg(long, value_enum)]
    reader: Option<ReaderKind>,
    /// Simulated slots (reader.slots).
    #[arg(long)]
    slots: Option<u16>,
    /// Production CSV whose cards are loaded into simulated slots as they free up
    /// (reader.load_from).
    #[arg(long, value_name = "CSV")]
    load_from: Option<PathBuf>,
}

impl RunArgs {
    fn overrides(&self) -> Vec<(&'static str, String)> {
        let mut o = Vec::new();
        if let Some(r) = &self.rack_id {
            o.push(("worker.rack_id", r.clone()));
        }
        if let Some(r) = self.reader {
            o.push((
                "reader.type",
                match r {
                    ReaderKind::Simulated => "simulated",
                    ReaderKind::Pcsc => "pcsc",
                }
                .into(),
            ));
        }
        if let Some(n) = self.slots {
            o.push(("reader.slots", n.to_string()));
        }
        if let Some(p) = &self.load_from {
            o.push(("reader.load_from", p.display().to_string()));
        }
        o
    }
}

#[derive(Debug, Args)]
struct VirtualCardArgs {
    /// vpcd address; the default vpcd reader listens on 35963 and 35964 for its two slots.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:35963")]
    vpcd: String,
    /// Chip serial of a new card (decimal or 0x-prefixed hex); random when omitted. A card
    /// loaded from --state-dir keeps its own.
    #[arg(long, value_name = "SERIAL", value_parser = parse_serial)]
    chip_serial: Option<u32>,
    /// Directory where the card's state is saved after every change and loaded at start.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Behave like a card without the YubiKey-compatible management instructions.
    #[arg(long)]
    no_extensions: bool,
    /// Accept only digits in PINs and PUKs.
    #[arg(long)]
    numeric_pins_only: bool,
    /// Refuse vendor data objects (`5FFFxx`) with `6A80`, like strict SP 800-73-4 cards.
    #[arg(long)]
    no_vendor_objects: bool,
    /// Answer PIV commands without a prior SELECT.
    #[arg(long)]
    implicit_selection: bool,
    /// Refuse SELECT with P2 = `0C` (`6A86`).
    #[arg(long)]
    refuse_select_p2_0c: bool,
    /// Answer a wrong PUK with a bare `6300` instead of `63Cx`.
    #[arg(long)]
    puk_6300: bool,
    /// Management key algorithms the card accepts; the factory key is 3DES when listed,
    /// else the first one.
    #[arg(
        long,
        value_name = "ALGS",
        value_delimiter = ',',
        default_value = "3des,aes128,aes192,aes256"
    )]
    mgmt_key_algs: Vec<MgmtKeyAlgorithm>,
}

impl VirtualCardArgs {
    fn into_config(self) -> VirtualCardConfig {
        VirtualCardConfig {
            state_dir: self.state_dir,
            chip_serial: self.chip_serial,
            extensions: !self.no_extensions,
            numeric_pins_only: self.numeric_pins_only,
            vendor_objects: !self.no_vendor_objects,
            implicit_selection: self.implicit_selection,
            select_without_response: !self.refuse_select_p2_0c,
            puk_reports_tries: !self.puk_6300,
            mgmt_key_algorithms: self.mgmt_key_algs,
            max_backoff: Duration::from_secs(2),
            ..VirtualCardConfig::new(self.vpcd)
        }
    }
}

fn parse_serial(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|err| format!("{text:?} is not a 32-bit serial: {err}"))
}

fn init_tracing(filter: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let settings = WorkerSettings::load(args.config.as_deref(), &args.overrides())?;
            init_tracing(&settings.log.filter, settings.log.format == "json");
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async move {
                let shutdown = cardfleet_worker::app::cancel_on_signal();
                cardfleet_worker::app::run(settings, shutdown).await
            })
        }
        Command::Enroll(args) => {
            let mut overrides = Vec::new();
            if let Some(r) = args.rack_id {
                overrides.push(("worker.rack_id", r));
            }
            let settings = WorkerSettings::load(args.config.as_deref(), &overrides)?;
            init_tracing(&settings.log.filter, settings.log.format == "json");
            let api = args
                .api
                .or_else(|| settings.worker.api_url.clone())
                .context("name the control plane with --api URL (or worker.api_url)")?;
            let token = args
                .token
                .or_else(|| {
                    let t = settings.worker.enrollment_token.as_ref();
                    t.map(|t| t.expose().to_owned())
                })
                .context("give the enrollment token with --token (or worker.enrollment_token)")?;
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let path = settings.worker.key_file.clone();
            let rack = settings.worker.rack_id.clone();
            let mut tls = settings.worker.api_tls();
            if let Some(ca) = args.ca_file {
                tls.ca_file = Some(ca);
            }
            tls.insecure |= args.insecure;
            let (key, _) = cardfleet_worker::rack_key::load_or_create(&path)?;
            let done = runtime.block_on(cardfleet_worker::rack_key::enroll(
                &api, &tls, &token, &rack, &key, &path,
            ))?;
            println!(
                "rack {rack} enrolled with key {} ({})",
                done.key_id,
                path.display()
            );
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            let settings = WorkerSettings::load(config.as_deref(), &[])?;
            let text = cardfleet_schemas::redact::to_redacted_toml(&settings)
                .map_err(|e| anyhow::anyhow!("cannot print the configuration: {e}"))?;
            println!("# cardfleet-worker: effective configuration (secrets redacted)\n{text}");
            eprintln!("configuration ok");
            Ok(())
        }
        Command::VirtualCard(args) => {
            init_tracing("info", false);
            let config = args.into_config();
            run_virtual_card(&config, &AtomicBool::new(false))
                .with_context(|| format!("virtual card on vpcd {}", config.vpcd_addr))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn virtual_card_options_reach_the_configuration() {
        let cli = Cli::try_parse_from([
            "cardfleet-worker",
            "virtual-card",
            "--vpcd",
            "127.0.0.1:35964",
            "--chip-serial",
            "0x00C0FFEE",
            "--state-dir",
            "/tmp/card",
            "--no-extensions",
            "--numeric-pins-only",
            "--no-vendor-objects",
            "--puk-6300",
            "--mgmt-key-algs",
            "aes128,aes256",
        ])
        .unwrap();
        let Command::VirtualCard(args) = cli.command else {
            panic!("parsed as another command");
        };
        let config = args.into_config();
        assert_eq!(config.vpcd_addr, "127.0.0.1:35964");
        assert_eq!(config.chip_serial, Some(0x00C0_FFEE));
        assert_eq!(config.state_dir, Some(PathBuf::from("/tmp/card")));
        assert!(!config.extensions && config.numeric_pins_only);
        assert!(!config.vendor_objects && !config.puk_reports_tries);
        assert!(config.select_without_response && !config.implicit_selection);
        assert_eq!(
            config.mgmt_key_algorithms,
            [MgmtKeyAlgorithm::Aes128, MgmtKeyAlgorithm::Aes256]
        );
    }

    #[test]
    fn defaults_describe_a_full_featured_card_on_the_first_vpcd_slot() {
        let cli = Cli::try_parse_from(["cardfleet-worker", "virtual-card"]).unwrap();
        let Command::VirtualCard(args) = cli.command else {
            panic!("parsed as another command");
        };
        let config = args.into_config();
        assert_eq!(config.vpcd_addr, "127.0.0.1:35963");
        assert_eq!((config.chip_serial, config.extensions), (None, true));
        assert_eq!(config.mgmt_key_algorithms, MgmtKeyAlgorithm::ALL);
    }

    #[test]
    fn enroll_takes_the_api_and_token() {
        let cli = Cli::try_parse_from([
            "cardfleet-worker",
            "enroll",
            "--api",
            "http://cp:8080",
            "--token",
            "t",
            "--rack-id",
            "rack-7",
        ])
        .unwrap();
        let Command::Enroll(args) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(args.api.as_deref(), Some("http://cp:8080"));
        assert_eq!(args.rack_id.as_deref(), Some("rack-7"));
    }

    #[test]
    fn bad_serials_and_algorithms_are_rejected() {
        assert_eq!(parse_serial("1234"), Ok(1234));
        assert!(parse_serial("0x1_0000_0000").is_err());
        assert!(parse_serial("-1").is_err());
        for bad in [
            ["--chip-serial", "12ab"],
            ["--mgm-key-algs", "des"],
            ["--mgmt-key-algs", "des"],
        ] {
            let mut argv = vec!["cardfleet-worker", "virtual-card"];
            argv.extend(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }
}
