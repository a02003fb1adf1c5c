//! The deploy kit (`deploy/`, `config/`) is checked by the tools that will
//! consume it: the example configurations load through `config check`, the
//! compose file through docker-compose, the systemd units through
//! `systemd-analyze verify`. Images cannot be built here (no registry), so
//! the Dockerfiles are only checked for what the kit promises.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ENCRYPTION_KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const MASTER_KEY: &str = "6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b";

fn repo(relative: &str) -> PathBuf {
    // The deploy kit and config examples sit at the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `cardfleet` with no CARDFLEET variables of the caller's environment.
fn cardfleet(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cardfleet"));
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
        .expect("cardfleet runs")
}

fn secrets() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CARDFLEET__CREDENTIALS__ENCRYPTION_KEY", ENCRYPTION_KEY),
        ("CARDFLEET__CREDENTIALS__MASTER_KEY", MASTER_KEY),
    ]
}

fn toml_file(relative: &str) -> toml::Table {
    std::fs::read_to_string(repo(relative))
        .unwrap()
        .parse()
        .unwrap()
}

fn lookup<'a>(table: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let mut parts = dotted.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// Every key with a default is set in `file` to that default.
fn assert_every_default_is_set(file: &str, defaults: &[(&str, &str)]) {
    let table = toml_file(file);
    for (key, default) in defaults {
        let value = lookup(&table, key).unwrap_or_else(|| panic!("{file} lacks {key}"));
        let shown = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Float(f) if f.fract() == 0.0 => format!("{f:.0}"),
            other => other.to_string(),
        };
        assert_eq!(shown, *default, "{file}: {key}");
    }
}

#[test]
fn the_example_control_plane_configuration_passes_config_check_and_sets_every_default() {
    assert_every_default_is_set("config/cardfleet.toml", cardfleet::settings::DEFAULTS);
    let file = repo("config/cardfleet.toml");
    let out = cardfleet(
        &["--config", file.to_str().unwrap(), "config", "check"],
        &secrets(),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let printed: toml::Table = stdout.parse().expect("config check prints TOML");
    let example = toml_file("config/cardfleet.toml");
    for (key, _) in cardfleet::settings::DEFAULTS {
        let expected = match lookup(&example, key) {
            // Printed with the password of each URL redacted.
            Some(toml::Value::String(s)) => Some(toml::Value::String(
                cardfleet_schemas::redact::redact_urls(s),
            )),
            other => other.cloned(),
        };
        assert_eq!(lookup(&printed, key), expected.as_ref(), "{key}");
    }
    assert_eq!(
        lookup(&printed, "credentials.encryption_key").and_then(|v| v.as_str()),
        Some("<redacted>")
    );
    assert!(!stdout.contains(ENCRYPTION_KEY) && !stdout.contains(MASTER_KEY));
}

#[test]
fn the_example_worker_configuration_loads_and_sets_every_default() {
    assert_every_default_is_set(
        "config/cardfleet-worker.toml",
        cardfleet_worker::settings::DEFAULTS,
    );
    let settings = cardfleet_worker::settings::WorkerSettings::load(
        Some(&repo("config/cardfleet-worker.toml")),
        &[],
    )
    .expect("the example worker configuration loads");
    assert_eq!(settings.reader.slots, 16);
    // One file may serve both programs: each ignores the other's sections.
    let worker =
        cardfleet_worker::settings::WorkerSettings::load(Some(&repo("config/cardfleet.toml")), &[]);
    assert!(worker.is_ok(), "{:?}", worker.err());
    let file = repo("config/cardfleet-worker.toml");
    let out = cardfleet(
        &["--config", file.to_str().unwrap(), "config", "check"],
        &secrets(),
    );
    assert!(out.status.success(), "{}", text(&out).1);
}

#[test]
fn config_check_redacts_url_passwords_and_names_a_bad_key() {
    let out = cardfleet(
        &["config", "check"],
        &[
            secrets()[0],
            secrets()[1],
            (
                "CARDFLEET__AMQP__URL",
                "amqp://rack:pw-one@10.0.0.1:5672/%2f,amqp://rack:pw-two@10.0.0.2:5672/%2f",
            ),
            (
                "CARDFLEET__DATABASE__URL",
                "postgres://cf:pw-three@db/cardfleet",
            ),
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for secret in ["pw-one", "pw-two", "pw-three"] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
        assert!(!stderr.contains(secret), "{secret} printed:\n{stderr}");
    }
    assert!(
        stdout.contains("amqp://rack:<redacted>@10.0.0.2:5672/%2f"),
        "{stdout}"
    );

    let out = cardfleet(
        &["config", "check"],
        &[
            secrets()[0],
            secrets()[1],
            ("CARDFLEET__AMQP__URL", "http://x/"),
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out).1.contains("amqp.url"), "{}", text(&out).1);

    let out = cardfleet(&["config", "check"], &[secrets()[0]]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("master_key"), "{}", text(&out).1);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cardfleet.toml");
    std::fs::write(&file, "[ledger]\nbatch_sise = 3\n").unwrap();
    let out = cardfleet(
        &["--config", file.to_str().unwrap(), "config", "check"],
        &secrets(),
    );
    assert!(!out.status.success());
    assert!(text(&out).1.contains("batch_sise"), "{}", text(&out).1);
}

fn compose(env: &[(&str, &str)]) -> Output {
    let mut command = Command::new("docker-compose");
    for var in [
        "POSTGRES_PASSWORD",
        "RABBITMQ_PASSWORD",
        "CARDFLEET_ENCRYPTION_KEY",
        "CARDFLEET_MASTER_KEY",
    ] {
        command.env_remove(var);
    }
    // An empty env file, so a deploy/.env of this checkout plays no part.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.env");
    std::fs::write(&empty, "").unwrap();
    command
        .arg("--env-file")
        .arg(&empty)
        .args([
            "-f",
            repo("deploy/compose.yaml").to_str().unwrap(),
            "config",
        ])
        .envs(env.iter().copied())
        .output()
        .expect("docker-compose runs (scripts/test installs it)")
}

#[test]
fn docker_compose_accepts_the_compose_file_and_refuses_to_run_without_secrets() {
    let env = [
        ("POSTGRES_PASSWORD", "pg-secret"),
        ("RABBITMQ_PASSWORD", "mq-secret"),
        ("CARDFLEET_ENCRYPTION_KEY", ENCRYPTION_KEY),
        ("CARDFLEET_MASTER_KEY", MASTER_KEY),
    ];
    let out = compose(&env);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let services = service_names(&stdout);
    for service in [
        "rabbitmq",
        "rabbitmq-definitions",
        "postgres",
        "prometheus",
        "grafana",
        "migrate",
        "control-plane",
        "enrollment-tokens",
        "worker-1",
        "worker-2",
    ] {
        assert!(
            services.iter().any(|s| s == service),
            "no service {service}"
        );
    }
    let out = compose(&env[1..]);
    assert!(
        !out.status.success(),
        "compose ran without POSTGRES_PASSWORD"
    );
    assert!(
        text(&out).1.contains("POSTGRES_PASSWORD"),
        "{}",
        text(&out).1
    );
}

/// The service names of docker-compose's resolved YAML (the keys indented
/// by two spaces under `services:`), without a YAML parser.
fn service_names(yaml: &str) -> Vec<String> {
    let mut in_services = false;
    let mut names = Vec::new();
    for line in yaml.lines() {
        if !line.starts_with(' ') {
            in_services = line.trim_end() == "services:";
            continue;
        }
        if in_services
            && let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && !name.starts_with(' ')
        {
            names.push(name.to_owned());
        }
    }
    names
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    // verify also checks that ExecStart's binary exists: point the units at
    // this build's binaries through a directory of links.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let cardfleet = PathBuf::from(env!("CARGO_BIN_EXE_cardfleet"));
    let worker = cardfleet.with_file_name("cardfleet-worker");
    std::os::unix::fs::symlink(&cardfleet, bin.join("cardfleet")).unwrap();
    std::os::unix::fs::symlink(
        if worker.exists() { &worker } else { &cardfleet },
        bin.join("cardfleet-worker"),
    )
    .unwrap();
    let mut units = Vec::new();
    for name in ["cardfleet.service", "cardfleet-worker.service"] {
        let unit = std::fs::read_to_string(repo(&format!("deploy/systemd/{name}"))).unwrap();
        assert!(unit.contains("/usr/local/bin/"), "{name}");
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            unit.replace("/usr/local/bin/", &format!("{}/", bin.display())),
        )
        .unwrap();
        units.push(path);
    }
    let worker_unit = std::fs::read_to_string(&units[1]).unwrap();
    assert!(worker_unit.contains("After=network-online.target pcscd.socket pcscd.service"));
    assert!(worker_unit.contains("Restart=always") && worker_unit.contains("NoNewPrivileges=yes"));
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze runs (scripts/test installs systemd)");
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stdout}{stderr}"
    );
}

#[test]
fn the_dockerfiles_are_multi_stage_non_root_and_the_worker_has_pcsc() {
    for (file, runtime_lib) in [
        ("deploy/Dockerfile.control-plane", "ca-certificates"),
        ("deploy/Dockerfile.worker", "libpcsclite1"),
    ] {
        let text = std::fs::read_to_string(repo(file)).unwrap();
        let stages = text.lines().filter(|l| l.starts_with("FROM ")).count();
        assert_eq!(stages, 2, "{file}: build and runtime stages");
        let user = text
            .lines()
            .rfind(|l| l.starts_with("USER "))
            .unwrap_or_else(|| panic!("{file} sets no USER"));
        assert!(!user.contains("root") && !user.ends_with(" 0"), "{file}");
        let runtime = text.rsplit("FROM ").next().unwrap();
        assert!(runtime.contains(runtime_lib), "{file} lacks {runtime_lib}");
    }
    let out = Command::new("sh")
        .args([
            "-n",
            repo("deploy/compose/worker-entrypoint.sh")
                .to_str()
                .unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
}
