//! PostgreSQL backend (fleet mode): row locks (`FOR UPDATE`, `SKIP LOCKED`)
//! keep concurrent control planes apart, bulk work is done with array
//! (UNNEST) statements, and `pg_notify` wakes the dispatchers.

mod audit;
mod dispatch;
mod racks;

pub(super) use dispatch::{finish_claim, finish_control_claim};

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use super::{OUTBOX_CHANNEL, Result};

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
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

    /// Starts a write transaction.
    pub(in crate::store) async fn write(&self) -> Result<crate::store::dialect::postgres::Tx> {
        Ok(self.pool.begin().await?)
    }

    /// The pool reads run on.
    pub(in crate::store) fn reader(&self) -> &PgPool {
        &self.pool
    }

    /// Commits a transaction that added outbox rows and wakes the
    /// dispatchers (`pg_notify` is delivered on commit).
    pub(in crate::store) async fn commit_waking(
        &self,
        mut tx: crate::store::dialect::postgres::Tx,
    ) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(OUTBOX_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn outbox_listener(&self) -> Result<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(OUTBOX_CHANNEL).await?;
        Ok(listener)
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
