//! API tokens, for admins: list, create (the secret is answered once),
//! revoke. `cardfleet tokens` does the same directly on the database.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cardfleet_schemas::codes::Code;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::AppState;
use crate::api::error::{ApiError, ApiJson, IdPath};
use crate::store::StoreError;
use crate::store::tokens::{Caller, NewToken, Role, TokenView};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// 1 to 64 characters of A-Z, a-z, 0-9, `-`, `_`, `.`, `@`.
    #[schema(pattern = "^[A-Za-z0-9_.@-]{1,64}$")]
    pub name: String,
    /// One or more of admin, operator, officer, auditor (enrollment tokens
    /// for workers come from `cardfleet racks enroll-token`).
    #[schema(min_items = 1, inline, value_type = Vec<ApiRole>)]
    pub roles: Vec<String>,
    /// Days until the token expires, 1 to 3650; default
    /// `tokens.default_ttl_days` (0 there: never).
    #[serde(default, deserialize_with = "crate::api::integers::optional_u32")]
    #[schema(minimum = 1, maximum = 3650)]
    pub ttl_days: Option<u32>,
}

/// The roles an API token may be created with (the request's schema only).
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
enum ApiRole {
    Admin,
    Operator,
    Officer,
    Auditor,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    pub name: String,
    pub roles: Vec<Role>,
    /// The bearer secret: shown this once, stored only as a hash.
    pub token: String,
    /// When the token stops working; absent: never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", operation_id = "list_tokens",
    responses((status = 200, body = Vec<TokenView>)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<TokenView>>, ApiError> {
    Ok(Json(state.store.list_tokens().await?))
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = CreateToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = crate::api::error::ErrorBody),
              (status = 409, description = "token_exists, or reserved_name: a name the services use as audit actor", body = crate::api::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<Response, ApiError> {
    let roles = body
        .roles
        .iter()
        .map(|r| Role::parse(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::new(Code::InvalidRequest, e.to_string()))?;
    if roles.contains(&Role::Worker) {
        return Err(ApiError::new(
            Code::InvalidRequest,
            "worker tokens are single-use enrollment tokens: use `cardfleet racks enroll-token`",
        ));
    }
    if body.ttl_days.is_some_and(|d| !(1..=3650).contains(&d)) {
        return Err(ApiError::new(
            Code::InvalidRequest,
            "ttl_days must be between 1 and 3650",
        ));
    }
    let new = NewToken {
        name: body.name,
        roles,
        rack_id: None,
        single_use: false,
        expires_at: state.tokens.expiry(body.ttl_days),
    };
    let secret = state.store.create_token(&new, &caller.name).await?;
    tracing::info!(token = %new.name, actor = %caller.name, "API token created");
    let mut response = (
        StatusCode::CREATED,
        Json(CreatedToken {
            name: new.name,
            roles: new.roles,
            token: secret.expose().to_owned(),
            expires_at: new.expires_at,
        }),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[utoipa::path(post, path = "/v1/tokens/{name}/revoke", tag = "tokens",
    params(("name" = String, Path, pattern = "^[A-Za-z0-9_.@-]{1,64}$")),
    responses((status = 204, description = "revoked (or already revoked)"),
              (status = 404, body = crate::api::error::ErrorBody),
              (status = 409, description = "own_token: the token of the request itself", body = crate::api::error::ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(name): IdPath<String>,
) -> Result<StatusCode, ApiError> {
    // Revoking the token the request came with would lock its holder out
    // mid-session; another admin (or the CLI) revokes it.
    if name == caller.name {
        return Err(ApiError::new(
            Code::OwnToken,
            "a token cannot revoke itself; revoke it with another admin token or the CLI",
        ));
    }
    match state.store.revoke_token(&name, &caller.name).await {
        Ok(()) => {
            tracing::info!(token = %name, actor = %caller.name, "API token revoked");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(StoreError::NotFound) => {
            Err(ApiError::new(Code::UnknownToken, "no token with this name"))
        }
        Err(e) => Err(e.into()),
    }
}
