//! The encoding journal: a private PIV data object (tag `5FFF10`) that records which job
//! owns the card and which credential steps began and finished, so that a redelivered job
//! resumes without guessing a PIN or PUK.
//!
//! Encoding (BER-TLV inside the `53` wrapper every PIV object has):
//!
//! ```text
//! 53 L
//!    80 01 <format version = 01>
//!    81 10 <job id, 16 bytes>
//!    82 02 <steps done, big-endian bit set>
//!    83 02 <steps begun and not yet confirmed ("intent"), same bits>
//!    84 01 <management key algorithm set by the job (SP 800-78-4 id)>   (optional)
//! ```
//!
//! Bits: 0 retry counters, 1 management key, 2 PIN, 3 PUK, 4–7 key pairs in 9A, 9C, 9D,
//! 9E. Unknown bits are kept as they are. The journal holds no secret: anyone may read it.

use cardfleet_schemas::profile::{KeySlot, ManagementKeyAlgorithm};
use uuid::Uuid;

use super::mgmt::algorithm_from_id;
use crate::piv_ids::tag;
use crate::tlv::{self, Tag, TlvBuilder};

/// The data object that holds the journal.
pub const JOURNAL_TAG: Tag = Tag::new(0x5FFF10);
/// The journal format this engine writes and reads.
pub const JOURNAL_VERSION: u8 = 1;

/// A step the journal tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// SET PIN RETRIES.
    Retries,
    /// SET MANAGEMENT KEY.
    ManagementKey,
    /// CHANGE REFERENCE DATA for the PIN.
    Pin,
    /// CHANGE REFERENCE DATA for the PUK.
    Puk,
    /// GENERATE ASYMMETRIC KEY PAIR in a slot.
    Key(KeySlot),
}

impl Mark {
    fn bit(self) -> u16 {
        let index = match self {
            Mark::Retries => 0,
            Mark::ManagementKey => 1,
            Mark::Pin => 2,
            Mark::Puk => 3,
            Mark::Key(KeySlot::Authentication) => 4,
            Mark::Key(KeySlot::Signature) => 5,
            Mark::Key(KeySlot::KeyManagement) => 6,
            Mark::Key(KeySlot::CardAuthentication) => 7,
        };
        1 << index
    }
}

/// Bits of steps that change a credential: once any of them began, the card belongs to
/// the job that began it.
const CREDENTIAL_BITS: u16 = 0b1110;
/// Bits of the PIN and PUK changes.
const PIN_PUK_BITS: u16 = 0b1100;

/// Why bytes read from the card are not a journal this engine understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("journal is not BER-TLV: {0}")]
    Tlv(#[from] tlv::TlvError),
    #[error("journal format version {0} is not supported")]
    Version(u8),
    #[error("journal field {0:02X} is missing or has the wrong length")]
    Field(u8),
}

/// What the journal says about one card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    job_id: Uuid,
    done: u16,
    intent: u16,
    mgmt_algorithm: Option<u8>,
}

impl Journal {
    /// An empty journal for a job.
    pub fn new(job_id: Uuid) -> Self {
        Self {
            job_id,
            done: 0,
            intent: 0,
            mgmt_algorithm: None,
        }
    }

    /// The job that owns the card.
    pub fn job_id(&self) -> Uuid {
        self.job_id
    }

    /// Whether the step finished.
    pub fn is_done(&self, mark: Mark) -> bool {
        self.done & mark.bit() != 0
    }

    /// Whether the step began and was not confirmed (the crash window).
    pub fn has_intent(&self, mark: Mark) -> bool {
        self.intent & mark.bit() != 0
    }

    /// Records that a step is about to change the card.
    pub fn begin(&mut self, mark: Mark) {
        self.intent |= mark.bit();
    }

    /// Records that a step finished.
    pub fn finish(&mut self, mark: Mark) {
        self.intent &= !mark.bit();
        self.done |= mark.bit();
    }

    /// Forgets a begun step that is known not to have changed the card.
    pub fn abandon(&mut self, mark: Mark) {
        self.intent &= !mark.bit();
    }

    /// Records the algorithm the per-card management key was set with.
    pub fn set_mgmt_algorithm(&mut self, algorithm: ManagementKeyAlgorithm) {
        self.mgmt_algorithm = Some(algorithm.piv_id());
    }

    /// The algorithm the per-card management key was set with, if recorded and known.
    pub fn mgmt_algorithm(&self) -> Option<ManagementKeyAlgorithm> {
        self.mgmt_algorithm.and_then(algorithm_from_id)
    }

    /// Whether a management key, PIN or PUK change began.
    pub fn credentials_touched(&self) -> bool {
        (self.done | self.intent) & CREDENTIAL_BITS != 0
    }

    /// Whether a PIN or PUK change began.
    pub fn pin_or_puk_touched(&self) -> bool {
        (self.done | self.intent) & PIN_PUK_BITS != 0
    }

    /// Short description for step details, e.g. `done retries,pin; begun puk`.
    pub fn summary(&self) -> String {
        let names = |bits: u16| {
            let all = [
                (Mark::Retries, "retries"),
                (Mark::ManagementKey, "management_key"),
                (Mark::Pin, "pin"),
                (Mark::Puk, "puk"),
                (Mark::Key(KeySlot::Authentication), "key_9a"),
                (Mark::Key(KeySlot::Signature), "key_9c"),
                (Mark::Key(KeySlot::KeyManagement), "key_9d"),
                (Mark::Key(KeySlot::CardAuthentication), "key_9e"),
            ];
            let listed: Vec<&str> = all
                .iter()
                .filter(|(m, _)| bits & m.bit() != 0)
                .map(|(_, n)| *n)
                .collect();
            if listed.is_empty() {
                "nothing".to_owned()
            } else {
                listed.join(",")
            }
        };
        let mut out = format!("done {}", names(self.done));
        if self.intent != 0 {
            out.push_str(&format!("; begun {}", names(self.intent)));
        }
        out
    }

    /// The `53`-wrapped encoding stored on the card.
    pub fn encode(&self) -> Vec<u8> {
        TlvBuilder::new()
            .nested(tag::DATA, |b| {
                b.push(Tag::new(0x80), &[JOURNAL_VERSION])
                    .push(Tag::new(0x81), self.job_id.as_bytes())
                    .push(Tag::new(0x82), &self.done.to_be_bytes())
                    .push(Tag::new(0x83), &self.intent.to_be_bytes());
                if let Some(algorithm) = self.mgmt_algorithm {
                    b.push(Tag::new(0x84), &[algorithm]);
                }
            })
            .finish()
    }

    /// Parses what GET DATA returned for [`JOURNAL_TAG`].
    pub fn decode(encoded: &[u8]) -> Result<Self, JournalError> {
        let body = tlv::parse_single(encoded, tag::DATA)?;
        let field = |t: u8| -> Result<Option<&[u8]>, JournalError> {
            Ok(tlv::find(body, Tag::new(u32::from(t)))?)
        };
        let fixed = |t: u8, len: usize| -> Result<&[u8], JournalError> {
            field(t)?
                .filter(|v| v.len() == len)
                .ok_or(JournalError::Field(t))
        };
        let version = fixed(0x80, 1)?[0];
        if version != JOURNAL_VERSION {
            return Err(JournalError::Version(version));
        }
        let job: [u8; 16] = fixed(0x81, 16)?
            .try_into()
            .map_err(|_| JournalError::Field(0x81))?;
        let bits = |t: u8| -> Result<u16, JournalError> {
            let raw: [u8; 2] = fixed(t, 2)?
                .try_into()
                .map_err(|_| JournalError::Field(t))?;
            Ok(u16::from_be_bytes(raw))
        };
        let mgmt_algorithm = match field(0x84)? {
            None => None,
            Some([id]) => Some(*id),
            Some(_) => return Err(JournalError::Field(0x84)),
        };
        Ok(Self {
            job_id: Uuid::from_bytes(job),
            done: bits(0x82)?,
            intent: bits(0x83)?,
            mgmt_algorithm,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_round_trips_through_its_encoding() {
        let mut journal = Journal::new(Uuid::new_v4());
        journal.finish(Mark::Retries);
        journal.begin(Mark::Pin);
        journal.set_mgmt_algorithm(ManagementKeyAlgorithm::Aes192);
        journal.finish(Mark::Key(KeySlot::CardAuthentication));
        let back = Journal::decode(&journal.encode()).unwrap();
        assert_eq!(back, journal);
        assert!(back.has_intent(Mark::Pin) && !back.is_done(Mark::Pin));
        assert_eq!(back.mgmt_algorithm(), Some(ManagementKeyAlgorithm::Aes192));
        assert_eq!(back.summary(), "done retries,key_9e; begun pin");
    }

    #[test]
    fn finishing_a_step_clears_its_intent() {
        let mut journal = Journal::new(Uuid::nil());
        journal.begin(Mark::Puk);
        assert!(journal.credentials_touched() && journal.pin_or_puk_touched());
        journal.finish(Mark::Puk);
        assert!(journal.is_done(Mark::Puk) && !journal.has_intent(Mark::Puk));
    }

    #[test]
    fn retries_and_keys_do_not_count_as_credential_work() {
        let mut journal = Journal::new(Uuid::nil());
        journal.finish(Mark::Retries);
        journal.finish(Mark::Key(KeySlot::Authentication));
        assert!(!journal.credentials_touched());
        journal.finish(Mark::ManagementKey);
        assert!(journal.credentials_touched() && !journal.pin_or_puk_touched());
    }

    #[test]
    fn garbage_and_other_versions_are_refused() {
        assert!(Journal::decode(&[0x53, 0x03, 0x80, 0x01]).is_err());
        let mut other = Journal::new(Uuid::nil()).encode();
        other[4] = 2; // 53 L 80 01 <version>
        assert_eq!(Journal::decode(&other), Err(JournalError::Version(2)));
        assert_eq!(
            Journal::decode(&[0x53, 0x03, 0x80, 0x01, 0x01]),
            Err(JournalError::Field(0x81))
        );
    }
}
