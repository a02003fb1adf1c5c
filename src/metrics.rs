//! The control plane's Prometheus metrics, all in one registry. Labels are
//! bounded: routes, states, outcomes and sources, never card, job or batch ids.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

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
        Self {
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
            registry,
        }
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
}
