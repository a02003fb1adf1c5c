//! A fault-injecting card transport for tests and the simulated backend: pulls the card at
//! a chosen APDU (with or without the card having processed it), mutes the chip, answers a
//! forced status word for an instruction, and slows instructions down.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{CardTransport, TransportError};

/// A card that can be power-cycled, as a reader does when a card is reinserted.
pub trait PowerCycle {
    /// Clears the session state (selection, verification, authentication).
    fn power_cycle(&mut self);
}

/// Which APDU the card is pulled at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullAt {
    /// The APDU with this index (0 is the first one sent through the transport).
    Apdu(usize),
    /// The `nth` (0-based) APDU with this instruction byte.
    Ins { ins: u8, nth: usize },
}

/// When and how the card leaves the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pull {
    pub at: PullAt,
    /// Whether the card processed the APDU it was pulled at before leaving (the answer is
    /// lost), the window in which the card changed but the host never learned of it.
    pub processed: bool,
}

/// The faults to inject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Pull the card once; it answers `Removed` until [`FaultyTransport::reinsert`].
    pub pull: Option<Pull>,
    /// From this APDU index on, the chip does not answer (`Mute`).
    pub mute_from: Option<usize>,
    /// Instructions answered with this status word without reaching the card.
    pub forced_status: BTreeMap<u8, u16>,
    /// Extra time the card takes for an instruction.
    pub latency: BTreeMap<u8, Duration>,
    /// Extra time the card takes for every other instruction.
    pub default_latency: Duration,
}

/// A transport that wraps another and injects the faults of a [`FaultPlan`].
#[derive(Debug)]
pub struct FaultyTransport<T> {
    inner: T,
    plan: FaultPlan,
    sent: usize,
    per_ins: BTreeMap<u8, usize>,
    present: bool,
}

impl<T: CardTransport> FaultyTransport<T> {
    pub fn new(inner: T, plan: FaultPlan) -> Self {
        Self {
            inner,
            plan,
            sent: 0,
            per_ins: BTreeMap::new(),
            present: true,
        }
    }

    /// The wrapped card.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// The wrapped card, e.g. to inspect or tamper with it between attempts.
    pub fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    pub fn into_inner(self) -> T {
        self.inner
    }

    /// The faults in force.
    pub fn plan_mut(&mut self) -> &mut FaultPlan {
        &mut self.plan
    }

    /// APDUs sent through this transport so far, including refused ones.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// Whether the card is in the slot.
    pub fn is_present(&self) -> bool {
        self.present
    }

    /// Pulls the card now.
    pub fn remove(&mut self) {
        self.present = false;
    }

    fn pull_due(&self, ins: u8) -> Option<Pull> {
        let pull = self.plan.pull?;
        let due = match pull.at {
            PullAt::Apdu(index) => self.sent == index,
            PullAt::Ins { ins: wanted, nth } => {
                wanted == ins && self.per_ins.get(&ins).copied().unwrap_or(0) == nth
            }
        };
        due.then_some(pull)
    }
}

impl<T: CardTransport + PowerCycle> FaultyTransport<T> {
    /// Puts the card back: powered anew, and the pull of the plan disarmed.
    pub fn reinsert(&mut self) {
        self.plan.pull = None;
        self.present = true;
        self.inner.power_cycle();
    }
}

impl<T: CardTransport> CardTransport for FaultyTransport<T> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let ins = command.get(1).copied().unwrap_or(0);
        let pull = self.pull_due(ins);
        let index = self.sent;
        self.sent += 1;
        *self.per_ins.entry(ins).or_insert(0) += 1;
        if !self.present {
            return Err(TransportError::Removed);
        }
        if self.plan.mute_from.is_some_and(|from| index >= from) {
            return Err(TransportError::Mute);
        }
        let latency = self
            .plan
            .latency
            .get(&ins)
            .copied()
            .unwrap_or(self.plan.default_latency);
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        if let Some(pull) = pull {
            if pull.processed {
                let _lost = self.inner.transmit(command);
            }
            self.present = false;
            return Err(TransportError::Removed);
        }
        if let Some(sw) = self.plan.forced_status.get(&ins) {
            return Ok(sw.to_be_bytes().to_vec());
        }
        self.inner.transmit(command)
    }
}
