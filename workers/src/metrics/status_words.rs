//! APDU status words by class, counted for the rack whose job the engine is
//! encoding: the engine runs on a slot's thread and knows the job, not the
//! worker, so the runtime attributes each job to its rack's counters.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use prometheus::IntCounter;
use uuid::Uuid;

/// Classes of APDU status words.
pub const STATUS_CLASSES: [&str; 8] = [
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

/// Status-word counters of one rack, one per class.
#[derive(Debug, Clone)]
struct StatusCounters(Vec<IntCounter>);

/// Which rack's counters the APDUs of a job count towards, by job id: the
/// engine runs on a slot's thread and knows the job, not the worker.
static ATTRIBUTED: LazyLock<Mutex<HashMap<Uuid, StatusCounters>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

thread_local! {
    /// The counters of the encoding running on this thread, if any.
    static CURRENT: RefCell<Option<StatusCounters>> = const { RefCell::new(None) };
}

/// While alive, APDUs exchanged for the job count towards its rack.
#[derive(Debug)]
pub struct Attribution(Uuid);

impl Drop for Attribution {
    fn drop(&mut self) {
        if let Ok(mut map) = ATTRIBUTED.lock() {
            map.remove(&self.0);
        }
    }
}

/// Clears this thread's counters when the encoding ends, even by a panic.
struct CurrentGuard;

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

/// Runs `encode` (on a slot's thread) with its APDUs counted for the rack
/// the job was attributed to; uncounted when it was not.
pub fn counting_status_words<R>(job_id: Uuid, encode: impl FnOnce() -> R) -> R {
    let counters = ATTRIBUTED
        .lock()
        .ok()
        .and_then(|map| map.get(&job_id).cloned());
    CURRENT.with(|c| *c.borrow_mut() = counters);
    let _clear = CurrentGuard;
    encode()
}

/// Counts one APDU response of the encoding running on this thread.
pub fn record_status_word(sw1: u8, sw2: u8) {
    CURRENT.with(|c| {
        if let Some(counters) = &*c.borrow()
            && let Some(counter) = counters.0.get(status_class(sw1, sw2))
        {
            counter.inc();
        }
    });
}

/// Counts the APDUs of `job_id` towards `counters` (one per class) until the guard drops.
pub(super) fn attribute(job_id: Uuid, counters: Vec<IntCounter>) -> Attribution {
    if let Ok(mut map) = ATTRIBUTED.lock() {
        map.insert(job_id, StatusCounters(counters));
    }
    Attribution(job_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::WorkerMetrics;

    #[test]
    fn status_words_count_towards_the_rack_the_job_is_attributed_to() {
        let first = WorkerMetrics::new();
        let second = WorkerMetrics::new();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let _a = first.attribute_status_words("rack-a", a);
        let _b = second.attribute_status_words("rack-b", b);
        counting_status_words(a, || {
            record_status_word(0x90, 0x00);
            record_status_word(0x63, 0xC2);
        });
        counting_status_words(b, || record_status_word(0x6A, 0x82));
        // Outside an encoding nothing is counted.
        record_status_word(0x90, 0x00);
        let (first, second) = (first.render(), second.render());
        assert!(
            first.contains(
                "cardfleet_worker_apdu_status_total{class=\"success\",rack=\"rack-a\"} 1"
            ),
            "{first}"
        );
        assert!(first.contains("class=\"verify_failed\",rack=\"rack-a\"} 1"));
        assert!(!first.contains("rack-b"), "{first}");
        assert!(
            second.contains("class=\"wrong_parameters\",rack=\"rack-b\"} 1"),
            "{second}"
        );
    }

    #[test]
    fn status_words_fall_into_their_classes() {
        assert_eq!(STATUS_CLASSES[status_class(0x90, 0x00)], "success");
        assert_eq!(STATUS_CLASSES[status_class(0x61, 0x10)], "more_data");
        assert_eq!(STATUS_CLASSES[status_class(0x69, 0x83)], "blocked");
        assert_eq!(STATUS_CLASSES[status_class(0x69, 0x82)], "refused");
        assert_eq!(STATUS_CLASSES[status_class(0x6D, 0x00)], "not_supported");
        assert_eq!(STATUS_CLASSES[status_class(0x6F, 0x00)], "other");
    }
}
