//! API bearer tokens: their roles, creation (the secret is shown once and
//! only its SHA-256 hash is stored), listing, revocation and the lookup that
//! authenticates a request. Enrollment tokens are single-use, bound to one
//! rack and expire.

use std::fmt;

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::{AuditRows, Result, Store, StoreError, on_backend};

/// What a token may do. A token may hold several roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Process enablement, tokens, reopening PIN mailers.
    Admin,
    /// Card stock, initialize requests, racks, dead letters.
    Operator,
    /// PUK escrow and PIN mailers.
    Officer,
    /// The audit trail.
    Auditor,
    /// Rack enrollment and nothing else.
    Worker,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Operator,
        Role::Officer,
        Role::Auditor,
        Role::Worker,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Officer => "officer",
            Role::Auditor => "auditor",
            Role::Worker => "worker",
        }
    }

    pub fn parse(s: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s.trim())
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Role::parse(s)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown role '{0}' (admin, operator, officer, auditor or worker)")]
pub struct UnknownRole(pub String);

/// Roles as stored: sorted, unique, comma-separated.
fn roles_text(roles: &[Role]) -> String {
    let mut roles = roles.to_vec();
    roles.sort();
    roles.dedup();
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Stored roles; an unknown name (written by a newer version) grants nothing.
pub(super) fn parse_roles(text: &str) -> Vec<Role> {
    text.split(',')
        .filter_map(|r| Role::parse(r).ok())
        .collect()
}

/// Who made a request: the token that authenticated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub token_id: Uuid,
    /// The token's name; the actor of the audit rows the request writes.
    pub name: String,
    pub roles: Vec<Role>,
    /// The rack an enrollment token is bound to.
    pub rack_id: Option<String>,
    pub single_use: bool,
}

impl Caller {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// A token's secret: shown once when created, never stored, never printed
/// by `Debug`, zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(Zeroizing<String>);

impl TokenSecret {
    /// `cf_` and 32 random bytes in hex.
    fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        TokenSecret(Zeroizing::new(format!(
            "cf_{}",
            hex::encode(bytes.as_slice())
        )))
    }

    pub fn from_presented(secret: &str) -> Self {
        TokenSecret(Zeroizing::new(secret.to_owned()))
    }

    /// The secret itself, to hand to the person who created the token.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What is stored and looked up: hex SHA-256 of the secret. Looking a
    /// 256-bit secret up by its hash leaks nothing through timing.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(<redacted>)")
    }
}

/// A token to create.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub roles: Vec<Role>,
    pub rack_id: Option<String>,
    pub single_use: bool,
    pub expires_at: Option<DateTime<Utc>>,
}

/// What the new token's row holds, ready for a backend to insert.
#[derive(Debug)]
pub(super) struct TokenRow {
    pub id: Uuid,
    pub name: String,
    pub roles: String,
    pub hash: String,
    pub rack_id: Option<String>,
    pub single_use: bool,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A token as listed: never its secret or hash.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenView {
    pub id: Uuid,
    pub name: String,
    pub roles: Vec<Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rack_id: Option<String>,
    pub single_use: bool,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_at: Option<DateTime<Utc>>,
}

/// What a presented secret turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    Valid(Caller),
    /// A token that exists and is not revoked, but whose expiry has passed.
    Expired,
    /// Unknown, revoked, or a single-use token already used.
    Refused,
}

/// Names the services write as audit actors: a token may not take them, so
/// an audit row by `ledger` is always the ledger's. Names starting with
/// `cli:` are the command line's (`cli:<user>`).
pub const RESERVED_TOKEN_NAMES: &[&str] = &[
    "ledger",
    "dispatcher",
    "standalone",
    "demo",
    "system",
    "cli",
];

/// Whether `name` is one the services use as an audit actor.
pub fn reserved_token_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    RESERVED_TOKEN_NAMES.contains(&lower.as_str()) || lower.starts_with("cli:")
}

/// Token names: what audit rows name as actor, so kept plain.
pub fn valid_token_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

impl Store {
    /// Creates a token and returns its secret, which is not kept anywhere.
    /// Audited as `token.created` (name, roles, rack; never the secret).
    pub async fn create_token(&self, new: &NewToken, actor: &str) -> Result<TokenSecret> {
        if !valid_token_name(&new.name) {
            return Err(StoreError::Invalid(
                "token name must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.', '@'".into(),
            ));
        }
        if reserved_token_name(&new.name) {
            return Err(StoreError::Conflict {
                code: "reserved_name",
                message: format!(
                    "'{}' is a name the services write as audit actor; choose another",
                    new.name
                ),
            });
        }
        if new.roles.is_empty() {
            return Err(StoreError::Invalid(
                "a token needs at least one role".into(),
            ));
        }
        let secret = TokenSecret::generate();
        let row = TokenRow {
            id: Uuid::now_v7(),
            name: new.name.clone(),
            roles: roles_text(&new.roles),
            hash: secret.hash(),
            rack_id: new.rack_id.clone(),
            single_use: new.single_use,
            expires_at: new.expires_at,
        };
        let mut audit = AuditRows::default();
        audit.push_admin(
            "token.created",
            serde_json::json!({
                "token": row.name,
                "roles": row.roles,
                "rack_id": row.rack_id,
                "single_use": row.single_use,
                "expires_at": row.expires_at,
            }),
        );
        on_backend!(self, s => s.insert_token(row, audit, actor).await)?;
        Ok(secret)
    }

    /// Every token, oldest first, without secrets or hashes.
    pub async fn list_tokens(&self) -> Result<Vec<TokenView>> {
        on_backend!(self, s => s.list_tokens().await)
    }

    /// Revokes the token called `name` (already revoked: nothing changes).
    /// `NotFound` when there is none. Audited as `token.revoked`.
    pub async fn revoke_token(&self, name: &str, actor: &str) -> Result<()> {
        let mut audit = AuditRows::default();
        audit.push_admin("token.revoked", serde_json::json!({ "token": name }));
        on_backend!(self, s => s.revoke_token(name, audit, actor).await)
    }

    /// Whether any token exists, revoked or not (standalone creates the
    /// first admin token when none does).
    pub async fn has_tokens(&self) -> Result<bool> {
        on_backend!(self, s => s.has_tokens().await)
    }

    /// The caller a presented secret belongs to, if the token exists, is not
    /// revoked, has not expired and, when single-use, was not used yet.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Caller>> {
        Ok(match self.authenticate_checked(secret).await? {
            Authentication::Valid(caller) => Some(caller),
            Authentication::Expired | Authentication::Refused => None,
        })
    }

    /// As [`Store::authenticate`], telling an expired token apart (its
    /// holder may learn that: it presented the secret).
    pub async fn authenticate_checked(&self, secret: &str) -> Result<Authentication> {
        let hash = TokenSecret::from_presented(secret).hash();
        let found = on_backend!(self, s => s.authenticate(&hash).await)?;
        Ok(match found {
            Some((caller, false)) => Authentication::Valid(caller),
            Some((_, true)) => Authentication::Expired,
            None => Authentication::Refused,
        })
    }

    /// Marks a single-use token used, atomically: `false` when it was used,
    /// revoked or expired in the meantime. Audited as `token.used`.
    pub async fn consume_token(&self, caller: &Caller) -> Result<bool> {
        let mut audit = AuditRows::default();
        audit.push_admin(
            "token.used",
            serde_json::json!({ "token": caller.name, "rack_id": caller.rack_id }),
        );
        on_backend!(self, s => s.consume_token(caller.token_id, audit, &caller.name).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_sorted_and_unknown_ones_grant_nothing() {
        let text = roles_text(&[Role::Officer, Role::Admin, Role::Officer]);
        assert_eq!(text, "admin,officer");
        assert_eq!(parse_roles(&text), vec![Role::Admin, Role::Officer]);
        assert_eq!(parse_roles("root,auditor"), vec![Role::Auditor]);
        assert!(Role::parse("root").is_err());
    }

    #[test]
    fn secrets_are_random_hashed_and_never_printed() {
        let a = TokenSecret::generate();
        let b = TokenSecret::generate();
        assert_ne!(a, b);
        assert!(a.expose().starts_with("cf_") && a.expose().len() == 67);
        assert_eq!(a.hash(), TokenSecret::from_presented(a.expose()).hash());
        assert_eq!(a.hash().len(), 64);
        assert!(!format!("{a:?}").contains(&a.expose()[3..]));
    }

    #[test]
    fn the_services_audit_names_are_reserved_in_any_case() {
        for name in ["ledger", "Dispatcher", "STANDALONE", "demo", "cli"] {
            assert!(reserved_token_name(name), "{name}");
        }
        assert!(!reserved_token_name("ledger-reader"));
        assert!(!reserved_token_name("olga"));
    }

    #[test]
    fn token_names_are_plain() {
        assert!(valid_token_name("alice@bureau"));
        assert!(!valid_token_name(""));
        assert!(!valid_token_name("a b"));
        assert!(!valid_token_name(&"x".repeat(65)));
    }
}

super::dialect::for_each_dialect! {
    impl Db {
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
            .bind(d::id(row.id))
            .bind(&row.name)
            .bind(&row.roles)
            .bind(&row.hash)
            .bind(&row.rack_id)
            .bind(row.single_use)
            .bind(row.expires_at.map(d::time))
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                return Err(StoreError::Conflict {
                    code: "token_exists",
                    message: format!("a token named '{}' exists already", row.name),
                });
            }
            d::insert_audit(&mut tx, audit, actor).await?;
            tx.commit().await?;
            Ok(())
        }

        pub(in crate::store) async fn list_tokens(&self) -> Result<Vec<TokenView>> {
            let rows = sqlx::query(
                "SELECT id, name, roles, rack_id, single_use, created_at, expires_at, revoked_at, used_at
                 FROM api_tokens ORDER BY created_at, name",
            )
            .fetch_all(self.reader())
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
            let revoked: Option<bool> = sqlx::query_scalar(concat!(
                "SELECT revoked_at IS NOT NULL FROM api_tokens WHERE name = $1",
                d::for_update!()
            ))
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
            match revoked {
                None => return Err(StoreError::NotFound),
                Some(true) => {}
                Some(false) => {
                    sqlx::query(concat!(
                        "UPDATE api_tokens SET revoked_at = ",
                        d::now!(),
                        " WHERE name = $1"
                    ))
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                    d::insert_audit(&mut tx, audit, actor).await?;
                }
            }
            tx.commit().await?;
            Ok(())
        }

        pub(in crate::store) async fn has_tokens(&self) -> Result<bool> {
            Ok(
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_tokens)")
                    .fetch_one(self.reader())
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
                d::now!(),
                ") AS expired
                 FROM api_tokens
                 WHERE token_hash = $1 AND revoked_at IS NULL
                   AND NOT (single_use AND used_at IS NOT NULL)"
            ))
            .bind(hash)
            .fetch_optional(self.reader())
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
                d::now!(),
                " WHERE id = $1 AND used_at IS NULL AND revoked_at IS NULL
                   AND (expires_at IS NULL OR expires_at > ",
                d::now!(),
                ")"
            ))
            .bind(d::id(token_id))
            .execute(&mut *tx)
            .await?;
            if used.rows_affected() != 1 {
                return Ok(false);
            }
            d::insert_audit(&mut tx, audit, actor).await?;
            tx.commit().await?;
            Ok(true)
        }
    }
}
