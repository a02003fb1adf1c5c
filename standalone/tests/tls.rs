//! TLS on the API itself (HTTPS with the bureau's certificate, the CLI and
//! the worker trusting its CA), to RabbitMQ (amqps, CA file, client
//! certificate) and to PostgreSQL (sslmode, CA), against the real services. The local services listen in
//! plain text, so each test puts a TLS-terminating proxy with a certificate
//! from a fresh self-signed CA in front of them: the client side (cardfleet's
//! connection code) is exercised exactly as against a TLS-enabled server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cardfleet::store::Store;
use cardfleet_schemas::amqp::{Endpoint, TlsFiles, connect_endpoint};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A CA, a server certificate for localhost/127.0.0.1 and a client
/// certificate, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    server_der: CertificateDer<'static>,
    server_key: Vec<u8>,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cardfleet test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let mut client_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cardfleet-worker");
        let client = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("client.pem"), client.pem()).unwrap();
        std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
        Self {
            server_der: server.der().clone(),
            server_key: server_key.serialize_der(),
            ca,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn files(&self, client_certificate: bool) -> TlsFiles {
        TlsFiles {
            ca_file: Some(self.path("ca.pem")),
            cert_file: client_certificate.then(|| self.path("client.pem")),
            key_file: client_certificate.then(|| self.path("client.key")),
        }
    }

    fn acceptor(&self, require_client_certificate: bool) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_certificate {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(
                vec![self.server_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone())),
            )
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

/// PostgreSQL's SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// Listens on a loopback port, terminates TLS and forwards to `upstream`.
/// With `postgres`, first answers PostgreSQL's SSLRequest as a server would.
async fn tls_proxy(
    acceptor: tokio_rustls::TlsAcceptor,
    upstream: &'static str,
    postgres: bool,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if postgres {
                    let mut request = [0u8; 8];
                    if inbound.read_exact(&mut request).await.is_err() || request != SSL_REQUEST {
                        return; // a plain-text client is not served
                    }
                    if inbound.write_all(b"S").await.is_err() {
                        return;
                    }
                }
                let Ok(mut tls) = acceptor.accept(inbound).await else {
                    return;
                };
                let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut outbound).await;
            });
        }
    });
    port
}

async fn amqp_round_trip(endpoint: &Endpoint) -> anyhow::Result<Vec<u8>> {
    use futures_util::StreamExt;
    use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let conn = tokio::time::timeout(
        Duration::from_secs(20),
        connect_endpoint(endpoint, "tls-test"),
    )
    .await??;
    let channel = conn.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "tls".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_publish(
            "".into(),
            queue.name().as_str().into(),
            BasicPublishOptions::default(),
            b"over tls",
            lapin::BasicProperties::default(),
        )
        .await?;
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("consumer closed"))??;
    let _ = conn.close(200, "done".into()).await;
    Ok(delivery.data)
}

fn amqps(port: u16, tls: TlsFiles) -> Endpoint {
    Endpoint {
        url: format!("amqps://guest:guest@localhost:{port}/%2f"),
        tls,
    }
}

#[tokio::test]
async fn amqps_with_the_ca_and_a_client_certificate_carries_messages() {
    let pki = Pki::new();
    let port = tls_proxy(pki.acceptor(true), "127.0.0.1:5672", false).await;
    let data = amqp_round_trip(&amqps(port, pki.files(true)))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(data, b"over tls");
}

#[tokio::test]
async fn amqps_without_the_required_client_certificate_is_refused() {
    let pki = Pki::new();
    let port = tls_proxy(pki.acceptor(true), "127.0.0.1:5672", false).await;
    assert!(
        amqp_round_trip(&amqps(port, pki.files(false)))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn amqps_to_a_broker_signed_by_another_ca_is_refused() {
    let pki = Pki::new();
    let other = Pki::new();
    let port = tls_proxy(pki.acceptor(false), "127.0.0.1:5672", false).await;
    assert!(
        amqp_round_trip(&amqps(port, other.files(false)))
            .await
            .is_err(),
        "a certificate from an unknown CA must not be trusted"
    );
    // The right CA works through the same proxy.
    assert!(
        amqp_round_trip(&amqps(port, pki.files(false)))
            .await
            .is_ok()
    );
}

#[test]
fn tls_settings_that_cannot_work_are_refused_at_start() {
    let key = support::ENCRYPTION_KEY.to_owned();
    let master = support::MASTER_KEY.to_owned();
    let load = |extra: &[(&str, &str)]| {
        let mut overrides = vec![
            ("database.url", "postgres://postgres@127.0.0.1/x".to_owned()),
            ("credentials.encryption_key", key.clone()),
            ("credentials.master_key", master.clone()),
        ];
        overrides.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        cardfleet::settings::Settings::load_with(None, &overrides)
    };
    // amqps alone trusts the system's CA store.
    assert!(load(&[("amqp.url", "amqps://localhost:5671/%2f")]).is_ok());
    let err = load(&[
        ("amqp.url", "amqps://localhost:5671/%2f"),
        ("amqp.tls.ca_file", "/ca.pem"),
        ("amqp.tls.cert_file", "/client.pem"),
    ])
    .unwrap_err();
    assert!(err.to_string().contains("go together"), "{err}");
    let err = load(&[("amqp.tls.ca_file", "/ca.pem")]).unwrap_err();
    assert!(err.to_string().contains("not amqps"), "{err}");
    assert!(
        load(&[
            ("amqp.url", "amqps://localhost:5671/%2f"),
            ("amqp.tls.ca_file", "/ca.pem"),
        ])
        .is_ok()
    );
}

#[tokio::test]
async fn postgres_with_sslmode_verify_full_and_the_ca_connects_through_tls() {
    let pki = Pki::new();
    let port = tls_proxy(pki.acceptor(false), "127.0.0.1:5432", true).await;
    let ca = pki.path("ca.pem");
    let url = format!(
        "postgres://postgres@localhost:{port}/test?sslmode=verify-full&sslrootcert={}",
        ca.display()
    );
    // The proxy serves only clients that ask for TLS, so success means TLS.
    let store = Store::connect(&url, 2, false).await.unwrap();
    store.ping().await.unwrap();

    let other = Pki::new();
    let url = format!(
        "postgres://postgres@localhost:{port}/test?sslmode=verify-full&sslrootcert={}",
        other.path("ca.pem").display()
    );
    assert!(
        Store::connect(&url, 2, false).await.is_err(),
        "a server certificate from an unknown CA must not be trusted"
    );
    // Plain text is refused by this "server", as sslmode=disable would be by a TLS-only one.
    let url = format!("postgres://postgres@localhost:{port}/test?sslmode=disable");
    assert!(Store::connect(&url, 2, false).await.is_err());
}

#[tokio::test]
async fn the_control_plane_runs_over_tls_to_both_services() {
    let pki = Pki::new();
    let amqp_port = tls_proxy(pki.acceptor(true), "127.0.0.1:5672", false).await;
    let pg_port = tls_proxy(pki.acceptor(false), "127.0.0.1:5432", true).await;
    let db = format!("cardfleet_tls_{}", uuid::Uuid::new_v4().simple());
    let ca = pki.path("ca.pem").display().to_string();
    let settings = cardfleet::settings::Settings::load_with(
        None,
        &[
            (
                "database.url",
                format!("postgres://postgres@localhost:{pg_port}/{db}?sslmode=verify-full&sslrootcert={ca}"),
            ),
            ("amqp.url", format!("amqps://guest:guest@localhost:{amqp_port}/%2f")),
            ("amqp.tls.ca_file", ca.clone()),
            ("amqp.tls.cert_file", pki.path("client.pem").display().to_string()),
            ("amqp.tls.key_file", pki.path("client.key").display().to_string()),
            ("http.listen", "127.0.0.1:0".into()),
            ("metrics.listen", "127.0.0.1:0".into()),
            ("metrics.refresh_seconds", "0".into()),
            ("credentials.encryption_key", support::ENCRYPTION_KEY.into()),
            ("credentials.master_key", support::MASTER_KEY.into()),
        ],
    )
    .unwrap();
    let app = cardfleet::app::Application::build(&settings, &cardfleet::app::Component::ALL)
        .await
        .unwrap();
    let port = app.port().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    // Ready means: the database answered and the broker accepted a connection, both over TLS.
    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..100 {
        let r = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert!(ready, "the control plane did not become ready over TLS");
}

/// The control plane serving its API over HTTPS with `pki`'s server
/// certificate; `extra` adds settings.
async fn https_app(pki: &Pki, extra: &[(&str, String)]) -> support::TestApp {
    let mut settings = vec![
        (
            "http.tls.cert_file",
            pki.path("server.pem").display().to_string(),
        ),
        (
            "http.tls.key_file",
            pki.path("server.key").display().to_string(),
        ),
    ];
    settings.extend(extra.iter().cloned());
    support::spawn_app_with(&[cardfleet::app::Component::Api], &settings).await
}

fn https_client(pki: &Pki, identity: Option<&Pki>) -> reqwest::Client {
    let ca = std::fs::read(pki.path("ca.pem")).unwrap();
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap());
    if let Some(other) = identity {
        let mut pem = std::fs::read(other.path("client.pem")).unwrap();
        pem.extend(std::fs::read(other.path("client.key")).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

fn https_base(app: &support::TestApp) -> String {
    let port = app.base.rsplit(':').next().unwrap();
    format!("https://localhost:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_https_and_the_cli_lists_cards_with_the_ca_file() {
    let pki = Pki::new();
    let app = https_app(&pki, &[]).await;
    let base = https_base(&app);
    let client = https_client(&pki, None);
    let r = client
        .post(format!("{base}/v1/cards/import"))
        .bearer_auth(&app.token)
        .json(&serde_json::json!({ "cards": [{
            "card_number": "TLS-TC-1", "chip_serial": "TLS-CHIP-1",
            "card_type": "temporary", "profile": "temporary-piv" }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // Plain HTTP to the HTTPS port gets no API answer.
    let plain = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/healthz",
            base.rsplit(':').next().unwrap()
        ))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    // A client that does not trust the bureau's CA refuses the server.
    let untrusting = reqwest::Client::builder().use_rustls_tls().build().unwrap();
    assert!(
        untrusting
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err()
    );

    let cli = |ca: Option<&std::path::Path>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_cardfleet"));
        for (key, _) in std::env::vars() {
            if key.starts_with("CARDFLEET") {
                command.env_remove(key);
            }
        }
        command.args(["--api", &base, "--token", &app.token]);
        if let Some(ca) = ca {
            command.arg("--ca-file").arg(ca);
        }
        command.args(["cards", "list"]);
        async move { command.output().await.unwrap() }
    };
    let listed = cli(Some(&pki.path("ca.pem"))).await;
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(stdout.contains("TLS-TC-1"), "{stdout}");
    let refused = cli(None).await;
    assert!(!refused.status.success(), "the CLI trusted an unknown CA");
}

#[tokio::test]
async fn with_a_client_ca_a_certificate_from_another_ca_is_refused_and_none_is_fine() {
    let pki = Pki::new();
    let app = https_app(
        &pki,
        &[(
            "http.tls.client_ca_file",
            pki.path("ca.pem").display().to_string(),
        )],
    )
    .await;
    let base = https_base(&app);
    let url = format!("{base}/healthz");
    let no_certificate = https_client(&pki, None).get(&url).send().await.unwrap();
    assert_eq!(no_certificate.status(), 200);
    let ours = https_client(&pki, Some(&pki))
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(ours.status(), 200);
    let stranger = Pki::new();
    let foreign = https_client(&pki, Some(&stranger)).get(&url).send().await;
    assert!(
        foreign.is_err(),
        "a certificate from another CA was accepted"
    );
}

#[tokio::test]
async fn a_worker_enrols_over_https_with_its_ca_file_and_not_over_plain_http() {
    use cardfleet_worker::api_tls::ApiTls;
    use cardfleet_worker::rack_key::{self, EnrollError};
    let pki = Pki::new();
    let app = https_app(&pki, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rack-t.key");
    let (key, _) = rack_key::load_or_create(&path).unwrap();
    let token = app
        .store
        .create_token(
            &cardfleet::store::tokens::NewToken {
                name: "enroll-rack-t".into(),
                roles: vec![cardfleet::store::tokens::Role::Worker],
                rack_id: Some("rack-t".into()),
                single_use: true,
                expires_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            },
            "test",
        )
        .await
        .unwrap();
    let plain = format!("http://127.0.0.1:{}", app.base.rsplit(':').next().unwrap());
    let refused = rack_key::enroll(
        &plain,
        &ApiTls::default(),
        token.expose(),
        "rack-t",
        &key,
        &path,
    )
    .await;
    assert!(matches!(refused, Err(EnrollError::Tls(_))), "{refused:?}");
    let untrusting = rack_key::enroll(
        &https_base(&app),
        &ApiTls::default(),
        token.expose(),
        "rack-t",
        &key,
        &path,
    )
    .await;
    assert!(
        matches!(untrusting, Err(EnrollError::Unreachable { .. })),
        "{untrusting:?}"
    );
    let tls = ApiTls {
        ca_file: Some(pki.path("ca.pem")),
        insecure: false,
    };
    let done = rack_key::enroll(
        &https_base(&app),
        &tls,
        token.expose(),
        "rack-t",
        &key,
        &path,
    )
    .await
    .unwrap();
    assert_eq!(done.rack_id, "rack-t");
}
