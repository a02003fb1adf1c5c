//! The API's one error type (its codes come from the one catalogue,
//! `cardfleet_schemas::codes`), and extractors
//! that turn every malformed input into a 4xx with a code.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use cardfleet_schemas::codes::Code;
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use crate::store::StoreError;

/// Body of every error response: a catalogue code and a message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `process_disabled`.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    /// An error with a catalogue code; the status is the code's own.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        let status = code
            .status()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self {
            status,
            code: code.as_str(),
            message: message.into(),
        }
    }
    /// No valid token: answered with `WWW-Authenticate: Bearer`.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, message)
    }
    /// A valid token without the role the endpoint needs.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code,
            message: self.message,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ProcessDisabled(name) => ApiError::new(
                Code::ProcessDisabled,
                format!("the process '{name}' is disabled; an administrator must enable it first"),
            ),
            StoreError::NotFound => ApiError::new(Code::NotFound, "no such resource"),
            StoreError::Conflict { code, message } => match Code::parse(code) {
                Some(code) => ApiError::new(code, message),
                None => {
                    // tests/error_codes.rs keeps the store's codes in the
                    // catalogue; should one slip through, it still answers.
                    tracing::warn!(code, "a conflict code missing from the catalogue");
                    ApiError {
                        status: StatusCode::CONFLICT,
                        code,
                        message,
                    }
                }
            },
            StoreError::Invalid(message) => ApiError::new(Code::InvalidRequest, message),
            other => {
                // The cause goes to the log once, here; the client learns nothing internal.
                tracing::error!(error = %other, "request failed");
                ApiError::new(
                    Code::Internal,
                    "internal error; the server log has the details",
                )
            }
        }
    }
}

fn body_too_large(limit_hint: &str) -> ApiError {
    ApiError::new(
        Code::PayloadTooLarge,
        format!("request body is larger than the server accepts ({limit_hint})"),
    )
}

fn from_json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonSyntaxError(e) => ApiError::new(Code::MalformedJson, e.body_text()),
        JsonRejection::JsonDataError(e) => ApiError::new(Code::InvalidRequest, e.body_text()),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            Code::UnsupportedMediaType,
            "expected Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(b) => from_bytes_rejection(b),
        other => ApiError::new(Code::MalformedJson, other.body_text()),
    }
}

pub fn from_bytes_rejection(r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        body_too_large("see http.max_body_bytes")
    } else {
        ApiError::new(Code::UnreadableBody, r.body_text())
    }
}

/// `Json` whose rejections are [`ApiError`]s.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(v)| ApiJson(v))
            .map_err(from_json_rejection)
    }
}

/// `Query` whose rejections are [`ApiError`]s.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if has_nul(parts.uri.query()) {
            return Err(ApiError::new(
                Code::InvalidQuery,
                "query parameters must not contain NUL characters",
            ));
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::new(Code::InvalidQuery, e.body_text()))
    }
}

/// Whether a raw (percent-encoded) URI part encodes a NUL character, which
/// no identifier or text of ours may hold (PostgreSQL text cannot store it).
fn has_nul(raw: Option<&str>) -> bool {
    raw.is_some_and(|q| q.contains("%00"))
}

/// Path segment parsed as a UUID: malformed is 400, the caller maps unknown to 404.
#[derive(Debug)]
pub struct IdPath<T>(pub T);

impl<S, T> FromRequestParts<S> for IdPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if has_nul(Some(parts.uri.path())) {
            return Err(ApiError::new(
                Code::InvalidId,
                "path segments must not contain NUL characters",
            ));
        }
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| IdPath(p.0))
            .map_err(|e: PathRejection| {
                ApiError::new(
                    Code::InvalidId,
                    format!("malformed id in path: {}", e.body_text()),
                )
            })
    }
}

/// Paging parameters shared by listings.
#[derive(Debug, Clone, Copy, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Items to skip, 0 to 10,000,000 (default 0).
    #[param(minimum = 0, maximum = 10000000)]
    pub offset: Option<i64>,
}

impl Paging {
    pub fn resolve(&self) -> Result<(i64, i64), ApiError> {
        let limit = self.limit.unwrap_or(100);
        let offset = self.offset.unwrap_or(0);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::new(
                Code::InvalidQuery,
                "limit must be between 1 and 1000",
            ));
        }
        if !(0..=10_000_000).contains(&offset) {
            return Err(ApiError::new(
                Code::InvalidQuery,
                "offset must be between 0 and 10000000",
            ));
        }
        Ok((limit, offset))
    }
}
