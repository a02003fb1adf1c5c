//! The few cheap reads behind the control plane's gauges: live jobs per
//! state, outbox lag, each rack's last heartbeat and the stored dead letters.

use super::{Result, Store, on_backend};

/// Most racks the gauges report, so a flood of rack ids cannot blow up the
/// `rack` label; a real fleet has a few dozen.
pub const MAX_RACKS: i64 = 1000;

/// What the gauges show, read in one go.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetSnapshot {
    /// Jobs per live state; states without jobs are absent.
    pub live_jobs: Vec<(String, i64)>,
    /// Age of the oldest outbox row in seconds, 0 when the outbox is empty.
    pub outbox_lag_seconds: f64,
    /// Every known rack with the seconds since its last heartbeat, if any.
    pub racks: Vec<(String, Option<f64>)>,
    pub dead_letters: i64,
}

impl Store {
    /// Reads the snapshot with a few cheap queries that stay off the bulk of
    /// `jobs` (live jobs are counted through an index holding only them).
    pub async fn fleet_snapshot(&self) -> Result<FleetSnapshot> {
        on_backend!(self, s => s.fleet_snapshot().await)
    }
}
