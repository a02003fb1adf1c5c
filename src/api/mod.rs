//! The HTTP API under `/v1`, with health, readiness, metrics and the
//! OpenAPI document generated from the handlers.

pub mod auth;
pub mod error;
mod openapi;
mod routes;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use cardfleet_schemas::CardProfile;

use crate::credentials::CredentialCipher;
use crate::metrics::Metrics;
use crate::store::Store;

pub use openapi::ApiDoc;

#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub profiles: Arc<BTreeMap<String, CardProfile>>,
    pub cipher: CredentialCipher,
    pub metrics: Metrics,
    pub max_batch_cards: usize,
    /// Broker URL checked by `/readyz`; `None` when no broker is used.
    /// The bus the readiness probe checks, if any.
    pub bus: Option<cardfleet_schemas::bus::Bus>,
    /// How often the event stream looks for new transitions.
    pub events_poll: Duration,
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let v1 = Router::new()
        .route("/cards/import", post(routes::cards::import))
        .route("/cards", get(routes::cards::list))
        .route("/cards/{card_id}", get(routes::cards::detail))
        .route("/cards/{card_id}/puk", get(routes::escrow::puk))
        .route("/cards/{card_id}/rerun", post(routes::in_doubt::rerun))
        .route(
            "/processes/initialize-temporary-card",
            get(routes::processes::get_process).put(routes::processes::put_process),
        )
        .route("/initializations", post(routes::initializations::submit))
        .route(
            "/initializations/{batch_id}",
            get(routes::initializations::status),
        )
        .route(
            "/initializations/{batch_id}/events",
            get(routes::initializations::events),
        )
        .route(
            "/initializations/{batch_id}/cancel",
            post(routes::initializations::cancel_batch),
        )
        .route(
            "/initializations/{batch_id}/cards/{card_id}/cancel",
            post(routes::initializations::cancel_card),
        )
        .route(
            "/initializations/{batch_id}/pin-mailers",
            post(routes::escrow::pin_mailers),
        )
        .route(
            "/initializations/{batch_id}/pin-mailers/reopen",
            post(routes::escrow::reopen_mailers),
        )
        .route("/racks", get(routes::racks::list))
        .route(
            "/racks/{rack_id}/slots/{slot}/release",
            post(routes::racks::release_slot),
        )
        .route("/racks/{rack_id}/enrollment", post(routes::racks::enroll))
        .route("/dead-letters", get(routes::racks::dead_letters))
        .route("/audit", get(routes::audit::list))
        .route(
            "/tokens",
            get(routes::tokens::list).post(routes::tokens::create),
        )
        .route("/tokens/{name}/revoke", post(routes::tokens::revoke));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(routes::health::metrics))
        .route("/openapi.json", get(routes::health::openapi))
        .fallback(routes::health::not_found)
        // Inside `track`, so refused requests are counted too.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Counts requests by route template and status; never by id.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .http_duration
        .with_label_values(&[&route])
        .observe(start.elapsed().as_secs_f64());
    state
        .metrics
        .http_requests
        .with_label_values(&[&route, response.status().as_str()])
        .inc();
    response
}
