//! Malformed and hostile requests: each gets a 4xx with a stable code and
//! leaves the database exactly as it was.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use reqwest::Method;
use support::*;

#[tokio::test]
async fn malformed_and_hostile_requests_get_a_4xx_with_a_code_and_change_nothing() {
    let app = spawn_app_with(
        &[cardfleet::app::Component::Api],
        &[("http.max_batch_cards", "1000".into())],
    )
    .await;
    let ids = app.import_cards("H", 2).await;
    let known = ids[0];
    // A batch to aim card-level requests at.
    app.enable().await;
    let batch = app
        .post(
            "/v1/initializations",
            serde_json::json!({ "card_ids": [ids[1]] }),
        )
        .await
        .body["batch_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let ten_mb = vec![b' '; 10 * 1024 * 1024];
    let million = format!("{{\"card_ids\":[{}0]}}", "0,".repeat(999_999));
    let many_ids = serde_json::json!({
        "card_ids": (0..1001).map(|_| uuid::Uuid::new_v4()).collect::<Vec<_>>()
    })
    .to_string();
    let json = "application/json";
    type Case<'a> = (&'a str, Method, String, &'a str, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("truncated JSON", Method::POST, "/v1/initializations".into(), json, b"{\"card_ids\": [".to_vec(), 400, "malformed_json"),
        ("wrong type", Method::POST, "/v1/initializations".into(), json, br#"{"card_ids": "all"}"#.to_vec(), 400, "invalid_request"),
        ("not a uuid", Method::POST, "/v1/initializations".into(), json, br#"{"card_ids": ["1; DROP TABLE cards"]}"#.to_vec(), 400, "invalid_request"),
        ("unknown field", Method::POST, "/v1/initializations".into(), json, format!(r#"{{"card_ids": ["{known}"], "force": true}}"#).into_bytes(), 400, "invalid_request"),
        ("both selections", Method::POST, "/v1/initializations".into(), json, format!(r#"{{"card_ids": ["{known}"], "filter": {{"type":"temporary","state":"produced","limit":1}}}}"#).into_bytes(), 400, "invalid_request"),
        ("empty selection", Method::POST, "/v1/initializations".into(), json, br#"{"card_ids": []}"#.to_vec(), 400, "invalid_request"),
        ("filter on another state", Method::POST, "/v1/initializations".into(), json, br#"{"filter": {"type":"temporary","state":"unassigned","limit":5}}"#.to_vec(), 400, "invalid_request"),
        ("negative filter limit", Method::POST, "/v1/initializations".into(), json, br#"{"filter": {"type":"temporary","state":"produced","limit":-5}}"#.to_vec(), 400, "invalid_request"),
        ("huge filter limit", Method::POST, "/v1/initializations".into(), json, br#"{"filter": {"type":"temporary","state":"produced","limit":99999999999}}"#.to_vec(), 413, "batch_too_large"),
        ("SQL in filter type", Method::POST, "/v1/initializations".into(), json, br#"{"filter": {"type":"temporary' OR 1=1 --","state":"produced","limit":5}}"#.to_vec(), 400, "invalid_request"),
        ("too many ids", Method::POST, "/v1/initializations".into(), json, many_ids.into_bytes(), 413, "batch_too_large"),
        ("a 1M-element array", Method::POST, "/v1/initializations".into(), json, million.into_bytes(), 400, "invalid_request"),
        ("a 10 MB body", Method::POST, "/v1/initializations".into(), json, ten_mb.clone(), 413, "payload_too_large"),
        ("a 10 MB import", Method::POST, "/v1/cards/import".into(), "text/csv", ten_mb, 413, "payload_too_large"),
        ("no content type", Method::POST, "/v1/initializations".into(), "text/plain", b"{}".to_vec(), 415, "unsupported_media_type"),
        ("CSV with a wrong header", Method::POST, "/v1/cards/import".into(), "text/csv", b"number,serial\n1,2\n".to_vec(), 400, "malformed_csv"),
        ("invalid UTF-8 CSV header", Method::POST, "/v1/cards/import".into(), "text/csv", b"\xff\xfe\xfd\n".to_vec(), 400, "malformed_csv"),
        ("import JSON wrong type", Method::POST, "/v1/cards/import".into(), json, br#"{"cards": [{"card_number": 5}]}"#.to_vec(), 400, "invalid_request"),
        ("process with a string", Method::PUT, "/v1/processes/initialize-temporary-card".into(), json, br#"{"enabled": "yes"}"#.to_vec(), 400, "invalid_request"),
        ("process unknown field", Method::PUT, "/v1/processes/initialize-temporary-card".into(), json, br#"{"enabled": false, "role": "admin"}"#.to_vec(), 400, "invalid_request"),
        ("negative limit", Method::GET, "/v1/cards?limit=-1".into(), json, vec![], 400, "invalid_query"),
        ("huge offset", Method::GET, "/v1/cards?offset=99999999999999999999".into(), json, vec![], 400, "invalid_query"),
        ("unknown state", Method::GET, "/v1/cards?state=produced';--".into(), json, vec![], 400, "invalid_query"),
        ("unknown query key", Method::GET, "/v1/cards?limt=5".into(), json, vec![], 400, "invalid_query"),
        ("malformed card id", Method::GET, "/v1/cards/not-a-uuid".into(), json, vec![], 400, "invalid_id"),
        ("unknown card", Method::GET, format!("/v1/cards/{}", uuid::Uuid::new_v4()), json, vec![], 404, "unknown_card"),
        ("unknown batch", Method::GET, format!("/v1/initializations/{}", uuid::Uuid::new_v4()), json, vec![], 404, "unknown_batch"),
        ("cancel unknown batch", Method::POST, format!("/v1/initializations/{}/cancel", uuid::Uuid::new_v4()), json, vec![], 404, "unknown_batch"),
        ("cancel a card not in the batch", Method::POST, format!("/v1/initializations/{batch}/cards/{known}/cancel"), json, vec![], 404, "unknown_card"),
        ("batch paging out of range", Method::GET, format!("/v1/initializations/{batch}?limit=100000"), json, vec![], 400, "invalid_query"),
        ("events of unknown batch", Method::GET, format!("/v1/initializations/{}/events", uuid::Uuid::new_v4()), json, vec![], 404, "unknown_batch"),
        ("unknown route", Method::GET, "/v1/../../etc/passwd".into(), json, vec![], 404, "not_found"),
    ];
    assert!(cases.len() >= 15);

    let before = app.table_counts().await;
    let mut failures = Vec::new();
    for (name, method, path, content_type, body, status, code) in cases {
        let r = app.raw(method, &path, content_type, body).await;
        let got_code = r.body["code"].as_str().unwrap_or("<none>");
        if r.status != status || got_code != code {
            failures.push(format!(
                "{name}: expected {status} {code}, got {} {got_code}: {}",
                r.status, r.body
            ));
        }
        assert!(r.status < 500, "{name} caused a server error");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        app.table_counts().await,
        before,
        "a refused request changed the database"
    );
}
