//! Authentication and authorization of API requests: a bearer token names a
//! caller with roles, and one table says, for every method and route, which
//! roles it admits or that it is public. Deny by default: a method the table
//! does not list for a route is refused with 405 before any handler runs
//! (HEAD and OPTIONS included); a path that is no route needs a valid token
//! and then gets 404. The console's page and files are public; its data
//! comes from /v1 with a token.

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cardfleet_schemas::codes::Code;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::store::tokens::{Authentication, Caller, Role};

use Role::{Admin, Auditor, Officer, Operator, Worker};

/// Who may call a (method, route) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token.
    Public,
    /// A valid token holding one of these roles.
    Roles(&'static [Role]),
}

const fn roles(r: &'static [Role]) -> Access {
    Access::Roles(r)
}

/// The one table: method, route template, who may call it. Anything not
/// listed is refused.
pub const ROUTES: &[(Method, &str, Access)] = &[
    (Method::GET, "/healthz", Access::Public),
    (Method::GET, "/readyz", Access::Public),
    (Method::GET, "/openapi.json", Access::Public),
    (Method::POST, "/v1/cards/import", roles(&[Operator])),
    (Method::GET, "/v1/cards", roles(&[Operator])),
    (Method::GET, "/v1/cards/{card_id}", roles(&[Operator])),
    (Method::GET, "/v1/cards/{card_id}/puk", roles(&[Officer])),
    (
        Method::POST,
        "/v1/cards/{card_id}/rerun",
        roles(&[Operator]),
    ),
    (
        Method::GET,
        "/v1/processes/initialize-temporary-card",
        roles(&[Operator, Admin]),
    ),
    (
        Method::PUT,
        "/v1/processes/initialize-temporary-card",
        roles(&[Admin]),
    ),
    (Method::POST, "/v1/initializations", roles(&[Operator])),
    (
        Method::GET,
        "/v1/initializations/{batch_id}",
        roles(&[Operator]),
    ),
    (
        Method::GET,
        "/v1/initializations/{batch_id}/events",
        roles(&[Operator]),
    ),
    (
        Method::POST,
        "/v1/initializations/{batch_id}/cancel",
        roles(&[Operator]),
    ),
    (
        Method::POST,
        "/v1/initializations/{batch_id}/cards/{card_id}/cancel",
        roles(&[Operator]),
    ),
    (
        Method::POST,
        "/v1/initializations/{batch_id}/pin-mailers",
        roles(&[Officer]),
    ),
    (
        Method::POST,
        "/v1/initializations/{batch_id}/pin-mailers/reopen",
        roles(&[Admin]),
    ),
    (Method::GET, "/v1/racks", roles(&[Operator])),
    (
        Method::POST,
        "/v1/racks/{rack_id}/slots/{slot}/release",
        roles(&[Operator]),
    ),
    (
        Method::POST,
        "/v1/racks/{rack_id}/enrollment",
        roles(&[Worker]),
    ),
    (Method::GET, "/v1/dead-letters", roles(&[Operator])),
    (Method::GET, "/v1/audit", roles(&[Auditor])),
    (Method::GET, "/v1/tokens", roles(&[Admin])),
    (Method::POST, "/v1/tokens", roles(&[Admin])),
    (Method::POST, "/v1/tokens/{name}/revoke", roles(&[Admin])),
    (
        Method::GET,
        "/v1/me",
        roles(&[Admin, Operator, Officer, Auditor]),
    ),
    (
        Method::POST,
        "/v1/dead-letters/{id}/redrive",
        roles(&[Operator]),
    ),
    (
        Method::POST,
        "/v1/racks/{rack_id}/enrollment-tokens",
        roles(&[Admin]),
    ),
    // The console's page and assets; its data comes from /v1 with a token.
    (Method::GET, "/console", Access::Public),
    (Method::GET, "/console/", Access::Public),
    (Method::GET, "/console/{asset}", Access::Public),
];

/// What the table says of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Access),
    /// The route exists but not with this method: these methods it has.
    MethodNotAllowed(Vec<Method>),
    /// No route: the caller needs a valid token to learn that (404).
    NoRoute,
}

/// Looks a request up in [`ROUTES`]; `route` is the matched template.
pub fn decide(method: &Method, route: Option<&str>) -> Decision {
    let Some(route) = route else {
        return Decision::NoRoute;
    };
    let mut allowed = Vec::new();
    for (m, r, access) in ROUTES {
        if *r == route {
            if m == method {
                return Decision::Allow(*access);
            }
            allowed.push(m.clone());
        }
    }
    if allowed.is_empty() {
        Decision::NoRoute
    } else {
        Decision::MethodNotAllowed(allowed)
    }
}

fn method_not_allowed(method: &Method, allowed: &[Method]) -> Response {
    let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let mut response = ApiError::new(
        Code::MethodNotAllowed,
        format!("{method} is not allowed here; use {}", list.join(" or ")),
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&list.join(", ")) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
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
    let needed = match decide(request.method(), route.as_deref()) {
        Decision::Allow(Access::Public) => return next.run(request).await,
        Decision::Allow(Access::Roles(roles)) => Some(roles),
        Decision::MethodNotAllowed(allowed) => {
            return method_not_allowed(request.method(), &allowed);
        }
        Decision::NoRoute => None,
    };
    let Some(secret) = bearer(request.headers()) else {
        return ApiError::unauthenticated("send Authorization: Bearer <token>").into_response();
    };
    let caller = match state.store.authenticate_checked(secret).await {
        Ok(Authentication::Valid(caller)) => {
            crate::api::hardening::record_actor(&caller);
            caller
        }
        Ok(Authentication::Expired) => {
            return ApiError::new(
                Code::TokenExpired,
                "the token has expired; ask an admin for a new one",
            )
            .into_response();
        }
        Ok(Authentication::Refused) => {
            return ApiError::unauthenticated("the token is unknown, revoked or already used")
                .into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Some(roles) = needed else {
        return ApiError::new(Code::NotFound, "no such route").into_response();
    };
    if !roles.iter().any(|r| caller.has(*r)) {
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
    fn each_route_and_method_is_listed_once_and_admits_someone() {
        for (i, (m, r, access)) in ROUTES.iter().enumerate() {
            if let Access::Roles(roles) = access {
                assert!(!roles.is_empty(), "{m} {r} admits nobody");
            }
            assert!(
                !ROUTES[i + 1..].iter().any(|(m2, r2, _)| m2 == m && r2 == r),
                "{m} {r} listed twice"
            );
        }
    }

    #[test]
    fn only_health_readiness_the_description_and_the_console_files_are_public() {
        let public: Vec<&str> = ROUTES
            .iter()
            .filter(|(_, _, a)| *a == Access::Public)
            .map(|(_, r, _)| *r)
            .collect();
        assert_eq!(
            public,
            [
                "/healthz",
                "/readyz",
                "/openapi.json",
                "/console",
                "/console/",
                "/console/{asset}"
            ]
        );
        assert!(!ROUTES.iter().any(|(_, r, _)| *r == "/metrics"));
    }

    #[test]
    fn workers_may_only_enroll() {
        let worker_routes: Vec<&str> = ROUTES
            .iter()
            .filter(|(_, _, a)| matches!(a, Access::Roles(r) if r.contains(&Worker)))
            .map(|(_, r, _)| *r)
            .collect();
        assert_eq!(worker_routes, ["/v1/racks/{rack_id}/enrollment"]);
    }

    #[test]
    fn unlisted_methods_are_refused_with_the_ones_that_exist() {
        assert_eq!(decide(&Method::GET, None), Decision::NoRoute);
        assert_eq!(
            decide(&Method::GET, Some("/healthz")),
            Decision::Allow(Access::Public)
        );
        assert_eq!(
            decide(&Method::HEAD, Some("/v1/tokens")),
            Decision::MethodNotAllowed(vec![Method::GET, Method::POST])
        );
        assert_eq!(
            decide(&Method::HEAD, Some("/v1/cards/{card_id}/puk")),
            Decision::MethodNotAllowed(vec![Method::GET])
        );
        assert_eq!(
            decide(&Method::OPTIONS, Some("/healthz")),
            Decision::MethodNotAllowed(vec![Method::GET])
        );
        assert_eq!(
            decide(&Method::DELETE, Some("/v1/cards")),
            Decision::MethodNotAllowed(vec![Method::GET])
        );
        assert_eq!(
            decide(&Method::GET, Some("/v1/audit")),
            Decision::Allow(Access::Roles(&[Auditor]))
        );
        assert_eq!(decide(&Method::GET, Some("/v1/unknown")), Decision::NoRoute);
    }

    #[test]
    fn a_405_names_the_allowed_methods() {
        let r = method_not_allowed(&Method::HEAD, &[Method::GET, Method::POST]);
        assert_eq!(r.status(), axum::http::StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET, POST");
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
