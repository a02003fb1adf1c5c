//! Limits every API request lives under: a time limit (408), a per-token
//! rate limit (429), and one access-log line per request that names the
//! route, the status, the time taken and the token's name, never a secret.

use cardfleet_schemas::codes::Code;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Response, header};
use axum::middleware::Next;
use axum::response::IntoResponse;
use governor::middleware::NoOpMiddleware;
use tower_governor::GovernorError;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::trace::TraceLayer;
use tracing::Span;
use uuid::Uuid;

use crate::api::error::ApiError;
use crate::settings::RateLimitSettings;
use crate::store::tokens::Caller;

/// Middleware: answers 408 `request_timeout` when the request (reading its
/// body included) is not answered within the limit. Dropping the handler
/// rolls back whatever transaction it had open.
pub async fn request_timeout(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            Code::RequestTimeout,
            format!(
                "the request took longer than {} s (http.request_timeout_seconds)",
                limit.as_secs()
            ),
        )
        .into_response(),
    }
}

/// Rate-limit key: the authenticated token, so one busy client cannot slow
/// down the others. Public routes (health, readiness, the description)
/// share one bucket.
#[derive(Debug, Clone, Copy)]
pub struct TokenKey;

impl KeyExtractor for TokenKey {
    type Key = Uuid;

    fn extract<T>(&self, request: &axum::http::Request<T>) -> Result<Uuid, GovernorError> {
        Ok(request
            .extensions()
            .get::<Caller>()
            .map_or(Uuid::nil(), |c| c.token_id))
    }
}

pub type RateLimit = GovernorConfig<TokenKey, NoOpMiddleware>;

/// The per-token limiter of `settings`, or `None` when limiting is off.
pub fn rate_limit(settings: &RateLimitSettings) -> Option<Arc<RateLimit>> {
    if settings.per_second == 0 || settings.burst == 0 {
        return None;
    }
    GovernorConfigBuilder::default()
        .key_extractor(TokenKey)
        .period(Duration::from_secs(1) / settings.per_second)
        .burst_size(settings.burst)
        .finish()
        .map(Arc::new)
}

/// How often idle tokens' buckets are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Forgets, every [`PRUNE_EVERY`], the buckets of tokens idle long enough
/// to be full again, so the limiter holds the active tokens rather than
/// every token ever seen. Stops when the limiter is dropped.
pub fn prune_idle_buckets(config: &Arc<RateLimit>) {
    let weak = Arc::downgrade(config);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(config) = weak.upgrade() else { break };
            prune(&config);
        }
    });
}

fn prune(config: &RateLimit) {
    let limiter = config.limiter();
    limiter.retain_recent();
    limiter.shrink_to_fit();
}

/// The 429 (or, should the limiter fail, 500) in the API's error shape.
pub fn rate_limited(error: GovernorError) -> Response<Body> {
    match error {
        GovernorError::TooManyRequests { wait_time, .. } => {
            let mut response = ApiError::new(
                Code::RateLimited,
                format!("too many requests with this token; retry in {wait_time} s"),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait_time.max(1)));
            response
        }
        other => {
            tracing::error!(error = %other, "rate limiter failed");
            ApiError::new(
                Code::Internal,
                "internal error; the server log has the details",
            )
            .into_response()
        }
    }
}

/// The span of one request: method, route template and path, never the
/// query string or a header; `actor` is filled in once the token is known.
fn request_span(request: &axum::http::Request<Body>) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    tracing::info_span!(
        target: "cardfleet::access",
        "request",
        method = %request.method(),
        route = %route,
        path = %request.uri().path(),
        actor = tracing::field::Empty,
    )
}

/// Records the authenticated token's name on the request's span.
pub fn record_actor(caller: &Caller) {
    Span::current().record("actor", tracing::field::display(&caller.name));
}

type AccessLog = TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    fn(&axum::http::Request<Body>) -> Span,
    (),
    fn(&Response<Body>, Duration, &Span),
    (),
    (),
    fn(ServerErrorsFailureClass, Duration, &Span),
>;

/// tower-http's trace layer, writing one `cardfleet::access` line per
/// request at INFO (status, milliseconds) and 5xx failures at WARN.
pub fn access_log() -> AccessLog {
    TraceLayer::new_for_http()
        .make_span_with(request_span as fn(&axum::http::Request<Body>) -> Span)
        .on_request(())
        .on_response(on_response as fn(&Response<Body>, Duration, &Span))
        .on_body_chunk(())
        .on_eos(())
        .on_failure(on_failure as fn(ServerErrorsFailureClass, Duration, &Span))
}

fn on_response(response: &Response<Body>, latency: Duration, _span: &Span) {
    tracing::info!(
        target: "cardfleet::access",
        status = response.status().as_u16(),
        ms = latency.as_millis() as u64,
        "request"
    );
}

fn on_failure(class: ServerErrorsFailureClass, latency: Duration, _span: &Span) {
    tracing::warn!(
        target: "cardfleet::access",
        failure = %class,
        ms = latency.as_millis() as u64,
        "request failed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_rate_turns_limiting_off() {
        let off = RateLimitSettings {
            per_second: 0,
            burst: 10,
        };
        assert!(rate_limit(&off).is_none());
        let on = RateLimitSettings {
            per_second: 50,
            burst: 500,
        };
        assert!(rate_limit(&on).is_some());
    }

    #[test]
    fn a_limited_request_gets_429_with_a_code_and_retry_after() {
        let r = rate_limited(GovernorError::TooManyRequests {
            wait_time: 0,
            headers: None,
        });
        assert_eq!(r.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn the_buckets_of_idle_tokens_are_forgotten() {
        // Full again 1 ms after one request.
        let config = rate_limit(&RateLimitSettings {
            per_second: 1000,
            burst: 1,
        })
        .unwrap();
        for _ in 0..100 {
            assert!(config.limiter().check_key(&Uuid::new_v4()).is_ok());
        }
        assert_eq!(config.limiter().len(), 100);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !config.limiter().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            prune(&config);
        }
        assert_eq!(config.limiter().len(), 0, "idle buckets were kept");
    }

    #[test]
    fn requests_without_a_token_share_one_bucket() {
        let request = axum::http::Request::new(());
        assert_eq!(TokenKey.extract(&request).unwrap(), Uuid::nil());
    }
}
