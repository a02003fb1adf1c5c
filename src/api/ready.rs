//! The readiness answer, checked at most once per interval: probes from a
//! load balancer or orchestrator then cost no new broker connection and no
//! database round trip each.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether the database and the broker answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub database: bool,
    pub broker: bool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.database && self.broker
    }
}

/// The last readiness answer and when it was found.
#[derive(Debug, Clone)]
pub struct ReadyCache {
    max_age: Duration,
    last: Arc<Mutex<Option<(Instant, Readiness)>>>,
}

impl ReadyCache {
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            last: Arc::default(),
        }
    }

    /// The cached answer while it is younger than `max_age`, else the
    /// answer of `check`, which is then kept. The lock is never held while
    /// checking; two probes at the moment the answer expires may both check.
    pub async fn get<F, Fut>(&self, check: F) -> Readiness
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Readiness>,
    {
        let cached = self
            .last
            .lock()
            .ok()
            .and_then(|last| *last)
            .filter(|(at, _)| at.elapsed() < self.max_age);
        if let Some((_, readiness)) = cached {
            return readiness;
        }
        let readiness = check().await;
        if let Ok(mut last) = self.last.lock() {
            *last = Some((Instant::now(), readiness));
        }
        readiness
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_fresh_answer_is_reused_and_a_stale_one_checked_again() {
        let checks = AtomicUsize::new(0);
        let check = || async {
            checks.fetch_add(1, Ordering::SeqCst);
            Readiness {
                database: true,
                broker: false,
            }
        };
        let cache = ReadyCache::new(Duration::from_secs(3600));
        for _ in 0..5 {
            assert!(!cache.get(check).await.ready());
        }
        assert_eq!(checks.load(Ordering::SeqCst), 1);

        let cache = ReadyCache::new(Duration::ZERO);
        cache.get(check).await;
        cache.get(check).await;
        assert_eq!(checks.load(Ordering::SeqCst), 3);
    }
}
