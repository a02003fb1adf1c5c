//! The control plane's store: one facade over PostgreSQL (fleet mode) and
//! SQLite (standalone mode). Every state change is one transaction with its
//! audit rows; the decisions (what moves, what is refused, what is audited)
//! are made once, by the pure functions of `crate::domain` and the planners
//! beside each concept, and the store only loads and saves.
//!
//! Layout: one file per concept (`cards`, `initialize`, `ledger`, `escrow`,
//! `tokens`, ...) holds its types, its facade methods on [`Store`] and its
//! transactions, each written once inside `dialect::for_each_dialect!`, which
//! compiles it for both drivers. `dialect/{postgres,sqlite}.rs` hold only
//! what differs (see `dialect` for why this and not sqlx's `Any` driver);
//! `postgres/` and `sqlite/` keep each backend's connection, its claims
//! (row locks vs an in-process lock), the audit insert and the bulk
//! application of slot events. A new concept adds one file here and, only
//! if it needs a statement that differs, a function in each dialect file.

pub mod audit;
pub mod cards;
pub(crate) mod dialect;
pub mod dispatch;
pub mod escrow;
pub mod gauges;
pub mod in_doubt;
pub mod initialize;
pub mod job_gate;
pub mod leases;
pub mod ledger;
pub mod postgres;
mod processes;
pub mod public_keys;
pub mod rack_keys;
pub mod racks;
pub mod recovery;
pub mod redrive;
pub mod rotation;
pub mod sqlite;
pub mod tokens;

use sqlx::PgPool;

pub use audit::AuditRows;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

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
    /// The request conflicts with the current state; `code` is the API's.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The input breaks a rule of the store (e.g. a token name).
    #[error("{0}")]
    Invalid(String),
    #[error("stored credential cannot be read: {0}")]
    Credential(#[from] crate::credentials::CredentialError),
    #[error("database url '{0}' names no supported backend (postgres://, postgresql://, sqlite:)")]
    UnsupportedUrl(String),
}

impl StoreError {
    /// A deadlock, serialization failure, lock timeout or (SQLite) a busy or
    /// locked database: the same transaction may succeed when tried again.
    pub fn is_transient(&self) -> bool {
        let StoreError::Database(e) = self else {
            return false;
        };
        if matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) {
            return true;
        }
        let Some(db) = e.as_database_error() else {
            return false;
        };
        let Some(code) = db.code() else {
            return false;
        };
        if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
            // Extended result codes keep the primary code in the low byte:
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6) and their variants.
            return code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6));
        }
        matches!(code.as_ref(), "40P01" | "40001" | "55P03")
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Name of the one process cardfleet runs.
pub const INITIALIZE_PROCESS: &str = "initialize-temporary-card";
/// Channel the dispatcher LISTENs on for new outbox rows (PostgreSQL).
pub const OUTBOX_CHANNEL: &str = "cardfleet_outbox";

/// The store, on whichever backend the database URL named.
#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

/// Runs the same expression against whichever backend `store` holds.
macro_rules! on_backend {
    ($store:expr, $s:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Postgres($s) => $body,
            $crate::store::Store::Sqlite($s) => $body,
        }
    };
}
pub(crate) use on_backend;

impl Store {
    /// Connects to `url`: `postgres://` or `postgresql://` for PostgreSQL,
    /// `sqlite:PATH` or `sqlite://PATH` for a SQLite file. With `create` the
    /// database (or file) is created when missing.
    pub async fn connect(url: &str, max_connections: u32, create: bool) -> Result<Self> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "postgres" | "postgresql" => Ok(Store::Postgres(
                PgStore::connect(url, max_connections, create).await?,
            )),
            "sqlite" => Ok(Store::Sqlite(
                SqliteStore::connect(url, max_connections, create).await?,
            )),
            _ => Err(StoreError::UnsupportedUrl(redact_url(url))),
        }
    }

    /// `postgres` or `sqlite`, for logs and test names.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// The PostgreSQL pool, for tests and benchmarks that inspect rows with
    /// raw SQL; `None` on SQLite.
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match self {
            Store::Postgres(s) => Some(s.pool()),
            Store::Sqlite(_) => None,
        }
    }

    /// Applies the backend's migrations (migrations/ or migrations_sqlite/).
    pub async fn migrate(&self) -> Result<()> {
        on_backend!(self, s => s.migrate().await)
    }

    pub async fn ping(&self) -> Result<()> {
        on_backend!(self, s => s.ping().await)
    }

    /// Wakes when rows may have been added to the outbox or control outbox.
    pub async fn outbox_listener(&self) -> Result<OutboxListener> {
        match self {
            Store::Postgres(s) => Ok(OutboxListener(Listener::Postgres(Box::new(
                s.outbox_listener().await?,
            )))),
            Store::Sqlite(s) => Ok(OutboxListener(Listener::Sqlite(s.outbox_listener()))),
        }
    }

    pub async fn process_enabled(&self, name: &str) -> Result<bool> {
        on_backend!(self, s => s.process_enabled(name).await)
    }

    pub async fn set_process_enabled(&self, name: &str, enabled: bool, actor: &str) -> Result<()> {
        on_backend!(self, s => s.set_process_enabled(name, enabled, actor).await)
    }
}

/// A URL without its password, for error messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://…{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Wakes the dispatcher when new outbox rows may be waiting.
#[derive(Debug)]
pub struct OutboxListener(Listener);

#[derive(Debug)]
enum Listener {
    Postgres(Box<sqlx::postgres::PgListener>),
    Sqlite(tokio::sync::watch::Receiver<u64>),
}

impl OutboxListener {
    /// Waits for the next wake-up. Wake-ups may be spurious or coalesced; the
    /// caller reads the outbox either way.
    pub async fn recv(&mut self) -> Result<()> {
        match &mut self.0 {
            Listener::Postgres(l) => {
                l.recv().await?;
                Ok(())
            }
            Listener::Sqlite(rx) => rx
                .changed()
                .await
                .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_from_urls() {
        assert_eq!(redact_url("mysql://u:secret@host/db"), "mysql://…@host/db");
        assert_eq!(redact_url("nonsense"), "nonsense");
    }

    #[tokio::test]
    async fn unknown_schemes_are_refused() {
        let err = Store::connect("mysql://u:pw@h/db", 1, false).await.err();
        assert!(matches!(err, Some(StoreError::UnsupportedUrl(u)) if !u.contains("pw")));
    }
}
