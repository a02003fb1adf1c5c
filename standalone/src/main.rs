//! `cardfleet`: the control plane's command line, standalone mode and the demo.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cardfleet_standalone::cli::Cli::parse();
    match cardfleet_standalone::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
