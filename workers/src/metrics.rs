//! The worker's Prometheus metrics. Labels are bounded: rack (one per
//! worker), slot (the rack's slots), outcome, failure code, step name, slot
//! state and status-word class; never a card, job or batch id or a chip serial.

mod status_words;

use cardfleet_schemas::SlotState;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use uuid::Uuid;

pub use status_words::{
    Attribution, STATUS_CLASSES, counting_status_words, record_status_word, status_class,
};

/// Slot states in the order of [`SlotStateGauges`].
const SLOT_STATES: [SlotState; 5] = [
    SlotState::Empty,
    SlotState::Present,
    SlotState::Encoding,
    SlotState::Faulted,
    SlotState::Quarantined,
];

/// Outcomes of a finished card.
const OUTCOMES: [&str; 3] = ["succeeded", "failed", "cancelled"];

/// Answers of a take-time cancellation check.
pub const TAKE_CHECK_ANSWERS: [&str; 3] = ["proceed", "cancelled", "unanswered"];

/// Failure reasons whose series exist from the start: every engine code
/// plus `other` (what [`code_label`] makes of anything else). Codes the
/// runtime adds (e.g. sealed secrets it cannot open) appear when first
/// counted.
fn failure_reasons() -> impl Iterator<Item = &'static str> {
    crate::engine::FailureCode::ALL
        .iter()
        .map(|c| c.as_str())
        .chain(["other"])
}

/// The label of a slot state.
pub fn slot_state_label(state: SlotState) -> &'static str {
    match state {
        SlotState::Empty => "empty",
        SlotState::Present => "present",
        SlotState::Encoding => "encoding",
        SlotState::Faulted => "faulted",
        SlotState::Quarantined => "quarantined",
    }
}

/// A failure code or step name as a label value: codes are short snake_case
/// constants with few digits, so anything else (which could carry a serial
/// or an id) becomes `other`.
pub fn code_label(code: &str) -> &str {
    let constant = code.len() <= 48
        && code.starts_with(|c: char| c.is_ascii_lowercase())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && code.bytes().filter(u8::is_ascii_digit).count() <= 3;
    if constant { code } else { "other" }
}

/// The state series of a rack's slots, resolved once so updating them is cheap.
#[derive(Debug, Clone)]
pub struct SlotStateGauges {
    /// Slots per state (`cardfleet_worker_slots`).
    counts: Vec<IntGauge>,
    /// Per slot, 1 for its state and 0 for the others (`cardfleet_worker_slot_state`).
    slots: Vec<Vec<IntGauge>>,
}

impl SlotStateGauges {
    /// Shows `states`, the state of every slot in order.
    pub fn set(&self, states: &[SlotState]) {
        let mut counts = [0i64; SLOT_STATES.len()];
        for (gauges, state) in self.slots.iter().zip(states) {
            for (i, (gauge, s)) in gauges.iter().zip(SLOT_STATES).enumerate() {
                let on = s == *state;
                gauge.set(i64::from(on));
                if on {
                    counts[i] += 1;
                }
            }
        }
        for (gauge, n) in self.counts.iter().zip(counts) {
            gauge.set(n);
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    registry: Registry,
    pub cards: IntCounterVec,
    pub failures: IntCounterVec,
    pub slot_cards: IntCounterVec,
    pub slot_failures: IntCounterVec,
    pub quarantines: IntCounterVec,
    pub cards_retried: IntCounterVec,
    pub encode_seconds: HistogramVec,
    pub step_seconds: HistogramVec,
    pub status_words: IntCounterVec,
    pub slots: IntGaugeVec,
    pub slot_state: IntGaugeVec,
    pub heartbeat: GaugeVec,
    pub in_flight: IntGaugeVec,
    pub reconnects: IntCounterVec,
    /// Take-time cancellation checks by answer (`proceed`, `cancelled`, `unanswered`).
    pub take_checks: IntCounterVec,
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

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| invalid(name)),
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
            slot_cards: counter(
                &r,
                "cardfleet_worker_slot_cards_total",
                "Cards finished in each slot, by outcome",
                &["rack", "slot", "outcome"],
            ),
            slot_failures: counter(
                &r,
                "cardfleet_worker_slot_failures_total",
                "Failed cards in each slot, by reason",
                &["rack", "slot", "reason"],
            ),
            quarantines: counter(
                &r,
                "cardfleet_worker_quarantines_total",
                "Slots quarantined after failing cards in a row",
                &["rack"],
            ),
            cards_retried: counter(
                &r,
                "cardfleet_worker_cards_retried_total",
                "Cards that needed more than one attempt (a recoverable fault, e.g. pulled mid-step)",
                &["rack"],
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
                "APDU responses while encoding, by status-word class",
                &["rack", "class"],
            ),
            slots: gauge(
                &r,
                "cardfleet_worker_slots",
                "Slots by state",
                &["rack", "state"],
            ),
            slot_state: gauge(
                &r,
                "cardfleet_worker_slot_state",
                "1 for each slot's current state, 0 for its other states",
                &["rack", "slot", "state"],
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
            in_flight: gauge(
                &r,
                "cardfleet_worker_jobs_in_flight",
                "Jobs taken and not yet acked",
                &["rack"],
            ),
            reconnects: counter(
                &r,
                "cardfleet_worker_broker_reconnects_total",
                "Reconnects to RabbitMQ",
                &["rack"],
            ),
            take_checks: counter(
                &r,
                "cardfleet_worker_take_checks_total",
                "Jobs checked with the control plane when taken, by answer (proceed, cancelled, unanswered)",
                &["rack", "answer"],
            ),
            registry: r,
        }
    }

    /// Creates the rack's series that have known label values, so they read
    /// zero rather than nothing until something happens, and returns the
    /// rack's slot state series.
    pub fn for_rack(&self, rack: &str, slots: u16) -> SlotStateGauges {
        for outcome in OUTCOMES {
            let _ = self.cards.with_label_values(&[rack, outcome]);
        }
        for class in STATUS_CLASSES {
            let _ = self.status_words.with_label_values(&[rack, class]);
        }
        for reason in failure_reasons() {
            let _ = self.failures.with_label_values(&[rack, reason]);
        }
        let _ = self.quarantines.with_label_values(&[rack]);
        let _ = self.cards_retried.with_label_values(&[rack]);
        let _ = self.in_flight.with_label_values(&[rack]);
        let _ = self.reconnects.with_label_values(&[rack]);
        for answer in TAKE_CHECK_ANSWERS {
            let _ = self.take_checks.with_label_values(&[rack, answer]);
        }
        let states = SLOT_STATES.map(slot_state_label);
        SlotStateGauges {
            counts: states
                .iter()
                .map(|s| self.slots.with_label_values(&[rack, s]))
                .collect(),
            slots: (0..slots)
                .map(|slot| {
                    let slot = slot.to_string();
                    for outcome in OUTCOMES {
                        let _ = self.slot_cards.with_label_values(&[rack, &slot, outcome]);
                    }
                    for reason in failure_reasons() {
                        let _ = self.slot_failures.with_label_values(&[rack, &slot, reason]);
                    }
                    states
                        .iter()
                        .map(|s| self.slot_state.with_label_values(&[rack, &slot, s]))
                        .collect()
                })
                .collect(),
        }
    }

    /// Counts the APDUs of `job_id` towards `rack` until the guard drops.
    pub fn attribute_status_words(&self, rack: &str, job_id: Uuid) -> Attribution {
        let counters = STATUS_CLASSES
            .iter()
            .map(|c| self.status_words.with_label_values(&[rack, c]))
            .collect();
        status_words::attribute(job_id, counters)
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_under_the_cardfleet_prefix() {
        let m = WorkerMetrics::new();
        m.cards.with_label_values(&["r", "succeeded"]).inc();
        let text = m.render();
        assert!(
            text.contains("cardfleet_worker_cards_total{outcome=\"succeeded\",rack=\"r\"} 1"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("cardfleet_worker_"), "{line}");
        }
    }

    #[test]
    fn slot_state_series_show_one_state_per_slot_and_the_counts_per_rack() {
        let m = WorkerMetrics::new();
        let gauges = m.for_rack("r", 3);
        gauges.set(&[
            SlotState::Present,
            SlotState::Quarantined,
            SlotState::Present,
        ]);
        let text = m.render();
        for series in [
            "cardfleet_worker_slot_state{rack=\"r\",slot=\"1\",state=\"quarantined\"} 1",
            "cardfleet_worker_slot_state{rack=\"r\",slot=\"1\",state=\"present\"} 0",
            "cardfleet_worker_slot_state{rack=\"r\",slot=\"2\",state=\"present\"} 1",
            "cardfleet_worker_slots{rack=\"r\",state=\"present\"} 2",
            "cardfleet_worker_slots{rack=\"r\",state=\"empty\"} 0",
            "cardfleet_worker_quarantines_total{rack=\"r\"} 0",
            "cardfleet_worker_cards_total{outcome=\"failed\",rack=\"r\"} 0",
            "cardfleet_worker_slot_cards_total{outcome=\"failed\",rack=\"r\",slot=\"2\"} 0",
            "cardfleet_worker_card_failures_total{rack=\"r\",reason=\"verification_failed\"} 0",
            "cardfleet_worker_card_failures_total{rack=\"r\",reason=\"other\"} 0",
            "cardfleet_worker_slot_failures_total{rack=\"r\",reason=\"card_removed\",slot=\"0\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing from\n{text}");
        }
        assert_eq!(
            text.matches("cardfleet_worker_slot_state{").count(),
            3 * SLOT_STATES.len()
        );
    }

    #[test]
    fn only_constant_codes_become_label_values() {
        assert_eq!(code_label("card_mute"), "card_mute");
        assert_eq!(code_label("generate_key_9a"), "generate_key_9a");
        assert_eq!(code_label("chip 1234 vanished"), "other");
        assert_eq!(code_label("6f1c2a7e-1d3b-4c8a-9f00-2b5d0e6c7a11"), "other");
        assert_eq!(code_label("f1c2a7e1d3b4c8a9f002b5d0e6c7a11"), "other");
        assert_eq!(code_label("3735928559"), "other");
        assert_eq!(code_label(""), "other");
        assert_eq!(code_label(&"x".repeat(49)), "other");
    }
}
