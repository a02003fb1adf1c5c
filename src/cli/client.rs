//! Client commands: card stock, the process switch, submit, status and
//! cancel, sent over the API with the caller's token.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{CardsCommand, Command, ProcessCommand};
use crate::client::ApiClient;

pub(super) async fn client_command(api: &ApiClient, command: Command) -> anyhow::Result<()> {
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
