//! Observability end to end: the alert rules under promtool, a real
//! Prometheus scraping a running fleet for every dashboard query, promtool's
//! lint of every metrics page, the README's metrics catalogue, and labels
//! that stay bounded however many cards, jobs and batches go through.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use cardfleet::app::Component;
use cardfleet_schemas as wire;
use cardfleet_worker::rack::simulated::SimCard;
use serde_json::{Value, json};
use support::prometheus::*;
use support::workers::*;
use support::*;

const WAIT: Duration = Duration::from_secs(300);

/// (dashboard, panel title, expression) of every panel target of every dashboard.
fn dashboard_queries() -> Vec<(String, String, String)> {
    fn walk(file: &str, panels: &[Value], out: &mut Vec<(String, String, String)>) {
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            if let Some(nested) = panel["panels"].as_array() {
                walk(file, nested, out);
            }
            if panel["type"] == "row" {
                continue;
            }
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "{file}: panel '{title}' has no query");
            assert_eq!(
                panel["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{file}: panel '{title}' must use the dashboard's Prometheus"
            );
            for target in targets {
                let expr = target["expr"].as_str().unwrap_or_default().to_owned();
                assert!(
                    !expr.is_empty(),
                    "{file}: panel '{title}' has an empty query"
                );
                out.push((file.to_owned(), title.clone(), expr));
            }
        }
    }
    let mut out = Vec::new();
    for file in ["fleet-overview.json", "racks.json"] {
        let path = repo_path(&format!("grafana/dashboards/{file}"));
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        walk(file, dashboard["panels"].as_array().unwrap(), &mut out);
    }
    out
}

/// A dashboard query as Grafana sends it for all racks over the last ten
/// minutes, with a one-second scrape interval.
fn substitute(expr: &str) -> String {
    let query = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "10m")
        .replace("${rack}", ".*")
        .replace("$rack", ".*");
    assert!(!query.contains('$'), "unknown dashboard variable in {expr}");
    query
}

/// The metric names of the README's metrics tables.
fn readme_catalogue() -> BTreeSet<String> {
    std::fs::read_to_string(repo_path("README.md"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("| `cardfleet_"))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("cardfleet_{name}"))
        .collect()
}

/// Label values that name a card, job, batch or chip, or that are too many.
fn unbounded_labels(pages: &[String], card_values: &BTreeSet<String>, bound: usize) -> Vec<String> {
    let mut problems = Vec::new();
    for ((family, label), values) in label_values(pages) {
        if values.len() > bound {
            problems.push(format!("{family}{{{label}}} has {} values", values.len()));
        }
        for v in &values {
            if looks_like_an_id(v) || card_values.contains(v) {
                problems.push(format!("{family}{{{label}=\"{v}\"}} carries an id"));
            }
        }
    }
    problems
}

fn card_values(serials: impl Iterator<Item = u32>) -> BTreeSet<String> {
    serials
        .flat_map(|s| [s.to_string(), format!("TC-{s}")])
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool_and_every_alert_has_a_unit_test() {
    let rules = repo_path("deploy/prometheus/rules.yml");
    let tests = repo_path("deploy/prometheus/rules_test.yml");
    let config = repo_path("deploy/prometheus/prometheus.yml");
    for args in [
        ["check", "rules", rules.to_str().unwrap()],
        ["test", "rules", tests.to_str().unwrap()],
        ["check", "config", config.to_str().unwrap()],
    ] {
        let (ok, out) = promtool(&args, None);
        assert!(ok, "promtool {}:\n{out}", args.join(" "));
    }
    let alerts: Vec<String> = std::fs::read_to_string(&rules)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect();
    assert_eq!(alerts.len(), 6, "{alerts:?}");
    let tested = std::fs::read_to_string(&tests).unwrap();
    for alert in alerts {
        assert!(
            tested.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - "
            )),
            "rules_test.yml never expects {alert} to fire"
        );
    }
}

#[test]
fn dashboard_queries_are_found_and_their_variables_substituted() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 40, "{}", queries.len());
    assert_eq!(
        substitute("rate(x{rack=~\"$rack\"}[$__rate_interval])"),
        "rate(x{rack=~\".*\"}[1m])"
    );
}

#[test]
fn metrics_pages_are_read_into_families_and_labels() {
    let page = "# TYPE a_seconds histogram\n\
                a_seconds_bucket{rack=\"r\\\"1\",le=\"0.1\"} 1\n\
                a_seconds_sum{rack=\"r\\\"1\"} 0.5\n\
                b_total 3\n\
                c_count{x=\"y\",z=\"\"} 2\n";
    let s = samples(page);
    assert_eq!(s[0].family, "a_seconds");
    assert_eq!(s[0].labels["rack"], "r\"1");
    assert_eq!(s[1].family, "a_seconds");
    assert_eq!(s[2].family, "b_total");
    assert!(s[2].labels.is_empty());
    assert_eq!(s[3].family, "c_count", "not a histogram: keeps its name");
    assert_eq!(s[3].labels["z"], "");
    assert!(looks_like_an_id("6f1c2a7e-1d3b-4c8a-9f00-2b5d0e6c7a11"));
    assert!(looks_like_an_id("3000017"));
    assert!(!looks_like_an_id("rack-1"));
    assert!(!looks_like_an_id("12"));
}

#[tokio::test]
async fn prometheus_scraping_a_fleet_through_a_batch_finds_a_series_for_every_dashboard_query() {
    let app = spawn_app_with(&Component::ALL, &[("metrics.refresh_seconds", "1".into())]).await;
    let serials: Vec<u32> = (3_000_001..=3_000_160).collect();
    import_serials(&app, serials.iter().copied()).await;
    app.enable().await;
    // Every twentieth chip is mute, so failures have reasons to show.
    let mute = |s: &u32| s.is_multiple_of(20);
    let card = |s: &u32| {
        let mut c = SimCard::new(*s);
        c.faults.mute = mute(s);
        c
    };
    let (first, second) = serials.split_at(80);
    let w1 = TestWorker::start(&app, "rack-1", 8, first.iter().map(card).collect(), &[]);
    let w2 = TestWorker::start(&app, "rack-2", 8, second.iter().map(card).collect(), &[]);
    let control_plane = app.metrics_port.unwrap();
    let prometheus = Prometheus::start(&[
        ("cardfleet-control-plane", vec![control_plane]),
        ("cardfleet-workers", vec![w1.metrics_port, w2.metrics_port]),
    ])
    .await;
    prometheus.wait_targets_up(3, WAIT).await;

    // A poison result: the ledger dead-letters it, and a real alert sees that.
    let poison = FakeWorker::connect(&app.vhost.url()).await;
    poison
        .publish(wire::RESULTS_EXCHANGE, wire::RESULTS_QUEUE, b"not json")
        .await;

    let batch = app.submit_all(serials.len()).await;
    let status = wait_finished(&app, &batch, WAIT).await;
    let failed = serials.iter().filter(|s| mute(s)).count();
    let succeeded = serials.len() - failed;
    assert_eq!(status["counts"]["succeeded"], succeeded, "{status}");
    assert_eq!(status["counts"]["failed"], failed, "{status}");

    // Prometheus holds the batch's real numbers, from workers and control plane.
    let expected = [
        (
            "sum(cardfleet_worker_cards_total{outcome=\"succeeded\"})",
            succeeded,
        ),
        (
            "sum(cardfleet_worker_cards_total{outcome=\"failed\"})",
            failed,
        ),
        (
            "sum(cardfleet_worker_card_failures_total{reason=\"card_mute\"})",
            failed,
        ),
        ("sum(cardfleet_worker_slot_cards_total)", serials.len()),
        (
            "sum(cardfleet_jobs_finished_total{outcome=\"succeeded\"})",
            succeeded,
        ),
        ("sum(cardfleet_jobs_created_total)", serials.len()),
        ("sum(cardfleet_jobs)", 0),
        ("max(cardfleet_dead_letters_stored)", 1),
        ("count(cardfleet_rack_queue_messages)", 2),
    ];
    for (query, want) in expected {
        eventually(Duration::from_secs(60), query, || async {
            prometheus.value(query).await == Some(want as f64)
        })
        .await;
    }
    eventually(
        Duration::from_secs(60),
        "the dead-letter alert fires",
        || async {
            let alerts = prometheus.api("/api/v1/alerts", &[]).await;
            alerts["alerts"].as_array().unwrap().iter().any(|a| {
                a["labels"]["alertname"] == "CardfleetDeadLettersGrowing"
                    && a["labels"]["source"] == wire::RESULTS_QUEUE
                    && a["state"] == "firing"
            })
        },
    )
    .await;
    let groups = prometheus.api("/api/v1/rules", &[]).await;
    for rule in groups["groups"][0]["rules"].as_array().unwrap() {
        assert_eq!(rule["health"], "ok", "{rule}");
    }

    // A rate needs two samples of a series: a series that appeared at the
    // last scrape (a first failure, the last histogram buckets) gets a
    // series one scrape later. Wait for that, up to a bound.
    let queries = dashboard_queries();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut empty = Vec::new();
    loop {
        empty.clear();
        for (dashboard, panel, expr) in &queries {
            let query = substitute(expr);
            if prometheus.query(&query).await.is_empty() {
                empty.push(format!("{dashboard} / {panel}: {query}"));
            }
        }
        if empty.is_empty() || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without a series:\n{}",
        empty.join("\n")
    );
    let racks = prometheus
        .api(
            "/api/v1/label/rack/values",
            &[("match[]", "cardfleet_worker_slots")],
        )
        .await;
    assert_eq!(racks, json!(["rack-1", "rack-2"]), "the $rack variable");

    // Every metrics page passes promtool's lint.
    let pages = vec![
        metrics_page(control_plane).await,
        metrics_page(w1.metrics_port).await,
        metrics_page(w2.metrics_port).await,
    ];
    for (name, page) in ["control plane", "rack-1", "rack-2"].iter().zip(&pages) {
        let (ok, out) = promtool(&["check", "metrics"], Some(page));
        assert!(
            ok && out.trim().is_empty(),
            "promtool check metrics on the {name} page:\n{out}"
        );
    }
    // The README lists exactly what the processes export.
    let exported: BTreeSet<String> = pages
        .iter()
        .flat_map(|p| samples(p))
        .map(|s| s.family)
        .collect();
    let catalogue = readme_catalogue();
    let undocumented: Vec<_> = exported.difference(&catalogue).collect();
    let unexported: Vec<_> = catalogue.difference(&exported).collect();
    assert!(
        undocumented.is_empty() && unexported.is_empty(),
        "not in the README: {undocumented:?}; in the README but not exported: {unexported:?}"
    );
    let problems = unbounded_labels(&pages, &card_values(serials.iter().copied()), 64);
    assert!(problems.is_empty(), "{problems:#?}");
    println!(
        "{} dashboard queries each returned a series; {} metric families checked",
        queries.len(),
        exported.len()
    );
    w1.stop().await;
    w2.stop().await;
}

/// Initializes the cards with these chip serials as one batch and waits for it.
async fn initialize_serials(app: &TestApp, serials: &[u32]) {
    let listed = app.get("/v1/cards?state=produced&limit=1000").await.body;
    let ids: Vec<Value> = serials
        .iter()
        .map(|s| {
            let serial = s.to_string();
            listed
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["chip_serial"] == serial.as_str())
                .map(|c| c["card_id"].clone())
                .unwrap()
        })
        .collect();
    let r = app
        .post("/v1/initializations", json!({ "card_ids": ids }))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let batch = r.body["batch_id"].as_str().unwrap();
    let status = wait_finished(app, batch, WAIT).await;
    assert_eq!(status["counts"]["succeeded"], serials.len(), "{status}");
}

#[tokio::test]
async fn metric_labels_do_not_grow_with_the_number_of_cards_jobs_or_batches() {
    let app = spawn_app().await;
    let small: Vec<u32> = (3_100_001..=3_100_008).collect();
    let large: Vec<u32> = (3_100_101..=3_100_164).collect();
    import_serials(&app, small.iter().copied()).await;
    app.enable().await;
    let cards = small.iter().map(|s| SimCard::new(*s)).collect();
    let worker = TestWorker::start(&app, "rack-c", 4, cards, &[]);
    let pages = || async {
        vec![
            metrics_page(app.metrics_port.unwrap()).await,
            metrics_page(worker.metrics_port).await,
        ]
    };
    initialize_serials(&app, &small).await;
    let before = label_values(&pages().await);

    // Eight times the cards in eight batches, each batch the next cards the
    // rack loads (a slot holds its card until the card's job is over).
    import_serials(&app, large.iter().copied()).await;
    for s in &large {
        worker.feed.push(SimCard::new(*s));
    }
    for chunk in large.chunks(small.len()) {
        initialize_serials(&app, chunk).await;
    }
    let after_pages = pages().await;
    let after = label_values(&after_pages);

    let mut grew = Vec::new();
    for ((family, label), values) in &after {
        let had = before
            .get(&(family.clone(), label.clone()))
            .map_or(0, |v| v.len());
        if values.len() > had.max(1) {
            grew.push(format!(
                "{family}{{{label}}}: {had} -> {} values",
                values.len()
            ));
        }
    }
    assert!(grew.is_empty(), "labels grew with the cards: {grew:#?}");
    let all = card_values(small.iter().chain(&large).copied());
    let problems = unbounded_labels(&after_pages, &all, 32);
    assert!(problems.is_empty(), "{problems:#?}");
    worker.stop().await;
}
