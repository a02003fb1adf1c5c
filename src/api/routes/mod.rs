//! Route handlers, one module per resource.

pub mod cards;
pub mod health;
pub mod initializations;
pub mod processes;
pub mod racks;
