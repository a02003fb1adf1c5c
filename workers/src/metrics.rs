//! The worker's Prometheus metrics. Labels are bounded: rack (one per
//! worker), outcome, failure code, step name, slot state, status-word class.

use std::sync::LazyLock;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Classes of APDU status words.
const STATUS_CLASSES: [&str; 8] = [
    "success",
    "more_data",
    "verify_failed",
    "blocked",
    "refused",
    "wrong_parameters",
    "not_supported",
    "other",
];

/// The class of a status word, for [`record_status_word`].
pub fn status_class(sw1: u8, sw2: u8) -> usize {
    match (sw1, sw2) {
        (0x90, 0x00) => 0,
        (0x61, _) => 1,
        (0x63, _) => 2,
        (0x69, 0x83) => 3,
        (0x69, _) => 4,
        (0x6A, _) | (0x6B, _) | (0x67, _) => 5,
        (0x6D, _) | (0x6E, _) => 6,
        _ => 7,
    }
}

/// APDU responses of this process by status-word class. The engine counts
/// every response it sees; one family per process, shared by its registries.
static STATUS_WORDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "cardfleet_worker_apdu_status_total",
            "APDU responses by status-word class",
        ),
        &["class"],
    )
    .unwrap_or_else(|_| invalid("cardfleet_worker_apdu_status_total"))
});

static STATUS_COUNTERS: LazyLock<Vec<IntCounter>> = LazyLock::new(|| {
    STATUS_CLASSES
        .iter()
        .map(|c| STATUS_WORDS.with_label_values(&[c]))
        .collect()
});

/// Counts one APDU response.
pub fn record_status_word(sw1: u8, sw2: u8) {
    if let Some(c) = STATUS_COUNTERS.get(status_class(sw1, sw2)) {
        c.inc();
    }
}

#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    registry: Registry,
    pub cards: IntCounterVec,
    pub failures: IntCounterVec,
    pub encode_seconds: HistogramVec,
    pub step_seconds: HistogramVec,
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
            registry: {
                let _ = r.register(Box::new(STATUS_WORDS.clone()));
                r
            },
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
