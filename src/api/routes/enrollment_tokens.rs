//! Rack enrollment tokens made by an administrator through the API (as
//! `cardfleet racks enroll-token` does on the database).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cardfleet_schemas::codes::Code;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::AppState;
use crate::api::error::{ApiError, ApiJson, IdPath};
use crate::domain::RackId;
use crate::store::tokens::{Caller, NewToken, Role};

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentTokenRequest {
    /// Hours until the token expires, 1 to 720 (default 24).
    #[serde(default, deserialize_with = "crate::api::integers::optional_u32")]
    #[schema(minimum = 1, maximum = 720)]
    pub ttl_hours: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollmentToken {
    pub name: String,
    pub rack_id: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// The single-use bearer secret for the rack's worker: shown this once.
    pub token: String,
}

/// Creates a single-use enrollment token for a rack's worker (role admin).
#[utoipa::path(post, path = "/v1/racks/{rack_id}/enrollment-tokens", tag = "racks", operation_id = "create_enrollment_token",
    params(("rack_id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$")), request_body = EnrollmentTokenRequest,
    responses((status = 201, body = EnrollmentToken), (status = 400, body = crate::api::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(rack_id): IdPath<String>,
    ApiJson(body): ApiJson<serde_json::Map<String, serde_json::Value>>,
) -> Result<(StatusCode, Json<EnrollmentToken>), ApiError> {
    // An object only: serde would also take `[]` for a struct of optional fields.
    let body: EnrollmentTokenRequest = serde_json::from_value(serde_json::Value::Object(body))
        .map_err(|e| ApiError::new(Code::InvalidRequest, e.to_string()))?;
    let rack =
        RackId::parse(&rack_id).map_err(|e| ApiError::new(Code::InvalidId, e.to_string()))?;
    let ttl = body.ttl_hours.unwrap_or(24);
    if !(1..=720).contains(&ttl) {
        return Err(ApiError::new(
            Code::InvalidRequest,
            "ttl_hours must be between 1 and 720",
        ));
    }
    let expires_at = chrono::Utc::now() + chrono::Duration::hours(i64::from(ttl));
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
    let secret = state.store.create_token(&new, &caller.name).await?;
    tracing::info!(rack.id = %rack.as_str(), token = %new.name, actor = %caller.name, "enrollment token created");
    Ok((
        StatusCode::CREATED,
        Json(EnrollmentToken {
            name: new.name,
            rack_id: rack.as_str().to_owned(),
            expires_at,
            token: secret.expose().to_owned(),
        }),
    ))
}
