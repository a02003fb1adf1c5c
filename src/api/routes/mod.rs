//! Route handlers, one module per resource.

pub mod audit;
pub mod cards;
pub mod escrow;
pub mod health;
pub mod in_doubt;
pub mod initializations;
pub mod processes;
pub mod racks;
pub mod tokens;
