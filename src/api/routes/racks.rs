//! Racks and slots as last reported, and the dead letters.

use axum::Json;
use axum::extract::State;
use cardfleet_schemas::codes::Code;

use crate::api::AppState;
use crate::api::error::{ApiError, ApiQuery, IdPath, Paging};
use crate::domain::RackId;
use crate::store::StoreError;
use crate::store::racks::{DeadLetterView, RackView};
use crate::store::tokens::Caller;

#[utoipa::path(get, path = "/v1/racks", tag = "racks", operation_id = "list_racks", responses((status = 200, body = Vec<RackView>)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<RackView>>, ApiError> {
    Ok(Json(state.store.list_racks().await?))
}

#[utoipa::path(get, path = "/v1/dead-letters", tag = "racks", params(Paging),
    responses((status = 200, body = Vec<DeadLetterView>), (status = 400, body = crate::api::error::ErrorBody)))]
pub async fn dead_letters(
    State(state): State<AppState>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> Result<Json<Vec<DeadLetterView>>, ApiError> {
    let (limit, offset) = paging.resolve()?;
    Ok(Json(state.store.list_dead_letters(limit, offset).await?))
}

/// Puts a quarantined slot back into service; the rack's worker is told
/// through the control exchange.
#[utoipa::path(post, path = "/v1/racks/{rack_id}/slots/{slot}/release", tag = "racks",
    params(("rack_id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$"),
           ("slot" = u16, Path, minimum = 0, maximum = 65535)),
    responses((status = 202, description = "release sent to the worker"),
              (status = 404, body = crate::api::error::ErrorBody)))]
pub async fn release_slot(
    State(state): State<AppState>,
    caller: Caller,
    IdPath((rack_id, slot)): IdPath<(String, u16)>,
) -> Result<axum::http::StatusCode, ApiError> {
    let rack =
        RackId::parse(&rack_id).map_err(|e| ApiError::new(Code::InvalidId, e.to_string()))?;
    match state
        .store
        .release_slot(rack.as_str(), slot, &caller.name)
        .await
    {
        Ok(()) => Ok(axum::http::StatusCode::ACCEPTED),
        Err(StoreError::NotFound) => Err(ApiError::new(Code::UnknownSlot, "no such rack or slot")),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentRequest {
    /// Standard base64 of the rack's 32-byte X25519 public key.
    #[schema(pattern = "^[A-Za-z0-9+/]{43}=$")]
    pub public_key: String,
    /// Standard base64 of the rack's 32-byte Ed25519 public key, which
    /// verifies the signatures on the rack's results and events.
    #[schema(pattern = "^[A-Za-z0-9+/]{43}=$")]
    pub signing_key: String,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Enrollment {
    pub rack_id: String,
    pub enrolled_at: chrono::DateTime<chrono::Utc>,
}

/// The 32 bytes of a standard-base64 X25519 public key; the all-zero key is refused.
fn parse_public_key(text: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    let key = <[u8; 32]>::try_from(bytes.as_slice()).ok()?;
    (key != [0u8; 32]).then_some(key)
}

/// Enrolls a rack's public keys (role worker, with the single-use enrollment
/// token `cardfleet racks enroll-token RACK_ID` made for this rack). The
/// token is consumed first; a used, revoked or expired token is refused
/// with 401, a token for another rack with 403.
#[utoipa::path(post, path = "/v1/racks/{rack_id}/enrollment", tag = "racks",
    params(("rack_id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$")), request_body = EnrollmentRequest,
    responses((status = 201, body = Enrollment),
              (status = 401, description = "unauthenticated: unknown, used, revoked or expired token", body = crate::api::error::ErrorBody),
              (status = 403, description = "forbidden: not an enrollment token for this rack", body = crate::api::error::ErrorBody),
              (status = 422, description = "invalid_public_key or invalid_signing_key", body = crate::api::error::ErrorBody)))]
pub async fn enroll(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(rack_id): IdPath<String>,
    crate::api::error::ApiJson(body): crate::api::error::ApiJson<EnrollmentRequest>,
) -> Result<(axum::http::StatusCode, Json<Enrollment>), ApiError> {
    let rack =
        RackId::parse(&rack_id).map_err(|e| ApiError::new(Code::InvalidId, e.to_string()))?;
    if caller.rack_id.as_deref() != Some(rack.as_str()) || !caller.single_use {
        return Err(ApiError::forbidden(
            "this token is not an enrollment token for this rack",
        ));
    }
    let key = parse_public_key(&body.public_key).ok_or_else(|| {
        ApiError::new(
            Code::InvalidPublicKey,
            "public_key must be standard base64 of a 32-byte X25519 public key",
        )
    })?;
    let signing_key = parse_public_key(&body.signing_key)
        .filter(cardfleet_schemas::rack_identity::is_valid_verifying_key)
        .ok_or_else(|| {
            ApiError::new(
                Code::InvalidSigningKey,
                "signing_key must be standard base64 of a 32-byte Ed25519 public key",
            )
        })?;
    // Consume first: a token that enrolled once can never enroll again,
    // even if storing the key fails and must be retried with a new token.
    if !state.store.consume_token(&caller).await? {
        return Err(ApiError::unauthenticated(
            "the token is unknown, revoked, expired or already used",
        ));
    }
    state
        .store
        .enroll_rack(rack.as_str(), &key, &signing_key, &caller.name)
        .await?;
    tracing::info!(rack.id = %rack.as_str(), token = %caller.name, "rack enrolled");
    Ok((
        axum::http::StatusCode::CREATED,
        Json(Enrollment {
            rack_id: rack.as_str().to_owned(),
            enrolled_at: chrono::Utc::now(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_are_32_bytes_of_standard_base64_and_not_zero() {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        assert_eq!(parse_public_key(&b64(&[7u8; 32])), Some([7u8; 32]));
        assert_eq!(parse_public_key(&b64(&[7u8; 31])), None);
        assert_eq!(parse_public_key(&b64(&[0u8; 32])), None);
        assert_eq!(parse_public_key("not base64!"), None);
    }
}
