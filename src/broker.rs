//! RabbitMQ for the control plane: the shared topology and publishing
//! helpers of the wire contract.

pub use cardfleet_schemas::amqp::*;
