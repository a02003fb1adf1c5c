//! RabbitMQ for the control plane: the shared topology and publishing
//! helpers of the wire contract, and the reconnect loop of its consumers
//! and publishers.

use std::future::Future;
use std::time::{Duration, Instant};

pub use cardfleet_schemas::amqp::*;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Runs `session` until it ends cleanly (on shutdown), starting it again
/// with backoff whenever it fails. A session that ran for longer than the
/// longest backoff counts as having been connected, so the next failure
/// starts the backoff from the beginning again.
pub async fn run_reconnecting<F, Fut>(
    component: &'static str,
    metrics: &Metrics,
    reconnect_max: Duration,
    shutdown: &CancellationToken,
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut attempt = 0;
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        match session().await {
            Ok(()) => break,
            Err(e) => {
                if started.elapsed() > reconnect_max {
                    attempt = 0;
                }
                metrics
                    .broker_reconnects
                    .with_label_values(&[component])
                    .inc();
                tracing::warn!(error = %e, attempt, "{component} lost a connection; reconnecting");
                let delay = backoff(attempt, reconnect_max);
                attempt += 1;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    tracing::info!("{component} stopped");
}
