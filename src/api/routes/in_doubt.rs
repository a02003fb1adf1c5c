//! Running an in-doubt card's job again (see `store::in_doubt`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cardfleet_schemas::codes::Code;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::AppState;
use crate::api::error::{ApiError, IdPath};
use crate::store::StoreError;
use crate::store::tokens::Caller;

/// The job that goes out again, with the credentials it had.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rerun {
    pub job_id: Uuid,
}

#[utoipa::path(post, path = "/v1/cards/{card_id}/rerun", tag = "cards",
    params(("card_id" = Uuid, Path)),
    responses((status = 202, body = Rerun), (status = 404, body = crate::api::error::ErrorBody)))]
pub async fn rerun(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(card_id): IdPath<Uuid>,
) -> Result<(StatusCode, Json<Rerun>), ApiError> {
    match state.store.rerun_in_doubt(card_id, &caller.name).await {
        Ok(job_id) => {
            tracing::info!(job.id = %job_id, "in-doubt card's job runs again");
            Ok((StatusCode::ACCEPTED, Json(Rerun { job_id })))
        }
        Err(StoreError::NotFound) => Err(ApiError::new(
            Code::NotInDoubt,
            "no card with this id is in_doubt",
        )),
        Err(e) => Err(e.into()),
    }
}
