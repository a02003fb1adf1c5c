//! The virtual PIV card as a [`CardTransport`], so the engine drives it directly in tests
//! and in the simulated backend, without a reader in between.

use super::faults::PowerCycle;
use super::{CardTransport, TransportError};
use crate::piv::VirtualPivCard;

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

impl<T: CardTransport + ?Sized> CardTransport for &mut T {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        (**self).transmit(command)
    }
}

impl<T: PowerCycle + ?Sized> PowerCycle for &mut T {
    fn power_cycle(&mut self) {
        (**self).power_cycle();
    }
}
