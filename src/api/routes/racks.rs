//! Racks and slots as last reported, and the dead letters.

use axum::Json;
use axum::extract::State;

use crate::api::AppState;
use crate::api::error::{ApiError, ApiQuery, Paging};
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
