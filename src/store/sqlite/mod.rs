//! SQLite backend (standalone mode): one file in WAL mode. SQLite has one
//! writer, so every write transaction runs on a pool of one connection and
//! starts with `BEGIN IMMEDIATE` (it takes the write lock up front rather
//! than failing when a read turns into a write); reads run on a separate
//! pool and never wait for writers. Bulk work binds one JSON array and
//! expands it with `json_each`. Writers that add outbox rows wake the
//! dispatcher through a watch channel, SQLite's stand-in for `pg_notify`.

mod audit;
mod dispatch;
mod racks;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use tokio::sync::{Mutex, watch};

pub(super) use dispatch::ClaimLock;

use super::Result;

/// The current time as stored: UTC ISO 8601 with milliseconds, the format
/// of the migrations' column defaults, so text order is time order.
macro_rules! now {
    () => {
        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
    };
}
pub(crate) use now;

/// How long a connection waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// One connection: SQLite allows one writer at a time anyway, and
    /// queueing here keeps writers from failing with SQLITE_BUSY.
    writer: SqlitePool,
    reader: SqlitePool,
    /// Bumped after every commit that adds outbox or control outbox rows.
    outbox_wake: Arc<watch::Sender<u64>>,
    /// Held by an outbox claim until it is finished or dropped.
    outbox_claim: Arc<Mutex<()>>,
    control_claim: Arc<Mutex<()>>,
}

impl SqliteStore {
    /// Opens the file named by `url` (`sqlite:PATH` or `sqlite://PATH`),
    /// creating it when `create` is set.
    pub async fn connect(url: &str, max_connections: u32, create: bool) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone().create_if_missing(create))
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_connections.saturating_sub(1).max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self {
            writer,
            reader,
            outbox_wake: Arc::new(watch::Sender::new(0)),
            outbox_claim: Arc::new(Mutex::new(())),
            control_claim: Arc::new(Mutex::new(())),
        })
    }

    pub(super) async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations_sqlite")
            .run(&self.writer)
            .await?;
        Ok(())
    }

    pub(super) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    pub(super) fn outbox_listener(&self) -> watch::Receiver<u64> {
        self.outbox_wake.subscribe()
    }

    /// Starts a write transaction holding SQLite's write lock.
    pub(in crate::store) async fn write(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// The pool reads run on; they never wait for the writer.
    pub(in crate::store) fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// Commits a transaction that added outbox rows and wakes the
    /// dispatchers.
    pub(in crate::store) async fn commit_waking(
        &self,
        tx: Transaction<'static, Sqlite>,
    ) -> Result<()> {
        tx.commit().await?;
        self.wake_dispatchers();
        Ok(())
    }

    /// Wakes outbox listeners; call after the commit that added rows.
    fn wake_dispatchers(&self) {
        self.outbox_wake.send_modify(|n| *n = n.wrapping_add(1));
    }
}

use super::dialect::RowExt;

/// A list bound as one JSON array, for `json_each`.
fn json_list<T: serde::Serialize>(items: T) -> sqlx::types::Json<T> {
    sqlx::types::Json(items)
}
