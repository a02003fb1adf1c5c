//! `amqp.url` as a list of endpoints (the nodes of a RabbitMQ cluster):
//! connects try them in order, an endpoint that is down or never answers is
//! passed over, errors carry no password, and a whole fleet (control plane
//! and worker) runs a batch while the first endpoint of its list is down.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use cardfleet_schemas::amqp::{ConnectError, Endpoint, connect_endpoint, connect_endpoint_within};
use cardfleet_worker::rack::simulated::SimCard;
use serde_json::json;
use support::workers::*;
use support::*;

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_connect_passes_over_an_endpoint_that_is_down_to_the_next() {
    let vhost = Vhost::new();
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{}/{},{}",
        closed_port(),
        vhost.name,
        vhost.url()
    );
    let conn = connect_endpoint(&Endpoint::plain(url), "url-list-test")
        .await
        .expect("the second endpoint accepts");
    assert!(conn.status().connected());
    conn.close(200, "done".into()).await.unwrap();
}

#[tokio::test]
async fn an_endpoint_that_never_answers_is_given_up_after_the_timeout() {
    let vhost = Vhost::new();
    // Accepts TCP (the kernel's backlog) but never speaks AMQP.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{silent_port}/{},{}",
        vhost.name,
        vhost.url()
    );
    let conn = tokio::time::timeout(
        Duration::from_secs(30),
        connect_endpoint_within(
            &Endpoint::plain(url),
            "url-list-test",
            Duration::from_secs(1),
        ),
    )
    .await
    .expect("the connect itself is bounded")
    .expect("the second endpoint accepts");
    conn.close(200, "done".into()).await.unwrap();

    let only_silent = format!("amqp://guest:s3cret-pw@127.0.0.1:{silent_port}/%2f");
    let err = connect_endpoint_within(
        &Endpoint::plain(only_silent),
        "url-list-test",
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ConnectError::Timeout { index: 1, .. }),
        "{err:?}"
    );
    drop(silent);
}

#[tokio::test]
async fn when_every_endpoint_is_down_the_error_names_none_of_their_passwords() {
    let url = format!(
        "amqp://guest:s3cret-one@127.0.0.1:{}/%2f, amqp://guest:s3cret-two@127.0.0.1:{}/%2f",
        closed_port(),
        closed_port()
    );
    let err = connect_endpoint(&Endpoint::plain(url), "url-list-test")
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(matches!(err, ConnectError::Amqp(_)), "{err:?}");

    let err = connect_endpoint(&Endpoint::plain(" , "), "url-list-test")
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Url(_)), "{err:?}");
}

#[tokio::test]
async fn a_fleet_whose_first_endpoint_is_down_runs_a_batch_through_the_second() {
    // Both services get the list; the harness's own vhost stays unused.
    let down = closed_port();
    let app_vhost = Vhost::new();
    let urls = format!(
        "amqp://guest:guest@127.0.0.1:{down}/{},{}",
        app_vhost.name,
        app_vhost.url()
    );
    let amqp = [("amqp.url", urls.clone())];
    let app = spawn_app_with(&cardfleet::app::Component::ALL, &amqp).await;
    let n = import_serials(&app, 4_400_001..=4_400_040).await;
    app.enable().await;
    let worker = TestWorker::start(
        &app,
        "rack-urls",
        8,
        (4_400_001..=4_400_040).map(SimCard::new).collect(),
        &amqp,
    );
    let r = app
        .post(
            "/v1/initializations",
            json!({ "filter": { "type": "temporary", "state": "produced", "limit": n } }),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let batch = r.body["batch_id"].as_str().unwrap().to_owned();
    let status = wait_finished(&app, &batch, Duration::from_secs(180)).await;
    assert_eq!(status["counts"]["succeeded"], 40, "{status}");
    worker.stop().await;
}
