//! The engine's transport traits through a `&mut` reference, so a caller
//! keeps its card (a reader connection, a virtual card) after a run.

use super::faults::PowerCycle;
use super::{CardTransport, TransportError};
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
