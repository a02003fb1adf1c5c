//! Rack identity on the broker, control-plane side: the ledger believes a
//! result or slot event only when it carries a valid signature of an
//! enrolled rack (`cardfleet_schemas::rack_identity`) and speaks for that
//! same rack. Anything else is dead-lettered with reason
//! [`UNAUTHENTICATED_RACK`] (no or bad signature, rack not enrolled or
//! enrolled without a signing key) or [`RACK_MISMATCH`] (signed by one rack,
//! naming another), so no rack can claim another rack's slots or chips.
//!
//! Enrolled keys are cached for [`KEY_CACHE_TTL`]; a signature that does
//! not verify under a cached key is checked again against the store, so a
//! re-enrolled rack is believed at once and a replaced key stops working
//! within the TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cardfleet_schemas::bus::Delivery;
use cardfleet_schemas::rack_identity::{self as identity, RACK_HEADER, SIGNATURE_HEADER};
pub use cardfleet_schemas::rack_identity::{RACK_MISMATCH, UNAUTHENTICATED_RACK};
use cardfleet_schemas::{EventMessage, ResultMessage};

use crate::store::{Store, StoreError};

/// How long an enrolled signing key is trusted without reading it again.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(30);

/// The rack a message speaks for.
pub trait Claimed {
    fn claimed_rack(&self) -> &str;
}

impl Claimed for ResultMessage {
    fn claimed_rack(&self) -> &str {
        match self {
            ResultMessage::JobStarted(m) => &m.rack_id,
            ResultMessage::EncodeResult(m) => &m.rack_id,
        }
    }
}

impl Claimed for EventMessage {
    fn claimed_rack(&self) -> &str {
        match self {
            EventMessage::SlotEvent(e) => &e.rack_id,
            EventMessage::WorkerHeartbeat(h) => &h.rack_id,
        }
    }
}

/// Enrolled signing keys by rack id, with when each was read.
type KeyCache = HashMap<String, ([u8; 32], Instant)>;

/// Checks racks' signatures against their enrolled keys, with a cache.
#[derive(Debug, Clone, Default)]
pub struct RackKeys {
    cache: Arc<Mutex<KeyCache>>,
}

impl RackKeys {
    /// `Ok(Ok(()))` when `delivery` is signed by an enrolled rack and its
    /// body speaks for that rack; `Ok(Err(reason))` with the dead-letter
    /// reason otherwise; `Err` only when the store cannot be read.
    pub async fn check(
        &self,
        store: &Store,
        delivery: &Delivery,
        message: &impl Claimed,
    ) -> Result<Result<(), &'static str>, StoreError> {
        let (Some(rack), Some(signature)) = (
            delivery.header_text(RACK_HEADER),
            delivery.header_text(SIGNATURE_HEADER),
        ) else {
            return Ok(Err(UNAUTHENTICATED_RACK));
        };
        let body = delivery.data();
        let verified = match self.cached(&rack) {
            Some(key) if identity::verify(&key, &rack, body, &signature) => true,
            _ => match store.rack_signing_key(&rack).await? {
                Some(key) => {
                    self.remember(&rack, key);
                    identity::verify(&key, &rack, body, &signature)
                }
                None => false,
            },
        };
        if !verified {
            return Ok(Err(UNAUTHENTICATED_RACK));
        }
        if message.claimed_rack() != rack {
            return Ok(Err(RACK_MISMATCH));
        }
        Ok(Ok(()))
    }

    fn cached(&self, rack: &str) -> Option<[u8; 32]> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(rack)
            .filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL)
            .map(|(key, _)| *key)
    }

    fn remember(&self, rack: &str, key: [u8; 32]) {
        if let Ok(mut cache) = self.cache.lock() {
            // Bounded by the number of enrolled racks: only keys the store
            // returned are kept.
            cache.insert(rack.to_owned(), (key, Instant::now()));
        }
    }
}
