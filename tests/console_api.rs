//! What the operator console needs from the control plane, through HTTP:
//! the console's files under a strict Content Security Policy without a
//! token, `GET /v1/me`, and card search by card number, chip serial and batch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use cardfleet::store::tokens::Role;
use reqwest::Method;
use serde_json::json;
use support::*;

#[tokio::test]
async fn the_console_is_served_without_a_token_under_a_strict_csp() {
    let app = spawn_app().await;
    let anonymous = client_with(None);
    for (path, content_type) in [
        ("/console/", "text/html"),
        ("/console/index.html", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let r = anonymous.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert!(
            h["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{path}: {:?}",
            h["content-type"]
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
    }
    let page = anonymous
        .get(app.url("/console/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Initialize temporary card"));

    // Unknown files are a 404 with the usual error body, not the page.
    let r = anonymous
        .get(app.url("/console/secrets.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "not_found");

    // `/console` leads to `/console/` so relative asset paths resolve.
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirect.get(app.url("/console")).send().await.unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "/console/");

    // The API itself still needs a token.
    let r = anonymous.get(app.url("/v1/me")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn me_names_the_token_and_its_roles_and_refuses_workers() {
    let app = spawn_app().await;
    let officer = create_token(&app.store, "desk-officer", &[Role::Officer, Role::Auditor]).await;
    let r = app
        .call_as(Some(&officer), Method::GET, "/v1/me", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["name"], "desk-officer");
    assert_eq!(r.body["roles"], json!(["officer", "auditor"]));

    let worker = create_token(&app.store, "a-worker", &[Role::Worker]).await;
    let r = app
        .call_as(Some(&worker), Method::GET, "/v1/me", None)
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body["code"], "forbidden");

    let r = app
        .call_as(Some("cf_not-a-token"), Method::GET, "/v1/me", None)
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn cards_are_found_by_number_chip_serial_and_batch() {
    let app = spawn_app().await;
    let ids = app.import_cards("S", 6).await;
    app.enable().await;
    let r = app
        .post(
            "/v1/initializations",
            json!({ "card_ids": [ids[1].to_string(), ids[4].to_string()] }),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let batch = r.body["batch_id"].as_str().unwrap().to_owned();

    let found = |r: &Reply| -> Vec<String> {
        let mut v: Vec<String> = r
            .body
            .as_array()
            .unwrap_or_else(|| panic!("not a list: {}", r.body))
            .iter()
            .map(|c| c["card_id"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };

    let r = app.get("/v1/cards?card_number=S-TC-000003").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(found(&r), [ids[3].to_string()]);

    let r = app.get("/v1/cards?chip_serial=S-CHIP-000005").await;
    assert_eq!(found(&r), [ids[5].to_string()]);

    let r = app.get(&format!("/v1/cards?batch_id={batch}")).await;
    assert_eq!(
        found(&r),
        sorted(vec![ids[1].to_string(), ids[4].to_string()])
    );

    // Filters combine; an empty field means any.
    let r = app
        .get(&format!(
            "/v1/cards?batch_id={batch}&card_number=S-TC-000004&chip_serial="
        ))
        .await;
    assert_eq!(found(&r), [ids[4].to_string()]);
    let r = app
        .get(&format!("/v1/cards?batch_id={batch}&state=produced"))
        .await;
    assert_eq!(found(&r), Vec::<String>::new());
    let r = app.get("/v1/cards?card_number=S-TC-999999").await;
    assert_eq!(found(&r), Vec::<String>::new());

    // A batch that is not an id is bad input with a stable code.
    let r = app.get("/v1/cards?batch_id=not-a-batch").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["code"], "invalid_query");
}

#[tokio::test]
async fn the_openapi_document_describes_me_and_the_card_filters() {
    let app = spawn_app().await;
    let doc = app.get("/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert!(doc.body["paths"]["/v1/me"]["get"].is_object());
    let params: Vec<&str> = doc.body["paths"]["/v1/cards"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in ["card_number", "chip_serial", "batch_id"] {
        assert!(params.contains(&name), "{name} missing from {params:?}");
    }
}

#[tokio::test]
async fn a_dead_slot_event_is_redriven_once_and_jobs_or_unreadable_letters_are_not() {
    use cardfleet::store::ledger::DeadLetter;
    use cardfleet_schemas::{EventMessage, Meta, SlotEvent, SlotEventKind};
    let app = spawn_app().await;
    let event = EventMessage::SlotEvent(SlotEvent {
        meta: Meta::now(),
        rack_id: "rack-redrive".into(),
        worker_id: "w-1".into(),
        slot: 3,
        kind: SlotEventKind::Quarantined,
        chip_serial: None,
        reason: Some("too many failures".into()),
    });
    let letter = |source: &str, payload: String| {
        DeadLetter::new(source, "delivery limit", None, payload.as_bytes())
    };
    app.store
        .record_dead_letters(&[
            letter(
                cardfleet_schemas::SLOT_EVENTS_QUEUE,
                serde_json::to_string(&event).unwrap(),
            ),
            letter(cardfleet_schemas::RESULTS_QUEUE, "{not json".into()),
            letter(
                "cardfleet.rack.rack-redrive",
                r#"{"secrets":"<redacted>"}"#.into(),
            ),
            // An event of another slot that no enrolled rack signed.
            DeadLetter::new(
                cardfleet_schemas::SLOT_EVENTS_QUEUE,
                cardfleet::rack_identity::UNAUTHENTICATED_RACK,
                None,
                serde_json::to_string(&event)
                    .unwrap()
                    .replace("\"slot\":3", "\"slot\":4")
                    .as_bytes(),
            ),
        ])
        .await
        .unwrap();
    let listed = app.get("/v1/dead-letters").await.body;
    let id_of = |source: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["source"] == source && d["reason"] == "delivery limit")
            .unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    let (event_id, unreadable_id, job_id) = (
        id_of(cardfleet_schemas::SLOT_EVENTS_QUEUE),
        id_of(cardfleet_schemas::RESULTS_QUEUE),
        id_of("cardfleet.rack.rack-redrive"),
    );
    assert!(
        app.get("/v1/racks")
            .await
            .body
            .as_array()
            .unwrap()
            .is_empty()
    );

    let operator = create_token(&app.store, "night-operator", &[Role::Operator]).await;
    let redrive = |id: i64| {
        let operator = operator.clone();
        let app = &app;
        async move {
            app.call_as(
                Some(&operator),
                Method::POST,
                &format!("/v1/dead-letters/{id}/redrive"),
                None,
            )
            .await
        }
    };
    let r = redrive(event_id).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["redriven_by"], "night-operator");
    // Applied as the ledger would: the slot is now quarantined.
    let racks = app.get("/v1/racks").await.body;
    assert_eq!(racks[0]["rack_id"], "rack-redrive", "{racks}");
    assert_eq!(racks[0]["slots"][0]["state"], "quarantined", "{racks}");
    // Once only.
    let r = redrive(event_id).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["code"], "already_redriven");

    let r = redrive(unreadable_id).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["code"], "not_redrivable");
    let r = redrive(job_id).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["code"], "not_redrivable");
    let forged_id = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["reason"] == cardfleet::rack_identity::UNAUTHENTICATED_RACK)
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let r = redrive(forged_id).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["code"], "not_redrivable");
    let r = redrive(987_654).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.body["code"], "unknown_dead_letter");
    let r = app
        .call_as(
            Some(&operator),
            Method::POST,
            "/v1/dead-letters/x/redrive",
            None,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);

    // The list says who sent which again; the audit has the one redrive.
    let listed = app.get("/v1/dead-letters").await.body;
    for d in listed.as_array().unwrap() {
        let redriven = d["id"].as_i64() == Some(event_id);
        assert_eq!(d["redriven_by"] == "night-operator", redriven, "{d}");
    }
    let audit = app.get("/v1/audit?action=dead_letter.redriven").await.body;
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit}");
    assert_eq!(audit[0]["actor"], "night-operator");
    assert_eq!(audit[0]["detail"]["dead_letter"], event_id);
}

#[tokio::test]
async fn an_admin_makes_a_single_use_enrollment_token_for_a_rack() {
    let app = spawn_app().await;
    let admin = create_token(&app.store, "rack-admin", &[Role::Admin]).await;
    let r = app
        .call_as(
            Some(&admin),
            Method::POST,
            "/v1/racks/rack-e/enrollment-tokens",
            Some(json!({ "ttl_hours": 2 })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["rack_id"], "rack-e");
    let secret = r.body["token"].as_str().unwrap().to_owned();
    let name = r.body["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("enroll-rack-e-"), "{name}");

    // It enrolls that rack once, and nothing else.
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [9u8; 32]);
    let signing_key = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        cardfleet_schemas::rack_identity::verifying_key(&support::workers::test_rack_key("rack-e")),
    );
    let enroll = |rack: &'static str| {
        let secret = secret.clone();
        let key = key.clone();
        let signing_key = signing_key.clone();
        let app = &app;
        async move {
            app.call_as(
                Some(&secret),
                Method::POST,
                &format!("/v1/racks/{rack}/enrollment"),
                Some(json!({ "public_key": key, "signing_key": signing_key })),
            )
            .await
        }
    };
    assert_eq!(enroll("rack-other").await.status, 403);
    let r = enroll("rack-e").await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(enroll("rack-e").await.status, 401, "single use");
    let r = app
        .call_as(Some(&secret), Method::GET, "/v1/me", None)
        .await;
    assert_eq!(r.status, 401);

    for bad in [
        json!({ "ttl_hours": 0 }),
        json!({ "ttl_hours": 721 }),
        json!({ "ttl": 1 }),
    ] {
        let r = app
            .call_as(
                Some(&admin),
                Method::POST,
                "/v1/racks/rack-e/enrollment-tokens",
                Some(bad),
            )
            .await;
        assert_eq!(r.status, 400, "{}", r.body);
    }
}
