//! The reading steps that come before anything is written: select, identify, read the
//! journal, probe, check the PIN, and authenticate with the management key.

use cardfleet_schemas::profile::{ManagementKeyAlgorithm, Requirement};

use super::capabilities;
use super::credentials::{self, PinStatus};
use super::error::{EngineError, FailureCode};
use super::identity;
use super::journal::{JOURNAL_TAG, Journal, Mark};
use super::mgmt::{self, ALL_ALGORITHMS, AuthOutcome, MgmtKey};
use super::objects;
use super::runner::{Runner, StepOutcome};
use crate::piv_ids::key_ref;

impl Runner<'_, '_> {
    pub(crate) fn select(&mut self) -> Result<StepOutcome, EngineError> {
        identity::select(&mut self.session)?;
        Ok(StepOutcome::Done(None))
    }

    /// The chip must be the one the job is for; nothing has been written yet.
    pub(crate) fn identify(&mut self) -> Result<StepOutcome, EngineError> {
        let serial = identity::chip_serial(&mut self.session)?;
        if serial != self.request.chip_serial {
            return Err(EngineError::refused(
                FailureCode::ChipSerialMismatch,
                format!(
                    "the card in the slot is chip {serial}, the job is for chip {}",
                    self.request.chip_serial
                ),
            ));
        }
        Ok(StepOutcome::Done(Some(format!("chip {serial}"))))
    }

    /// Reads the journal: this job's own (resume), none (fresh card), or another job's. A
    /// card whose credentials another job began to change is that job's: refused untouched.
    /// The journal is looked for on the card first, then in the worker's keeper; a card that
    /// refuses the object (`6A80`, `6D00`, …) simply has none.
    pub(crate) fn read_journal(&mut self) -> Result<StepOutcome, EngineError> {
        let (encoded, card_refuses) =
            match objects::get_data_or_refusal(&mut self.session, "GET DATA journal", JOURNAL_TAG)?
            {
                Ok(found) => (found, false),
                Err(sw) if self.request.journal_keeper.is_none() => {
                    // Found out before anything is written: the card stays as it came.
                    return Err(EngineError::refused(
                        FailureCode::JournalUnsupported,
                        format!(
                            "the card refuses the journal object {JOURNAL_TAG} ({sw}) and the \
                         worker keeps no journal (set worker.journal_dir)"
                        ),
                    ));
                }
                Err(_) => (None, true),
            };
        let (encoded, on_worker) = match encoded {
            Some(encoded) => (Some(encoded), false),
            None => match self.request.journal_keeper {
                Some(keeper) => {
                    let kept = keeper.load(self.request.chip_serial).map_err(|e| {
                        EngineError::refused(FailureCode::JournalStoreFailed, e.to_string())
                    })?;
                    (kept, true)
                }
                None => (None, false),
            },
        };
        // A card that refused the object journals on the worker from the start.
        self.journal_on_worker = on_worker && (encoded.is_some() || card_refuses);
        let place = if on_worker { "worker" } else { "card" };
        let Some(encoded) = encoded else {
            let detail = if card_refuses {
                "the card keeps no journal object; no journal on the worker"
            } else {
                "no journal on the card"
            };
            return Ok(StepOutcome::Done(Some(detail.to_owned())));
        };
        let journal = Journal::decode(&encoded).map_err(|e| {
            EngineError::refused(
                FailureCode::JournalUnreadable,
                format!("journal object {JOURNAL_TAG} on the {place}: {e}"),
            )
        })?;
        let other = journal.job_id();
        if other == self.request.job_id {
            let detail = format!("resuming this job ({place} journal): {}", journal.summary());
            self.journal = Some(journal);
            return Ok(StepOutcome::Done(Some(detail)));
        }
        if journal.credentials_touched() {
            return Err(EngineError::refused(
                FailureCode::AlreadyInitialized,
                format!("job {other} already changed this card's credentials ({place} journal)"),
            ));
        }
        Ok(StepOutcome::Done(Some(format!(
            "job {other} left a journal on the {place} but changed no credential; taking the \
             card over"
        ))))
    }

    pub(crate) fn probe(&mut self) -> Result<StepOutcome, EngineError> {
        self.caps = capabilities::probe(&mut self.session)?;
        Ok(StepOutcome::Done(Some(self.caps.describe())))
    }

    /// The empty VERIFY tells the PIN's tries for free; GET METADATA tells the PUK's when
    /// the card has it. A blocked PIN or PUK ends the job: the card cannot be initialized.
    pub(crate) fn check_pin(&mut self) -> Result<StepOutcome, EngineError> {
        let status = credentials::pin_status(&mut self.session)?;
        if self.caps.metadata {
            self.puk_counter = capabilities::counter(&mut self.session, key_ref::PUK)?;
        }
        let touched = self
            .journal
            .as_ref()
            .is_some_and(Journal::pin_or_puk_touched);
        let before = if touched {
            ""
        } else {
            " before this job touched the card"
        };
        let pin = match status {
            PinStatus::Blocked => {
                return Err(EngineError::refused(
                    FailureCode::PinBlocked,
                    format!("the PIN was blocked{before}"),
                ));
            }
            PinStatus::Verified => "PIN verified in this session".to_owned(),
            PinStatus::Remaining(n) => {
                self.pin_remaining = Some(n);
                format!("PIN {n} tries left")
            }
        };
        let puk = match self.puk_counter {
            Some(counter) if counter.remaining == 0 => {
                return Err(EngineError::refused(
                    FailureCode::PukBlocked,
                    format!("the PUK was blocked{before}"),
                ));
            }
            Some(counter) => format!("PUK {} of {} tries left", counter.remaining, counter.limit),
            None => "PUK tries unknown".to_owned(),
        };
        Ok(StepOutcome::Done(Some(format!("{pin}, {puk}"))))
    }

    /// Authenticates with the per-card key first (it works when a previous attempt set it),
    /// else with the transport key. The algorithm comes from GET METADATA when the card has
    /// it; otherwise candidates are tried, which costs nothing: a wrong algorithm is refused
    /// at the first step and a wrong management key has no retry counter.
    pub(crate) fn authenticate(&mut self) -> Result<StepOutcome, EngineError> {
        let mut learned = self.caps.mgmt_algorithm;
        let want_new = self.request.profile.management_key.requirement != Requirement::Skip
            || self.journal_done(Mark::ManagementKey);
        if want_new {
            let order: Vec<ManagementKeyAlgorithm> = match learned {
                Some(algorithm) => vec![algorithm],
                None => self.new_key_order(),
            };
            let key = self.prepared.new_key.clone();
            match self.try_keys(&key, &order)? {
                (Some(key), _) => {
                    let detail = format!("per-card key ({})", key.algorithm().as_str());
                    self.current_key = Some(key);
                    self.new_key_on_card = true;
                    if self.journal.is_none() {
                        // This job set the key, yet no journal of it is anywhere: what it
                        // did to the PIN and PUK is unknown and is found out without a guess.
                        self.unjournaled_resume = true;
                        return Ok(StepOutcome::Done(Some(format!(
                            "{detail}; no journal of this job: PIN and PUK are checked \
                             before they are changed"
                        ))));
                    }
                    return Ok(StepOutcome::Done(Some(detail)));
                }
                (None, card_algorithm) => learned = learned.or(card_algorithm),
            }
        }
        let transport = self.prepared.transport_key.clone();
        let order: Vec<ManagementKeyAlgorithm> = match learned {
            Some(algorithm) => vec![algorithm],
            None => std::iter::once(transport.algorithm())
                .chain(ALL_ALGORITHMS)
                .collect(),
        };
        if let (Some(key), _) = self.try_keys(&transport, &order)? {
            let detail = format!("transport key ({})", key.algorithm().as_str());
            self.current_key = Some(key);
            return Ok(StepOutcome::Done(Some(detail)));
        }
        Err(EngineError::refused(
            FailureCode::ManagementKeyUnknown,
            "neither the per-card nor the transport management key authenticates",
        ))
    }

    /// The algorithms the per-card key may have been set with, most likely first.
    pub(crate) fn new_key_order(&self) -> Vec<ManagementKeyAlgorithm> {
        let policy = &self.request.profile.management_key;
        self.journal
            .as_ref()
            .and_then(Journal::mgmt_algorithm)
            .into_iter()
            .chain([
                self.request.secrets.management_key_algorithm,
                policy.algorithm,
            ])
            .chain(policy.fallback.iter().copied())
            .collect()
    }

    /// Tries a key under each algorithm in turn. Returns the key that authenticated, or
    /// none and the card key's algorithm if the card revealed it (it accepted the algorithm
    /// but not the key).
    fn try_keys(
        &mut self,
        key: &MgmtKey,
        order: &[ManagementKeyAlgorithm],
    ) -> Result<(Option<MgmtKey>, Option<ManagementKeyAlgorithm>), EngineError> {
        for candidate in key.candidates(order) {
            match mgmt::authenticate(&mut self.session, &candidate)? {
                AuthOutcome::Authenticated => return Ok((Some(candidate), None)),
                AuthOutcome::WrongKey => return Ok((None, Some(candidate.algorithm()))),
                AuthOutcome::WrongAlgorithm => {}
            }
        }
        Ok((None, None))
    }
}
