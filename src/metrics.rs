//! The control plane's Prometheus metrics, all in one registry. Labels are
//! bounded: routes, states, outcomes, sources and rack ids, never card, job
//! or batch ids.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Live (non-terminal) job states, as `cardfleet_jobs` labels them.
pub const LIVE_JOB_STATES: [&str; 4] = ["queued", "awaiting_card", "dispatched", "encoding"];
/// Label values of `cardfleet_dead_letters_total{source}`.
pub const DEAD_LETTER_SOURCES: [&str; 4] = [
    "rack",
    cardfleet_schemas::RESULTS_QUEUE,
    cardfleet_schemas::SLOT_EVENTS_QUEUE,
    "other",
];

/// Failure code (and `cardfleet_jobs_undispatchable_total` reason) of a job
/// whose rack has no enrolled key to seal its secrets to.
pub use crate::domain::failures::RACK_NOT_ENROLLED;

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub cards_imported: IntCounter,
    pub credentials_generated: IntCounter,
    pub jobs_created: IntCounterVec,
    pub jobs_published: IntCounter,
    pub publish_failures: IntCounter,
    pub cancellations_published: IntCounter,
    pub results_applied: IntCounterVec,
    pub events_applied: IntCounter,
    pub dead_letters: IntCounterVec,
    pub broker_reconnects: IntCounterVec,
    pub credentials_opened: IntCounter,
    pub management_keys_derived: IntCounter,
    pub jobs_undispatchable: IntCounterVec,
    pub jobs_finished: IntCounterVec,
    // Gauges refreshed from the database and broker by `crate::services::gauges`.
    pub jobs_live: IntGaugeVec,
    pub outbox_lag: Gauge,
    pub rack_queue: IntGaugeVec,
    pub heartbeat_age: GaugeVec,
    pub dead_letters_stored: IntGauge,
    pub refresh_errors: IntCounterVec,
    // Rack leases (`crate::services::leases`) and take-time checks (`crate::services::job_gate`).
    pub jobs_awaiting_rack: IntGauge,
    pub leases_expired: IntCounter,
    pub take_checks_answered: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|_| unreachable_metric(name));
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|_| unreachable_metric(name));
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|_| unreachable_metric(name));
    let _ = registry.register(Box::new(g.clone()));
    g
}

/// Creates the series of every known label value, so dashboards and alerts
/// see a zero rather than nothing before the first event.
fn preset(vec: &IntCounterVec, values: &[&str]) {
    for v in values {
        let _ = vec.with_label_values(&[v]);
    }
}

// Metric names and labels are constants of this file; a bad one is caught by
// the unit test below, so this is never reached in a built binary.
#[allow(clippy::panic)]
fn unreachable_metric(name: &str) -> ! {
    panic!("invalid metric definition {name}")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "cardfleet_http_request_duration_seconds",
                "API request latency by route",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
            &["route"],
        )
        .unwrap_or_else(|_| unreachable_metric("cardfleet_http_request_duration_seconds"));
        let _ = registry.register(Box::new(http_duration.clone()));
        let m = Self {
            http_requests: counter_vec(
                &registry,
                "cardfleet_http_requests_total",
                "API requests by route and status",
                &["route", "status"],
            ),
            http_duration,
            cards_imported: counter(
                &registry,
                "cardfleet_cards_imported_total",
                "Produced cards imported into stock",
            ),
            credentials_generated: counter(
                &registry,
                "cardfleet_credentials_generated_total",
                "PIN and PUK values generated (counts only)",
            ),
            jobs_created: counter_vec(
                &registry,
                "cardfleet_jobs_created_total",
                "Initialize jobs created, by first state",
                &["state"],
            ),
            jobs_published: counter(
                &registry,
                "cardfleet_jobs_published_total",
                "Jobs confirmed on the broker",
            ),
            publish_failures: counter(
                &registry,
                "cardfleet_publish_failures_total",
                "Publishes the broker did not confirm",
            ),
            cancellations_published: counter(
                &registry,
                "cardfleet_cancellations_published_total",
                "Cancellation messages broadcast to workers",
            ),
            results_applied: counter_vec(
                &registry,
                "cardfleet_results_applied_total",
                "Result messages by effect",
                &["effect"],
            ),
            events_applied: counter(
                &registry,
                "cardfleet_events_applied_total",
                "Slot events and heartbeats applied",
            ),
            dead_letters: counter_vec(
                &registry,
                "cardfleet_dead_letters_total",
                "Messages dead-lettered, by source queue",
                &["source"],
            ),
            broker_reconnects: counter_vec(
                &registry,
                "cardfleet_broker_reconnects_total",
                "Reconnects to RabbitMQ by component",
                &["component"],
            ),
            credentials_opened: counter(
                &registry,
                "cardfleet_credentials_opened_total",
                "Stored PIN and PUK values decrypted for dispatch (counts only)",
            ),
            management_keys_derived: counter(
                &registry,
                "cardfleet_management_keys_derived_total",
                "Per-card management keys derived for dispatch (counts only)",
            ),
            jobs_undispatchable: counter_vec(
                &registry,
                "cardfleet_jobs_undispatchable_total",
                "Jobs the dispatcher failed instead of publishing, by reason",
                &["reason"],
            ),
            jobs_finished: counter_vec(
                &registry,
                "cardfleet_jobs_finished_total",
                "Jobs that reached a terminal state, by outcome",
                &["outcome"],
            ),
            jobs_live: gauge_vec(
                &registry,
                "cardfleet_jobs",
                "Jobs in each live (non-terminal) state",
                &["state"],
            ),
            outbox_lag: {
                let name = "cardfleet_outbox_lag_seconds";
                let g = Gauge::new(name, "Age of the oldest job not yet published to RabbitMQ")
                    .unwrap_or_else(|_| unreachable_metric(name));
                let _ = registry.register(Box::new(g.clone()));
                g
            },
            rack_queue: gauge_vec(
                &registry,
                "cardfleet_rack_queue_messages",
                "Jobs ready in each rack's queue, not yet taken by its worker",
                &["rack"],
            ),
            heartbeat_age: {
                let name = "cardfleet_rack_heartbeat_age_seconds";
                let g = GaugeVec::new(
                    Opts::new(
                        name,
                        "Time since the control plane last heard from a rack's worker",
                    ),
                    &["rack"],
                )
                .unwrap_or_else(|_| unreachable_metric(name));
                let _ = registry.register(Box::new(g.clone()));
                g
            },
            dead_letters_stored: {
                let name = "cardfleet_dead_letters_stored";
                let g = IntGauge::new(name, "Dead letters recorded in the database")
                    .unwrap_or_else(|_| unreachable_metric(name));
                let _ = registry.register(Box::new(g.clone()));
                g
            },
            refresh_errors: counter_vec(
                &registry,
                "cardfleet_metrics_refresh_errors_total",
                "Failed refreshes of the gauges, by what could not be read",
                &["source"],
            ),
            jobs_awaiting_rack: {
                let name = "cardfleet_jobs_awaiting_rack";
                let g = IntGauge::new(
                    name,
                    "Dispatched or encoding jobs whose rack sent no heartbeat for the lease time",
                )
                .unwrap_or_else(|_| unreachable_metric(name));
                let _ = registry.register(Box::new(g.clone()));
                g
            },
            leases_expired: counter(
                &registry,
                "cardfleet_jobs_lease_expired_total",
                "Jobs marked because their rack's lease ran out",
            ),
            take_checks_answered: counter(
                &registry,
                "cardfleet_take_checks_answered_total",
                "Jobs workers asked about when taking them, answered",
            ),
            registry,
        };
        preset(&m.jobs_created, &["queued", "awaiting_card"]);
        preset(&m.jobs_finished, &["succeeded", "failed", "cancelled"]);
        preset(
            &m.results_applied,
            &["changed", "unchanged", "unknown_job", "undecodable"],
        );
        preset(&m.dead_letters, &DEAD_LETTER_SOURCES);
        preset(&m.broker_reconnects, &["dispatcher", "ledger", "job-gate"]);
        preset(&m.jobs_undispatchable, &[RACK_NOT_ENROLLED]);
        preset(&m.refresh_errors, &["database", "broker"]);
        for state in LIVE_JOB_STATES {
            let _ = m.jobs_live.with_label_values(&[state]);
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_is_registered_under_the_cardfleet_prefix() {
        let m = super::Metrics::new();
        m.jobs_created.with_label_values(&["queued"]).inc();
        m.http_requests
            .with_label_values(&["/v1/cards", "200"])
            .inc();
        let text = m.render();
        assert!(
            text.contains("cardfleet_jobs_created_total{state=\"queued\"} 1"),
            "{text}"
        );
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(line.starts_with("cardfleet_"), "{line}");
        }
    }

    #[test]
    fn known_label_values_are_exported_as_zero_before_any_event() {
        let text = super::Metrics::new().render();
        for series in [
            "cardfleet_jobs{state=\"awaiting_card\"} 0",
            "cardfleet_jobs_finished_total{outcome=\"failed\"} 0",
            "cardfleet_dead_letters_total{source=\"cardfleet.results\"} 0",
            "cardfleet_results_applied_total{effect=\"unknown_job\"} 0",
            "cardfleet_outbox_lag_seconds 0",
            "cardfleet_dead_letters_stored 0",
            "cardfleet_jobs_awaiting_rack 0",
            "cardfleet_jobs_lease_expired_total 0",
        ] {
            assert!(text.contains(series), "{series} missing from\n{text}");
        }
    }
}
