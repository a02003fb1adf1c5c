//! The `cardfleet` binary's control-plane commands: tokens and enrollment
//! tokens made on the database directly, client commands sending a token
//! over the API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../tests/support/mod.rs"]
mod support;

use base64::Engine;
use reqwest::Method;
use serde_json::json;
use support::*;

fn public_key_b64(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// The Ed25519 signing key of `rack`'s test key, as its worker enrols it
/// (so the stand-in worker's signed events are believed).
fn signing_key_b64(rack: &str) -> String {
    public_key_b64(&cardfleet_schemas::rack_identity::verifying_key(
        &workers::test_rack_key(rack),
    ))
}

/// One token per role; the worker's is a real enrollment token for `rack`.
async fn enroll(app: &TestApp, token: Option<&str>, rack: &str, key: &[u8; 32]) -> Reply {
    app.call_as(
        token,
        Method::POST,
        &format!("/v1/racks/{rack}/enrollment"),
        Some(json!({ "public_key": public_key_b64(key), "signing_key": signing_key_b64(rack) })),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_makes_tokens_on_the_database_and_client_commands_send_them() {
    let app = spawn_app().await;
    let url = format!("postgres://postgres@127.0.0.1:5432/{}", app.db_name);
    let cli = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_cardfleet"));
        for (key, _) in std::env::vars() {
            if key.starts_with("CARDFLEET") {
                command.env_remove(key);
            }
        }
        command
            .env("CARDFLEET__DATABASE__URL", &url)
            .env("CARDFLEET__CREDENTIALS__ENCRYPTION_KEY", ENCRYPTION_KEY)
            .env("CARDFLEET__CREDENTIALS__MASTER_KEY", MASTER_KEY)
            .env("CARDFLEET_API", &app.base)
            .args(args);
        async move { command.output().await }
    };
    let out = cli(&[
        "tokens", "create", "--role", "operator", "--role", "admin", "--name", "cli-op",
    ])
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(secret.starts_with("cf_"), "{secret}");

    let listed = cli(&["tokens", "list"]).await.unwrap();
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listing.contains("cli-op") && listing.contains("admin,operator"),
        "{listing}"
    );
    assert!(!listing.contains(&secret[3..]));

    let anonymous = cli(&["process", "status"]).await.unwrap();
    assert!(!anonymous.status.success());
    assert!(String::from_utf8_lossy(&anonymous.stderr).contains("unauthenticated"));
    let with_token = cli(&["--token", &secret, "process", "enable"])
        .await
        .unwrap();
    assert!(
        with_token.status.success(),
        "{}",
        String::from_utf8_lossy(&with_token.stderr)
    );
    let audit = app.get("/v1/audit?action=process.enabled").await;
    assert_eq!(audit.body[0]["actor"], "cli-op");

    let out = cli(&["racks", "enroll-token", "rack-z", "--ttl-hours", "1"])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let enrollment = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(
        enroll(&app, Some(&enrollment), "rack-z", &[3u8; 32])
            .await
            .status,
        201
    );
    assert_eq!(
        enroll(&app, Some(&enrollment), "rack-z", &[3u8; 32])
            .await
            .status,
        401
    );

    assert!(
        cli(&["tokens", "revoke", "cli-op"])
            .await
            .unwrap()
            .status
            .success()
    );
    assert!(
        !cli(&["--token", &secret, "process", "status"])
            .await
            .unwrap()
            .status
            .success()
    );
    assert!(
        !cli(&["tokens", "revoke", "no-such-token"])
            .await
            .unwrap()
            .status
            .success()
    );
}
