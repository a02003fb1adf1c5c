//! Authentication and authorization of API requests: a bearer token names a
//! caller with roles, and one table says which roles each route admits.
//! Routes missing from the table admit any valid token (an unknown path is
//! then a 404, a wrong method a 405); only health, readiness, metrics and the
//! OpenAPI document are open to everyone.

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::store::tokens::{Caller, Role};

use Role::{Admin, Auditor, Officer, Operator, Worker};

/// Who may call what: method, route template, roles (any one suffices).
pub const ROUTE_ROLES: &[(Method, &str, &[Role])] = &[
    (Method::POST, "/v1/cards/import", &[Operator]),
    (Method::GET, "/v1/cards", &[Operator]),
    (Method::GET, "/v1/cards/{card_id}", &[Operator]),
    (Method::GET, "/v1/cards/{card_id}/puk", &[Officer]),
    (Method::POST, "/v1/cards/{card_id}/rerun", &[Operator]),
    (
        Method::GET,
        "/v1/processes/initialize-temporary-card",
        &[Operator, Admin],
    ),
    (
        Method::PUT,
        "/v1/processes/initialize-temporary-card",
        &[Admin],
    ),
    (Method::POST, "/v1/initializations", &[Operator]),
    (Method::GET, "/v1/initializations/{batch_id}", &[Operator]),
    (
        Method::GET,
        "/v1/initializations/{batch_id}/events",
        &[Operator],
    ),
    (
        Method::POST,
        "/v1/initializations/{batch_id}/cancel",
        &[Operator],
    ),
    (
        Method::POST,
        "/v1/initializations/{batch_id}/cards/{card_id}/cancel",
        &[Operator],
    ),
    (
        Method::POST,
        "/v1/initializations/{batch_id}/pin-mailers",
        &[Officer],
    ),
    (
        Method::POST,
        "/v1/initializations/{batch_id}/pin-mailers/reopen",
        &[Admin],
    ),
    (Method::GET, "/v1/racks", &[Operator]),
    (
        Method::POST,
        "/v1/racks/{rack_id}/slots/{slot}/release",
        &[Operator],
    ),
    (Method::POST, "/v1/racks/{rack_id}/enrollment", &[Worker]),
    (Method::GET, "/v1/dead-letters", &[Operator]),
    (Method::GET, "/v1/audit", &[Auditor]),
    (Method::GET, "/v1/tokens", &[Admin]),
    (Method::POST, "/v1/tokens", &[Admin]),
    (Method::POST, "/v1/tokens/{name}/revoke", &[Admin]),
];

/// Routes anyone may call.
pub const PUBLIC_ROUTES: &[&str] = &["/healthz", "/readyz", "/metrics", "/openapi.json"];

/// What a request needs before it reaches its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    /// A valid token holding one of these roles.
    Roles(&'static [Role]),
    /// Any valid token (unknown routes and methods).
    Authenticated,
}

pub fn access(method: &Method, route: Option<&str>) -> Access {
    let Some(route) = route else {
        return Access::Authenticated;
    };
    if PUBLIC_ROUTES.contains(&route) {
        return Access::Public;
    }
    ROUTE_ROLES
        .iter()
        .find(|(m, r, _)| m == method && *r == route)
        .map_or(Access::Authenticated, |(_, _, roles)| Access::Roles(roles))
}

/// The secret of an `Authorization: Bearer` header.
fn bearer(parts: &axum::http::HeaderMap) -> Option<&str> {
    let value = parts.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Middleware: authenticates the bearer token, checks the route's roles and
/// hands the [`Caller`] to the handler. Nothing about the token (not even
/// whether it exists) is logged or told apart in the answer.
pub async fn authorize(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let needed = access(request.method(), route.as_deref());
    if needed == Access::Public {
        return next.run(request).await;
    }
    let Some(secret) = bearer(request.headers()) else {
        return ApiError::unauthenticated("send Authorization: Bearer <token>").into_response();
    };
    let caller = match state.store.authenticate(secret).await {
        Ok(Some(caller)) => caller,
        Ok(None) => {
            return ApiError::unauthenticated(
                "the token is unknown, revoked, expired or already used",
            )
            .into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Access::Roles(roles) = needed
        && !roles.iter().any(|r| caller.has(*r))
    {
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        return ApiError::forbidden(format!(
            "this needs the role {}; the token '{}' does not hold it",
            names.join(" or "),
            caller.name
        ))
        .into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::unauthenticated("send Authorization: Bearer <token>"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_and_method_is_listed_once_and_none_is_public() {
        for (i, (m, r, roles)) in ROUTE_ROLES.iter().enumerate() {
            assert!(!roles.is_empty(), "{m} {r} admits nobody");
            assert!(!PUBLIC_ROUTES.contains(r));
            assert!(
                !ROUTE_ROLES[i + 1..]
                    .iter()
                    .any(|(m2, r2, _)| m2 == m && r2 == r),
                "{m} {r} listed twice"
            );
        }
    }

    #[test]
    fn workers_may_only_enroll() {
        let worker_routes: Vec<&str> = ROUTE_ROLES
            .iter()
            .filter(|(_, _, roles)| roles.contains(&Worker))
            .map(|(_, r, _)| *r)
            .collect();
        assert_eq!(worker_routes, ["/v1/racks/{rack_id}/enrollment"]);
    }

    #[test]
    fn unknown_routes_need_a_token_and_health_does_not() {
        assert_eq!(access(&Method::GET, None), Access::Authenticated);
        assert_eq!(access(&Method::GET, Some("/healthz")), Access::Public);
        assert_eq!(
            access(&Method::DELETE, Some("/v1/cards")),
            Access::Authenticated
        );
        assert_eq!(
            access(&Method::GET, Some("/v1/audit")),
            Access::Roles(&[Auditor])
        );
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer cf_abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("cf_abc"));
        h.insert(header::AUTHORIZATION, "bearer  cf_abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("cf_abc"));
        h.insert(header::AUTHORIZATION, "Basic dTpw".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
