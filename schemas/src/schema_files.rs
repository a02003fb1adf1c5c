//! The JSON Schema files generated from the contract types, committed under
//! `schemas/json/` so that non-Rust consumers can validate messages.

use schemars::{JsonSchema, schema_for};

use crate::{
    CardProfile, ControlMessage, EventMessage, InitializeJob, JobGateAnswer, JobGateQuery,
    ResultMessage,
};

fn render<T: JsonSchema>() -> String {
    let schema = schema_for!(T);
    // Serializing a schema (a JSON value) cannot fail.
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// Every committed schema file: (file name, contents).
pub fn all() -> Vec<(&'static str, String)> {
    vec![
        ("initialize-job.schema.json", render::<InitializeJob>()),
        ("result-message.schema.json", render::<ResultMessage>()),
        ("event-message.schema.json", render::<EventMessage>()),
        ("control-message.schema.json", render::<ControlMessage>()),
        ("card-profile.schema.json", render::<CardProfile>()),
        ("job-gate-query.schema.json", render::<JobGateQuery>()),
        ("job-gate-answer.schema.json", render::<JobGateAnswer>()),
    ]
}
