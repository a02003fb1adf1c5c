//! What a card can do beyond SP 800-73-4: the vendor extensions (GET VERSION `FD`), GET
//! METADATA (`F7`) and, through it, the current management key algorithm and the PIN and
//! PUK retry counters. Probing only reads and costs no try.

use cardfleet_schemas::profile::ManagementKeyAlgorithm;

use super::error::EngineError;
use super::mgmt::algorithm_from_id;
use super::session::{Session, command};
use crate::apdu::StatusWord;
use crate::piv_ids::{ins, key_ref};
use crate::tlv::{self, Tag};

/// The result of probing a card.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Capabilities {
    /// The YubiKey-compatible instructions exist (GET VERSION answered).
    pub extensions: bool,
    /// Firmware version reported by GET VERSION.
    pub version: Option<[u8; 3]>,
    /// GET METADATA answers.
    pub metadata: bool,
    /// Algorithm of the management key now on the card, from GET METADATA.
    pub mgmt_algorithm: Option<ManagementKeyAlgorithm>,
}

impl Capabilities {
    /// One line for the step report.
    pub(crate) fn describe(&self) -> String {
        if !self.extensions {
            return "no vendor extensions".to_owned();
        }
        let mut out = match self.version {
            Some([a, b, c]) => format!("vendor extensions, version {a}.{b}.{c}"),
            None => "vendor extensions".to_owned(),
        };
        match (self.metadata, self.mgmt_algorithm) {
            (true, Some(algorithm)) => {
                out.push_str(&format!(", management key {}", algorithm.as_str()));
            }
            (true, None) => out.push_str(", metadata"),
            (false, _) => out.push_str(", no metadata"),
        }
        out
    }
}

/// Probes the extensions and the management key's algorithm.
pub(crate) fn probe(session: &mut Session<'_>) -> Result<Capabilities, EngineError> {
    const NAME: &str = "GET VERSION";
    let response = session.transmit(NAME, command(NAME, ins::GET_VERSION, 0x00, 0x00, &[])?)?;
    if response.sw() != StatusWord::Success {
        return Ok(Capabilities::default());
    }
    let version = response.data().try_into().ok();
    let mut caps = Capabilities {
        extensions: true,
        version,
        ..Capabilities::default()
    };
    if let Some(metadata) = metadata(session, key_ref::MANAGEMENT)? {
        caps.metadata = true;
        caps.mgmt_algorithm = tlv::find(&metadata, Tag::new(0x01))
            .ok()
            .flatten()
            .and_then(|v| v.first().copied())
            .and_then(algorithm_from_id);
    }
    Ok(caps)
}

/// Retry counter of the PIN or the PUK as GET METADATA reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counter {
    pub limit: u8,
    pub remaining: u8,
}

/// GET METADATA for the PIN (`80`) or the PUK (`81`): the retry counter (`06`).
pub(crate) fn counter(
    session: &mut Session<'_>,
    reference: u8,
) -> Result<Option<Counter>, EngineError> {
    let Some(metadata) = metadata(session, reference)? else {
        return Ok(None);
    };
    let counter = match tlv::find(&metadata, Tag::new(0x06)) {
        Ok(Some([limit, remaining])) => Some(Counter {
            limit: *limit,
            remaining: *remaining,
        }),
        _ => None,
    };
    Ok(counter)
}

/// GET METADATA (`F7`) for a key reference; `None` when the card does not answer it.
pub(crate) fn metadata(
    session: &mut Session<'_>,
    reference: u8,
) -> Result<Option<Vec<u8>>, EngineError> {
    const NAME: &str = "GET METADATA";
    let response = session.transmit(
        NAME,
        command(NAME, ins::GET_METADATA, 0x00, reference, &[])?,
    )?;
    Ok((response.sw() == StatusWord::Success).then(|| response.into_data()))
}
