//! The control plane's domain, free of I/O: card and job states with their
//! transition rules, parsed identifiers, the classification of failures
//! (which failure sends a card where and what becomes of its credentials),
//! initialize planning and the folding of workers' results. The store loads
//! and saves what these functions decide.

pub mod failures;
mod ids;
pub mod planning;
pub mod results;
mod states;

pub use ids::{CardNumber, CardType, ChipSerial, ParseError, RackId};
pub use states::{CardState, JobState, JobTransition};
