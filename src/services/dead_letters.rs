//! Dead letters as the ledger records them: the message byte-exact (secrets
//! of a job removed), a readable redacted view, text fields that any
//! database accepts, and a content key that makes recording idempotent.

use sha2::{Digest, Sha256};

use crate::store::ledger::DeadLetter;

/// Largest payload kept in the readable view of a dead letter.
const DEAD_PAYLOAD_MAX: usize = 64 * 1024;

/// Longest reason, source or message id kept.
const TEXT_MAX: usize = 1024;

impl DeadLetter {
    /// A dead letter for the message `data` that came from `source` with
    /// `message_id`, dead-lettered for `reason`.
    pub fn new(source: &str, reason: &str, message_id: Option<&str>, data: &[u8]) -> Self {
        let redacted = redacted_json(data);
        let raw = match &redacted {
            Some(value) if has_secrets(data) => value.to_string().into_bytes(),
            _ => data.to_vec(),
        };
        let message_id = message_id.filter(|id| !id.is_empty());
        DeadLetter {
            source: storable_text(source, TEXT_MAX),
            reason: storable_text(reason, TEXT_MAX),
            message_id: message_id.map(|id| storable_text(id, TEXT_MAX)),
            payload: readable_payload(data, redacted.as_ref()),
            content_key: content_key(source, message_id, data),
            raw,
        }
    }
}

/// Same source, same message id and same bytes: the same dead letter,
/// however often it is redelivered or dead-lettered again.
fn content_key(source: &str, message_id: Option<&str>, data: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(source.as_bytes());
    hash.update([0]);
    hash.update(message_id.unwrap_or_default().as_bytes());
    hash.update([0]);
    hash.update(data);
    hex::encode(hash.finalize())
}

fn has_secrets(data: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.as_object().map(|o| o.contains_key("secrets")))
        .unwrap_or(false)
}

/// The message as JSON with any `secrets` field replaced, if it is JSON.
fn redacted_json(data: &[u8]) -> Option<serde_json::Value> {
    let mut value = serde_json::from_slice::<serde_json::Value>(data).ok()?;
    if let Some(obj) = value.as_object_mut()
        && obj.contains_key("secrets")
    {
        obj.insert("secrets".into(), "<redacted>".into());
    }
    Some(value)
}

/// The payload as listed: secrets removed, size bounded, storable as text.
fn readable_payload(data: &[u8], redacted: Option<&serde_json::Value>) -> String {
    let text = match redacted {
        Some(value) => value.to_string(),
        None => String::from_utf8_lossy(data).into_owned(),
    };
    storable_text(&text, DEAD_PAYLOAD_MAX)
}

/// Text a PostgreSQL `text` column accepts (no NUL), bounded to `max` bytes.
fn storable_text(text: &str, max: usize) -> String {
    let text = text.replace('\0', "\u{FFFD}");
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…(truncated)", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_never_keep_job_secrets() {
        let payload = br#"{"job_id":"x","secrets":{"scheme":"sealed","payload":"c2VjcmV0"}}"#;
        let letter = DeadLetter::new("q", "r", None, payload);
        assert!(!letter.payload.contains("c2VjcmV0"), "{}", letter.payload);
        assert!(letter.payload.contains("<redacted>"));
        let raw = String::from_utf8(letter.raw).unwrap();
        assert!(!raw.contains("c2VjcmV0"), "{raw}");
    }

    #[test]
    fn poison_is_kept_byte_exact_and_its_text_is_storable() {
        let poison = b"\x00\xff{not json\x00";
        let letter = DeadLetter::new("cardfleet.results", "why\0", Some("id\0"), poison);
        assert_eq!(letter.raw, poison);
        for text in [
            &letter.payload,
            &letter.reason,
            letter.message_id.as_ref().unwrap(),
        ] {
            assert!(!text.contains('\0'), "{text:?}");
        }
    }

    #[test]
    fn garbage_is_kept_lossily_and_bounded_in_the_readable_view() {
        let garbage = vec![0xffu8; DEAD_PAYLOAD_MAX + 10];
        let letter = DeadLetter::new("q", "r", None, &garbage);
        assert!(letter.payload.ends_with("(truncated)"));
        assert_eq!(letter.raw, garbage);
    }

    #[test]
    fn the_content_key_names_source_id_and_bytes() {
        let a = DeadLetter::new("q", "one reason", Some("m"), b"x");
        let b = DeadLetter::new("q", "another reason", Some("m"), b"x");
        assert_eq!(a.content_key, b.content_key);
        for other in [
            DeadLetter::new("p", "r", Some("m"), b"x"),
            DeadLetter::new("q", "r", Some("n"), b"x"),
            DeadLetter::new("q", "r", Some("m"), b"y"),
            DeadLetter::new("q", "r", None, b"x"),
        ] {
            assert_ne!(a.content_key, other.content_key);
        }
    }
}
