//! The worker's Prometheus metrics. Labels are bounded: rack (one per
//! worker), outcome, failure code, step name, slot state, status-word class.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    registry: Registry,
    pub cards: IntCounterVec,
    pub failures: IntCounterVec,
    pub encode_seconds: HistogramVec,
    pub step_seconds: HistogramVec,
    pub status_words: IntCounterVec,
    pub slots: IntGaugeVec,
    pub heartbeat: GaugeVec,
    pub in_flight: IntGaugeVec,
    pub reconnects: IntCounterVec,
}

// Definitions are constants of this file, checked by the unit test below.
#[allow(clippy::panic)]
fn invalid(name: &str) -> ! {
    panic!("invalid metric definition {name}")
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: T) -> T {
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| invalid(name)),
    )
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    register(
        r,
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .unwrap_or_else(|_| invalid(name)),
    )
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let seconds = vec![
            0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        Self {
            cards: counter(
                &r,
                "cardfleet_worker_cards_total",
                "Cards finished, by outcome",
                &["rack", "outcome"],
            ),
            failures: counter(
                &r,
                "cardfleet_worker_card_failures_total",
                "Failed cards by reason",
                &["rack", "reason"],
            ),
            encode_seconds: histogram(
                &r,
                "cardfleet_worker_encode_duration_seconds",
                "Time to encode one card, all attempts",
                &["rack"],
                seconds.clone(),
            ),
            step_seconds: histogram(
                &r,
                "cardfleet_worker_step_duration_seconds",
                "Time per encoding step",
                &["rack", "step"],
                seconds,
            ),
            status_words: counter(
                &r,
                "cardfleet_worker_apdu_status_total",
                "APDU responses by status-word class",
                &["rack", "class"],
            ),
            slots: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("cardfleet_worker_slots", "Slots by state"),
                    &["rack", "state"],
                )
                .unwrap_or_else(|_| invalid("slots")),
            ),
            heartbeat: register(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "cardfleet_worker_heartbeat_timestamp_seconds",
                        "Unix time of the last heartbeat sent",
                    ),
                    &["rack"],
                )
                .unwrap_or_else(|_| invalid("heartbeat")),
            ),
            in_flight: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "cardfleet_worker_jobs_in_flight",
                        "Jobs taken and not yet acked",
                    ),
                    &["rack"],
                )
                .unwrap_or_else(|_| invalid("in_flight")),
            ),
            reconnects: counter(
                &r,
                "cardfleet_worker_broker_reconnects_total",
                "Reconnects to RabbitMQ",
                &["rack"],
            ),
            registry: r,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_render_under_the_cardfleet_prefix() {
        let m = super::WorkerMetrics::new();
        m.cards.with_label_values(&["r", "succeeded"]).inc();
        let text = m.render();
        assert!(
            text.contains("cardfleet_worker_cards_total{outcome=\"succeeded\",rack=\"r\"} 1"),
            "{text}"
        );
    }
}
