//! Operator commands of the CLI over the API, the console's tasks for a
//! terminal: a card's detail, racks and slot release, dead letters, PUK
//! reads, PIN mailers and the audit trail.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;

use crate::client::ApiClient;

/// Top-level operator commands (flattened into the CLI's commands).
#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Read a card's escrowed PUK (role officer); the read is audited with the reason.
    Puk {
        card_id: String,
        /// Why the PUK is needed (required, 1 to 500 characters).
        #[arg(long)]
        reason: String,
    },
    /// Release the PIN mailers of a finished batch (role officer; once only).
    Mailers {
        batch_id: String,
        /// csv or html (one printable letter per card).
        #[arg(long, default_value = "csv")]
        format: String,
        /// Write the letters to this new file (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Messages no consumer could handle.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// The audit trail, oldest first (role auditor).
    Audit {
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        batch: Option<String>,
        #[arg(long)]
        card: Option<String>,
        /// Rows after this audit id.
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List dead letters, newest first.
    List {
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Send a dead result or slot event again (once).
    Redrive { id: i64 },
}

/// Query-string encoding of one value.
fn q(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

pub async fn run(api: &ApiClient, command: OpsCommand) -> anyhow::Result<()> {
    match command {
        OpsCommand::Puk { card_id, reason } => {
            let r: Value = api
                .get(&format!(
                    "/v1/cards/{}/puk?reason={}",
                    q(&card_id),
                    q(&reason)
                ))
                .await?;
            eprintln!("PUK of card {card_id} (the read is audited):");
            println!("{}", s(&r["puk"]));
            Ok(())
        }
        OpsCommand::Mailers {
            batch_id,
            format,
            out,
        } => {
            let text = api
                .post_for_text(&format!(
                    "/v1/initializations/{}/pin-mailers?format={}",
                    q(&batch_id),
                    q(&format)
                ))
                .await?;
            match out {
                Some(path) => {
                    let mut file = new_private_file(&path)?;
                    file.write_all(text.as_bytes())?;
                    file.sync_all()?;
                    eprintln!(
                        "PIN mailers written to {} (released once; keep it safe)",
                        path.display()
                    );
                }
                None => print!("{text}"),
            }
            Ok(())
        }
        OpsCommand::DeadLetters {
            command: DeadLettersCommand::List { limit },
        } => {
            let rows: Vec<Value> = api.get(&format!("/v1/dead-letters?limit={limit}")).await?;
            println!("{:<8} {:<30} {:<24} REASON", "ID", "RECEIVED", "SOURCE");
            for d in rows {
                println!(
                    "{:<8} {:<30} {:<24} {}",
                    d["id"],
                    s(&d["received_at"]),
                    s(&d["source"]),
                    s(&d["reason"])
                );
            }
            Ok(())
        }
        OpsCommand::DeadLetters {
            command: DeadLettersCommand::Redrive { id },
        } => {
            let r: Value = api
                .post_json(&format!("/v1/dead-letters/{id}/redrive"), &Value::Null)
                .await?;
            println!(
                "dead letter {} from {} sent again",
                r["id"],
                s(&r["source"])
            );
            Ok(())
        }
        OpsCommand::Audit {
            action,
            batch,
            card,
            after,
            limit,
        } => {
            let mut path = format!("/v1/audit?after={after}&limit={limit}");
            for (key, value) in [("action", action), ("batch_id", batch), ("card_id", card)] {
                if let Some(v) = value {
                    path.push_str(&format!("&{key}={}", q(&v)));
                }
            }
            let rows: Vec<Value> = api.get(&path).await?;
            for r in rows {
                let detail = if r["detail"].is_null() {
                    String::new()
                } else {
                    r["detail"].to_string()
                };
                println!(
                    "{:<8} {} {:<20} {:<28} {} {}",
                    r["id"],
                    s(&r["at"]),
                    s(&r["actor"]),
                    s(&r["action"]),
                    s(&r["card_id"]),
                    detail
                );
            }
            Ok(())
        }
    }
}

/// `cardfleet cards show CARD_ID`: the card and its jobs.
pub async fn show_card(api: &ApiClient, card_id: &str) -> anyhow::Result<()> {
    let c: Value = api.get(&format!("/v1/cards/{}", q(card_id))).await?;
    println!("card        {}", s(&c["card_id"]));
    println!("number      {}", s(&c["card_number"]));
    println!("chip serial {}", s(&c["chip_serial"]));
    println!(
        "type        {} (profile {})",
        s(&c["card_type"]),
        s(&c["profile"])
    );
    println!("state       {}", s(&c["state"]));
    if let Some(reason) = c["state_reason"].as_str() {
        println!("reason      {reason}");
    }
    for j in c["jobs"].as_array().into_iter().flatten() {
        println!(
            "job {} batch {} {} {} {}",
            s(&j["job_id"]),
            s(&j["batch_id"]),
            s(&j["state"]),
            s(&j["rack_id"]),
            s(&j["reason"])
        );
    }
    for k in c["public_keys"].as_array().into_iter().flatten() {
        println!(
            "public key {} ({}) from job {}",
            s(&k["slot"]),
            s(&k["algorithm"]),
            s(&k["job_id"])
        );
        print!("{}", s(&k["public_key_pem"]));
    }
    Ok(())
}

/// `cardfleet racks list`: racks, heartbeat age and slots.
pub async fn list_racks(api: &ApiClient) -> anyhow::Result<()> {
    let racks: Vec<Value> = api.get("/v1/racks").await?;
    let now = chrono::Utc::now();
    for r in racks {
        let age = r["last_heartbeat"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or("never".to_owned(), |t| {
                format!(
                    "{} s ago",
                    (now - t.with_timezone(&chrono::Utc)).num_seconds()
                )
            });
        println!(
            "rack {}  heartbeat {age}  in flight {}",
            s(&r["rack_id"]),
            r["in_flight"]
        );
        for slot in r["slots"].as_array().into_iter().flatten() {
            println!(
                "  slot {:<4} {:<12} {:<20} {}",
                slot["slot"],
                s(&slot["state"]),
                s(&slot["chip_serial"]),
                s(&slot["reason"])
            );
        }
    }
    Ok(())
}

/// `cardfleet racks release RACK SLOT`: puts a quarantined slot back in service.
pub async fn release_slot(api: &ApiClient, rack_id: &str, slot: u16) -> anyhow::Result<()> {
    api.post_for_text(&format!("/v1/racks/{}/slots/{slot}/release", q(rack_id)))
        .await?;
    println!("release of slot {slot} of rack {rack_id} sent to its worker");
    Ok(())
}

fn new_private_file(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(q("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(q("credential.puk_read"), "credential.puk_read");
    }
}
