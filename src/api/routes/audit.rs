//! The audit trail, for auditors.

use axum::Json;
use axum::extract::State;
use cardfleet_schemas::codes::Code;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::api::AppState;
use crate::api::error::{ApiError, ApiQuery};
use crate::store::audit::{AuditEntry, AuditFilter};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub batch_id: Option<Uuid>,
    pub card_id: Option<Uuid>,
    /// e.g. `credential.puk_read`, `job.succeeded`, `token.created`.
    #[param(max_length = 64, pattern = "^[^\\u0000]*$")]
    pub action: Option<String>,
    /// Rows after this id (for paging: the last id seen).
    pub after: Option<i64>,
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// Audit rows oldest first (role auditor). Rows never hold a secret.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>), (status = 400, body = crate::api::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            Code::InvalidQuery,
            "limit must be between 1 and 1000",
        ));
    }
    if q.action.as_ref().is_some_and(|a| a.chars().count() > 64) {
        return Err(ApiError::new(
            Code::InvalidQuery,
            "action must be at most 64 characters",
        ));
    }
    let filter = AuditFilter {
        batch_id: q.batch_id,
        card_id: q.card_id,
        action: q.action,
        after: q.after.unwrap_or(0).max(0),
        limit,
    };
    Ok(Json(state.store.list_audit(&filter).await?))
}
