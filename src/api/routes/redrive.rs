//! Dead-letter redrive: a result or slot event that no consumer could apply
//! is applied once more, as the ledger would, after its fault is fixed. A
//! dead-lettered job is not sent again: the ledger already failed it and put
//! its card back in stock, so initializing the card again is the way.

use axum::Json;
use axum::extract::State;
use cardfleet_schemas::codes::Code;
use cardfleet_schemas::{self as wire, EventMessage, ResultMessage};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::AppState;
use crate::api::error::{ApiError, IdPath};
use crate::store::StoreError;
use crate::store::tokens::Caller;

#[derive(Debug, Serialize, ToSchema)]
pub struct Redriven {
    pub id: i64,
    pub source: String,
    pub redriven_by: String,
}

fn not_redrivable(message: impl Into<String>) -> ApiError {
    ApiError::new(Code::NotRedrivable, message)
}

/// The message, or why it still cannot be read (category only, never content).
fn decode<T: serde::de::DeserializeOwned>(
    payload: &str,
    meta: fn(&T) -> &wire::Meta,
) -> Result<T, ApiError> {
    let message: T = serde_json::from_str(payload).map_err(|e| {
        not_redrivable(format!(
            "the message still cannot be read ({:?} at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    let version = meta(&message).schema_version;
    if version != wire::SCHEMA_VERSION {
        return Err(not_redrivable(format!(
            "the message has schema_version {version}, this server reads {}",
            wire::SCHEMA_VERSION
        )));
    }
    Ok(message)
}

/// Sends a dead letter again, once (role operator): a result or slot event
/// is applied now, exactly as the ledger applies one (a result applied
/// before changes nothing). Audited as `dead_letter.redriven`.
#[utoipa::path(post, path = "/v1/dead-letters/{id}/redrive", tag = "racks",
    params(("id" = i64, Path)),
    responses((status = 200, body = Redriven),
              (status = 404, description = "unknown_dead_letter", body = crate::api::error::ErrorBody),
              (status = 409, description = "already_redriven, or not_redrivable (a job, a message that still cannot be read, or one without its rack's valid signature)", body = crate::api::error::ErrorBody)))]
pub async fn redrive(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath<i64>,
) -> Result<Json<Redriven>, ApiError> {
    let unknown = |e: StoreError| match e {
        StoreError::NotFound => {
            ApiError::new(Code::UnknownDeadLetter, "no dead letter with this id")
        }
        e => e.into(),
    };
    let letter = state.store.dead_letter(id).await.map_err(unknown)?;
    if letter.redriven_at.is_some() {
        return Err(ApiError::from(crate::store::redrive::already_redriven()));
    }
    // A message no enrolled rack vouched for is never applied, whoever asks.
    if [
        crate::rack_identity::UNAUTHENTICATED_RACK,
        crate::rack_identity::RACK_MISMATCH,
    ]
    .contains(&letter.reason.as_str())
    {
        return Err(not_redrivable(
            "the message carries no valid signature of the rack it speaks for; \
             it is never applied (the rack's own worker sends it again)",
        ));
    }
    match letter.source.as_str() {
        wire::RESULTS_QUEUE => {
            let message: ResultMessage = decode(&letter.payload, ResultMessage::meta)?;
            state.store.apply_results(&[message], &caller.name).await?;
        }
        wire::SLOT_EVENTS_QUEUE => {
            let message: EventMessage = decode(&letter.payload, EventMessage::meta)?;
            state.store.apply_events(&[message], &caller.name).await?;
        }
        _ => {
            return Err(not_redrivable(
                "only results and slot events are sent again; a dead-lettered job already \
                 failed and its card is back in stock: initialize the card again",
            ));
        }
    }
    state
        .store
        .mark_redriven(id, &letter.source, &caller.name)
        .await
        .map_err(unknown)?;
    tracing::info!(dead_letter = id, source = %letter.source, actor = %caller.name, "dead letter redriven");
    Ok(Json(Redriven {
        id,
        source: letter.source,
        redriven_by: caller.name,
    }))
}
