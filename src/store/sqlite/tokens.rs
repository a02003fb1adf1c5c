//! API tokens on SQLite.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::{RowExt, SqliteStore, now};
use crate::store::tokens::{Caller, TokenRow, TokenView, parse_roles};
use crate::store::{AuditRows, Result, StoreError};

/// A time as the schema stores it (see the migrations), so text order is time order.
pub(super) fn stored_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

impl SqliteStore {
    pub(in crate::store) async fn insert_token(
        &self,
        row: TokenRow,
        audit: AuditRows,
        actor: &str,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let inserted = sqlx::query(
            "INSERT INTO api_tokens (id, name, roles, token_hash, rack_id, single_use, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING",
        )
        .bind(row.id.hyphenated())
        .bind(&row.name)
        .bind(&row.roles)
        .bind(&row.hash)
        .bind(&row.rack_id)
        .bind(row.single_use)
        .bind(row.expires_at.map(stored_time))
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict {
                code: "token_exists",
                message: format!("a token named '{}' exists already", row.name),
            });
        }
        audit.insert_sqlite(&mut tx, actor).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(in crate::store) async fn list_tokens(&self) -> Result<Vec<TokenView>> {
        let rows = sqlx::query(
            "SELECT id, name, roles, rack_id, single_use, created_at, expires_at, revoked_at, used_at
             FROM api_tokens ORDER BY created_at, name",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(TokenView {
                    id: r.uuid("id")?,
                    name: r.try_get("name")?,
                    roles: parse_roles(r.try_get("roles")?),
                    rack_id: r.try_get("rack_id")?,
                    single_use: r.try_get("single_use")?,
                    created_at: r.try_get("created_at")?,
                    expires_at: r.try_get("expires_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                    used_at: r.try_get("used_at")?,
                })
            })
            .collect()
    }

    pub(in crate::store) async fn revoke_token(
        &self,
        name: &str,
        audit: AuditRows,
        actor: &str,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let revoked: Option<Option<String>> =
            sqlx::query_scalar("SELECT revoked_at FROM api_tokens WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        match revoked {
            None => return Err(StoreError::NotFound),
            Some(Some(_)) => {}
            Some(None) => {
                sqlx::query(concat!(
                    "UPDATE api_tokens SET revoked_at = ",
                    now!(),
                    " WHERE name = $1"
                ))
                .bind(name)
                .execute(&mut *tx)
                .await?;
                audit.insert_sqlite(&mut tx, actor).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub(in crate::store) async fn has_tokens(&self) -> Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_tokens)")
                .fetch_one(&self.reader)
                .await?,
        )
    }

    /// The token's caller and whether it has expired.
    pub(in crate::store) async fn authenticate(
        &self,
        hash: &str,
    ) -> Result<Option<(Caller, bool)>> {
        let row = sqlx::query(concat!(
            "SELECT id, name, roles, rack_id, single_use,
                    (expires_at IS NOT NULL AND expires_at <= ",
            now!(),
            ") AS expired
             FROM api_tokens
             WHERE token_hash = $1 AND revoked_at IS NULL
               AND NOT (single_use AND used_at IS NOT NULL)"
        ))
        .bind(hash)
        .fetch_optional(&self.reader)
        .await?;
        row.map(|r| {
            Ok((
                Caller {
                    token_id: r.uuid("id")?,
                    name: r.try_get("name")?,
                    roles: parse_roles(r.try_get("roles")?),
                    rack_id: r.try_get("rack_id")?,
                    single_use: r.try_get("single_use")?,
                },
                r.try_get::<bool, _>("expired")?,
            ))
        })
        .transpose()
    }

    pub(in crate::store) async fn consume_token(
        &self,
        token_id: Uuid,
        audit: AuditRows,
        actor: &str,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let used = sqlx::query(concat!(
            "UPDATE api_tokens SET used_at = ",
            now!(),
            " WHERE id = $1 AND used_at IS NULL AND revoked_at IS NULL
               AND (expires_at IS NULL OR expires_at > ",
            now!(),
            ")"
        ))
        .bind(token_id.hyphenated())
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            return Ok(false);
        }
        audit.insert_sqlite(&mut tx, actor).await?;
        tx.commit().await?;
        Ok(true)
    }
}
