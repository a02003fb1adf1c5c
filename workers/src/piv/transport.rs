//! The virtual PIV card as the engine's [`CardTransport`], so the engine
//! drives it directly in tests and in the simulated backend, without a
//! reader in between. The emulator depends on the engine's traits, never
//! the other way round.

use super::VirtualPivCard;
use crate::engine::{CardTransport, PowerCycle, TransportError};

impl CardTransport for VirtualPivCard {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        Ok(self.process(command))
    }
}

impl PowerCycle for VirtualPivCard {
    fn power_cycle(&mut self) {
        self.reset();
    }
}
