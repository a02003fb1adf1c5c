//! Route handlers, one module per resource.

pub mod audit;
pub mod cards;
pub mod enrollment_tokens;
pub mod escrow;
pub mod health;
pub mod in_doubt;
pub mod initializations;
pub mod me;
pub mod processes;
pub mod racks;
pub mod redrive;
pub mod tokens;
