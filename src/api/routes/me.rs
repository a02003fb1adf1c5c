//! Who the caller is: the token's name and roles, so a client (the console)
//! shows only what those roles may do.

use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::tokens::{Caller, Role};

#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// The token's name, the actor of the audit rows its requests write.
    pub name: String,
    pub roles: Vec<Role>,
}

/// The calling token's name and roles (any role but worker).
#[utoipa::path(get, path = "/v1/me", tag = "tokens", operation_id = "me",
    responses((status = 200, body = Me), (status = 401, body = crate::api::error::ErrorBody)))]
pub async fn me(caller: Caller) -> Json<Me> {
    Json(Me {
        name: caller.name,
        roles: caller.roles,
    })
}
