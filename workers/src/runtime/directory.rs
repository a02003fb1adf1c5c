//! What the worker knows about its slots: which chip is where, each slot's
//! state, and failure streaks that lead to quarantine.

use std::collections::HashMap;

use cardfleet_schemas::{SlotState, SlotStatus};

#[derive(Debug, Clone)]
struct SlotInfo {
    chip: Option<String>,
    state: SlotState,
    failures_in_row: u32,
}

#[derive(Debug, Clone)]
pub struct Directory {
    slots: Vec<SlotInfo>,
    by_chip: HashMap<String, u16>,
    quarantine_after: u32,
}

/// What a finished card did to its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotVerdict {
    Fine,
    /// The slot has just been quarantined.
    Quarantined,
}

impl Directory {
    pub fn new(slots: u16, quarantine_after: u32) -> Self {
        Self {
            slots: (0..slots)
                .map(|_| SlotInfo {
                    chip: None,
                    state: SlotState::Empty,
                    failures_in_row: 0,
                })
                .collect(),
            by_chip: HashMap::new(),
            quarantine_after: quarantine_after.max(1),
        }
    }

    fn slot_mut(&mut self, slot: u16) -> Option<&mut SlotInfo> {
        self.slots.get_mut(usize::from(slot))
    }

    pub fn inserted(&mut self, slot: u16, chip: &str) {
        let Some(info) = self.slots.get_mut(usize::from(slot)) else {
            return;
        };
        if let Some(old) = info.chip.take() {
            self.by_chip.remove(&old);
        }
        info.chip = Some(chip.to_owned());
        if info.state != SlotState::Quarantined {
            info.state = SlotState::Present;
        }
        self.by_chip.insert(chip.to_owned(), slot);
    }

    pub fn removed(&mut self, slot: u16) {
        let Some(info) = self.slots.get_mut(usize::from(slot)) else {
            return;
        };
        if let Some(old) = info.chip.take() {
            self.by_chip.remove(&old);
        }
        if info.state != SlotState::Quarantined {
            info.state = SlotState::Empty;
        }
    }

    pub fn faulted(&mut self, slot: u16) {
        if let Some(info) = self.slot_mut(slot)
            && info.state != SlotState::Quarantined
        {
            info.state = SlotState::Faulted;
        }
    }

    /// The slot holding `chip`, if any.
    pub fn find(&self, chip: &str) -> Option<u16> {
        self.by_chip.get(chip).copied()
    }

    pub fn is_quarantined(&self, slot: u16) -> bool {
        self.slots
            .get(usize::from(slot))
            .is_some_and(|s| s.state == SlotState::Quarantined)
    }

    pub fn encoding(&mut self, slot: u16) {
        if let Some(info) = self.slot_mut(slot)
            && info.state == SlotState::Present
        {
            info.state = SlotState::Encoding;
        }
    }

    /// Records a finished card; `failed` cards in a row quarantine the slot.
    pub fn finished(&mut self, slot: u16, failed: bool) -> SlotVerdict {
        let limit = self.quarantine_after;
        let Some(info) = self.slot_mut(slot) else {
            return SlotVerdict::Fine;
        };
        if info.state == SlotState::Encoding {
            info.state = if info.chip.is_some() {
                SlotState::Present
            } else {
                SlotState::Empty
            };
        }
        if !failed {
            info.failures_in_row = 0;
            return SlotVerdict::Fine;
        }
        info.failures_in_row += 1;
        if info.failures_in_row >= limit && info.state != SlotState::Quarantined {
            info.state = SlotState::Quarantined;
            return SlotVerdict::Quarantined;
        }
        SlotVerdict::Fine
    }

    /// Puts a quarantined slot back into service; false if it was not quarantined.
    pub fn release(&mut self, slot: u16) -> bool {
        let Some(info) = self.slot_mut(slot) else {
            return false;
        };
        if info.state != SlotState::Quarantined {
            return false;
        }
        info.failures_in_row = 0;
        info.state = if info.chip.is_some() {
            SlotState::Present
        } else {
            SlotState::Empty
        };
        true
    }

    pub fn chip_in(&self, slot: u16) -> Option<String> {
        self.slots
            .get(usize::from(slot))
            .and_then(|s| s.chip.clone())
    }

    pub fn statuses(&self) -> Vec<SlotStatus> {
        self.slots
            .iter()
            .enumerate()
            .map(|(i, s)| SlotStatus {
                slot: u16::try_from(i).unwrap_or(u16::MAX),
                state: s.state,
                chip_serial: s.chip.clone(),
            })
            .collect()
    }

    /// Every slot's state, in slot order.
    pub fn states(&self) -> Vec<SlotState> {
        self.slots.iter().map(|s| s.state).collect()
    }

    pub fn count(&self, state: SlotState) -> usize {
        self.slots.iter().filter(|s| s.state == state).count()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_quarantined_after_n_failures_in_a_row_and_released_on_request() {
        let mut d = Directory::new(2, 3);
        d.inserted(0, "1");
        assert_eq!(d.finished(0, true), SlotVerdict::Fine);
        assert_eq!(d.finished(0, false), SlotVerdict::Fine);
        assert_eq!(d.finished(0, true), SlotVerdict::Fine);
        assert_eq!(d.finished(0, true), SlotVerdict::Fine);
        assert_eq!(d.finished(0, true), SlotVerdict::Quarantined);
        assert!(d.is_quarantined(0));
        d.removed(0);
        assert!(d.is_quarantined(0), "removal must not lift a quarantine");
        assert!(d.release(0));
        assert!(!d.is_quarantined(0));
        assert!(!d.release(0));
    }

    #[test]
    fn a_chip_moved_to_another_slot_is_found_there() {
        let mut d = Directory::new(3, 3);
        d.inserted(0, "77");
        d.removed(0);
        d.inserted(2, "77");
        assert_eq!(d.find("77"), Some(2));
        d.inserted(2, "78");
        assert_eq!(d.find("77"), None);
        assert_eq!(d.find("78"), Some(2));
    }
}
