//! The published artefacts match the code: RabbitMQ definitions import into
//! the real broker, and `/openapi.json` is a valid OpenAPI 3 document.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;

use support::*;

#[test]
fn the_committed_rabbitmq_definitions_match_the_code_and_import_into_the_broker() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/rabbitmq/definitions.json"
    );
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        committed,
        cardfleet::broker::definitions("/", 5),
        "deploy/rabbitmq/definitions.json is stale: run `cargo run -- topology > deploy/rabbitmq/definitions.json`"
    );
    let vhost = Vhost::new();
    let text = serde_json::to_string(&cardfleet::broker::definitions(&vhost.name, 5)).unwrap();
    let file = std::env::temp_dir().join(format!("{}.json", vhost.name));
    std::fs::write(&file, text).unwrap();
    rabbitmqctl(&["import_definitions", file.to_str().unwrap()]);
    let out = Command::new("rabbitmqctl")
        .args(["list_queues", "-p", &vhost.name, "name", "type", "--quiet"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    for queue in [
        "cardfleet.results",
        "cardfleet.slot-events",
        "cardfleet.dead",
    ] {
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(queue) && l.contains("quorum")),
            "{queue} missing or not quorum: {listed}"
        );
    }
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn the_served_openapi_document_is_valid_openapi_3() {
    let app = spawn_app_with(&[cardfleet::app::Component::Api], &[]).await;
    let doc = app.get("/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/v1/initializations", "/v1/cards/import", "/v1/racks"] {
        assert!(doc.body["paths"].get(path).is_some(), "{path} missing");
    }
    let file = std::env::temp_dir().join(format!("{}-openapi.json", app.db_name));
    std::fs::write(&file, doc.body.to_string()).unwrap();
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator", file.to_str().unwrap()])
        .output()
        .expect("python3 runs");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "openapi-spec-validator (installed by scripts/test) rejected the document: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn readiness_reports_database_and_broker() {
    let app = spawn_app_with(&[cardfleet::app::Component::Api], &[]).await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["database"], true);
    assert_eq!(r.body["broker"], true);
    let broken = spawn_app_with(
        &[cardfleet::app::Component::Api],
        &[("amqp.url", "amqp://guest:guest@127.0.0.1:1/%2f".into())],
    )
    .await;
    let r = broken.get("/readyz").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body["broker"], false);
}
