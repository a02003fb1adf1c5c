//! `cardfleet-worker config check`: the example configuration loads, the
//! effective settings print with secrets redacted, and a bad key is named.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

fn worker(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cardfleet-worker"));
    for (key, _) in std::env::vars() {
        if key.starts_with("CARDFLEET") {
            command.env_remove(key);
        }
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir())
        .output()
        .expect("cardfleet-worker runs")
}

#[test]
fn the_example_configuration_passes_and_prints_without_secrets() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/cardfleet-worker.toml");
    let out = worker(
        &["config", "check", "--config", example.to_str().unwrap()],
        &[
            ("CARDFLEET__WORKER__ENROLLMENT_TOKEN", "cf_enrol_secret_42"),
            ("CARDFLEET__WORKER__API_URL", "http://cp:8080"),
            (
                "CARDFLEET__AMQP__URL",
                "amqp://rack-1:mq-pass@a:5672/%2f, amqp://rack-1:mq-pass@b:5672/%2f",
            ),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let printed: toml::Table = stdout.parse().expect("config check prints TOML");
    assert_eq!(printed["worker"]["rack_id"].as_str(), Some("rack-1"));
    assert_eq!(printed["reader"]["type"].as_str(), Some("simulated"));
    assert_eq!(
        printed["worker"]["enrollment_token"].as_str(),
        Some("<redacted>")
    );
    for secret in ["cf_enrol_secret_42", "mq-pass"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret}"
        );
    }
}

#[test]
fn a_bad_value_fails_naming_its_key() {
    let out = worker(
        &["config", "check"],
        &[("CARDFLEET__SIMULATED__MUTE_RATE", "2")],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("simulated.mute_rate"), "{stderr}");
}
