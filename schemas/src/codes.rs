//! The one catalogue of stable codes: API errors, per-card rejections, job
//! failure codes and dead-letter reasons. Control plane and worker both take
//! their codes from here; each renders as `{code, message}`, with its HTTP
//! status where it has one. The README's code tables are checked against
//! this list in both directions (`tests/error_codes.rs`).

use std::fmt;

use serde::Serialize;

/// Where a code appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The `code` of an API error response.
    Api,
    /// The `code` of one rejected row or card inside a successful response
    /// (`POST /v1/cards/import`, `POST /v1/initializations`).
    Rejection,
    /// `Failure.code` of a job that did not succeed.
    JobFailure,
    /// A dead letter's `reason` (the code, or the code, `: ` and details).
    DeadLetter,
}

macro_rules! catalogue {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, [$($kind:ident),+], $status:expr, $message:literal; )+) => {
        /// Every stable code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $( $(#[$doc])* $variant, )+
        }

        impl Code {
            /// Every code, in catalogue order.
            pub const ALL: &'static [Code] = &[$(Code::$variant),+];

            /// The code as it appears on the wire.
            pub const fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code,)+ }
            }

            /// Where the code appears (a few appear in more than one place).
            pub fn kinds(self) -> &'static [Kind] {
                match self { $(Code::$variant => &[$(Kind::$kind),+],)+ }
            }

            /// The HTTP status of an API error with this code.
            pub const fn status(self) -> Option<u16> {
                match self { $(Code::$variant => $status,)+ }
            }

            /// What the code means, for a person (the default message).
            pub const fn message(self) -> &'static str {
                match self { $(Code::$variant => $message,)+ }
            }
        }
    };
}

catalogue! {
    // API errors.
    MalformedJson = "malformed_json", [Api], Some(400), "body is not JSON";
    InvalidRequest = "invalid_request", [Api, JobFailure], Some(400), "wrong types, unknown fields, or a rule of the request broken";
    InvalidQuery = "invalid_query", [Api], Some(400), "bad query parameter";
    InvalidId = "invalid_id", [Api], Some(400), "a path id is not a UUID";
    ReasonRequired = "reason_required", [Api], Some(400), "PUK read without a reason";
    UnreadableBody = "unreadable_body", [Api], Some(400), "the request body could not be read";
    MalformedCsv = "malformed_csv", [Api], Some(400), "CSV header is not card_number,chip_serial,card_type,profile";
    Unauthenticated = "unauthenticated", [Api], Some(401), "no token, or an unknown, revoked or used one";
    TokenExpired = "token_expired", [Api], Some(401), "the token's expiry has passed";
    Forbidden = "forbidden", [Api], Some(403), "the token lacks the role";
    UnknownCard = "unknown_card", [Api, Rejection], Some(404), "no such card";
    UnknownBatch = "unknown_batch", [Api], Some(404), "no such batch";
    NotFound = "not_found", [Api], Some(404), "no such resource or route";
    UnknownDeadLetter = "unknown_dead_letter", [Api], Some(404), "no dead letter with this id";
    UnknownSlot = "unknown_slot", [Api], Some(404), "no such rack or slot";
    UnknownToken = "unknown_token", [Api], Some(404), "no token with this name";
    NotInDoubt = "not_in_doubt", [Api], Some(404), "no card with this id is in_doubt";
    MethodNotAllowed = "method_not_allowed", [Api], Some(405), "the route exists but not with this method";
    RequestTimeout = "request_timeout", [Api], Some(408), "the request took longer than the server allows";
    ReservedName = "reserved_name", [Api], Some(409), "a token name the services write as audit actor";
    ProcessDisabled = "process_disabled", [Api], Some(409), "initialize requested while the process is disabled";
    AlreadyRedriven = "already_redriven", [Api], Some(409), "a dead letter sent again already";
    NotRedrivable = "not_redrivable", [Api], Some(409), "a dead letter that cannot be sent again";
    BatchNotFinished = "batch_not_finished", [Api], Some(409), "the batch is still running";
    MailersAlreadyReleased = "mailers_already_released", [Api], Some(409), "the batch's PIN mailers were released already";
    PinsDestroyed = "pins_destroyed", [Api], Some(409), "the PINs were destroyed by an earlier release";
    MailersNotReleased = "mailers_not_released", [Api], Some(409), "the batch's PIN mailers were never released";
    TokenExists = "token_exists", [Api], Some(409), "a token with this name exists";
    OwnToken = "own_token", [Api], Some(409), "a token asked to revoke itself";
    PayloadTooLarge = "payload_too_large", [Api], Some(413), "body larger than the server accepts";
    BatchTooLarge = "batch_too_large", [Api], Some(413), "more cards than the server accepts in one request";
    UnsupportedMediaType = "unsupported_media_type", [Api], Some(415), "neither JSON nor CSV";
    InvalidPublicKey = "invalid_public_key", [Api], Some(422), "enrollment key is not standard base64 of 32 bytes";
    InvalidSigningKey = "invalid_signing_key", [Api], Some(422), "signing key is not a valid Ed25519 public key";
    RateLimited = "rate_limited", [Api], Some(429), "too many requests for this token";
    Internal = "internal", [Api], Some(500), "internal error; the server log has the details";

    // Per-row and per-card rejections inside a successful response.
    Malformed = "malformed", [Rejection], None, "the row does not parse";
    UnknownProfile = "unknown_profile", [Rejection], None, "no card profile of this name";
    WrongCardType = "wrong_card_type", [Rejection], None, "the card type does not take this process";
    Duplicate = "duplicate", [Rejection], None, "a card with this number or chip serial exists";
    WrongState = "wrong_state", [Rejection], None, "the card is not in a state this request accepts";

    // Job failure codes: the engine's, then those the worker runtime and the
    // control plane set.
    CardRemoved = "card_removed", [JobFailure], None, "the card left the slot";
    CardReset = "card_reset", [JobFailure], None, "the card was reset by another party";
    CardMute = "card_mute", [JobFailure], None, "the chip does not answer";
    ReaderError = "reader_error", [JobFailure], None, "the reader failed";
    NotPiv = "not_piv", [JobFailure], None, "the card has no PIV application";
    ChipSerialUnavailable = "chip_serial_unavailable", [JobFailure], None, "the card reveals no chip serial";
    ChipSerialMismatch = "chip_serial_mismatch", [JobFailure], None, "the chip in the slot is not the job's; nothing was written";
    AlreadyInitialized = "already_initialized", [JobFailure], None, "another job already changed this card's credentials";
    JournalUnreadable = "journal_unreadable", [JobFailure], None, "the journal object on the card cannot be parsed";
    JournalUnsupported = "journal_unsupported", [JobFailure], None, "the card refuses the journal object and the worker keeps none";
    JournalStoreFailed = "journal_store_failed", [JobFailure], None, "the worker's own journal could not be read or written";
    PinBlocked = "pin_blocked", [JobFailure], None, "the PIN is blocked";
    PukBlocked = "puk_blocked", [JobFailure], None, "the PUK is blocked";
    PinStateUnknown = "pin_state_unknown", [JobFailure], None, "too few tries are left to find which PIN or PUK is set";
    ManagementKeyUnknown = "management_key_unknown", [JobFailure], None, "neither the per-card nor the transport management key authenticates";
    TransportPinRejected = "transport_pin_rejected", [JobFailure], None, "the card rejects the profile's transport PIN";
    TransportPukRejected = "transport_puk_rejected", [JobFailure], None, "the card rejects the profile's transport PUK";
    PinFormatUnsupported = "pin_format_unsupported", [JobFailure], None, "the card refuses the new PIN's format";
    PukFormatUnsupported = "puk_format_unsupported", [JobFailure], None, "the card refuses the new PUK's format";
    UnsupportedStep = "unsupported_step", [JobFailure], None, "a step the profile requires is not supported by the card";
    VerificationFailed = "verification_failed", [JobFailure], None, "the final read-back does not match what was written";
    UnexpectedStatus = "unexpected_status", [JobFailure], None, "the card answered a status word the engine has no rule for";
    MalformedResponse = "malformed_response", [JobFailure], None, "the card's answer cannot be parsed";
    Cancelled = "cancelled", [JobFailure], None, "the job was cancelled before it wrote anything";
    CardAbsent = "card_absent", [JobFailure], None, "no card in the slot";
    SlotQuarantined = "slot_quarantined", [JobFailure], None, "the slot was quarantined after failing cards in a row";
    SlotUnavailable = "slot_unavailable", [JobFailure], None, "the job's slot does not exist or is out of service";
    DeadLettered = "dead_lettered", [JobFailure], None, "the broker gave up on the job message";
    SecretsUnopenable = "secrets_unopenable", [JobFailure, DeadLetter], None, "the job's secrets are sealed to another key, rack or job, or were tampered with";
    RackNotEnrolled = "rack_not_enrolled", [JobFailure], None, "the rack has no enrolled key; the job was never published";

    // Dead-letter reasons.
    Undecodable = "undecodable", [DeadLetter], None, "the message is not JSON of its type";
    UnsupportedSchemaVersion = "unsupported_schema_version", [DeadLetter], None, "the message's schema_version is not this build's";
    UnknownJob = "unknown_job", [DeadLetter], None, "a result for a job the control plane does not know";
    WrongRack = "wrong_rack", [DeadLetter], None, "a job on this rack's queue names another rack";
    UnauthenticatedRack = "unauthenticated_rack", [DeadLetter], None, "the message carries no valid signature of its rack";
    RackMismatch = "rack_mismatch", [DeadLetter], None, "the message speaks for another rack than the one that signed it";
    Unapplicable = "unapplicable", [DeadLetter], None, "the database refused what the message holds (sqlstate, sqlite code or store_refused follows)";
    // Reasons the broker gives (x-first-death-reason), and none at all.
    DeliveryLimit = "delivery_limit", [DeadLetter], None, "the message was delivered as often as the queue allows";
    Rejected = "rejected", [DeadLetter], None, "a consumer rejected the message";
    Expired = "expired", [DeadLetter], None, "the message outlived its time to live";
    Maxlen = "maxlen", [DeadLetter], None, "the queue was full";
    Unknown = "unknown", [DeadLetter], None, "the broker gave no reason";
}

impl Code {
    /// The code of this name, if the catalogue has one.
    pub fn parse(code: &str) -> Option<Code> {
        Code::ALL.iter().copied().find(|c| c.as_str() == code)
    }

    /// The code a dead-letter reason starts with (`code` or `code: details`).
    pub fn of_reason(reason: &str) -> Option<Code> {
        let code = reason.split_once(':').map_or(reason, |(code, _)| code);
        Code::parse(code).filter(|c| c.is(Kind::DeadLetter))
    }

    /// Whether the code appears as `kind`.
    pub fn is(self, kind: Kind) -> bool {
        self.kinds().contains(&kind)
    }

    /// `{code, message}` with the code's own message.
    pub fn body(self) -> ErrorBody {
        self.with_message(self.message())
    }

    /// `{code, message}` with a message saying more than the default.
    pub fn with_message(self, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code: self.as_str(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a code renders: `{"code", "message"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `process_disabled`.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_snake_case_and_parse_back() {
        let mut seen = HashSet::new();
        for &code in Code::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s}");
            assert_eq!(Code::parse(s), Some(code));
        }
        assert_eq!(Code::parse("no_such_code"), None);
    }

    #[test]
    fn a_dead_letter_reason_names_its_code_first() {
        assert_eq!(
            Code::of_reason("unapplicable: sqlstate 22021"),
            Some(Code::Unapplicable)
        );
        assert_eq!(Code::of_reason("delivery_limit"), Some(Code::DeliveryLimit));
        assert_eq!(Code::of_reason("process_disabled"), None);
        assert_eq!(Code::of_reason("free text"), None);
    }

    #[test]
    fn api_codes_and_only_they_have_a_status() {
        for &code in Code::ALL {
            assert_eq!(code.is(Kind::Api), code.status().is_some(), "{code}");
            if let Some(status) = code.status() {
                assert!((400..600).contains(&status), "{code}");
            }
        }
    }

    #[test]
    fn a_code_renders_as_code_and_message() {
        let json = serde_json::to_value(Code::ProcessDisabled.with_message("off")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"code": "process_disabled", "message": "off"})
        );
        assert_eq!(Code::Internal.body().message, Code::Internal.message());
    }
}
