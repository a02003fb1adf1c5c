//! The HTTP API under `/v1`, with health, readiness and the OpenAPI
//! document generated from the handlers. `/metrics` is served on the
//! metrics listener only.

pub mod auth;
pub mod error;
pub mod hardening;
pub mod integers;
pub mod openapi;
pub mod ready;
mod routes;
pub mod tls;

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
    /// Expiry of tokens created through the API (`tokens.default_ttl_days`).
    pub tokens: crate::settings::TokenSettings,
    /// The last readiness answer (`/readyz`).
    pub ready: ready::ReadyCache,
}

pub fn router(state: AppState, http: &crate::settings::HttpSettings) -> Router {
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
        .route("/tokens/{name}/revoke", post(routes::tokens::revoke))
        .route("/me", get(routes::me::me))
        .route("/dead-letters/{id}/redrive", post(routes::redrive::redrive))
        .route(
            "/racks/{rack_id}/enrollment-tokens",
            post(routes::enrollment_tokens::create),
        );
    let router = Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/openapi.json", get(routes::health::openapi))
        .route("/console", get(crate::console::redirect))
        .route("/console/", get(crate::console::index))
        .route("/console/{asset}", get(crate::console::asset))
        .fallback(routes::health::not_found);
    // Layers run outside in: access log, request metrics, time limit,
    // authorization, then the per-token rate limit (which needs the caller).
    let router = match hardening::rate_limit(&http.rate_limit) {
        Some(config) => {
            hardening::prune_idle_buckets(&config);
            router.layer(
                tower_governor::GovernorLayer::new(config).error_handler(hardening::rate_limited),
            )
        }
        None => router,
    };
    router
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .layer(middleware::from_fn_with_state(
            Duration::from_secs(http.request_timeout_seconds),
            hardening::request_timeout,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(hardening::access_log())
        .layer(DefaultBodyLimit::max(http.max_body_bytes))
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
