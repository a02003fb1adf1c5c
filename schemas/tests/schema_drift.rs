//! Fails when the committed JSON Schema files differ from what the types
//! generate. Regenerate with `CARDFLEET_UPDATE_SCHEMAS=1 cargo test -p cardfleet-schemas`.

#![allow(clippy::unwrap_used)]
use std::path::PathBuf;

#[test]
fn committed_json_schemas_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json");
    let update = std::env::var_os("CARDFLEET_UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for (name, generated) in cardfleet_schemas::schema_files::all() {
        let path = dir.join(name);
        if update {
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "schema files out of date: {stale:?}; run CARDFLEET_UPDATE_SCHEMAS=1 cargo test -p cardfleet-schemas"
    );
}

#[test]
fn messages_round_trip_through_json() {
    use cardfleet_schemas::*;
    let msg = ResultMessage::JobStarted(JobStarted {
        meta: Meta::now(),
        job_id: uuid::Uuid::new_v4(),
        rack_id: "rack-1".into(),
        slot: 3,
        worker_id: "w1".into(),
    });
    let text = serde_json::to_string(&msg).unwrap();
    assert!(text.contains("\"type\":\"job_started\""), "{text}");
    assert!(text.contains("\"schema_version\":1"), "{text}");
    let back: ResultMessage = serde_json::from_str(&text).unwrap();
    assert_eq!(back, msg);
}
