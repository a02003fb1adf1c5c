//! Liveness, readiness, the OpenAPI document and the 404 fallback.

use cardfleet_schemas::codes::Code;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::ready::Readiness;

pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Ready when the database answers and the broker accepts a connection;
/// the answer is kept for a few seconds (see [`crate::api::ready`]).
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let readiness = state
        .ready
        .get(|| async {
            let database = matches!(
                tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await,
                Ok(Ok(()))
            );
            let broker = match &state.bus {
                None => true,
                Some(bus) => matches!(
                    tokio::time::timeout(Duration::from_secs(2), bus.ping()).await,
                    Ok(Ok(()))
                ),
            };
            Readiness { database, broker }
        })
        .await;
    let status = if readiness.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "database": readiness.database, "broker": readiness.broker })),
    )
}

pub async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    Json(crate::api::openapi::document(state.max_batch_cards))
}

pub async fn not_found() -> ApiError {
    ApiError::new(Code::NotFound, "no such route")
}
