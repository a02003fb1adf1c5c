//! Initialize requests: submit, status, live events, cancel.

use cardfleet_schemas::codes::Code;
use std::convert::Infallible;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::AppState;
use crate::api::error::{ApiError, ApiJson, ApiQuery, IdPath, Paging};
use crate::domain::{CardType, JobState};
use crate::store::StoreError;
use crate::store::initialize::{CancelOutcome, InitializeOutcome, Selection};
use crate::store::racks::BatchStatus;
use crate::store::tokens::Caller;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitializeRequest {
    /// Cards to initialize; a card named twice is handled once.
    pub card_ids: Option<Vec<Uuid>>,
    /// Or: produced cards of a type, up to `limit`.
    pub filter: Option<InitializeFilter>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitializeFilter {
    /// Card type, e.g. `temporary`.
    #[serde(rename = "type")]
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    pub card_type: String,
    /// Must be `produced`: only produced cards can be initialized.
    #[schema(value_type = FilterState)]
    pub state: String,
    /// Most cards to take, 1 to `http.max_batch_cards` (default 100,000;
    /// more is refused with 413).
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "crate::api::integers::integral")]
    pub limit: i64,
}

/// The one state a filter may name (the request's schema only).
#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
enum FilterState {
    Produced,
}

/// An initialize request names its cards in exactly one way (the
/// request's schema; parsed as [`InitializeRequest`]).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum InitializeRequestBody {
    /// Cards by id.
    #[schema(title = "by card ids")]
    ByIds(InitializeByIds),
    /// Produced cards of a type.
    #[schema(title = "by filter")]
    ByFilter(InitializeByFilter),
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct InitializeByIds {
    /// Cards to initialize (1 to `http.max_batch_cards`, more is refused
    /// with 413); a card named twice is handled once.
    #[schema(min_items = 1)]
    card_ids: Vec<Uuid>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct InitializeByFilter {
    filter: InitializeFilter,
}

#[utoipa::path(post, path = "/v1/initializations", tag = "initializations",
    request_body = InitializeRequestBody,
    responses((status = 202, body = InitializeOutcome),
              (status = 400, body = crate::api::error::ErrorBody),
              (status = 409, description = "process_disabled", body = crate::api::error::ErrorBody),
              (status = 413, description = "batch_too_large", body = crate::api::error::ErrorBody)))]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<InitializeRequest>,
) -> Result<(StatusCode, Json<InitializeOutcome>), ApiError> {
    let too_large = || {
        ApiError::new(
            Code::BatchTooLarge,
            format!("at most {} cards per request", state.max_batch_cards),
        )
    };
    let selection = match (request.card_ids, request.filter) {
        (Some(ids), None) => {
            if ids.is_empty() {
                return Err(ApiError::new(
                    Code::InvalidRequest,
                    "card_ids must not be empty",
                ));
            }
            if ids.len() > state.max_batch_cards {
                return Err(too_large());
            }
            Selection::Ids(ids)
        }
        (None, Some(filter)) => {
            if filter.state != "produced" {
                return Err(ApiError::new(
                    Code::InvalidRequest,
                    "filter.state must be 'produced': only produced cards can be initialized",
                ));
            }
            let card_type = CardType::parse(&filter.card_type)
                .map_err(|e| ApiError::new(Code::InvalidRequest, format!("filter.{e}")))?;
            if filter.limit < 1 {
                return Err(ApiError::new(
                    Code::InvalidRequest,
                    "filter.limit must be at least 1",
                ));
            }
            if filter.limit as u64 > state.max_batch_cards as u64 {
                return Err(too_large());
            }
            Selection::Filter {
                card_type: card_type.as_str().to_owned(),
                limit: filter.limit,
            }
        }
        _ => {
            return Err(ApiError::new(
                Code::InvalidRequest,
                "give exactly one of card_ids or filter",
            ));
        }
    };
    let outcome = state
        .store
        .initialize(selection, &state.profiles, &state.cipher, &caller.name)
        .await?;
    let n = outcome.accepted.len() as u64;
    state.metrics.credentials_generated.inc_by(2 * n);
    let queued = outcome.queued as u64;
    let created = &state.metrics.jobs_created;
    created.with_label_values(&["queued"]).inc_by(queued);
    created
        .with_label_values(&["awaiting_card"])
        .inc_by(n.saturating_sub(queued));
    tracing::info!(batch.id = %outcome.batch_id, accepted = n, rejected = outcome.rejected.len(),
        "initialize request accepted");
    Ok((StatusCode::ACCEPTED, Json(outcome)))
}

#[utoipa::path(get, path = "/v1/initializations/{batch_id}", tag = "initializations",
    params(("batch_id" = Uuid, Path), Paging),
    responses((status = 200, body = BatchStatus), (status = 404, body = crate::api::error::ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    IdPath(batch_id): IdPath<Uuid>,
    ApiQuery(paging): ApiQuery<Paging>,
) -> Result<Json<BatchStatus>, ApiError> {
    let (limit, offset) = paging.resolve()?;
    state
        .store
        .batch_status(batch_id, limit, offset)
        .await
        .map(Json)
        .map_err(unknown_batch)
}

fn unknown_batch(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::new(Code::UnknownBatch, "no batch with this id"),
        e => e.into(),
    }
}

/// Server-Sent Events: one `transition` event per job transition (the event
/// id is a sequence number; reconnect with `Last-Event-ID` to resume), then
/// one `finished` event with the final counts when no job can move any more.
#[utoipa::path(get, path = "/v1/initializations/{batch_id}/events", tag = "initializations",
    params(("batch_id" = Uuid, Path)),
    responses((status = 200, content_type = "text/event-stream", description = "transition and finished events"),
              (status = 404, body = crate::api::error::ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    IdPath(batch_id): IdPath<Uuid>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    state
        .store
        .batch_status(batch_id, 1, 0)
        .await
        .map_err(unknown_batch)?;
    let after: i64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stream = futures_util::stream::unfold(
        (state, after, false),
        move |(state, mut after, done)| async move {
            if done {
                return None;
            }
            loop {
                match state.store.batch_transitions(batch_id, after, 500).await {
                    Ok(transitions) if !transitions.is_empty() => {
                        let events: Vec<Event> = transitions
                            .iter()
                            .map(|t| {
                                Event::default()
                                    .event("transition")
                                    .id(t.seq.to_string())
                                    .json_data(t)
                                    .unwrap_or_default()
                            })
                            .collect();
                        after = transitions.last().map(|t| t.seq).unwrap_or(after);
                        return Some((events, (state, after, false)));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream query failed");
                    }
                }
                if let Ok(status) = state.store.batch_status(batch_id, 1, 0).await {
                    let moving = JobState::ALL
                        .iter()
                        .filter(|s| !s.is_terminal())
                        .any(|s| status.counts.get(s.as_str()).copied().unwrap_or(0) > 0);
                    if !moving {
                        // Check once more: a transition may have landed after our query.
                        if let Ok(t) = state.store.batch_transitions(batch_id, after, 1).await {
                            if t.is_empty() {
                                let event = Event::default()
                                    .event("finished")
                                    .json_data(&status.counts)
                                    .unwrap_or_default();
                                return Some((vec![event], (state, after, true)));
                            }
                            continue;
                        }
                    }
                }
                tokio::time::sleep(state.events_poll).await;
            }
        },
    );
    let flat = futures_util::StreamExt::flat_map(stream, |events| {
        futures_util::stream::iter(events.into_iter().map(Ok))
    });
    Ok(Sse::new(flat).keep_alive(KeepAlive::default()))
}

#[utoipa::path(post, path = "/v1/initializations/{batch_id}/cancel", tag = "initializations",
    params(("batch_id" = Uuid, Path)),
    responses((status = 200, body = CancelOutcome), (status = 404, body = crate::api::error::ErrorBody)))]
pub async fn cancel_batch(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(batch_id): IdPath<Uuid>,
) -> Result<Json<CancelOutcome>, ApiError> {
    let outcome = state
        .store
        .cancel(batch_id, None, &caller.name)
        .await
        .map_err(unknown_batch)?;
    count_cancelled(&state, &outcome);
    tracing::info!(batch.id = %batch_id, cancelled = outcome.cancelled.len(),
        stopping = outcome.stopping.len(), "batch cancel requested");
    Ok(Json(outcome))
}

#[utoipa::path(post, path = "/v1/initializations/{batch_id}/cards/{card_id}/cancel", tag = "initializations",
    params(("batch_id" = Uuid, Path), ("card_id" = Uuid, Path)),
    responses((status = 200, body = CancelOutcome), (status = 404, body = crate::api::error::ErrorBody)))]
pub async fn cancel_card(
    State(state): State<AppState>,
    caller: Caller,
    IdPath((batch_id, card_id)): IdPath<(Uuid, Uuid)>,
) -> Result<Json<CancelOutcome>, ApiError> {
    let outcome = state
        .store
        .cancel(batch_id, Some(card_id), &caller.name)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::new(
                Code::UnknownCard,
                "no such batch, or the card is not part of it",
            ),
            e => e.into(),
        })?;
    count_cancelled(&state, &outcome);
    Ok(Json(outcome))
}

/// Jobs cancelled at once end here; the ones still encoding end in the ledger.
fn count_cancelled(state: &AppState, outcome: &CancelOutcome) {
    state
        .metrics
        .jobs_finished
        .with_label_values(&["cancelled"])
        .inc_by(outcome.cancelled.len() as u64);
}
