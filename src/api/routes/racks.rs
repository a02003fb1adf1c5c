//! Racks and slots as last reported, and the dead letters.

use axum::Json;
use axum::extract::State;

use crate::api::AppState;
use crate::api::error::{ApiError, ApiQuery, IdPath, Paging};
use crate::domain::RackId;
use crate::store::StoreError;
use crate::store::racks::{DeadLetterView, RackView};

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
    params(("rack_id" = String, Path), ("slot" = u16, Path)),
    responses((status = 202, description = "release sent to the worker"),
              (status = 404, body = crate::api::error::ErrorBody)))]
pub async fn release_slot(
    State(state): State<AppState>,
    IdPath((rack_id, slot)): IdPath<(String, u16)>,
) -> Result<axum::http::StatusCode, ApiError> {
    let rack =
        RackId::parse(&rack_id).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))?;
    match state.store.release_slot(rack.as_str(), slot, "api").await {
        Ok(()) => Ok(axum::http::StatusCode::ACCEPTED),
        Err(StoreError::NotFound) => {
            Err(ApiError::not_found("unknown_slot", "no such rack or slot"))
        }
        Err(e) => Err(e.into()),
    }
}
