//! Enablement of the "initialize temporary card" process (disabled by default).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::AppState;
use crate::api::error::{ApiError, ApiJson};
use crate::store::INITIALIZE_PROCESS;
use crate::store::tokens::Caller;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessSetting {
    pub enabled: bool,
}

#[utoipa::path(get, path = "/v1/processes/initialize-temporary-card", tag = "processes",
    responses((status = 200, body = ProcessSetting)))]
pub async fn get_process(State(state): State<AppState>) -> Result<Json<ProcessSetting>, ApiError> {
    let enabled = state.store.process_enabled(INITIALIZE_PROCESS).await?;
    Ok(Json(ProcessSetting { enabled }))
}

#[utoipa::path(put, path = "/v1/processes/initialize-temporary-card", tag = "processes",
    request_body = ProcessSetting,
    responses((status = 200, body = ProcessSetting), (status = 400, body = crate::api::error::ErrorBody)))]
pub async fn put_process(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ProcessSetting>,
) -> Result<Json<ProcessSetting>, ApiError> {
    state
        .store
        .set_process_enabled(INITIALIZE_PROCESS, body.enabled, &caller.name)
        .await?;
    tracing::info!(enabled = body.enabled, "initialize process setting changed");
    Ok(Json(body))
}
