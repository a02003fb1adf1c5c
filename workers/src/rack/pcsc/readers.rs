//! Which readers a rack takes and what their status changes mean: name patterns, stable
//! slot numbers, and card arrivals, departures and swaps read from pcscd's reader states.

use ::pcsc::State;

use super::MAX_READERS;

/// Whether a reader is one of ours: any reader when there are no patterns, else one whose
/// name contains a pattern.
pub fn name_matches(name: &str, patterns: &[String]) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| name.contains(p.as_str()))
}

/// Slot numbers by reader name, given on first sight and kept for the life of the process.
/// Only when all slots have had a reader does a new name take the slot of one unplugged.
#[derive(Debug, Default)]
pub struct SlotTable {
    names: Vec<String>,
    attached: Vec<bool>,
}

impl SlotTable {
    /// The slot for a reader now present, or `None` if all slots hold plugged-in readers.
    pub fn attach(&mut self, name: &str) -> Option<u16> {
        let index = match self.names.iter().position(|n| n == name) {
            Some(i) => i,
            None if self.names.len() < usize::from(MAX_READERS) => {
                self.names.push(name.to_owned());
                self.attached.push(false);
                self.names.len() - 1
            }
            None => {
                let free = self.attached.iter().position(|a| !a)?;
                self.names[free] = name.to_owned();
                free
            }
        };
        self.attached[index] = true;
        u16::try_from(index).ok()
    }

    /// The reader was unplugged; its slot stays its own unless the table fills up.
    pub fn detach(&mut self, name: &str) {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            self.attached[i] = false;
        }
    }
}

/// A reader's card as the monitor last saw it: present or not, and pcscd's count of
/// insertions and removals, which tells a swapped card from the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Presence {
    pub(super) present: bool,
    pub(super) events: u32,
}

/// What happened in a reader between two reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    Nothing,
    Arrived,
    Left,
    /// Removed and another (or the same) card inserted between two reports.
    Replaced,
}

pub(super) fn is_present(state: State) -> bool {
    state.contains(State::PRESENT)
        && !state.intersects(State::UNKNOWN | State::UNAVAILABLE | State::IGNORE)
}

pub(super) fn change(before: Option<Presence>, now: Presence) -> Change {
    match (before.map(|b| (b.present, b.events)), now.present) {
        (None | Some((false, _)), true) => Change::Arrived,
        (Some((true, _)), false) => Change::Left,
        (Some((true, events)), true) if events != now.events => Change::Replaced,
        _ => Change::Nothing,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn patterns(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn no_patterns_match_every_reader_and_patterns_match_substrings() {
        assert!(name_matches("Any Reader 00 00", &[]));
        let ours = patterns(&["Virtual PCD", "OMNIKEY"]);
        assert!(name_matches("Virtual PCD 00 01", &ours));
        assert!(name_matches(
            "HID Global OMNIKEY 3x21 Smart Card Reader [OMNIKEY 3x21] 00 00",
            &ours
        ));
        assert!(!name_matches("Yubico YubiKey OTP+FIDO+CCID 00 00", &ours));
        assert!(
            !name_matches("virtual pcd 00 00", &ours),
            "matching is case-sensitive"
        );
    }

    #[test]
    fn readers_keep_their_slot_across_unplugging_and_the_table_holds_16() {
        let mut table = SlotTable::default();
        assert_eq!(table.attach("A 00 00"), Some(0));
        assert_eq!(table.attach("B 00 00"), Some(1));
        assert_eq!(table.attach("A 00 00"), Some(0), "same reader, same slot");
        table.detach("A 00 00");
        assert_eq!(
            table.attach("C 00 00"),
            Some(2),
            "a new reader does not take a free slot while others are left"
        );
        assert_eq!(
            table.attach("A 00 00"),
            Some(0),
            "plugged back in, same slot"
        );
        for i in 3..16 {
            assert_eq!(table.attach(&format!("R{i}")), Some(i));
        }
        assert_eq!(
            table.attach("seventeenth"),
            None,
            "all 16 slots hold plugged-in readers"
        );
        table.detach("B 00 00");
        assert_eq!(
            table.attach("seventeenth"),
            Some(1),
            "when full, a new reader takes an unplugged one's slot"
        );
        assert_eq!(table.attach("B 00 00"), None);
    }

    #[test]
    fn reader_states_become_arrivals_departures_and_swaps() {
        let present = |events| Presence {
            present: true,
            events,
        };
        let empty = |events| Presence {
            present: false,
            events,
        };
        assert_eq!(
            change(None, present(1)),
            Change::Arrived,
            "a card already there at start"
        );
        assert_eq!(change(None, empty(0)), Change::Nothing);
        assert_eq!(change(Some(empty(0)), present(1)), Change::Arrived);
        assert_eq!(change(Some(present(1)), empty(2)), Change::Left);
        assert_eq!(
            change(Some(present(1)), present(1)),
            Change::Nothing,
            "in use, powered down: same card"
        );
        assert_eq!(
            change(Some(present(1)), present(3)),
            Change::Replaced,
            "out and in between two reports"
        );
        assert!(is_present(State::PRESENT | State::INUSE));
        assert!(
            is_present(State::PRESENT | State::MUTE),
            "a mute card is there; identifying it faults the slot"
        );
        assert!(!is_present(State::EMPTY));
        assert!(
            !is_present(State::PRESENT | State::UNKNOWN),
            "the reader itself is gone"
        );
    }
}
