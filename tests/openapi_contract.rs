//! The OpenAPI document says what the API does (schemathesis checks the
//! whole contract in scripts/schemathesis; these pin the parts it found):
//! every /v1 operation documents 401 and 403, bounds come from the
//! configuration, a NUL byte in a query or path is a 400, and a token
//! cannot revoke itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use cardfleet::app::Component;
use reqwest::Method;
use support::*;

#[tokio::test]
async fn every_v1_operation_documents_the_common_statuses_and_the_configured_bounds() {
    let app = spawn_app_with(
        &[Component::Api],
        &[("http.max_batch_cards", "1234".into())],
    )
    .await;
    let doc = app.get("/openapi.json").await.body;
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            if path.starts_with("/v1/") {
                operations += 1;
                for status in ["401", "403", "500"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} lacks {status}"
                    );
                }
            }
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "415"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} lacks {status}"
                    );
                }
            }
        }
    }
    assert!(operations >= 21, "{operations}");
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["InitializeFilter"]["properties"]["limit"]["maximum"],
        1234
    );
    assert_eq!(
        schemas["InitializeByIds"]["properties"]["card_ids"]["maxItems"],
        1234
    );
    let body = &doc["paths"]["/v1/initializations"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"];
    let alternatives = schemas["InitializeRequestBody"]["oneOf"].as_array();
    assert!(
        alternatives.is_some_and(|a| a.len() == 2),
        "{body} {}",
        schemas["InitializeRequestBody"]
    );
    let paging = doc["paths"]["/v1/dead-letters"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap()
        .clone();
    assert_eq!(paging["schema"]["minimum"], 1);
    assert_eq!(paging["schema"]["maximum"], 1000);
}

#[tokio::test]
async fn a_nul_byte_in_a_query_or_path_is_a_bad_request() {
    let app = spawn_app_with(&[Component::Api], &[]).await;
    for (path, code) in [
        ("/v1/cards?type=a%00b", "invalid_query"),
        ("/v1/audit?action=job%00", "invalid_query"),
        ("/v1/dead-letters?limit=1%00", "invalid_query"),
    ] {
        let r = app.get(path).await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (400, Some(code)),
            "{path}"
        );
    }
    let r = app
        .call_as(
            Some(&app.token),
            Method::POST,
            "/v1/tokens/a%00b/revoke",
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("invalid_id"))
    );
}

#[tokio::test]
async fn a_token_cannot_revoke_itself_but_another_admin_can() {
    let app = spawn_app_with(&[Component::Api], &[]).await;
    let admin = create_token(
        &app.store,
        "second-admin",
        &[cardfleet::store::tokens::Role::Admin],
    )
    .await;
    let r = app
        .call_as(
            Some(&admin),
            Method::POST,
            "/v1/tokens/second-admin/revoke",
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("own_token")),
        "{}",
        r.body
    );
    // Still usable, and revocable by another admin token.
    let r = app
        .call_as(Some(&admin), Method::GET, "/v1/tokens", None)
        .await;
    assert_eq!(r.status, 200);
    let r = app
        .call_as(
            Some(&app.token),
            Method::POST,
            "/v1/tokens/second-admin/revoke",
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = app
        .call_as(Some(&admin), Method::GET, "/v1/tokens", None)
        .await;
    assert_eq!(r.status, 401);
}
