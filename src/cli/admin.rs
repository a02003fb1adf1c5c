//! Admin commands that open the store directly (no token needed: this is
//! how the first admin token is made): tokens and rack enrollment tokens.

use anyhow::bail;

use super::{DirectDatabase, RacksCommand, TokensCommand};
use crate::settings::Settings;

/// The store of the server's configuration (or of a standalone data
/// directory), migrated when the configuration says the server would.
pub(super) async fn direct_store(
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

pub(super) async fn tokens_command(
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

pub(super) async fn racks_command(
    store: &crate::store::Store,
    command: RacksCommand,
) -> anyhow::Result<()> {
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
