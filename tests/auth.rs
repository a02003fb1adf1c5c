//! Access control through the HTTP API: every endpoint against every role
//! and no token, revocation, rack enrollment tokens, PUK escrow under audit
//! and PIN mailers released once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use cardfleet::api::auth::Access;
use cardfleet::credentials::{CredentialCipher, Sealed};
use cardfleet::store::initialize::credential_context;
use cardfleet::store::tokens::{NewToken, Role};
use cardfleet_schemas::Outcome;
use reqwest::Method;
use serde_json::{Value, json};
use support::*;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// Who calls: no token, or a token holding exactly one role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Nobody,
    As(Role),
}

/// One row of the matrix: a request and the roles that may make it.
struct Endpoint {
    method: Method,
    /// The route template, as in the router and the OpenAPI document.
    route: &'static str,
    path: String,
    body: Option<Value>,
    allowed: &'static [Role],
}

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
async fn role_tokens(app: &TestApp, rack: &str) -> Vec<(Who, Option<String>)> {
    let mut tokens = vec![(Who::Nobody, None)];
    for role in Role::ALL {
        let new = NewToken {
            name: format!("only-{role}"),
            roles: vec![role],
            rack_id: (role == Role::Worker).then(|| rack.to_owned()),
            single_use: role == Role::Worker,
            expires_at: None,
        };
        let secret = app.store.create_token(&new, "test").await.unwrap();
        tokens.push((Who::As(role), Some(secret.expose().to_owned())));
    }
    tokens
}

#[tokio::test]
async fn every_endpoint_admits_exactly_its_roles_and_nothing_without_a_token() {
    use Role::*;
    let app = spawn_app().await;
    let cards = app.import_cards("M", 1).await;
    let card = cards[0];
    let batch = Uuid::new_v4();
    let tokens = role_tokens(&app, "rack-m").await;
    let endpoints = vec![
        Endpoint {
            method: Method::POST,
            route: "/v1/cards/import",
            path: "/v1/cards/import".into(),
            body: Some(json!({ "cards": [] })),
            allowed: &[Operator],
        },
        Endpoint {
            method: Method::GET,
            route: "/v1/cards",
            path: "/v1/cards?limit=1".into(),
            body: None,
            allowed: &[Operator],
        },
        Endpoint {
            method: Method::GET,
            route: "/v1/cards/{card_id}",
            path: format!("/v1/cards/{card}"),
            body: None,
            allowed: &[Operator],
        },
        Endpoint {
            method: Method::GET,
            route: "/v1/cards/{card_id}/puk",
            path: format!("/v1/cards/{card}/puk?reason=matrix"),
            body: None,
            allowed: &[Officer],
        },
        Endpoint {
            method: Method::POST,
            route: "/v1/cards/{card_id}/rerun",
            path: format!("/v1/cards/{card}/rerun"),
            body: None,
            allowed: &[Operator],
        },
        Endpoint {
            method: Method::GET,
            route: "/v1/processes/initialize-temporary-card",
            path: "/v1/processes/initialize-temporary-card".into(),
            body: None,
            allowed: &[Operator, Admin],
        },
        Endpoint {
            method: Method::PUT,
            route: "/v1/processes/initialize-temporary-card",
            path: "/v1/processes/initialize-temporary-card".into(),
            body: Some(json!({ "enabled": false })),
            allowed: &[Admin],
        },
        Endpoint {
            method: Method::POST,
            route: "/v1/initializations",
            path: "/v1/initializations".into(),
            body: Some(json!({ "card_ids": [] })),
            allowed: &[Operator],
        },
        Endpoint {
            method: Method::GET,
            route: "/v1/initializations/{batch_id}",
            path: format!("/v1/initializations/{batch}"),
            body: None,
            allowed: &[Operator],
        },
        Endpoint {
            method: Method::GET,
            route: "/v1/initializations/{batch_id}/events",
            path: format!("/v1/initializations/{batch}/events"),
            body: None,
            allowed: &[Operator],
        },
        Endpoint {
            method: Method::POST,
            route: "/v1/initializations/{batch_id}/cancel",
            path: format!("/v1/initializations/{batch}/cancel"),
            body: Some(json!({})),
            allowed: &[Operator],
        },
        Endpoint {
            method: Method::POST,
            route: "/v1/initializations/{batch_id}/cards/{card_id}/cancel",
            path: format!("/v1/initializations/{batch}/cards/{card}/cancel"),
            body: Some(json!({})),
            allowed: &[Operator],
        },
        Endpoint {
            method: Method::POST,
            route: "/v1/initializations/{batch_id}/pin-mailers",
            path: format!("/v1/initializations/{batch}/pin-mailers?format=csv"),
            body: None,
            allowed: &[Officer],
        },
        Endpoint {
            method: Method::POST,
            route: "/v1/initializations/{batch_id}/pin-mailers/reopen",
            path: format!("/v1/initializations/{batch}/pin-mailers/reopen"),
            body: None,
            allowed: &[Admin],
        },
        Endpoint {
            method: Method::GET,
            route: "/v1/racks",
            path: "/v1/racks".into(),
            body: None,
            allowed: &[Operator],
        },
        Endpoint {
            method: Method::POST,
            route: "/v1/racks/{rack_id}/slots/{slot}/release",
            path: "/v1/racks/rack-m/slots/0/release".into(),
            body: None,
            allowed: &[Operator],
        },
        Endpoint {
            method: Method::POST,
            route: "/v1/racks/{rack_id}/enrollment",
            path: "/v1/racks/rack-m/enrollment".into(),
            // A bad key: refused with 422 before the token is consumed.
            body: Some(json!({ "public_key": "not-a-key", "signing_key": "not-a-key" })),
            allowed: &[Worker],
        },
        Endpoint {
            method: Method::GET,
            route: "/v1/dead-letters",
            path: "/v1/dead-letters".into(),
            body: None,
            allowed: &[Operator],
        },
        Endpoint {
            method: Method::GET,
            route: "/v1/audit",
            path: "/v1/audit?limit=1".into(),
            body: None,
            allowed: &[Auditor],
        },
        Endpoint {
            method: Method::GET,
            route: "/v1/tokens",
            path: "/v1/tokens".into(),
            body: None,
            allowed: &[Admin],
        },
        Endpoint {
            method: Method::POST,
            route: "/v1/tokens",
            path: "/v1/tokens".into(),
            body: Some(json!({ "name": "made-in-matrix", "roles": ["auditor"] })),
            allowed: &[Admin],
        },
        Endpoint {
            method: Method::POST,
            route: "/v1/tokens/{name}/revoke",
            path: "/v1/tokens/nobody/revoke".into(),
            body: None,
            allowed: &[Admin],
        },
        Endpoint {
            method: Method::GET,
            route: "/v1/me",
            path: "/v1/me".into(),
            body: None,
            allowed: &[Admin, Operator, Officer, Auditor],
        },
        Endpoint {
            method: Method::POST,
            route: "/v1/dead-letters/{id}/redrive",
            path: "/v1/dead-letters/999999/redrive".into(),
            body: None,
            allowed: &[Operator],
        },
        Endpoint {
            method: Method::POST,
            route: "/v1/racks/{rack_id}/enrollment-tokens",
            path: "/v1/racks/rack-m/enrollment-tokens".into(),
            body: Some(json!({ "ttl_hours": 1 })),
            allowed: &[Admin],
        },
    ];

    // The matrix covers every protected route of the access table, and the
    // access table every operation the OpenAPI document describes.
    let tested: BTreeSet<(String, String)> = endpoints
        .iter()
        .map(|e| (e.method.to_string(), e.route.to_owned()))
        .collect();
    let table: BTreeSet<(String, String)> = cardfleet::api::auth::ROUTES
        .iter()
        .filter(|(_, _, access)| *access != Access::Public)
        .map(|(m, r, _)| (m.to_string(), (*r).to_owned()))
        .collect();
    assert_eq!(tested, table, "the matrix and the access table differ");
    let doc = app.get("/openapi.json").await;
    assert_eq!(doc.status, 200);
    let mut documented = BTreeSet::new();
    for (path, ops) in doc.body["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    assert_eq!(
        documented, table,
        "the OpenAPI operations and the access table differ"
    );

    let mut failures = Vec::new();
    for e in &endpoints {
        for (who, token) in &tokens {
            let mut request =
                client_with(token.as_deref()).request(e.method.clone(), app.url(&e.path));
            if let Some(body) = &e.body {
                request = request.json(body);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let challenge = response.headers().get("www-authenticate").cloned();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let expected = match who {
                Who::Nobody => "401",
                Who::As(role) if e.allowed.contains(role) => "allowed",
                Who::As(_) => "403",
            };
            let ok = match expected {
                "401" => {
                    status == 401
                        && body["code"] == "unauthenticated"
                        && challenge.is_some_and(|c| c == "Bearer")
                }
                "403" => status == 403 && body["code"] == "forbidden",
                _ => {
                    (200..300).contains(&status)
                        || (400..500).contains(&status) && status != 401 && status != 403
                }
            };
            if !ok {
                failures.push(format!(
                    "{} {} as {who:?}: expected {expected}, got {status} {body}",
                    e.method, e.path
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Open to everyone: health, readiness and the API description; the
    // metrics are on the metrics listener only.
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        let r = app.call_as(None, Method::GET, path, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    assert_eq!(app.get("/metrics").await.status, 404);
    // An unknown route tells nobody without a token that it does not exist.
    let r = app
        .call_as(None, Method::GET, "/v1/nothing-here", None)
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(app.get("/v1/nothing-here").await.status, 404);
}

#[tokio::test]
async fn a_revoked_or_made_up_token_is_refused_and_the_actor_is_the_token_name() {
    let app = spawn_app().await;
    let ops = create_token(&app.store, "night-shift", &[Role::Operator, Role::Admin]).await;
    let r = app
        .call_as(
            Some(&ops),
            Method::PUT,
            "/v1/processes/initialize-temporary-card",
            Some(json!({ "enabled": true })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Audit rows of the request name the token.
    let audit = app.get("/v1/audit?action=process.enabled").await;
    assert_eq!(audit.status, 200, "{}", audit.body);
    assert_eq!(audit.body[0]["actor"], "night-shift", "{}", audit.body);

    // Listing shows names and roles, never a secret or its hash.
    let listed = app.get("/v1/tokens").await;
    assert_eq!(listed.status, 200);
    let text = listed.body.to_string();
    assert!(text.contains("night-shift"));
    assert!(!text.contains(&ops) && !text.contains(&ops[3..]));
    assert!(!text.contains("hash"));

    let r = app.post("/v1/tokens/night-shift/revoke", json!(null)).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = app
        .call_as(Some(&ops), Method::GET, "/v1/cards", None)
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.body["code"], "unauthenticated");
    let made_up = format!("cf_{}", "0".repeat(64));
    let r = app
        .call_as(Some(&made_up), Method::GET, "/v1/cards", None)
        .await;
    assert_eq!(r.status, 401);
    let audit = app.get("/v1/audit?action=token.revoked").await;
    assert_eq!(audit.body[0]["detail"]["token"], "night-shift");
    assert!(
        !app.get("/v1/audit")
            .await
            .body
            .to_string()
            .contains(&ops[3..])
    );

    // A token created through the API works once its secret is known.
    let r = app
        .post(
            "/v1/tokens",
            json!({ "name": "reader", "roles": ["auditor"] }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let reader = r.body["token"].as_str().unwrap().to_owned();
    let r = app
        .call_as(Some(&reader), Method::GET, "/v1/audit", None)
        .await;
    assert_eq!(r.status, 200);
    let r = app
        .post(
            "/v1/tokens",
            json!({ "name": "reader", "roles": ["auditor"] }),
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["code"], "token_exists");
}

async fn enroll_token(app: &TestApp, name: &str, rack: &str, expires_in_hours: i64) -> String {
    let new = NewToken {
        name: name.to_owned(),
        roles: vec![Role::Worker],
        rack_id: Some(rack.to_owned()),
        single_use: true,
        expires_at: Some(chrono::Utc::now() + chrono::Duration::hours(expires_in_hours)),
    };
    app.store
        .create_token(&new, "test")
        .await
        .unwrap()
        .expose()
        .to_owned()
}

async fn enroll(app: &TestApp, token: Option<&str>, rack: &str, key: &[u8; 32]) -> Reply {
    app.call_as(
        token,
        Method::POST,
        &format!("/v1/racks/{rack}/enrollment"),
        Some(json!({ "public_key": public_key_b64(key), "signing_key": signing_key_b64(rack) })),
    )
    .await
}

#[tokio::test]
async fn enrollment_takes_one_fresh_token_for_its_own_rack_only() {
    let app = spawn_app().await;
    let key = [9u8; 32];
    let token = enroll_token(&app, "enroll-a", "rack-a", 24).await;
    let other_rack = enroll_token(&app, "enroll-b", "rack-b", 24).await;
    let expired = enroll_token(&app, "enroll-old", "rack-a", -1).await;
    let operator = create_token(&app.store, "op", &[Role::Operator, Role::Admin]).await;

    let wrong = format!("cf_{}", "1".repeat(64));
    assert_eq!(enroll(&app, Some(&wrong), "rack-a", &key).await.status, 401);
    assert_eq!(enroll(&app, None, "rack-a", &key).await.status, 401);
    assert_eq!(
        enroll(&app, Some(&expired), "rack-a", &key).await.status,
        401
    );
    let r = enroll(&app, Some(&other_rack), "rack-a", &key).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(
        enroll(&app, Some(&operator), "rack-a", &key).await.status,
        403
    );
    // A bad key is refused and leaves the token usable.
    let r = app
        .call_as(
            Some(&token),
            Method::POST,
            "/v1/racks/rack-a/enrollment",
            Some(json!({ "public_key": base64::engine::general_purpose::STANDARD.encode([1u8; 16]), "signing_key": signing_key_b64("rack-a") })),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["code"], "invalid_public_key");
    assert_eq!(app.store.rack_public_key("rack-a").await.unwrap(), None);

    let r = enroll(&app, Some(&token), "rack-a", &key).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["rack_id"], "rack-a");
    assert_eq!(
        app.store.rack_public_key("rack-a").await.unwrap(),
        Some(key)
    );

    // Used once: refused, and the key stays as enrolled.
    let r = enroll(&app, Some(&token), "rack-a", &[7u8; 32]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        app.store.rack_public_key("rack-a").await.unwrap(),
        Some(key)
    );
    // The worker token can do nothing else, even before it is used.
    let r = app
        .call_as(Some(&other_rack), Method::GET, "/v1/racks", None)
        .await;
    assert_eq!(r.status, 403);
    let used = app.get("/v1/audit?action=token.used").await;
    assert_eq!(used.body.as_array().unwrap().len(), 1, "{}", used.body);
    assert_eq!(used.body[0]["actor"], "enroll-a");
}

/// A finished batch of `n` succeeded cards with `profile`; returns the batch
/// id and the card ids.
async fn finished_batch(
    app: &TestApp,
    prefix: &str,
    n: usize,
    profile: &str,
) -> (String, Vec<Uuid>) {
    let rack = format!("rack-{}", prefix.to_lowercase());
    let cards: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "card_number": format!("{prefix}-TC-{i:03}"),
                "chip_serial": format!("{prefix}-CHIP-{i:03}"),
                "card_type": "temporary",
                "profile": profile,
            })
        })
        .collect();
    let r = app
        .post("/v1/cards/import", json!({ "cards": cards }))
        .await;
    assert_eq!(r.body["imported"], n, "{}", r.body);
    app.enable().await;
    let token = enroll_token(app, &format!("enroll-{rack}"), &rack, 1).await;
    assert_eq!(
        enroll(app, Some(&token), &rack, &[5u8; 32]).await.status,
        201
    );
    let worker = FakeWorker::connect(&app.vhost.url()).await;
    let serials: Vec<String> = (0..n).map(|i| format!("{prefix}-CHIP-{i:03}")).collect();
    worker.insert_cards(&rack, &serials).await;
    eventually(WAIT, "cards located", || async {
        !app.get("/v1/racks")
            .await
            .body
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;
    let listed = app.get("/v1/cards?limit=1000").await;
    let ids: Vec<Uuid> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["card_number"].as_str().unwrap().starts_with(prefix))
        .map(|c| c["card_id"].as_str().unwrap().parse().unwrap())
        .collect();
    let r = app
        .post("/v1/initializations", json!({ "card_ids": ids }))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let batch = r.body["batch_id"].as_str().unwrap().to_owned();
    // Not finished yet: no mailers.
    let r = app
        .post(
            &format!("/v1/initializations/{batch}/pin-mailers"),
            json!(null),
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("batch_not_finished"))
    );
    for job in worker.take_jobs(&rack, n, WAIT).await {
        worker
            .publish_result(&result_for(&job, Outcome::Succeeded))
            .await;
    }
    eventually(WAIT, "batch finished", || async {
        app.get(&format!("/v1/initializations/{batch}")).await.body["finished"] == true
    })
    .await;
    (batch, ids)
}

fn cipher() -> CredentialCipher {
    CredentialCipher::from_hex("k1", ENCRYPTION_KEY).unwrap()
}

/// Card number, job id, key id, PIN nonce and ciphertext, destroyed.
type PinRow = (String, Uuid, String, Vec<u8>, Vec<u8>, bool);

/// The stored PINs of a batch by card number; `None` for a destroyed one.
async fn stored_pins(app: &TestApp, batch: &str) -> Vec<(String, Option<String>)> {
    let rows: Vec<PinRow> = sqlx::query_as(
        "SELECT c.card_number, j.id, cr.key_id, cr.pin_nonce, cr.pin_ct, cr.pin_destroyed_at IS NOT NULL
         FROM jobs j JOIN cards c ON c.id = j.card_id JOIN credentials cr ON cr.job_id = j.id
         WHERE j.batch_id = $1::uuid ORDER BY c.card_number",
    )
    .bind(batch)
    .fetch_all(app.store.postgres_pool().unwrap())
    .await
    .unwrap();
    rows.into_iter()
        .map(|(number, job, key_id, nonce, ct, destroyed)| {
            if destroyed {
                assert!(
                    nonce.is_empty() && ct.is_empty(),
                    "a destroyed PIN left bytes"
                );
                return (number, None);
            }
            let sealed = Sealed {
                nonce,
                ciphertext: ct,
            };
            let pin = cipher()
                .open(&key_id, &sealed, &credential_context(job, "pin"))
                .unwrap();
            (number, Some(pin.expose().to_owned()))
        })
        .collect()
}

#[tokio::test]
async fn an_officer_reads_a_puk_only_with_a_reason_and_the_read_is_audited() {
    let app = spawn_app().await;
    let (_batch, ids) = finished_batch(&app, "P", 1, "temporary-piv").await;
    let card = ids[0];
    let officer = create_token(&app.store, "officer-olga", &[Role::Officer]).await;
    let auditor = create_token(&app.store, "auditor-ada", &[Role::Auditor]).await;
    let path = |q: &str| format!("/v1/cards/{card}/puk{q}");

    for q in ["", "?reason=", "?reason=%20%20"] {
        let r = app
            .call_as(Some(&officer), Method::GET, &path(q), None)
            .await;
        assert_eq!(
            (r.status, r.body["code"].as_str()),
            (400, Some("reason_required")),
            "{q}"
        );
    }
    let long = "x".repeat(501);
    let r = app
        .call_as(
            Some(&officer),
            Method::GET,
            &path(&format!("?reason={long}")),
            None,
        )
        .await;
    assert_eq!(r.status, 400);
    let r = app
        .call_as(Some(&auditor), Method::GET, &path("?reason=curious"), None)
        .await;
    assert_eq!(r.status, 403);
    let refused = app
        .call_as(
            Some(&auditor),
            Method::GET,
            "/v1/audit?action=credential.puk_read",
            None,
        )
        .await;
    assert_eq!(refused.body, json!([]), "refused reads are not reads");

    let before = chrono::Utc::now();
    let response = client_with(Some(&officer))
        .get(app.url(&path(
            "?reason=card%20holder%20locked%20out%2C%20ticket%2042",
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    let puk = body["puk"].as_str().unwrap().to_owned();
    assert_eq!(puk.len(), 8);
    assert!(puk.bytes().all(|b| b.is_ascii_digit()));
    let job: Uuid = body["job_id"].as_str().unwrap().parse().unwrap();
    let (key_id, nonce, ct): (String, Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT key_id, puk_nonce, puk_ct FROM credentials WHERE job_id = $1")
            .bind(job)
            .fetch_one(app.store.postgres_pool().unwrap())
            .await
            .unwrap();
    let stored = cipher()
        .open(
            &key_id,
            &Sealed {
                nonce,
                ciphertext: ct,
            },
            &credential_context(job, "puk"),
        )
        .unwrap();
    assert_eq!(stored.expose(), puk);

    let reads = app
        .call_as(
            Some(&auditor),
            Method::GET,
            "/v1/audit?action=credential.puk_read",
            None,
        )
        .await;
    assert_eq!(reads.status, 200);
    let rows = reads.body.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{}", reads.body);
    let row = &rows[0];
    assert_eq!(row["actor"], "officer-olga");
    assert_eq!(row["card_id"], card.to_string());
    assert_eq!(row["job_id"], job.to_string());
    assert_eq!(row["detail"]["reason"], "card holder locked out, ticket 42");
    let at: chrono::DateTime<chrono::Utc> = row["at"].as_str().unwrap().parse().unwrap();
    assert!(at >= before - chrono::Duration::seconds(5) && at <= chrono::Utc::now());
    // Filters: by card finds it, by another card does not.
    let by_card = app
        .get(&format!(
            "/v1/audit?card_id={card}&action=credential.puk_read"
        ))
        .await;
    assert_eq!(by_card.body.as_array().unwrap().len(), 1);
    let other = app
        .get(&format!(
            "/v1/audit?card_id={}&action=credential.puk_read",
            Uuid::new_v4()
        ))
        .await;
    assert_eq!(other.body, json!([]));
    // The trail never holds the secret itself.
    let everything = app.get("/v1/audit?limit=1000").await.body.to_string();
    assert!(!everything.contains(&puk));
    assert_eq!(app.get("/v1/audit?limit=1001").await.status, 400);

    // A card without active credentials has no PUK to give.
    let fresh = app.import_cards("Q", 1).await[0];
    let r = app
        .call_as(
            Some(&officer),
            Method::GET,
            &format!("/v1/cards/{fresh}/puk?reason=x"),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (404, Some("not_found"))
    );
}

#[tokio::test]
async fn pin_mailers_are_released_once_then_destroyed_and_a_reopen_releases_what_is_left() {
    let app = spawn_app().await;
    let (batch, _) = finished_batch(&app, "L", 3, "temporary-piv").await;
    let officer = create_token(&app.store, "officer-otto", &[Role::Officer]).await;
    let admin = create_token(&app.store, "admin-anna", &[Role::Admin]).await;
    let pins = stored_pins(&app, &batch).await;
    assert_eq!(pins.len(), 3);
    let release = format!("/v1/initializations/{batch}/pin-mailers");

    let response = client_with(Some(&officer))
        .post(app.url(&format!("{release}?format=csv")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert_eq!(response.headers()["x-cardfleet-letters"], "3");
    let csv = response.text().await.unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("card_number,chip_serial,pin"));
    let released: Vec<(String, String)> = lines
        .map(|l| {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(l.as_bytes());
            let record = reader.records().next().unwrap().unwrap();
            (record[0].to_owned(), record[2].to_owned())
        })
        .collect();
    let expected: Vec<(String, String)> = pins
        .iter()
        .map(|(n, p)| (n.clone(), p.clone().unwrap()))
        .collect();
    assert_eq!(released, expected);

    // Destroyed after the release: nothing readable is left of them.
    assert!(
        stored_pins(&app, &batch)
            .await
            .iter()
            .all(|(_, p)| p.is_none())
    );

    let r = app
        .call_as(Some(&officer), Method::POST, &release, None)
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("mailers_already_released"))
    );
    let r = app
        .call_as(
            Some(&officer),
            Method::POST,
            &format!("{release}/reopen"),
            None,
        )
        .await;
    assert_eq!(r.status, 403, "officers cannot reopen");
    let r = app
        .call_as(
            Some(&admin),
            Method::POST,
            &format!("{release}/reopen"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["pins_left"], 0);
    assert_eq!(r.body["pins_destroyed"], 3);
    assert!(r.body["message"].as_str().unwrap().contains("destroyed"));
    let r = app
        .call_as(Some(&officer), Method::POST, &release, None)
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (409, Some("pins_destroyed"))
    );

    let audit = app.get(&format!("/v1/audit?batch_id={batch}")).await.body;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .filter(|a| a.starts_with("mailers."))
        .collect();
    assert_eq!(actions, ["mailers.released", "mailers.reopened"]);
    let released = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "mailers.released")
        .unwrap();
    assert_eq!(released["actor"], "officer-otto");
    assert_eq!(released["detail"]["format"], "csv");
    assert_eq!(released["detail"]["letters"], 3);
    let text = app.get("/v1/audit?limit=1000").await.body.to_string();
    for (_, pin) in &expected {
        assert!(
            !text.contains(&format!("\"{pin}\"")),
            "a PIN in the audit trail"
        );
    }
    // The event stream of the batch still ends: batch-wide audit rows are not transitions.
    let events = tokio::time::timeout(
        WAIT,
        app.http
            .get(app.url(&format!("/v1/initializations/{batch}/events")))
            .send()
            .await
            .unwrap()
            .text(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(events.contains("event: finished"), "{events}");
}

#[tokio::test]
async fn a_profile_may_keep_pins_and_a_reopened_release_gives_them_again_as_html() {
    let profiles = tempfile::tempdir().unwrap();
    let builtin = cardfleet_schemas::profile::BUILTIN_TEMPORARY_PIV
        .replace("name = \"temporary-piv\"", "name = \"keep-pins\"");
    let keep = builtin.replacen("\n[pin]", "\nkeep_pins_after_mailer = true\n\n[pin]", 1);
    assert_ne!(keep, builtin);
    std::fs::write(profiles.path().join("keep-pins.toml"), keep).unwrap();
    let app = spawn_app_with(
        &cardfleet::app::Component::ALL,
        &[("profiles.dir", profiles.path().display().to_string())],
    )
    .await;
    let (batch, _) = finished_batch(&app, "K", 2, "keep-pins").await;
    let pins = stored_pins(&app, &batch).await;
    let release = format!("/v1/initializations/{batch}/pin-mailers?format=html");

    let first = app.post(&release, json!(null)).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let html = first.body.as_str().unwrap().to_owned();
    assert_eq!(
        html.matches("page-break-after").count(),
        1,
        "one style rule"
    );
    assert_eq!(html.matches("<section class=\"letter\">").count(), 2);
    for (number, pin) in &pins {
        let letter = html
            .split("<section class=\"letter\">")
            .find(|l| l.contains(number.as_str()))
            .unwrap_or_else(|| panic!("no letter for {number}"));
        assert!(
            letter.contains(pin.as_deref().unwrap()),
            "{number}: wrong PIN"
        );
    }
    assert_eq!(
        stored_pins(&app, &batch).await,
        pins,
        "the profile keeps the PINs"
    );

    assert_eq!(app.post(&release, json!(null)).await.status, 409);
    let r = app
        .post(
            &format!("/v1/initializations/{batch}/pin-mailers/reopen"),
            json!(null),
        )
        .await;
    assert_eq!(r.body["pins_left"], 2, "{}", r.body);
    let second = app.post(&release, json!(null)).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body.as_str().unwrap(), html);
}

/// Every kind of token a request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Nobody,
    /// An API token (or, for the worker role, an enrolment token) holding one role.
    Holding(Role),
    Revoked,
    Expired,
}

/// Fills a route template with ids that parse.
fn fill(route: &str, card: Uuid) -> String {
    route
        .replace("{card_id}", &card.to_string())
        .replace("{batch_id}", &Uuid::new_v4().to_string())
        .replace("{rack_id}", "rack-x")
        .replace("{slot}", "0")
        .replace("{name}", "nobody")
        .replace("{id}", "1")
        .replace("{asset}", "app.js")
}

#[tokio::test]
async fn every_route_and_method_is_decided_by_the_table_for_every_kind_of_token() {
    use cardfleet::api::auth::ROUTES;
    let app = spawn_app().await;
    let card = app.import_cards("X", 1).await[0];
    let mut kinds: Vec<(Kind, Option<String>)> = role_tokens(&app, "rack-x")
        .await
        .into_iter()
        .map(|(who, token)| match who {
            Who::Nobody => (Kind::Nobody, token),
            Who::As(role) => (Kind::Holding(role), token),
        })
        .collect();
    let revoked = create_token(&app.store, "matrix-revoked", &Role::ALL).await;
    app.store
        .revoke_token("matrix-revoked", "test")
        .await
        .unwrap();
    kinds.push((Kind::Revoked, Some(revoked)));
    let expired = NewToken {
        name: "matrix-expired".into(),
        roles: Role::ALL.to_vec(),
        rack_id: None,
        single_use: false,
        expires_at: Some(chrono::Utc::now() - chrono::Duration::hours(1)),
    };
    let expired = app.store.create_token(&expired, "test").await.unwrap();
    kinds.push((Kind::Expired, Some(expired.expose().to_owned())));

    let methods = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ];
    let mut routes: Vec<&str> = ROUTES.iter().map(|(_, r, _)| *r).collect();
    routes.sort_unstable();
    routes.dedup();
    let mut failures = Vec::new();
    let mut checked = 0;
    for route in &routes {
        for method in &methods {
            let listed = ROUTES
                .iter()
                .find(|(m, r, _)| r == route && m.as_str() == method.as_str())
                .map(|(_, _, a)| *a);
            let allow: Vec<&str> = ROUTES
                .iter()
                .filter(|(_, r, _)| r == route)
                .map(|(m, _, _)| m.as_str())
                .collect();
            for (kind, token) in &kinds {
                let path = fill(route, card);
                let response = client_with(token.as_deref())
                    .request(method.clone(), app.url(&path))
                    .send()
                    .await
                    .unwrap();
                checked += 1;
                let status = response.status().as_u16();
                let allow_header = response
                    .headers()
                    .get("allow")
                    .map(|v| v.to_str().unwrap().to_owned());
                // Only the status and headers: an event stream never ends.
                let code = if (400..500).contains(&status) && *method != Method::HEAD {
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    body["code"].as_str().unwrap_or("").to_owned()
                } else {
                    String::new()
                };
                let ok = match (listed, kind) {
                    (None, _) => {
                        status == 405
                            && allow_header.as_deref() == Some(allow.join(", ").as_str())
                            && (*method == Method::HEAD || code == "method_not_allowed")
                    }
                    (Some(Access::Public), _) => status == 200,
                    (Some(_), Kind::Nobody | Kind::Revoked) => {
                        status == 401 && code == "unauthenticated"
                    }
                    (Some(_), Kind::Expired) => status == 401 && code == "token_expired",
                    (Some(Access::Roles(roles)), Kind::Holding(role)) => {
                        if roles.contains(role) {
                            ![401, 403, 405].contains(&status) && status < 500
                        } else {
                            status == 403 && code == "forbidden"
                        }
                    }
                };
                if !ok {
                    failures.push(format!(
                        "{method} {path} with {kind:?}: got {status} {code} allow={allow_header:?}"
                    ));
                }
            }
        }
    }
    assert!(checked >= routes.len() * methods.len() * 8);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn head_as_an_auditor_reads_no_tokens_and_no_puk_and_writes_no_audit_row() {
    let app = spawn_app().await;
    let card = app.import_cards("HD", 1).await[0];
    let auditor = create_token(&app.store, "head-auditor", &[Role::Auditor]).await;
    let officer = create_token(&app.store, "head-officer", &[Role::Officer]).await;
    let audit_rows = || async {
        app.get("/v1/audit?limit=1000")
            .await
            .body
            .as_array()
            .unwrap()
            .len()
    };
    let before = audit_rows().await;
    let puk = format!("/v1/cards/{card}/puk?reason=head");
    for (token, path) in [
        (&auditor, "/v1/tokens"),
        (&auditor, puk.as_str()),
        (&officer, puk.as_str()),
    ] {
        let r = app.call_as(Some(token), Method::HEAD, path, None).await;
        assert_eq!(r.status, 405, "HEAD {path}");
    }
    assert_eq!(
        audit_rows().await,
        before,
        "a refused HEAD wrote audit rows"
    );
}

#[tokio::test]
async fn tokens_expire_after_the_default_ttl_and_reserved_names_are_refused() {
    let app = spawn_app().await;
    // Made through the API: the default expiry (tokens.default_ttl_days, 90).
    let r = app
        .post(
            "/v1/tokens",
            json!({ "name": "ninety", "roles": ["auditor"] }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(r.body["expires_at"].clone()).unwrap();
    let days = (expires - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!((89.9..=90.1).contains(&days), "{days}");
    let r = app
        .post(
            "/v1/tokens",
            json!({ "name": "one-day", "roles": ["auditor"], "ttl_days": 1 }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = app
        .post(
            "/v1/tokens",
            json!({ "name": "forever", "roles": ["auditor"], "ttl_days": 0 }),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);

    // Once past its expiry a token gets token_expired, not a bare 401.
    let old = NewToken {
        name: "old".into(),
        roles: vec![Role::Auditor],
        rack_id: None,
        single_use: false,
        expires_at: Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
    };
    let old = app.store.create_token(&old, "test").await.unwrap();
    let r = app
        .call_as(Some(old.expose()), Method::GET, "/v1/audit", None)
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["code"], "token_expired");

    // Names the services write as audit actors are not for tokens.
    for name in ["ledger", "dispatcher", "standalone", "Ledger"] {
        let r = app
            .post("/v1/tokens", json!({ "name": name, "roles": ["auditor"] }))
            .await;
        assert_eq!(r.status, 409, "{name}: {}", r.body);
        assert_eq!(r.body["code"], "reserved_name");
    }
    let listed = app.get("/v1/tokens").await.body.to_string();
    assert!(!listed.contains("\"ledger\""), "{listed}");
}
