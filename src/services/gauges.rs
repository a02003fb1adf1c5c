//! Keeps the control plane's gauges current: one background task reads a
//! small database snapshot (live jobs, outbox lag, heartbeats, dead letters)
//! and the depth of every known rack's queue every few seconds, and stops on
//! shutdown.

use std::collections::BTreeSet;
use std::time::Duration;

use cardfleet_schemas as wire;
use prometheus::core::{Atomic, GenericGaugeVec};
use tokio_util::sync::CancellationToken;

use crate::metrics::{LIVE_JOB_STATES, Metrics};
use crate::store::Store;
use crate::store::gauges::FleetSnapshot;

/// Longest one read of the database or the broker may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct GaugeRefresher {
    pub store: Store,
    /// The bus, asked (passively, on RabbitMQ) for the depth of each rack queue.
    pub bus: cardfleet_schemas::bus::Bus,
    pub interval: Duration,
    pub metrics: Metrics,
}

/// Racks that have per-rack series, so racks that vanish lose theirs.
#[derive(Debug, Default)]
struct Shown {
    heartbeat: BTreeSet<String>,
    queue: BTreeSet<String>,
}

/// Whether each source failed last time, to log a failure once, not every round.
#[derive(Debug, Default)]
struct Failing {
    database: bool,
    broker: bool,
}

impl GaugeRefresher {
    /// Refreshes the gauges at once and then every `interval` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut probe = QueueProbe::default();
        let mut shown = Shown::default();
        let mut failing = Failing::default();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                () = self.refresh(&mut probe, &mut shown, &mut failing) => {}
            }
        }
        probe.close().await;
        tracing::info!("gauge refresher stopped");
    }

    async fn refresh(&self, probe: &mut QueueProbe, shown: &mut Shown, failing: &mut Failing) {
        let snapshot = match tokio::time::timeout(READ_TIMEOUT, self.store.fleet_snapshot()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.failed("database", &mut failing.database, &e),
            Err(e) => return self.failed("database", &mut failing.database, &e),
        };
        recovered("database", &mut failing.database);
        apply_snapshot(&self.metrics, &snapshot, &mut shown.heartbeat);

        let racks: Vec<&str> = snapshot.racks.iter().map(|(r, _)| r.as_str()).collect();
        let depths = tokio::time::timeout(READ_TIMEOUT, probe.depths(&self.bus, &racks)).await;
        let error = match depths {
            Ok(Ok(depths)) => {
                recovered("broker", &mut failing.broker);
                set_rack_series(&self.metrics.rack_queue, &depths, &mut shown.queue);
                return;
            }
            Ok(Err(e)) => e,
            Err(elapsed) => anyhow::Error::from(elapsed),
        };
        // A stale depth would look like a stuck queue: show none instead.
        set_rack_series(&self.metrics.rack_queue, &[], &mut shown.queue);
        probe.reset();
        self.failed("broker", &mut failing.broker, &error);
    }

    fn failed(&self, source: &str, was_failing: &mut bool, error: &dyn std::fmt::Display) {
        self.metrics
            .refresh_errors
            .with_label_values(&[source])
            .inc();
        if !*was_failing {
            tracing::warn!(%source, %error, "cannot refresh the gauges; retrying every round");
        }
        *was_failing = true;
    }
}

fn recovered(source: &str, was_failing: &mut bool) {
    if *was_failing {
        tracing::info!(%source, "gauges refresh again");
    }
    *was_failing = false;
}

/// Sets the database gauges from `snapshot`; every live state gets a value.
fn apply_snapshot(metrics: &Metrics, snapshot: &FleetSnapshot, shown: &mut BTreeSet<String>) {
    for state in LIVE_JOB_STATES {
        let n = snapshot
            .live_jobs
            .iter()
            .find(|(s, _)| s == state)
            .map_or(0, |(_, n)| *n);
        metrics.jobs_live.with_label_values(&[state]).set(n);
    }
    metrics.outbox_lag.set(snapshot.outbox_lag_seconds);
    metrics.dead_letters_stored.set(snapshot.dead_letters);
    let ages: Vec<(String, f64)> = snapshot
        .racks
        .iter()
        .filter_map(|(rack, age)| age.map(|a| (rack.clone(), a)))
        .collect();
    set_rack_series(&metrics.heartbeat_age, &ages, shown);
}

/// Sets one series per rack and removes the series of racks no longer listed.
fn set_rack_series<P: Atomic>(
    vec: &GenericGaugeVec<P>,
    values: &[(String, P::T)],
    shown: &mut BTreeSet<String>,
) {
    let now: BTreeSet<String> = values.iter().map(|(r, _)| r.clone()).collect();
    for gone in shown.difference(&now) {
        let _ = vec.remove_label_values(&[gone]);
    }
    for (rack, value) in values {
        vec.with_label_values(&[rack]).set(*value);
    }
    *shown = now;
}

/// A bus connection for reading queue depths, opened lazily and dropped
/// after any failure so the next round starts afresh.
#[derive(Default)]
struct QueueProbe {
    conn: Option<cardfleet_schemas::bus::Connection>,
}

impl QueueProbe {
    /// Messages ready in each rack's queue; racks without a queue are left out.
    async fn depths(
        &mut self,
        bus: &cardfleet_schemas::bus::Bus,
        racks: &[&str],
    ) -> anyhow::Result<Vec<(String, i64)>> {
        let conn = match self.conn.take() {
            Some(conn) if conn.is_connected() => conn,
            _ => bus.connect("cardfleet-metrics").await?,
        };
        let conn = self.conn.insert(conn);
        let queues: Vec<String> = racks.iter().map(|rack| wire::rack_queue(rack)).collect();
        let depths = conn.queue_depths(&queues).await?;
        Ok(racks
            .iter()
            .zip(&queues)
            .filter_map(|(rack, queue)| {
                let (_, n) = depths.iter().find(|(q, _)| q == queue)?;
                Some(((*rack).to_owned(), i64::try_from(*n).unwrap_or(i64::MAX)))
            })
            .collect())
    }

    fn reset(&mut self) {
        self.conn = None;
    }

    async fn close(self) {
        if let Some(conn) = self.conn {
            let _ = tokio::time::timeout(READ_TIMEOUT, conn.close()).await;
        }
    }
}

impl std::fmt::Debug for QueueProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueProbe")
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(racks: &[(&str, Option<f64>)]) -> FleetSnapshot {
        FleetSnapshot {
            live_jobs: vec![("queued".into(), 7), ("encoding".into(), 2)],
            outbox_lag_seconds: 1.5,
            racks: racks.iter().map(|(r, a)| ((*r).to_owned(), *a)).collect(),
            dead_letters: 3,
        }
    }

    #[test]
    fn a_snapshot_sets_every_live_state_and_each_rack_with_a_heartbeat() {
        let m = Metrics::new();
        let mut shown = BTreeSet::new();
        apply_snapshot(
            &m,
            &snapshot(&[("rack-1", Some(2.0)), ("rack-2", None)]),
            &mut shown,
        );
        let text = m.render();
        for series in [
            "cardfleet_jobs{state=\"queued\"} 7",
            "cardfleet_jobs{state=\"encoding\"} 2",
            "cardfleet_jobs{state=\"dispatched\"} 0",
            "cardfleet_jobs{state=\"awaiting_card\"} 0",
            "cardfleet_outbox_lag_seconds 1.5",
            "cardfleet_dead_letters_stored 3",
            "cardfleet_rack_heartbeat_age_seconds{rack=\"rack-1\"} 2",
        ] {
            assert!(text.contains(series), "{series} missing from\n{text}");
        }
        assert!(!text.contains("rack=\"rack-2\""), "{text}");
    }

    #[test]
    fn a_rack_that_is_no_longer_listed_loses_its_series() {
        let m = Metrics::new();
        let mut shown = BTreeSet::new();
        apply_snapshot(
            &m,
            &snapshot(&[("rack-1", Some(2.0)), ("rack-2", Some(9.0))]),
            &mut shown,
        );
        apply_snapshot(&m, &snapshot(&[("rack-2", Some(1.0))]), &mut shown);
        let text = m.render();
        assert!(!text.contains("rack=\"rack-1\""), "{text}");
        assert!(
            text.contains("cardfleet_rack_heartbeat_age_seconds{rack=\"rack-2\"} 1"),
            "{text}"
        );
        let mut queues = BTreeSet::new();
        set_rack_series(&m.rack_queue, &[("rack-2".into(), 4)], &mut queues);
        set_rack_series(&m.rack_queue, &[], &mut queues);
        assert!(!m.render().contains("cardfleet_rack_queue_messages{"));
    }
}
