//! `cardfleet`: the control plane and its command line.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cardfleet::cli::Cli::parse();
    match cardfleet::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
