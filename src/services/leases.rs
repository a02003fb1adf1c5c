//! The lease keeper: every few seconds, marks the jobs of racks silent for
//! longer than `ledger.rack_lease_seconds` (see `store::leases`) and keeps
//! `cardfleet_jobs_awaiting_rack` current. It never revokes credentials or
//! moves a job: the rack's next result decides, and clears the mark.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;

/// Actor of the audit rows the keeper writes.
pub const ACTOR: &str = "lease-keeper";

#[derive(Debug, Clone)]
pub struct LeaseKeeper {
    pub store: Store,
    /// How long a rack may stay silent before its jobs are marked.
    pub lease: Duration,
    pub metrics: Metrics,
}

impl LeaseKeeper {
    /// How often to sweep: a fifth of the lease, between 1 s and 15 s, so
    /// a mark comes at most a fifth late.
    pub fn interval(&self) -> Duration {
        (self.lease / 5).clamp(Duration::from_secs(1), Duration::from_secs(15))
    }

    /// Sweeps at once and then every [`Self::interval`] until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            match self.store.expire_leases(self.lease, ACTOR).await {
                Ok(sweep) => {
                    if failing {
                        tracing::info!("lease sweeps work again");
                    }
                    failing = false;
                    if sweep.newly_expired > 0 {
                        tracing::warn!(
                            jobs = sweep.newly_expired,
                            lease_seconds = self.lease.as_secs(),
                            "racks went silent: their jobs wait for them, credentials escrowed"
                        );
                    }
                    self.metrics.leases_expired.inc_by(sweep.newly_expired);
                    self.metrics.jobs_awaiting_rack.set(sweep.awaiting_rack);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot sweep rack leases; retrying every round");
                    }
                    failing = true;
                }
            }
        }
        tracing::info!("lease keeper stopped");
    }
}
