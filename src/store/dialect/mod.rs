//! The dialect layer: what really differs between PostgreSQL and SQLite,
//! and the macro that compiles each store transaction, written once, for
//! both.
//!
//! Why this and not sqlx's own abstractions: sqlx's `Any` driver maps only
//! the types every database shares (integers, floats, text, bytes), and this
//! schema stores UUIDs (`uuid` vs hyphenated TEXT), times (`timestamptz` vs
//! ISO 8601 TEXT), JSON (`jsonb` vs TEXT) and binds bulk input as arrays
//! (`UNNEST`) or as one JSON array (`json_each`); going through `Any` would
//! mean converting every value by hand and losing PostgreSQL's arrays. Code
//! generic over `sqlx::Database` would need a bound for every bound type on
//! every function. So a transaction is written once as ordinary code inside
//! [`for_each_dialect!`], which compiles it twice, each time against the
//! concrete driver with `d` naming this module's [`postgres`] or [`sqlite`]:
//! both take `$N` placeholders, the SQL differences are `d::now!()`,
//! `d::for_update!()` and the like (string literals, so every statement
//! stays `&'static str`), values go through `d::id(..)`, rows are read
//! through [`RowExt`], and statements that differ as a whole (bulk binding)
//! are functions of the dialect module. `sqlx::migrate!` runs each backend's
//! own migrations folder; `QueryBuilder` is kept for dynamic SQL.

pub mod postgres;
pub mod sqlite;

use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

/// Compiles the items once per dialect, each time in a module of its own
/// where `Db` is the backend's store (`PgStore`, `SqliteStore`), `d` is the
/// dialect module and everything of the enclosing module is in scope. The
/// store types share the methods the items use (`write`, `reader`,
/// `commit_waking`), so an item reads the same on both.
macro_rules! for_each_dialect {
    ($($item:item)*) => {
        mod on_postgres {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::store::dialect::postgres as d;
            #[allow(unused_imports)]
            use $crate::store::dialect::RowExt as _;
            #[allow(unused_imports)]
            use sqlx::Row as _;
            type Db = $crate::store::PgStore;
            $($item)*
        }
        mod on_sqlite {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::store::dialect::sqlite as d;
            #[allow(unused_imports)]
            use $crate::store::dialect::RowExt as _;
            #[allow(unused_imports)]
            use sqlx::Row as _;
            type Db = $crate::store::SqliteStore;
            $($item)*
        }
    };
}
pub(crate) use for_each_dialect;

/// Reading the columns whose encoding differs: UUIDs, nullable UUIDs and
/// JSON documents.
pub(crate) trait RowExt {
    fn uuid(&self, column: &str) -> sqlx::Result<Uuid>;
    fn opt_uuid(&self, column: &str) -> sqlx::Result<Option<Uuid>>;
    fn json(&self, column: &str) -> sqlx::Result<Option<serde_json::Value>>;
}

impl RowExt for PgRow {
    fn uuid(&self, column: &str) -> sqlx::Result<Uuid> {
        self.try_get(column)
    }

    fn opt_uuid(&self, column: &str) -> sqlx::Result<Option<Uuid>> {
        self.try_get(column)
    }

    fn json(&self, column: &str) -> sqlx::Result<Option<serde_json::Value>> {
        self.try_get(column)
    }
}

impl RowExt for SqliteRow {
    fn uuid(&self, column: &str) -> sqlx::Result<Uuid> {
        Ok(self.try_get::<Hyphenated, _>(column)?.into_uuid())
    }

    fn opt_uuid(&self, column: &str) -> sqlx::Result<Option<Uuid>> {
        Ok(self
            .try_get::<Option<Hyphenated>, _>(column)?
            .map(Hyphenated::into_uuid))
    }

    fn json(&self, column: &str) -> sqlx::Result<Option<serde_json::Value>> {
        self.try_get::<Option<String>, _>(column)?
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| sqlx::Error::ColumnDecode {
                index: column.to_owned(),
                source: Box::new(e),
            })
    }
}
