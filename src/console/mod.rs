//! The operator console at `/console/`: plain HTML, CSS and JavaScript
//! embedded in the binary (no build step, no Node at run time), served with
//! a strict Content Security Policy. The page is public; everything it shows
//! comes from the `/v1` API with the token the operator signs in with.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use cardfleet_schemas::codes::Code;

/// Scripts and styles only from this origin, no inline code, no frames, no
/// forms posting elsewhere: the token in session storage is only reachable
/// by the console's own script.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'none'; \
    frame-ancestors 'none'; base-uri 'none'";

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// The route templates the console is served on (public, like `/healthz`).
pub const ROUTES: [&str; 3] = ["/console", "/console/", "/console/{asset}"];

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `/console` → `/console/`, so relative asset paths resolve.
pub async fn redirect() -> Redirect {
    Redirect::permanent("/console/")
}

pub async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "index.html" => index().await,
        "app.js" => page("text/javascript; charset=utf-8", APP_JS),
        "app.css" => page("text/css; charset=utf-8", APP_CSS),
        _ => {
            crate::api::error::ApiError::new(Code::NotFound, "no such console file").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_no_inline_code_and_names_its_assets() {
        assert!(INDEX_HTML.contains(r#"src="app.js""#));
        assert!(INDEX_HTML.contains(r#"href="app.css""#));
        assert!(
            !INDEX_HTML.contains("<script>"),
            "inline scripts break the CSP"
        );
        assert!(
            !INDEX_HTML.contains(" style="),
            "inline styles break the CSP"
        );
        assert!(
            !INDEX_HTML.contains("onclick"),
            "inline handlers break the CSP"
        );
    }

    #[test]
    fn the_script_keeps_the_token_in_session_storage_only() {
        assert!(APP_JS.contains("sessionStorage"));
        assert!(!APP_JS.contains("localStorage"));
        assert!(
            !APP_JS.contains("innerHTML"),
            "text is set with textContent"
        );
    }
}
