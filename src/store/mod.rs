//! PostgreSQL store: every state change is one transaction with its audit
//! rows, and bulk work is done with array (UNNEST) statements.

mod audit;
pub mod cards;
pub mod dispatch;
pub mod gauges;
pub mod initialize;
pub mod ledger;
pub mod racks;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

pub use audit::AuditRows;

/// Errors of the store that callers act on; everything else is `Database`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the process '{0}' is disabled")]
    ProcessDisabled(String),
    #[error("not found")]
    NotFound,
    #[error("stored credential cannot be read: {0}")]
    Credential(#[from] crate::credentials::CredentialError),
}

impl StoreError {
    /// A deadlock, serialization failure or lock timeout: the same
    /// transaction may succeed when tried again.
    pub fn is_transient(&self) -> bool {
        let StoreError::Database(e) = self else {
            return false;
        };
        if matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) {
            return true;
        }
        e.as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| matches!(c.as_ref(), "40P01" | "40001" | "55P03"))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Name of the one process cardfleet runs.
pub const INITIALIZE_PROCESS: &str = "initialize-temporary-card";
/// Channel the dispatcher LISTENs on for new outbox rows.
pub const OUTBOX_CHANNEL: &str = "cardfleet_outbox";

#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects, creating the database first when `create` is set.
    pub async fn connect(url: &str, max_connections: u32, create: bool) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)?;
        if create {
            ensure_database(&options).await?;
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn process_enabled(&self, name: &str) -> Result<bool> {
        let enabled: Option<bool> =
            sqlx::query_scalar("SELECT enabled FROM process_settings WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        enabled.ok_or(StoreError::NotFound)
    }

    pub async fn set_process_enabled(&self, name: &str, enabled: bool, actor: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let before: Option<bool> =
            sqlx::query_scalar("SELECT enabled FROM process_settings WHERE name = $1 FOR UPDATE")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let before = before.ok_or(StoreError::NotFound)?;
        if before != enabled {
            sqlx::query(
                "UPDATE process_settings SET enabled = $2, updated_at = now() WHERE name = $1",
            )
            .bind(name)
            .bind(enabled)
            .execute(&mut *tx)
            .await?;
            let mut audit = AuditRows::default();
            audit.push_admin(
                if enabled {
                    "process.enabled"
                } else {
                    "process.disabled"
                },
                serde_json::json!({ "process": name }),
            );
            audit.insert(&mut tx, actor).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

async fn ensure_database(options: &PgConnectOptions) -> Result<()> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut conn = options.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        // Another process may create it between the check and here.
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
        {
            let duplicate = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P04");
            if !duplicate {
                return Err(e.into());
            }
        }
    }
    conn.close().await?;
    Ok(())
}
